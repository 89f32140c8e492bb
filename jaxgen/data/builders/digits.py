"""sklearn's `digits`: 1,797 handwritten digits, 8×8 grey levels 0–16 (UCI optdigits test set), shipped with sklearn."""

from __future__ import annotations

import gzip

import numpy as np
import tensorflow_datasets as tfds

from jaxgen.data.builders._bundled import BundledImages, package_file

NUM_TRAIN = 1437  # the file interleaves classes, so a prefix split is balanced: 80 % / 20 %


class Digits(BundledImages):
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First 1,437 rows train, last 360 test; pixels scaled from 0–16 to 0–255."}
    IMAGE_SHAPE = (8, 8, 1)
    DESCRIPTION = "sklearn digits (8x8 handwritten digits, 10 classes), read from the scikit-learn wheel."
    HOMEPAGE = "https://archive.ics.uci.edu/dataset/80"

    def _split_arrays(self):
        path = package_file("sklearn", "datasets/data/digits.csv.gz", "pip install scikit-learn")
        with gzip.open(path, "rt") as f:
            rows = np.loadtxt(f, delimiter=",", dtype=np.int64)
        images = np.minimum(rows[:, :64] * 16, 255).astype(np.uint8).reshape(-1, 8, 8, 1)
        labels = rows[:, 64]
        return {"train": (images[:NUM_TRAIN], labels[:NUM_TRAIN]), "test": (images[NUM_TRAIN:], labels[NUM_TRAIN:])}
