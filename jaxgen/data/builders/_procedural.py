"""Base of the seeded procedural image sets (`shapes`, `shape_classes`): square RGB images with a class label, one
builder config per image size, split sizes per config."""

from __future__ import annotations

import numpy as np
import tensorflow_datasets as tfds


class ProceduralImages(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Subclasses set `CLASS_NAMES`, `DESCRIPTION`, `SPLIT_SIZES` (`{size: {split: count}}`, one builder config per
    size) and `_generate_examples(split, count)`."""

    CLASS_NAMES: tuple[str, ...]
    DESCRIPTION: str
    SPLIT_SIZES: dict[str, dict[str, int]]

    def _info(self) -> tfds.core.DatasetInfo:
        size = int(self.builder_config.name)
        return self.dataset_info_from_configs(
            description=self.DESCRIPTION,
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Tensor(shape=(size, size, 3), dtype=np.uint8),
                "label": tfds.features.ClassLabel(names=self.CLASS_NAMES),
            }),
            supervised_keys=("image", "label"),
        )

    def _split_generators(self, dl_manager):
        sizes = self.SPLIT_SIZES[self.builder_config.name]
        return {split: self._generate_examples(split, n) for split, n in sizes.items()}

    def _generate_examples(self, split: str, count: int):
        raise NotImplementedError
