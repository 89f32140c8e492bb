"""Fashion-MNIST (70,000 28×28 grey clothing images, 10 classes, MIT) from the Debian package `dataset-fashion-mnist`.

The package installs the original gzipped IDX files under /usr/share/datasets/fashion-mnist/; this builder reads them
offline (`$JAXGEN_FASHION_MNIST_DIR` points elsewhere, e.g. at a copy, or at tiny files in tests). The TFDS name
`fashion_mnist` is TFDS's own downloading builder, so ours is registered as `fashion_mnist_offline`.
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds

from jaxgen.data.builders._bundled import BundledImages
from jaxgen.data.sources import DatasetMissingError

DEFAULT_DIR = "/usr/share/datasets/fashion-mnist"
FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
CLASS_NAMES = ("t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle-boot")
_IDX_MAGIC = {1: 0x00000801, 3: 0x00000803}  # unsigned-byte IDX files with 1 (labels) or 3 (images) dimensions


def source_dir() -> Path:
    return Path(os.environ.get("JAXGEN_FASHION_MNIST_DIR", DEFAULT_DIR))


def read_idx(path: Path, ndim: int) -> np.ndarray:
    """An unsigned-byte IDX array; a wrong magic number or a short file raises ValueError naming the file."""
    with gzip.open(path, "rb") as f:
        data = f.read()
    magic = int.from_bytes(data[:4], "big")
    if magic != _IDX_MAGIC[ndim]:
        raise ValueError(f"{path}: IDX magic {magic:#010x}, expected {_IDX_MAGIC[ndim]:#010x} (uint8, {ndim}-d)")
    shape = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    body = np.frombuffer(data, np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(shape)):
        raise ValueError(f"{path}: header says shape {shape} ({int(np.prod(shape))} bytes), body has {body.size}")
    return body.reshape(shape)


def read_split(split: str) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 images [N, 28, 28, 1], labels [N]) of `split`; fails with the install command when files are absent."""
    folder = source_dir()
    paths = [folder / name for name in FILES[split]]
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise DatasetMissingError(
            f"Fashion-MNIST files are missing: {missing}. Install them (offline-friendly, from the Debian archive): "
            f"`apt-get install dataset-fashion-mnist`, or set $JAXGEN_FASHION_MNIST_DIR to a folder holding "
            f"{FILES[split]}."
        )
    images, labels = read_idx(paths[0], 3), read_idx(paths[1], 1)
    if len(images) != len(labels):
        raise ValueError(f"{folder}: {len(images)} images but {len(labels)} labels in split {split!r}")
    return images[..., None], labels.astype(np.int64)


class FashionMnistOffline(BundledImages):
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "The original 60,000 train / 10,000 test split."}
    IMAGE_SHAPE = (28, 28, 1)
    DESCRIPTION = "Fashion-MNIST (Zalando, MIT), read from the Debian package dataset-fashion-mnist."
    HOMEPAGE = "https://github.com/zalandoresearch/fashion-mnist"

    def _split_arrays(self):
        return {split: read_split(split) for split in FILES}
