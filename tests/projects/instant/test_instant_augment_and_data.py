"""Augmentations (keyed, jit-able, range-preserving), the seeded labeled split and the Fashion-MNIST builder."""

from __future__ import annotations

import gzip

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgen.data import ArraySource, DatasetMissingError
from jaxgen.data import sources
from jaxgen.data.builders import fashion_mnist
from jaxgen.projects.instant import augment
from jaxgen.projects.instant.data import SSLData, split_labeled

IMAGES = jax.random.uniform(jax.random.key(0), (6, 8, 8, 1))


def test_weak_is_identity_without_shift_or_flip_and_flips_exactly():
    np.testing.assert_array_equal(augment.weak(jax.random.key(1), IMAGES, flip=False, max_shift=0.0), IMAGES)
    flipped = augment.weak(jax.random.key(1), IMAGES, flip=True, max_shift=0.0)
    for out, image in zip(flipped, IMAGES):
        assert bool(jnp.all(out == image)) or bool(jnp.all(out == image[:, ::-1]))
    assert not bool(jnp.all(flipped == IMAGES)), "six coin flips all tails"


def test_weak_shift_is_a_crop_of_the_reflect_padded_image():
    out = np.asarray(augment.weak(jax.random.key(2), IMAGES, flip=False, max_shift=0.25))  # up to 2 pixels
    padded = np.pad(np.asarray(IMAGES), ((0, 0), (2, 2), (2, 2), (0, 0)), mode="reflect")
    for i in range(len(out)):
        crops = [padded[i, dy:dy + 8, dx:dx + 8] for dy in range(5) for dx in range(5)]
        assert any(np.array_equal(out[i], c) for c in crops)


def test_strong_is_keyed_jittable_and_stays_in_range():
    strong = jax.jit(lambda k, x: augment.strong(k, x, num_ops=2))
    a, b, c = strong(jax.random.key(3), IMAGES), strong(jax.random.key(3), IMAGES), strong(jax.random.key(4), IMAGES)
    np.testing.assert_array_equal(a, b)
    assert a.shape == IMAGES.shape and not np.array_equal(a, c)
    assert float(a.min()) >= 0.0 and float(a.max()) <= 1.0


@pytest.mark.parametrize("name", augment.OPS)
def test_each_op_keeps_shape_and_range(name):
    out = augment.apply_op(name, IMAGES[0], jnp.asarray(0.7), jnp.asarray(-1.0))
    assert out.shape == IMAGES[0].shape and float(out.min()) >= 0.0 and float(out.max()) <= 1.0 + 1e-6


def test_ops_at_neutral_magnitudes_are_identities():
    image = IMAGES[0]
    neutral = (1.0 - 0.05) / 1.9  # enhance factor 1
    for name in ("brightness", "contrast", "color", "sharpness"):
        np.testing.assert_allclose(augment.apply_op(name, image, jnp.asarray(neutral), 1.0), image, atol=1e-6)
    for name in ("rotate", "shear_x", "shear_y", "translate_x", "translate_y", "posterize"):
        np.testing.assert_allclose(augment.apply_op(name, image, jnp.asarray(0.0), 1.0), jnp.floor(image * 255) / 255
                                   if name == "posterize" else image, atol=1e-6)
    np.testing.assert_allclose(augment.apply_op("solarize", image, jnp.asarray(1.0), 1.0), 1.0 - image, atol=1e-6)
    shifted = augment.apply_op("translate_x", jnp.arange(64.0).reshape(8, 8, 1) / 64, jnp.asarray(1 / 2.4), 1.0)
    np.testing.assert_allclose(shifted[:, :7, 0], np.arange(64.0).reshape(8, 8)[:, 1:] / 64, atol=1e-5)  # 1 pixel


def test_split_labeled_is_seeded_balanced_and_fixed():
    labels = np.repeat(np.arange(3), 10)
    a, b = split_labeled(labels, 4, seed=0), split_labeled(labels, 4, seed=0)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(np.bincount(labels[a]), [4, 4, 4])
    assert not np.array_equal(a, split_labeled(labels, 4, seed=1))
    with pytest.raises(ValueError, match="class 0 has 10 examples; cannot take 11"):
        split_labeled(labels, 11, seed=0)


def test_ssl_data_streams():
    rng = np.random.default_rng(0)
    train = ArraySource({"image": rng.integers(0, 255, (30, 8, 8, 1), dtype=np.uint8),
                         "label": np.repeat(np.arange(3), 10)})
    data = SSLData(train, labels_per_class=2, batch_size=4, uratio=3, eval_dataset=train)
    batch = data.batch(5)
    assert batch["labeled"]["image"].shape == (4, 8, 8, 1) and batch["unlabeled"]["image"].shape == (12, 8, 8, 1)
    assert set(batch["labeled"]["label"]) <= {0, 1, 2} and len(data.labeled) == 6 and data.num_unlabeled == 30
    index = batch["unlabeled"]["index"]
    np.testing.assert_array_equal(batch["unlabeled"]["label"], train.arrays["label"][index])  # hidden truth lines up
    np.testing.assert_array_equal(data.batch(5)["unlabeled"]["index"], index)  # pure function of the step
    with pytest.raises(ValueError, match="eval_dataset"):
        _ = SSLData(train, labels_per_class=2, batch_size=4).evaluation


def write_idx(path, array):
    header = (0x800 + array.ndim).to_bytes(4, "big") + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def test_fashion_mnist_builder_reads_idx_files(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    images = {"train": rng.integers(0, 256, (20, 28, 28), dtype=np.uint8),
              "test": rng.integers(0, 256, (10, 28, 28), dtype=np.uint8)}
    labels = {"train": np.arange(20) % 10, "test": np.arange(10)}
    for split, (image_file, label_file) in fashion_mnist.FILES.items():
        write_idx(tmp_path / image_file, images[split])
        write_idx(tmp_path / label_file, labels[split])
    monkeypatch.setenv("JAXGEN_FASHION_MNIST_DIR", str(tmp_path))
    src = sources.source("fashion_mnist_offline", "train", str(tmp_path / "tfds"))
    assert len(src) == 20
    read = sorted((int(label), image[..., 0].tobytes())
                  for image, label in zip(src.arrays["image"], src.arrays["label"]))
    assert read == sorted((int(label), image.tobytes()) for image, label in zip(images["train"], labels["train"]))
    assert len(sources.source("fashion_mnist_offline", "test", str(tmp_path / "tfds"))) == 10


def test_fashion_mnist_missing_files_say_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setenv("JAXGEN_FASHION_MNIST_DIR", str(tmp_path / "absent"))
    with pytest.raises(DatasetMissingError, match="apt-get install dataset-fashion-mnist"):
        fashion_mnist.read_split("train")
    (tmp_path / "bad").mkdir()
    write_idx(tmp_path / "bad" / "x.gz", np.zeros((2, 3)))  # a 2-d file where a 1-d one is expected
    with pytest.raises(ValueError, match="IDX magic"):
        fashion_mnist.read_idx(tmp_path / "bad" / "x.gz", 1)
