"""Masks and their reduction to tiles against plain-loop numpy re-implementations of the definitions."""

from __future__ import annotations

import math

import numpy as np
import pytest

from jaxgen.projects.sige import masks

RNG = np.random.default_rng(0)
GEOMETRIES = [masks.CONV3, masks.CONV1, masks.DOWN3, masks.Geometry(kernel=3, stride=1, padding=1, tile=3)]


def sparse_mask(height, width, density=0.03):
    return RNG.random((height, width)) < density


def test_difference_mask_is_any_channel_any_image_over_threshold():
    original = RNG.normal(size=(2, 5, 7, 3)).astype(np.float32)
    edited = original.copy()
    edited[1, 2, 3, 2] += 0.5
    edited[0, 4, 0, 0] -= 0.03
    edited[0, 1, 1, 1] += 0.01                      # under the threshold
    expected = np.zeros((5, 7), bool)
    expected[2, 3] = expected[4, 0] = True
    np.testing.assert_array_equal(masks.difference_mask(original, edited, threshold=0.02), expected)
    with pytest.raises(ValueError, match="differ in shape"):
        masks.difference_mask(original, edited[:, :4])


@pytest.mark.parametrize("radius", [0, 1, 3])
def test_dilate_is_a_square_max_filter(radius):
    mask = sparse_mask(11, 9)
    expected = np.zeros_like(mask)
    for y, x in np.argwhere(mask):
        expected[max(0, y - radius):y + radius + 1, max(0, x - radius):x + radius + 1] = True
    np.testing.assert_array_equal(masks.dilate(mask, radius), expected)


@pytest.mark.parametrize("shape", [(8, 6), (7, 5)])
def test_downsample_is_a_2x2_max_pool_rounding_up(shape):
    mask = sparse_mask(*shape, density=0.1)
    out = masks.downsample(mask)
    assert out.shape == (math.ceil(shape[0] / 2), math.ceil(shape[1] / 2))
    for y in range(out.shape[0]):
        for x in range(out.shape[1]):
            assert out[y, x] == mask[2 * y:2 * y + 2, 2 * x:2 * x + 2].any()


def test_pyramid_dilates_each_level_of_the_raw_max_pool():
    mask = sparse_mask(16, 16)
    levels = masks.pyramid(mask, 3, dilation=1)
    assert list(levels) == [(16, 16), (8, 8), (4, 4)]
    np.testing.assert_array_equal(levels[(8, 8)], masks.dilate(masks.downsample(mask), 1))
    np.testing.assert_array_equal(levels[(4, 4)], masks.dilate(masks.downsample(masks.downsample(mask)), 1))


def loop_active_tiles(mask, geometry):
    """A tile is active when an edited pixel lies in the input rows / columns its output pixels read."""
    height, width = mask.shape
    out_h, out_w = geometry.output_size(height), geometry.output_size(width)
    tiles = np.zeros((math.ceil(out_h / geometry.tile), math.ceil(out_w / geometry.tile)), bool)
    def reads(out, pixel):
        first = out * geometry.stride - geometry.padding
        return first <= pixel < first + geometry.kernel

    for y, x in np.argwhere(mask):
        for oy in range(out_h):
            for ox in range(out_w):
                if reads(oy, y) and reads(ox, x):
                    tiles[oy // geometry.tile, ox // geometry.tile] = True
    return tiles


@pytest.mark.parametrize("geometry", GEOMETRIES, ids=lambda g: g.key)
@pytest.mark.parametrize("shape", [(16, 16), (13, 10)])
def test_active_tiles_match_the_output_pixels_that_read_the_mask(geometry, shape):
    mask = sparse_mask(*shape)
    np.testing.assert_array_equal(masks.active_tiles(mask, geometry), loop_active_tiles(mask, geometry))


def test_official_block_geometry():
    assert (masks.CONV3.block, masks.CONV3.block_stride) == (6, 4)
    assert (masks.CONV1.block, masks.CONV1.block_stride) == (4, 4)
    assert (masks.DOWN3.block, masks.DOWN3.block_stride) == (5, 4)


def test_scatter_map_points_each_covered_pixel_at_its_tile_row():
    indices = np.array([[0, 1], [2, 0]], np.int32)
    tile, out_h, out_w = 4, 10, 7                   # the last tiles hang past the border
    flat = masks.scatter_map(indices, out_h, out_w, tile).reshape(out_h, out_w)
    for y in range(out_h):
        for x in range(out_w):
            hits = [n for n, (ty, tx) in enumerate(indices) if ty == y // tile and tx == x // tile]
            assert flat[y, x] == (hits[0] * tile * tile + (y % tile) * tile + x % tile if hits else -1)


def test_buckets_and_padding():
    assert masks.bucket_levels(1 / 8, 0.5) == (0.125, 0.25, 0.5)
    assert masks.capacity(1 / 64, 100) == 2 and masks.capacity(0.0001, 10) == 1
    padded = masks.pad_indices(np.array([[3, 4]], np.int32), 3)
    np.testing.assert_array_equal(padded, [[3, 4], [0, 0], [0, 0]])
    with pytest.raises(ValueError, match="do not fit"):
        masks.pad_indices(np.zeros((4, 2), np.int32), 3)
