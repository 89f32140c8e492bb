"""Online profiling: stratified rows, row masks against brute force, and the class of planted spatial/temporal heads."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import svg_brute_force as brute
from jaxgen.projects.svg import VideoLayout, band_block_mask, band_for_density
from jaxgen.projects.svg.profiling import profile_heads, row_masks, sample_rows

LAYOUT = VideoLayout(num_frames=4, frame_tokens=16, text_tokens=8, text_first=True)
# Planted classes (1 = temporal) differ across batch and heads, so a mix-up of either axis fails.
CLASSES = np.array([[0, 1, 0, 1], [1, 1, 0, 0]])


@pytest.mark.parametrize("layout", [LAYOUT, VideoLayout(3, 16, 5, text_first=False)], ids=str)
def test_rows_are_one_per_stratum_of_the_video(layout):
    rows = np.asarray(sample_rows(jax.random.key(0), layout, 12))
    video_start = layout.text_tokens if layout.text_first else 0
    edges = video_start + np.arange(13) * layout.video_tokens // 12
    assert rows.shape == (12,)
    assert np.all((rows >= edges[:-1]) & (rows < edges[1:]))
    assert sample_rows(jax.random.key(0), layout, 10_000).shape == (layout.video_tokens,)


def test_row_masks_are_the_block_masks_seen_from_frame_major_rows():
    block_q, block_kv = 8, 16
    band_mask = band_block_mask(LAYOUT, 20, block_q=block_q, block_kv=block_kv)
    rows = sample_rows(jax.random.key(1), LAYOUT, 16)
    spatial, temporal = row_masks(rows, band_mask, LAYOUT, block_q=block_q, block_kv=block_kv)
    tokens = brute.blocks_to_tokens(band_mask, LAYOUT.seq_len, block_q, block_kv)
    perm = brute.token_major_source(LAYOUT)
    where = np.argsort(perm)  # frame-major position -> token-major position
    np.testing.assert_array_equal(spatial, tokens[np.asarray(rows)])
    np.testing.assert_array_equal(temporal, tokens[where[np.asarray(rows)]][:, where])


@pytest.mark.parametrize("density", [0.3, 0.5])
@pytest.mark.parametrize("seed", [0, 1])
def test_planted_spatial_and_temporal_heads_are_classified(density, seed):
    q, k, v = planted = brute.planted_qkv(LAYOUT, CLASSES, head_dim=16, strength=3.0, seed=seed)
    band = band_for_density(LAYOUT, density, block_q=8, block_kv=8)
    band_mask = band_block_mask(LAYOUT, band, block_q=8, block_kv=8)
    rows = sample_rows(jax.random.key(seed), LAYOUT, 16)
    head_is_temporal, mse = profile_heads(*planted, rows, band_mask, LAYOUT, block_q=8, block_kv=8,
                                          sm_scale=1 / math.sqrt(16))
    np.testing.assert_array_equal(head_is_temporal, CLASSES.astype(bool))
    assert mse.shape == (2, 2, 4) and np.all(np.asarray(mse) >= 0)


def test_mse_matches_brute_force_on_the_sampled_rows():
    q, k, v = brute.planted_qkv(LAYOUT, CLASSES, head_dim=16, strength=1.0, seed=3)
    band_mask = band_block_mask(LAYOUT, 10, block_q=8, block_kv=8)
    rows = sample_rows(jax.random.key(2), LAYOUT, 8)
    _, mse = profile_heads(q, k, v, rows, band_mask, LAYOUT, block_q=8, block_kv=8, sm_scale=1 / math.sqrt(16))
    tokens = brute.blocks_to_tokens(band_mask, LAYOUT.seq_len, 8, 8)
    where = np.argsort(brute.token_major_source(LAYOUT))
    exact = brute.masked_attention(q, k, v, True)[:, np.asarray(rows)]
    for index, mask in enumerate((tokens, tokens[where][:, where])):
        masked = brute.masked_attention(q, k, v, mask)[:, np.asarray(rows)]
        expected = ((masked - exact) ** 2).mean(axis=(1, 3))
        np.testing.assert_allclose(mse[index], expected, rtol=1e-4, atol=1e-9)


def test_planted_heads_are_classified_from_bf16_inputs():
    planted = [jnp.asarray(x, jnp.bfloat16) for x in brute.planted_qkv(LAYOUT, CLASSES, 16, strength=3.0, seed=4)]
    band_mask = band_block_mask(LAYOUT, band_for_density(LAYOUT, 0.4, block_q=8, block_kv=8), block_q=8, block_kv=8)
    head_is_temporal, _ = profile_heads(*planted, sample_rows(jax.random.key(4), LAYOUT, 16), band_mask, LAYOUT,
                                        block_q=8, block_kv=8, sm_scale=1 / math.sqrt(16))
    np.testing.assert_array_equal(head_is_temporal, CLASSES.astype(bool))
