"""The loader is a pure function of (seed, step); rows split across processes reassemble the global batch; eval
covers each example once; offline builders hold what their sources ship."""

from __future__ import annotations

import numpy as np
import pytest

from jaxgen.data import ArraySource, DatasetMissingError, Loader, source


def numbered(n=10):
    return ArraySource({"i": np.arange(n), "x": np.arange(n, dtype=np.float32) * 2})


def test_batches_follow_one_permutation_per_epoch():
    loader = Loader(numbered(10), batch_size=4, seed=7)
    seen = np.concatenate([loader.batch(s)["i"] for s in range(5)])  # 20 positions = 2 epochs
    epoch0 = np.random.default_rng([7, 0]).permutation(10)
    epoch1 = np.random.default_rng([7, 1]).permutation(10)
    np.testing.assert_array_equal(seen, np.concatenate([epoch0, epoch1]))


def test_process_rows_reassemble_the_global_batch_and_iterate_resumes_anywhere():
    loader = Loader(numbered(10), batch_size=4, seed=1)
    halves = [loader.batch(3, rows)["i"] for rows in (np.arange(0, 2), np.arange(2, 4))]
    np.testing.assert_array_equal(np.concatenate(halves), loader.batch(3)["i"])
    resumed = loader.iterate(start_step=3)
    np.testing.assert_array_equal(next(resumed)["i"], loader.batch(3)["i"])


def test_eval_batches_cover_every_example_once_and_mark_padding():
    loader = Loader(numbered(10), batch_size=4, shuffle=False)
    batches = list(loader.eval_batches())
    assert len(batches) == 3
    valid = np.concatenate([b["valid"] for b in batches])
    np.testing.assert_array_equal(np.concatenate([b["i"] for b in batches])[valid], np.arange(10))
    assert valid.sum() == 10 and not valid[-2:].any()


def test_feature_selection_transform_and_errors():
    loader = Loader(numbered(), batch_size=2, features=("x",), transform=lambda b: {"x": b["x"] + 1})
    assert set(loader.batch(0)) == {"x"}
    with pytest.raises(KeyError, match="no features"):
        Loader(numbered(), batch_size=2, features=("y",)).batch(0)
    with pytest.raises(ValueError, match="batch_size must be positive"):
        Loader(numbered(), batch_size=0)


def test_digits_builder_matches_sklearn():
    from sklearn.datasets import load_digits

    digits = load_digits()
    train, test = source("digits", "train"), source("digits", "test")
    assert (len(train), len(test)) == (1437, 360)
    images = np.concatenate([train.arrays["image"], test.arrays["image"]]).reshape(-1, 64).astype(np.int64)
    labels = np.concatenate([train.arrays["label"], test.arrays["label"]])
    expected = np.minimum(digits.data.astype(np.int64) * 16, 255)
    # TFDS stores examples in a shuffled order: compare as multisets of (pixels, label) rows.
    ours = sorted(map(tuple, np.column_stack([images, labels])))
    theirs = sorted(map(tuple, np.column_stack([expected, digits.target])))
    assert ours == theirs


def test_mnist5k_is_stratified_and_shapes_are_seeded():
    train, test = source("mnist5k", "train"), source("mnist5k", "test")
    assert train.arrays["image"].shape == (4000, 28, 28, 1) and len(test) == 1000
    assert np.bincount(test.arrays["label"]).tolist() == [100] * 10
    shapes = source("shapes/32", "test")
    assert shapes.arrays["image"].shape == (1024, 32, 32, 3)
    assert set(np.unique(shapes.arrays["label"])) == {0, 1, 2}


def test_unknown_and_unprepared_datasets_say_how_to_get_them(tmp_path):
    with pytest.raises(DatasetMissingError, match="(?s)Unknown dataset 'mnist5kk'.*'mnist5k'"):
        source("mnist5kk", "train")
    with pytest.raises(DatasetMissingError, match="(?s)'mnist' is not prepared.*jaxgen data prepare mnist"):
        source("mnist", "train", str(tmp_path))
    with pytest.raises(DatasetMissingError, match="no split 'validation'"):
        source("digits", "validation")
