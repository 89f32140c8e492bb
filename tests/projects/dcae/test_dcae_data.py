"""`dcae_textures`: registered from the package, seeded, and full of the high-frequency detail deep compression
struggles with."""

from __future__ import annotations

import numpy as np

from jaxgen.data import registered_datasets
from jaxgen.projects.dcae import data


def test_registered_from_the_package():
    assert registered_datasets()["dcae_textures"] == "jaxgen.projects.dcae.data"


def test_scenes_are_seeded_and_detailed():
    first = data.render(np.random.default_rng([0, 1]), 64)
    assert first.shape == (64, 64, 3) and first.dtype == np.uint8
    np.testing.assert_array_equal(first, data.render(np.random.default_rng([0, 1]), 64))
    assert not np.array_equal(first, data.render(np.random.default_rng([0, 2]), 64))
    # Detail: the mean absolute difference between neighbouring pixels, far above a smooth image's (~0-1 levels).
    scenes = np.stack([data.render(np.random.default_rng([0, i]), 64) for i in range(16)]).astype(np.float32)
    assert np.abs(np.diff(scenes, axis=2)).mean() > 5.0
    assert scenes.std() > 30.0
