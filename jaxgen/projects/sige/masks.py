"""Edit masks and their reduction to active blocks, on the host in numpy (the plan of one edit; shapes are static).

SIGE recomputes a convolution only on the output tiles whose input window touches the edited region. A conv site is
described by its `Geometry`: kernel `k`, stride `s`, zero padding `p` and an output tile of `tile × tile` pixels. Tile
`(ty, tx)` writes output rows `[ty·tile, (ty+1)·tile)` and reads the input block of `block = (tile − 1)·s + k` rows
starting at `ty·tile·s − p` (columns alike). The official block sizes (lmxyy/sige): a 3×3 conv reads a 6×6 block for a
4×4 output tile (one pixel of halo each side); a 1×1 conv reads a 4×4 block; a 3×3 stride-2 conv reads 5×5 for 2×2.

Departures from the official code, each towards exactness: the mask is dilated with a square (Chebyshev) window, the
receptive field of a 3×3 conv, where the official `dilate_mask` grows a plus shape; a lower resolution's mask is the
2×2 max-pool of the one above (a pixel is edited if any pixel it covers is), where the official code thresholds a
bilinear resize (an isolated edited pixel can vanish); tiles are laid over the output (`ceil(H_out / tile)` per axis),
so no block lies wholly outside the image.

Batch > 1 shares one plan: the mask is the union over the batch (gathered blocks are the same for every image).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np


@dataclasses.dataclass(frozen=True)
class Geometry:
    """How one conv site cuts its input into blocks (see the module docstring)."""

    kernel: int
    stride: int = 1
    padding: int = 0
    tile: int = 4

    def __post_init__(self):
        if self.kernel < 1 or self.stride < 1 or self.padding < 0 or self.tile < 1:
            raise ValueError(f"Geometry: kernel, stride and tile must be ≥ 1 and padding ≥ 0, got {self}")

    @property
    def block(self) -> int:
        """Input rows (and columns) one output tile reads."""
        return (self.tile - 1) * self.stride + self.kernel

    @property
    def block_stride(self) -> int:
        """Input rows between the origins of neighbouring blocks."""
        return self.tile * self.stride

    def output_size(self, size: int) -> int:
        return (size + 2 * self.padding - self.kernel) // self.stride + 1

    def tiles(self, height: int, width: int) -> tuple[int, int]:
        """Tiles per axis that cover the output of an input of `height × width`."""
        return (math.ceil(self.output_size(height) / self.tile), math.ceil(self.output_size(width) / self.tile))

    @property
    def key(self) -> str:
        return f"k{self.kernel}s{self.stride}p{self.padding}t{self.tile}"


CONV3 = Geometry(kernel=3, stride=1, padding=1, tile=4)       # block 6 → 4×4 tile
CONV1 = Geometry(kernel=1, stride=1, padding=0, tile=4)       # block 4 → 4×4 tile
DOWN3 = Geometry(kernel=3, stride=2, padding=1, tile=2)       # block 5 → 2×2 tile


def difference_mask(original, edited, threshold: float = 2e-2) -> np.ndarray:
    """`[H, W]` bool: where `|edited − original| > threshold` in any channel of any image of the NHWC batch."""
    original, edited = np.asarray(original), np.asarray(edited)
    if original.shape != edited.shape:
        raise ValueError(f"difference_mask: original {original.shape} and edited {edited.shape} differ in shape")
    if original.ndim != 4:
        raise ValueError(f"difference_mask: expected NHWC images, got shape {original.shape}")
    diff = np.abs(edited.astype(np.float32) - original.astype(np.float32)) > threshold
    return diff.any(axis=(0, 3))


def dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    """Square dilation: a pixel is set if any pixel within `radius` rows and columns is (a (2r+1)² max filter)."""
    if radius < 0:
        raise ValueError(f"dilate: radius must be ≥ 0, got {radius}")
    mask = np.asarray(mask, bool)
    if radius == 0 or not mask.any():
        return mask.copy()
    height, width = mask.shape
    padded = np.pad(mask, radius)
    out = np.zeros_like(mask)
    for dy in range(2 * radius + 1):
        for dx in range(2 * radius + 1):
            out |= padded[dy:dy + height, dx:dx + width]
    return out


def downsample(mask: np.ndarray) -> np.ndarray:
    """2×2 max-pool (odd sizes round up, so the mask of an `H`-row map has `ceil(H / 2)` rows)."""
    mask = np.asarray(mask, bool)
    height, width = mask.shape
    padded = np.pad(mask, ((0, height % 2), (0, width % 2)))
    return padded.reshape(padded.shape[0] // 2, 2, padded.shape[1] // 2, 2).any(axis=(1, 3))


def pyramid(mask: np.ndarray, levels: int, dilation: int = 1) -> dict[tuple[int, int], np.ndarray]:
    """`{(h, w): mask}` for the input resolution and `levels − 1` halvings; each level is the max-pool of the raw mask
    above it, then dilated by `dilation` pixels of its own resolution (the halo convs grow into)."""
    if levels < 1:
        raise ValueError(f"pyramid: levels must be ≥ 1, got {levels}")
    out, raw = {}, np.asarray(mask, bool)
    for _ in range(levels):
        out[raw.shape] = dilate(raw, dilation)
        raw = downsample(raw)
    return out


def active_tiles(mask: np.ndarray, geometry: Geometry) -> np.ndarray:
    """`[tiles_h, tiles_w]` bool: tiles whose input block holds an edited pixel (a strided max over blocks)."""
    mask = np.asarray(mask, bool)
    height, width = mask.shape
    tiles_h, tiles_w = geometry.tiles(height, width)
    block, step, pad = geometry.block, geometry.block_stride, geometry.padding
    need_h, need_w = (tiles_h - 1) * step + block, (tiles_w - 1) * step + block
    padded = np.zeros((max(need_h, pad + height), max(need_w, pad + width)), bool)
    padded[pad:pad + height, pad:pad + width] = mask
    windows = np.lib.stride_tricks.sliding_window_view(padded, (block, block))[::step, ::step]
    return windows[:tiles_h, :tiles_w].any(axis=(2, 3))


def tile_indices(active: np.ndarray) -> np.ndarray:
    """`[n, 2]` int32 (tile row, tile column) of the active tiles, row-major."""
    return np.argwhere(active).astype(np.int32)


def capacity(fraction: float, total: int) -> int:
    """Block slots of a bucket: `fraction` of a site's `total` tiles, at least one."""
    return max(1, math.ceil(fraction * total))


