"""Procedural shapes: one coloured disc, square or triangle on a plain background, at 32 or 64 pixels.

Generated from a fixed seed, so every machine prepares identical bytes for the same version: a small, unlimited,
offline stand-in for natural images when testing autoencoders and generators. The label is the shape class.
"""

from __future__ import annotations

import numpy as np
import tensorflow_datasets as tfds

from jaxgen.data.builders._procedural import ProceduralImages

SHAPES = ("disc", "square", "triangle")
SEED = 20261126


def render(rng: np.random.Generator, size: int) -> tuple[np.ndarray, int]:
    """One image: background colour, shape colour, centre, radius drawn from `rng`."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    background = rng.integers(0, 256, 3)
    colour = (background + rng.integers(64, 192, 3)) % 256
    label = int(rng.integers(len(SHAPES)))
    radius = rng.uniform(0.15, 0.35) * size
    cx, cy = rng.uniform(radius, size - radius, 2)
    dx, dy = xx - cx, yy - cy
    if SHAPES[label] == "disc":
        inside = dx**2 + dy**2 <= radius**2
    elif SHAPES[label] == "square":
        inside = (np.abs(dx) <= radius * 0.8) & (np.abs(dy) <= radius * 0.8)
    else:
        inside = (dy <= radius * 0.6) & (dy >= -radius + 2 * np.abs(dx) * 0.9)
    image = np.where(inside[..., None], colour, background).astype(np.uint8)
    return image, label


class Shapes(ProceduralImages):
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": f"Seed {SEED}; train/test drawn from independent streams."}
    BUILDER_CONFIGS = [
        tfds.core.BuilderConfig(name="32", description="32x32 RGB, 8,192 train / 1,024 test"),
        tfds.core.BuilderConfig(name="64", description="64x64 RGB, 4,096 train / 512 test"),
    ]
    SPLIT_SIZES = {"32": {"train": 8192, "test": 1024}, "64": {"train": 4096, "test": 512}}
    CLASS_NAMES = SHAPES
    DESCRIPTION = "Seeded procedural shapes (disc, square, triangle) on plain backgrounds."

    def _generate_examples(self, split, count):
        size = int(self.builder_config.name)
        rng = np.random.default_rng([SEED, size, ("train", "test").index(split)])
        for i in range(count):
            image, label = render(rng, size)
            yield i, {"image": image, "label": label}
