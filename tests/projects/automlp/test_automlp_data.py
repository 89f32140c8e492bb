"""AutoMLP's data: 5-core filtering, time-ordered leave-one-out without leakage, the planted dynamics, and the two
registered builders (the ML-100K one from a stand-in RecBole wheel)."""

from __future__ import annotations

import zipfile

import numpy as np
import pytest

from jaxgen.data import registered_datasets, source
from jaxgen.data.sources import DatasetMissingError
from jaxgen.projects.automlp import data


def test_k_core_repeats_until_every_user_and_item_has_k():
    # user 0 rates items 1..3; user 1 rates items 1..2; item 3 has one rating, so k=2 drops it, then user 0 still
    # has 2 items and stays; user 2's only item (9) goes and user 2 with it.
    users = np.array([0, 0, 0, 1, 1, 2])
    items = np.array([1, 2, 3, 1, 2, 9])
    keep = data.k_core(users, items, k=2)
    assert keep.tolist() == [True, True, False, True, True, False]
    assert not data.k_core(users, items, k=3).any()  # dropping item 3 leaves user 0 with 2 < 3: all collapse


def _unique_item_interactions(rng, num_users=20, num_items=60):
    users, items, times = [], [], []
    for user in range(num_users):
        chosen = rng.choice(np.arange(100, 100 + num_items), size=rng.integers(3, 15), replace=False)
        users += [user] * len(chosen)
        items += list(chosen)
        times += list(rng.permutation(len(chosen)) * 10.0 + rng.random())
    order = rng.permutation(len(users))  # interactions arrive in no particular order
    return np.asarray(users)[order], np.asarray(items)[order], np.asarray(times)[order]


def test_leave_one_out_targets_are_the_last_two_by_time_and_the_test_input_holds_no_test_item():
    rng = np.random.default_rng(0)
    users, items, times = _unique_item_interactions(rng)
    sequences, num_items = data.user_sequences(users, items, times)
    ids = np.unique(items)
    splits = data.leave_one_out(sequences, max_len=5)
    for user in range(20):
        mine = users == user
        by_time = ids.searchsorted(items[mine][np.argsort(times[mine])]) + 1  # renumbered 1..N in id order
        test, valid = (splits[s]["user"] == user for s in ("test", "valid"))
        assert splits["test"]["target"][test].item() == by_time[-1]
        assert splits["valid"]["target"][valid].item() == by_time[-2]
        test_input = splits["test"]["history"][test][0]
        assert by_time[-1] not in test_input
        assert test_input[test_input != data.PAD].tolist() == by_time[:-1][-5:].tolist()  # newest last, left-padded
        assert splits["valid"]["history"][valid][0].tolist() == data.pad_left(by_time[:-2], 5).tolist()
        train = splits["train"]["user"] == user
        assert splits["train"]["target"][train].tolist() == by_time[1:-2].tolist()
        assert not set(splits["train"]["history"][train].ravel()) & {by_time[-1], by_time[-2]}
    assert num_items == len(ids) and splits["train"]["history"].max() <= num_items


def test_leave_one_out_refuses_users_too_short_to_split():
    shortest = data.leave_one_out([np.array([1, 2, 3])], max_len=4)
    assert shortest["train"]["history"].shape == (0, 4) and shortest["test"]["history"].tolist() == [[0, 0, 1, 2]]
    with pytest.raises(ValueError, match="fewer than 3"):
        data.leave_one_out([np.array([1, 2, 3]), np.array([4, 5])], max_len=4)


def test_the_planted_next_item_is_a_function_of_exactly_the_last_k_true_items():
    users, items, _ = data.planted_interactions(60, 12, k_true=2, noise=0.0, seed=3)
    again = data.planted_interactions(60, 12, k_true=2, noise=0.0, seed=3)
    assert np.array_equal(items, again[1])

    def next_item_by_context(k):
        seen, conflicts = {}, 0
        for user in range(60):
            seq = items[users == user]
            for t in range(2, len(seq)):
                context = tuple(seq[t - k:t])
                conflicts += seen.setdefault(context, seq[t]) != seq[t]
        return conflicts

    assert next_item_by_context(2) == 0
    assert next_item_by_context(1) > 0  # the last item alone does not decide the next


def test_the_planted_builder_stores_fixed_length_examples():
    assert registered_datasets()["automlp_planted"] == "jaxgen.projects.automlp.data"
    test = source("automlp_planted", "test")
    batch = test.get_batch(np.arange(len(test)))
    assert batch["history"].shape == (len(test), data.AutomlpPlanted.MAX_LEN)
    assert len(test) == len(np.unique(batch["user"]))  # one test example per user
    assert (batch["history"][:, -1] != data.PAD).all()


def test_ml100k_is_read_from_the_recbole_wheel_and_its_absence_names_the_pip_command(tmp_path):
    with pytest.raises(DatasetMissingError, match=r"pip download --no-deps recbole==1\.2\.1"):
        source("automlp_ml100k", "test", str(tmp_path / "empty"))
    rng = np.random.default_rng(1)
    rows = [(u, i, 4, 880000000 + int(rng.integers(10**6))) for u in range(1, 9) for i in rng.permutation(8)[:7] + 1]
    wheel = tmp_path / "data" / "downloads" / "manual" / data.RECBOLE_WHEEL
    wheel.parent.mkdir(parents=True)
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr(data.ML100K_MEMBER, "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
                   + "".join(f"{u}\t{i}\t{r}\t{t}\n" for u, i, r, t in rows))
    users, items, times = data.read_recbole_ml100k(wheel)
    assert users.tolist() == [r[0] for r in rows] and times[3] == rows[3][3]
    test = source("automlp_ml100k", "test", str(tmp_path / "data"))
    assert len(test) == 8 and test[0]["history"].shape == (data.AutomlpMl100k.MAX_LEN,)


def test_tagged_splits_puts_valid_then_test_in_one_source_with_their_index():
    splits = data.leave_one_out([np.array([1, 2, 3, 4]), np.array([5, 6, 7])], max_len=3)
    tagged = data.tagged_splits(splits)
    batch = tagged.get_batch(np.arange(len(tagged)))
    assert batch["split"].tolist() == [0, 0, 1, 1]
    assert batch["target"].tolist() == [3, 6, 4, 7]  # valid: second-to-last items; test: last items
    assert batch["history"].tolist() == [[0, 1, 2], [0, 0, 5], [1, 2, 3], [0, 5, 6]]
