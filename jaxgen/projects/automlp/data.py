"""Sequential-recommendation data: interactions -> time-ordered user sequences -> leave-one-out examples.

The pipeline (pure numpy, shared by both datasets): `k_core` keeps users and items with at least k interactions
(repeated until stable), `user_sequences` orders each user's items by time and renumbers items 1..N (0 is padding),
`leave_one_out` makes one example per prediction: every prefix of a user's sequence but its last two items predicts
the next item (train), the sequence without its last two items predicts the second-to-last (valid), the sequence
without its last item predicts the last (test). Histories keep their last `max_len` items, left-padded with 0, so the
newest item is always at position -1 and `history != 0` is the mask.

Two registered TFDS builders store the examples at a fixed length, so batches stack without a `collate`, and record
the number of items N in their metadata (`num_items(dataset)`: the size the models' item tables need):

- `automlp_planted`: a seeded procedural dataset with planted short-term dynamics: with probability `1 - noise` the
  next item is a fixed random function of the last `K_TRUE` items, otherwise a draw from the user's long-term
  preference (a few favourite items). Made for tests and CPU runs: a model that looks at the last `K_TRUE` items can
  predict most targets, one that looks at fewer cannot.
- `automlp_ml100k`: MovieLens-100K as RecBole 1.2.1 ships it (`recbole/dataset_example/ml-100k/ml-100k.inter`, tab
  separated `user_id item_id rating timestamp`). It is read straight out of RecBole's wheel, which nobody needs to
  install: `pip download --no-deps recbole==1.2.1 -d <data dir>/downloads/manual` puts it where the builder looks
  (the builder's error names this command when the wheel is missing). Nothing of it is committed here.

Evaluation reads the valid and the test split in one pass (`evaluation_source`): each example carries the index of
its split, so one evaluator reports the validation metrics that pick the best step and the test metrics of that step.
"""

from __future__ import annotations

import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds

from jaxgen.data import sources
from jaxgen.data.sources import ArraySource, DatasetMissingError
from jaxgen.projects.automlp.model import PAD

EVAL_SPLITS = ("valid", "test")
RECBOLE_WHEEL = "recbole-1.2.1-py3-none-any.whl"
ML100K_MEMBER = "recbole/dataset_example/ml-100k/ml-100k.inter"


def k_core(users: np.ndarray, items: np.ndarray, k: int = 5) -> np.ndarray:
    """A boolean mask of the interactions kept when users and items with fewer than `k` interactions are dropped
    again and again until every kept user and item has at least `k` (dropping items can push users below `k`)."""
    keep = np.ones(len(users), bool)
    while True:
        _, user_index, user_counts = np.unique(users[keep], return_inverse=True, return_counts=True)
        _, item_index, item_counts = np.unique(items[keep], return_inverse=True, return_counts=True)
        ok = (user_counts[user_index] >= k) & (item_counts[item_index] >= k)
        if ok.all():
            return keep
        keep[np.flatnonzero(keep)[~ok]] = False


def user_sequences(users: np.ndarray, items: np.ndarray, times: np.ndarray) -> tuple[list[np.ndarray], int]:
    """Each user's items ordered by time (ties keep the input order), items renumbered 1..N in order of their ids;
    returns (sequences in order of user id, N)."""
    item_ids, item_index = np.unique(items, return_inverse=True)
    order = np.lexsort((np.arange(len(users)), times, users))
    sorted_users, sorted_items = users[order], item_index[order] + 1
    starts = np.flatnonzero(np.r_[True, sorted_users[1:] != sorted_users[:-1]])
    return [s.astype(np.int32) for s in np.split(sorted_items, starts[1:])], len(item_ids)


def pad_left(history: np.ndarray, max_len: int) -> np.ndarray:
    """The last `max_len` items of `history`, left-padded with `PAD` to exactly `max_len`."""
    if max_len < 1:
        raise ValueError(f"A history keeps at least one item; got max_len={max_len}")
    out = np.full(max_len, PAD, np.int32)
    tail = history[-max_len:]
    out[max_len - len(tail):] = tail
    return out


def leave_one_out(sequences: list[np.ndarray], max_len: int) -> dict[str, dict[str, np.ndarray]]:
    """{split: {"history": [n, max_len] int32, "target": [n] int32, "user": [n] int32}} (see the module docstring).
    Every sequence needs at least 3 items: one to train on, one to validate, one to test."""
    short = [u for u, s in enumerate(sequences) if len(s) < 3]
    if short:
        raise ValueError(f"Users {short[:5]} have fewer than 3 interactions; leave-one-out needs train, valid and test")
    rows = {"train": [], "valid": [], "test": []}
    for user, seq in enumerate(sequences):
        n = len(seq)
        rows["train"] += [(user, seq[:t], seq[t]) for t in range(1, n - 2)]
        rows["valid"].append((user, seq[:n - 2], seq[n - 2]))
        rows["test"].append((user, seq[:n - 1], seq[n - 1]))
    return {split: {"history": np.asarray([pad_left(h, max_len) for _, h, _ in r], np.int32).reshape(len(r), max_len),
                    "target": np.asarray([t for _, _, t in r], np.int32),
                    "user": np.asarray([u for u, _, _ in r], np.int32)}
            for split, r in rows.items()}


