"""SVG on the Wan2.1 port: density 1.0 equals dense attention on a sequence that is no multiple of the block; the
first-frame sink keys, the official profiling candidates and attention recall against numpy constructions."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import svg_brute_force as brute
from jaxgen.projects.svg import VideoLayout, band_block_mask, band_for_density, svg_attention, wan
from jaxgen.projects.svg.attention import MaskOptions
from jaxgen.projects.svg.profiling import official_row_masks, profile_heads_and_recall, sample_rows
from support.numerics import rel_err

WAN_LAYOUT = VideoLayout(num_frames=3, frame_tokens=16, text_tokens=0)


def test_svg_at_density_one_is_the_dense_wan_forward():
    """45 video tokens (a 3 x 3 x 5 patch grid) in blocks of 16: a ragged last block (the kernels pad it and mask the
    padding; tests/kernels cover that per kernel), the layout from the patch grid, the sink and official options."""
    model = wan.named("tiny")
    rng = np.random.default_rng(0)
    latents = rng.normal(size=(1, 3, 6, 10, 4)).astype(np.float32)
    text = rng.normal(size=(1, 5, model.text_dim)).astype(np.float32)
    timestep = np.array([500.0], np.float32)
    # Random everywhere (shapes from eval_shape, no init to compile): zero-initialised output layers would hide all.
    leaves, tree = jax.tree.flatten(nn.unbox(jax.eval_shape(model.init, jax.random.key(0), latents, timestep, text)))
    params = tree.unflatten([0.3 * rng.normal(size=x.shape).astype(np.float32) for x in leaves])
    assert model.layout(latents.shape).seq_len == 45

    options = dict(density=1.0, block_q=16, block_kv=16, implementation="reference",
                   mask_options=MaskOptions(sink_first_frame=True, profile="official"))
    sparse = model.clone(attention_backend="svg", attention_options=options)

    @jax.jit
    def both(params):
        return (model.apply(params, latents, timestep, text),
                sparse.apply(params, latents, timestep, text, rng=jax.random.key(3)))

    dense_out, svg_out = both(params)
    assert rel_err(svg_out, dense_out) < 1e-5


def test_first_frame_sink_is_every_row_seeing_the_first_frame_tokens():
    layout = VideoLayout(4, 16, 8, text_first=True)  # with text, which the sink must not count (Wan's: next test)
    for band, block_q, block_kv in [(0, 8, 8), (5, 16, 8), (20, 8, 24)]:
        token = brute.with_sink(brute.band_token_mask(layout, band), layout, layout.frame_tokens)
        got = band_block_mask(layout, band, block_q=block_q, block_kv=block_kv, sink_tokens=layout.frame_tokens)
        np.testing.assert_array_equal(got, brute.any_per_block(token, block_q, block_kv), err_msg=f"band={band}")


def test_heads_with_the_sink_attend_under_their_masks():
    """Planted spatial/temporal heads with the sink: each head's output is brute-force attention under its mask
    (for temporal heads the sink is the first frame_tokens keys in token-major order, as in the official code)."""
    classes = np.array([[0, 1, 1, 0]])
    q, k, v = brute.planted_qkv(WAN_LAYOUT, classes, head_dim=16, strength=3.0, seed=0)
    options = MaskOptions(sink_first_frame=True)
    out, head_is_temporal = svg_attention(q, k, v, WAN_LAYOUT, density=0.5, rng=jax.random.key(0), block_q=8,
                                          block_kv=8, implementation="interpret", mask_options=options)
    np.testing.assert_array_equal(head_is_temporal, classes.astype(bool))
    sink = WAN_LAYOUT.frame_tokens
    band = band_for_density(WAN_LAYOUT, 0.5, block_q=8, block_kv=8, sink_tokens=sink)
    mask = brute.blocks_to_tokens(band_block_mask(WAN_LAYOUT, band, block_q=8, block_kv=8, sink_tokens=sink),
                                  WAN_LAYOUT.seq_len, 8, 8)
    assert not mask.all() and mask[:, :sink].all()
    where = np.argsort(brute.token_major_source(WAN_LAYOUT))
    token_masks = np.where(classes.astype(bool)[:, :, None, None], mask[where][:, where], mask)
    assert rel_err(out, brute.masked_attention(q, k, v, token_masks)) < 2e-5


@pytest.mark.parametrize("frames, sink", [(2.0, 0), (1.5, 176)])
def test_official_candidates_are_the_official_masks(frames, sink):
    layout = VideoLayout(num_frames=3, frame_tokens=176, text_tokens=0)
    rows = jnp.array([0, 100, 250, 300, 527])
    spatial, temporal = official_row_masks(rows, None, layout, frames=frames, sink_tokens=sink)
    expected_spatial, expected_temporal = brute.official_candidates(layout, frames, sink)
    np.testing.assert_array_equal(spatial, expected_spatial[np.asarray(rows)])
    np.testing.assert_array_equal(temporal, expected_temporal[np.asarray(rows)])


def test_recall_is_the_softmax_mass_inside_each_heads_kernel_mask():
    classes = np.array([[0, 1, 1, 0]])
    q, k, v = brute.planted_qkv(WAN_LAYOUT, classes, head_dim=16, strength=1.0, seed=1)
    sink = WAN_LAYOUT.frame_tokens
    band_mask = band_block_mask(WAN_LAYOUT, 5, block_q=8, block_kv=8, sink_tokens=sink)
    rows = sample_rows(jax.random.key(0), WAN_LAYOUT, 12)
    head_is_temporal, _, recall = profile_heads_and_recall(q, k, v, rows, band_mask, WAN_LAYOUT, block_q=8,
                                                           block_kv=8, sm_scale=0.25, criterion="official",
                                                           official_frames=2.0, sink_tokens=sink)
    mask = brute.blocks_to_tokens(band_mask, WAN_LAYOUT.seq_len, 8, 8)
    where = np.argsort(brute.token_major_source(WAN_LAYOUT))
    logits = np.einsum("qhd,khd->hqk", q[0, np.asarray(rows)].astype(np.float64), k[0].astype(np.float64)) * 0.25
    weights = np.exp(logits - logits.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    for h in range(4):
        head_mask = mask[where][:, where] if head_is_temporal[0, h] else mask
        expected = (weights[h] * head_mask[np.asarray(rows)]).sum(-1).mean()
        np.testing.assert_allclose(recall[0, h], expected, rtol=1e-5)
    assert 0.0 < float(recall.min()) < 0.99
