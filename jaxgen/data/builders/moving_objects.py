"""Procedural moving objects: 1-2 coloured shapes gliding in straight lines across a plain background, with captions.

Each object keeps its colour, shape and size in every frame and moves by a fixed whole-pixel velocity per frame, so
a video has spatial structure (the shapes) and temporal structure (the same object one step further in the next
frame): the two kinds of attention head that Sparse VideoGen separates. Start points are drawn so the object stays
wholly inside the frame for the whole clip, which keeps the caption true in every frame.

The caption is token ids from `VOCAB`: per object `colour shape direction`, objects joined by `and`, padded with
`<pad>` (id 0) to `CAPTION_TOKENS`. Generated from a fixed seed: every machine prepares identical bytes for a version.
"""

from __future__ import annotations

import numpy as np
import tensorflow_datasets as tfds

SEED = 20261126
COLOURS = {"red": (230, 40, 40), "green": (40, 200, 60), "blue": (50, 90, 240), "yellow": (240, 220, 40),
           "magenta": (220, 50, 220), "cyan": (40, 220, 230)}
SHAPES = ("disc", "square", "triangle")
DIRECTIONS = {"left": (0, -1), "right": (0, 1), "up": (-1, 0), "down": (1, 0)}  # (dy, dx) per unit of speed
VOCAB = ("<pad>", "and", *COLOURS, *SHAPES, *DIRECTIONS)
PAD = 0
CAPTION_TOKENS = 8
MAX_OBJECTS = 2


def token_ids(words: list[str]) -> np.ndarray:
    """Words -> int32 ids padded to `CAPTION_TOKENS`."""
    if len(words) > CAPTION_TOKENS:
        raise ValueError(f"a caption holds at most {CAPTION_TOKENS} tokens; got {len(words)}: {words}")
    ids = np.full(CAPTION_TOKENS, PAD, np.int32)
    ids[:len(words)] = [VOCAB.index(w) for w in words]
    return ids


def decode(ids) -> str:
    """Token ids -> the caption text, padding dropped."""
    return " ".join(VOCAB[int(i)] for i in ids if int(i) != PAD)


def _shape_mask(shape: str, yy: np.ndarray, xx: np.ndarray, cy: float, cx: float, radius: float) -> np.ndarray:
    dy, dx = yy - cy, xx - cx
    masks = {
        "disc": lambda: dy**2 + dx**2 <= radius**2,
        "square": lambda: (np.abs(dy) <= radius * 0.85) & (np.abs(dx) <= radius * 0.85),
        "triangle": lambda: (dy <= radius * 0.7) & (dy >= -radius + 1.7 * np.abs(dx)),
    }
    return masks[shape]()


def draw_objects(rng: np.random.Generator, num_frames: int, size: int) -> list[dict]:
    """1 or 2 objects: colour, shape, radius, start centre (y, x) and velocity (dy, dx) in pixels per frame.

    Two objects get different colours, so colour names an object unambiguously in the caption and in tests.
    """
    count = int(rng.integers(1, MAX_OBJECTS + 1))
    colours = rng.choice(len(COLOURS), count, replace=False)
    objects = []
    for colour in colours:
        radius = float(rng.uniform(0.12, 0.18) * size)
        direction = list(DIRECTIONS)[int(rng.integers(len(DIRECTIONS)))]
        travel = size - 2 * radius - 2
        speed = int(rng.integers(1, max(1, int(travel // (num_frames - 1))) + 1)) if num_frames > 1 else 1
        velocity = np.array(DIRECTIONS[direction], np.float64) * speed
        span = velocity * (num_frames - 1)
        low = radius + 1 + np.maximum(0, -span)
        high = size - radius - 1 - np.maximum(0, span)
        start = rng.uniform(low, high)
        objects.append({"colour": list(COLOURS)[int(colour)], "shape": SHAPES[int(rng.integers(len(SHAPES)))],
                        "radius": radius, "start": start, "velocity": velocity, "direction": direction})
    return objects


def render(objects: list[dict], num_frames: int, size: int, background: np.ndarray) -> np.ndarray:
    """uint8 `[num_frames, size, size, 3]`; later objects are drawn over earlier ones."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) + 0.5
    video = np.broadcast_to(background.astype(np.uint8), (num_frames, size, size, 3)).copy()
    for f in range(num_frames):
        for obj in objects:
            cy, cx = obj["start"] + f * obj["velocity"]
            video[f][_shape_mask(obj["shape"], yy, xx, cy, cx, obj["radius"])] = COLOURS[obj["colour"]]
    return video


def caption(objects: list[dict]) -> list[str]:
    words: list[str] = []
    for i, obj in enumerate(objects):
        words += (["and"] if i else []) + [obj["colour"], obj["shape"], obj["direction"]]
    return words


def example(rng: np.random.Generator, num_frames: int, size: int) -> tuple[dict, list[dict]]:
    """One example (the dataset's features) and the objects it was drawn from."""
    background = rng.integers(0, 60, 3)
    objects = draw_objects(rng, num_frames, size)
    words = caption(objects)
    return {"video": render(objects, num_frames, size, background), "caption": token_ids(words),
            "caption_text": " ".join(words)}, objects


class MovingObjects(tfds.core.GeneratorBasedBuilder):
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": f"Seed {SEED}; 1-2 objects, straight motion; train/test from independent streams."}
    BUILDER_CONFIGS = [
        tfds.core.BuilderConfig(name="f8_32", description="8 frames of 32x32 RGB, 2,048 train / 256 test"),
        tfds.core.BuilderConfig(name="f16_32", description="16 frames of 32x32 RGB, 8,192 train / 512 test"),
    ]
    SHAPES_BY_CONFIG = {"f8_32": (8, 32), "f16_32": (16, 32)}
    SPLIT_SIZES = {"f8_32": {"train": 2048, "test": 256}, "f16_32": {"train": 8192, "test": 512}}

    def _info(self) -> tfds.core.DatasetInfo:
        frames, size = self.SHAPES_BY_CONFIG[self.builder_config.name]
        return self.dataset_info_from_configs(
            description="Seeded procedural videos of coloured shapes moving in straight lines, with captions "
                        f"(vocabulary: {' '.join(VOCAB)}).",
            features=tfds.features.FeaturesDict({
                "video": tfds.features.Tensor(shape=(frames, size, size, 3), dtype=np.uint8),
                "caption": tfds.features.Tensor(shape=(CAPTION_TOKENS,), dtype=np.int32),
                "caption_text": tfds.features.Text(),
            }),
        )

    def _split_generators(self, dl_manager):
        sizes = self.SPLIT_SIZES[self.builder_config.name]
        return {split: self._generate_examples(split, n) for split, n in sizes.items()}

    def _generate_examples(self, split, count):
        frames, size = self.SHAPES_BY_CONFIG[self.builder_config.name]
        rng = np.random.default_rng([SEED, frames, size, ("train", "test").index(split)])
        for i in range(count):
            yield i, example(rng, frames, size)[0]