def planted_interactions(num_users: int, num_items: int, k_true: int, length: tuple[int, int] = (12, 30),
                         noise: float = 0.2, favourites: int = 3, seed: int = 0):
    """(users, items, times) of `num_users` sequences whose next item is, with probability `1 - noise`, a fixed random
    function of the previous `k_true` items (a random table indexed by them), else one of the user's `favourites`.
    Items are 1..num_items; times are positions with a per-user offset, so time order is sequence order."""
    rng = np.random.default_rng(seed)
    table_size = min(num_items ** k_true, 1 << 16)
    table = rng.integers(1, num_items + 1, size=table_size)
    radix = num_items ** np.arange(k_true)
    users, items, times = [], [], []
    for user in range(num_users):
        liked = rng.integers(1, num_items + 1, size=favourites)
        seq = list(rng.integers(1, num_items + 1, size=k_true))
        for _ in range(rng.integers(length[0], length[1] + 1) - k_true):
            if rng.random() < noise:
                seq.append(int(rng.choice(liked)))
            else:
                seq.append(int(table[int(np.dot(np.asarray(seq[-k_true:]) - 1, radix[::-1])) % table_size]))
        users += [user] * len(seq)
        items += seq
        times += list(1000 * user + np.arange(len(seq)))
    return np.asarray(users), np.asarray(items), np.asarray(times, np.float64)


def read_recbole_ml100k(wheel: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(users, items, times) of ML-100K's `.inter` file inside RecBole's wheel."""
    with zipfile.ZipFile(wheel) as z:
        table = np.loadtxt(z.open(ML100K_MEMBER), dtype=np.int64, delimiter="\t", skiprows=1)
    return table[:, 0], table[:, 1], table[:, 3].astype(np.float64)


def examples(users, items, times, max_len: int, core: int = 5) -> tuple[dict, int]:
    """`leave_one_out` of the `core`-core-filtered interactions; also returns the number of items."""
    keep = k_core(users, items, core)
    sequences, num_items = user_sequences(users[keep], items[keep], times[keep])
    return leave_one_out(sequences, max_len), num_items


class _SequenceExamples(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Stores `examples(...)` of `_interactions()` as fixed-length TFDS examples."""

    MAX_LEN = 50

    def _info(self):
        return self.dataset_info_from_configs(features=tfds.features.FeaturesDict({
            "history": tfds.features.Tensor(shape=(self.MAX_LEN,), dtype=np.int32),
            "target": tfds.features.Tensor(shape=(), dtype=np.int32),
            "user": tfds.features.Tensor(shape=(), dtype=np.int32),
        }), metadata=tfds.core.MetadataDict())

    def _interactions(self, dl_manager):
        raise NotImplementedError

    def _split_generators(self, dl_manager):
        splits, self.info.metadata["num_items"] = examples(*self._interactions(dl_manager), self.MAX_LEN)
        return {split: self._generate_examples(arrays) for split, arrays in splits.items()}

    def _generate_examples(self, arrays):
        for i in range(len(arrays["target"])):
            yield i, {name: values[i] for name, values in arrays.items()}


class AutomlpPlanted(_SequenceExamples):
    """`planted_interactions` with the constants below (item ids after 5-core renumbering may be fewer)."""

    VERSION = tfds.core.Version("1.1.0")
    RELEASE_NOTES = {"1.1.0": "num_items in the metadata"}
    MAX_LEN = 20
    NUM_USERS, NUM_ITEMS, K_TRUE = 300, 40, 2

    def _interactions(self, dl_manager):
        return planted_interactions(self.NUM_USERS, self.NUM_ITEMS, self.K_TRUE, seed=0)


class AutomlpMl100k(_SequenceExamples):
    """MovieLens-100K from RecBole 1.2.1's wheel (see the module docstring)."""

    VERSION = tfds.core.Version("1.1.0")
    RELEASE_NOTES = {"1.1.0": "num_items in the metadata"}
    MAX_LEN = 50

    def _interactions(self, dl_manager):
        # TFDS's manual folder, found by hand: `dl_manager.manual_dir` would fail first with TFDS's own message.
        wheel = Path(dl_manager.download_dir) / "manual" / RECBOLE_WHEEL
        if not wheel.exists():
            raise DatasetMissingError(
                f"automlp_ml100k is read from RecBole's wheel, which is not at {wheel}. Fetch it (no install, no "
                f"dependencies) with `pip download --no-deps recbole==1.2.1 -d {wheel.parent}` and prepare again.")
        return read_recbole_ml100k(wheel)


def num_items(dataset: str, data_dir: str | None = None) -> int:
    """N, the number of items of a prepared sequence dataset (ids 1..N; 0 is PAD), from its builder's metadata."""
    metadata = sources.builder(dataset, data_dir).info.metadata
    if "num_items" not in metadata:
        raise DatasetMissingError(f"Dataset {dataset!r} records no num_items in its metadata; it is not one of the "
                                  "sequence datasets of jaxgen.projects.automlp.data")
    return int(metadata["num_items"])


def tagged_splits(splits: Mapping[str, Mapping[str, np.ndarray]], names: Sequence[str] = EVAL_SPLITS) -> ArraySource:
    """The examples of the splits `names` of `splits` ({split: {feature: array}}, as `leave_one_out` makes them), one
    split after the other, each with `"split"`: the index of its split in `names`."""
    parts = [splits[name] for name in names]
    arrays = {feature: np.concatenate([part[feature] for part in parts]) for feature in parts[0]}
    arrays["split"] = np.concatenate([np.full(len(part["target"]), i, np.int32) for i, part in enumerate(parts)])
    return ArraySource(arrays)


def evaluation_source(dataset: str, splits: Sequence[str] = EVAL_SPLITS, data_dir: str | None = None) -> ArraySource:
    """`tagged_splits` of a prepared dataset's `splits` (valid and test by default), read into memory."""
    read = {name: sources.read_batch(s, np.arange(len(s)))
            for name, s in ((name, sources.source(dataset, name, data_dir)) for name in splits)}
    return tagged_splits(read, splits)
