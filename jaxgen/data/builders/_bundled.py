"""Labelled image sets read from files that ship inside installed wheels."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds


def package_file(package: str, relative: str, install_hint: str) -> Path:
    """The path of `relative` inside the installed `package`, found without importing the package."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"Package {package!r} is not installed; it ships this dataset. Install it: {install_hint}")
    path = Path(next(iter(spec.submodule_search_locations))) / relative
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing from the installed {package!r}; reinstall it: {install_hint}")
    return path


class BundledImages(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Base for grey-level digit sets: subclasses set the image shape, a description and `_split_arrays()`."""

    IMAGE_SHAPE: tuple[int, int, int]
    DESCRIPTION: str
    HOMEPAGE: str

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            description=self.DESCRIPTION,
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Tensor(shape=self.IMAGE_SHAPE, dtype=np.uint8),
                "label": tfds.features.ClassLabel(num_classes=10),
            }),
            supervised_keys=("image", "label"),
            homepage=self.HOMEPAGE,
        )

    def _split_arrays(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """{split: (uint8 images, int labels)}."""
        raise NotImplementedError

    def _split_generators(self, dl_manager):
        return {split: self._generate_examples(*arrays) for split, arrays in self._split_arrays().items()}

    def _generate_examples(self, images, labels):
        for i, (image, label) in enumerate(zip(images, labels)):
            yield i, {"image": image, "label": int(label)}
