"""Block masks from indices against brute-force token-level masks; density and the band search."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import svg_brute_force as brute
from jaxgen.projects.svg import VideoLayout, band_block_mask, band_for_density, block_mask_density
from jaxgen.projects.svg import to_token_major

LAYOUTS = [
    VideoLayout(num_frames=4, frame_tokens=16, text_tokens=8, text_first=True),
    VideoLayout(num_frames=3, frame_tokens=16, text_tokens=5, text_first=False),
    VideoLayout(num_frames=5, frame_tokens=9, text_tokens=0),
]


@pytest.mark.parametrize("layout", LAYOUTS, ids=str)
@pytest.mark.parametrize("block_q, block_kv", [(8, 8), (16, 8), (8, 24)])
def test_band_block_mask_equals_brute_force(layout, block_q, block_kv):
    for band in (0, 3, layout.frame_tokens, 2 * layout.frame_tokens + 5, layout.video_tokens - 1):
        expected = brute.any_per_block(brute.band_token_mask(layout, band), block_q, block_kv)
        got = np.asarray(band_block_mask(layout, band, block_q=block_q, block_kv=block_kv))
        np.testing.assert_array_equal(got, expected, err_msg=f"band={band}")


@pytest.mark.parametrize("layout", LAYOUTS, ids=str)
def test_temporal_mask_is_the_band_in_token_major_order(layout):
    """SVG's temporal mask (same patch, nearby frames, text) moved to token-major order is exactly the band."""
    band = layout.num_frames + 1
    temporal = brute.temporal_token_mask(layout, band).astype(np.int32)
    moved = to_token_major(to_token_major(jnp.asarray(temporal), layout, axis=0), layout, axis=1)
    np.testing.assert_array_equal(np.asarray(moved).astype(bool), brute.band_token_mask(layout, band))


@pytest.mark.parametrize("layout", LAYOUTS, ids=str)
def test_density_is_the_token_area_of_active_blocks(layout):
    block_q, block_kv = 16, 8
    for band in (0, 7, layout.video_tokens - 1):
        mask = band_block_mask(layout, band, block_q=block_q, block_kv=block_kv)
        expected = brute.blocks_to_tokens(mask, layout.seq_len, block_q, block_kv).mean()
        got = block_mask_density(mask, layout, block_q=block_q, block_kv=block_kv)
        np.testing.assert_allclose(got, expected, rtol=1e-6)


@pytest.mark.parametrize("layout", LAYOUTS, ids=str)
@pytest.mark.parametrize("density", [0.05, 0.3, 0.55, 0.9, 1.0])
def test_band_for_density_is_the_narrowest_band_reaching_it(layout, density):
    block_q = block_kv = 8

    def density_of(band):
        token_mask = brute.any_per_block(brute.band_token_mask(layout, band), block_q, block_kv)
        return brute.blocks_to_tokens(token_mask, layout.seq_len, block_q, block_kv).mean()

    band = int(band_for_density(layout, density, block_q=block_q, block_kv=block_kv))
    assert 0 <= band < layout.video_tokens
    assert density_of(band) >= density or band == layout.video_tokens - 1
    if band > 0:
        assert density_of(band - 1) < density
    if density == 1.0:
        assert np.asarray(band_block_mask(layout, band, block_q=block_q, block_kv=block_kv)).all()


def test_band_for_density_accepts_a_traced_density_without_retracing():
    layout = LAYOUTS[0]
    traces = []

    @jax.jit
    def band_mask(density):
        traces.append(None)
        band = band_for_density(layout, density, block_q=8, block_kv=8)
        return band_block_mask(layout, band, block_q=8, block_kv=8)

    for density in (0.2, 0.5, 0.8):
        np.testing.assert_array_equal(
            band_mask(jnp.float32(density)),
            band_block_mask(layout, band_for_density(layout, density, block_q=8, block_kv=8), block_q=8, block_kv=8))
    assert len(traces) == 1


def test_bad_arguments_raise_value_errors():
    layout = LAYOUTS[0]
    with pytest.raises(ValueError, match="density"):
        band_for_density(layout, 1.5, block_q=8, block_kv=8)
    with pytest.raises(ValueError, match=r"\(9, 9\)"):
        block_mask_density(jnp.ones((3, 9, 8), bool), layout, block_q=8, block_kv=8)
    with pytest.raises(ValueError, match="num_frames"):
        VideoLayout(num_frames=0, frame_tokens=4)