def bucket_levels(smallest: float = 1 / 64, largest: float = 0.5, ratio: float = 2.0) -> tuple[float, ...]:
    """Capacity fractions `smallest · ratioⁱ` up to `largest` (the dense-fallback threshold), largest included."""
    if not 0 < smallest <= largest <= 1 or ratio <= 1:
        raise ValueError(f"bucket_levels: need 0 < smallest ≤ largest ≤ 1 and ratio > 1, got {smallest}, {largest}, "
                         f"{ratio}")
    levels, fraction = [], smallest
    while fraction < largest * (1 - 1e-9):
        levels.append(fraction)
        fraction *= ratio
    return tuple(levels) + (largest,)


def pad_indices(indices: np.ndarray, slots: int) -> np.ndarray:
    """`indices` padded to `slots` rows with copies of tile (0, 0); the scatter map never reads the padding."""
    if len(indices) > slots:
        raise ValueError(f"pad_indices: {len(indices)} active tiles do not fit {slots} slots")
    return np.concatenate([indices, np.zeros((slots - len(indices), 2), np.int32)]).astype(np.int32)


def scatter_map(indices: np.ndarray, out_h: int, out_w: int, tile: int) -> np.ndarray:
    """`[out_h · out_w]` int32: for each output pixel, its row in the flattened `[n · tile · tile]` tile outputs,
    or −1 where no active tile covers it (the pixel keeps its cached value). A gather through this map replaces a
    scatter of the tiles (XLA's scatter may serialise on duplicates it cannot rule out)."""
    out = np.full((out_h, out_w), -1, np.int32)
    inner = np.arange(tile * tile, dtype=np.int32).reshape(tile, tile)
    for n, (ty, tx) in enumerate(indices):
        rows = slice(ty * tile, min((ty + 1) * tile, out_h))
        cols = slice(tx * tile, min((tx + 1) * tile, out_w))
        h, w = rows.stop - rows.start, cols.stop - cols.start
        out[rows, cols] = n * tile * tile + inner[:h, :w]
    return out.reshape(-1)
