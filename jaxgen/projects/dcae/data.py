"""`dcae_textures`: seeded procedural scenes with high-frequency detail, at 16 to 512 pixels (16: smoke tests).

An autoencoder that compresses 32-128x spatially is judged by the detail it keeps, and plain shapes on flat
backgrounds (`shapes`) have almost none. Each scene here layers, in continuous image coordinates: a two-colour
gradient background, 1-3 sinusoidal or square-wave gratings (2-48 cycles per image, any orientation), a checkerboard
window, 2-6 discs, rings and rectangles (some filled with their own stripes) and multi-octave value noise. Scenes are
drawn in unit coordinates and rendered at the config's size, so the same distribution exists at every resolution:
phase 1 trains at low resolution, phase 2 adapts to high resolution on the same kind of content, and an image at 512
pixels holds detail that a 32-pixel rendering aliases away.

Generated from a fixed seed per (size, split): every machine prepares identical bytes for one version. Splits
"train" and "test" come from independent streams; the held-out real photographs are `skimage_photos`.
"""

from __future__ import annotations

import numpy as np
import tensorflow_datasets as tfds

SEED = 20261207
SPLIT_SIZES = {16: (512, 64), 32: (8192, 512), 64: (4096, 256), 128: (1024, 128), 256: (256, 64), 512: (64, 16)}


def _colour(rng: np.random.Generator) -> np.ndarray:
    return rng.uniform(0.0, 1.0, 3)


def _value_noise(rng: np.random.Generator, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Multi-octave value noise: random grids of 4, 8, ... 64 cells bilinearly interpolated, amplitude halving."""
    total = np.zeros(u.shape)
    for octave, cells in enumerate((4, 8, 16, 32, 64)):
        grid = rng.uniform(-1.0, 1.0, (cells + 1, cells + 1))
        x, y = u * cells, v * cells
        x0, y0 = np.floor(x).astype(int), np.floor(y).astype(int)
        fx, fy = x - x0, y - y0
        top = grid[y0, x0] * (1 - fx) + grid[y0, x0 + 1] * fx
        bottom = grid[y0 + 1, x0] * (1 - fx) + grid[y0 + 1, x0 + 1] * fx
        total += (top * (1 - fy) + bottom * fy) * 0.5**octave
    return total


def render(rng: np.random.Generator, size: int) -> np.ndarray:
    """One uint8 `[size, size, 3]` scene drawn from `rng`."""
    v, u = (np.mgrid[0:size, 0:size].astype(np.float64) + 0.5) / size
    a, b = _colour(rng), _colour(rng)
    angle = rng.uniform(0, 2 * np.pi)
    ramp = (np.cos(angle) * (u - 0.5) + np.sin(angle) * (v - 0.5) + 0.71) / 1.42
    image = a * (1 - ramp[..., None]) + b * ramp[..., None]

    for _ in range(rng.integers(1, 4)):
        theta, cycles, phase = rng.uniform(0, np.pi), rng.uniform(2, 48), rng.uniform(0, 2 * np.pi)
        wave = np.sin(2 * np.pi * cycles * (np.cos(theta) * u + np.sin(theta) * v) + phase)
        if rng.random() < 0.4:
            wave = np.sign(wave)
        image += rng.uniform(0.05, 0.3) * wave[..., None] * (_colour(rng) - 0.5)

    if rng.random() < 0.5:
        x0, y0 = rng.uniform(0, 0.6, 2)
        w, h = rng.uniform(0.2, 0.4, 2)
        cells = rng.integers(4, 24)
        inside = (u > x0) & (u < x0 + w) & (v > y0) & (v < y0 + h)
        checker = (np.floor(u * cells) + np.floor(v * cells)) % 2
        image = np.where((inside & (checker > 0))[..., None], _colour(rng), image)

    for _ in range(rng.integers(2, 7)):
        cx, cy = rng.uniform(0.1, 0.9, 2)
        r = rng.uniform(0.04, 0.25)
        kind = rng.integers(3)
        if kind == 0:
            inside = (u - cx) ** 2 + (v - cy) ** 2 < r**2
        elif kind == 1:
            d = np.sqrt((u - cx) ** 2 + (v - cy) ** 2)
            inside = np.abs(d - r) < r * rng.uniform(0.1, 0.3)
        else:
            inside = (np.abs(u - cx) < r) & (np.abs(v - cy) < r * rng.uniform(0.4, 1.0))
        fill = np.broadcast_to(_colour(rng), image.shape)
        if rng.random() < 0.5:
            stripes = np.sin(2 * np.pi * rng.uniform(8, 64) * (u + v * rng.uniform(-1, 1))) > 0
            fill = np.where(stripes[..., None], fill, _colour(rng))
        image = np.where(inside[..., None], fill, image)

    image += rng.uniform(0.02, 0.15) * _value_noise(rng, u, v)[..., None] * (_colour(rng) - 0.5) * 2
    return np.round(np.clip(image, 0.0, 1.0) * 255).astype(np.uint8)


class DcaeTextures(tfds.core.GeneratorBasedBuilder):
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": f"Seed {SEED}; gratings, checkerboards, shapes and value noise."}
    BUILDER_CONFIGS = [tfds.core.BuilderConfig(name=str(size), description=f"{size}x{size} RGB, {train:,} train / "
                                               f"{test:,} test") for size, (train, test) in SPLIT_SIZES.items()]

    def _info(self) -> tfds.core.DatasetInfo:
        size = int(self.builder_config.name)
        return self.dataset_info_from_configs(
            description="Seeded procedural scenes with high-frequency detail, for deep-compression autoencoders.",
            features=tfds.features.FeaturesDict({"image": tfds.features.Tensor(shape=(size, size, 3),
                                                                                dtype=np.uint8)}),
        )

    def _split_generators(self, dl_manager):
        train, test = SPLIT_SIZES[int(self.builder_config.name)]
        return {"train": self._generate_examples("train", train), "test": self._generate_examples("test", test)}

    def _generate_examples(self, split: str, count: int):
        size = int(self.builder_config.name)
        rng = np.random.default_rng([SEED, size, ("train", "test").index(split)])
        for i in range(count):
            yield i, {"image": render(rng, size)}
