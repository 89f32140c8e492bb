"""SVG on the Wan2.1 port: density 1.0 equals dense attention on a sequence that is no multiple of the block; the
first-frame sink keys, the official profiling candidates and attention recall against numpy constructions."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import svg_brute_force as brute
from jaxgen.nn.attention import AttentionContext
from jaxgen.projects.svg import VideoLayout, band_block_mask, band_for_density, svg_backend, wan
from jaxgen.projects.svg.attention import MaskOptions
from jaxgen.projects.svg.profiling import official_row_masks
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
    block_q, block_kv = 8, 12  # kv blocks straddle the sink's end
    masks = jax.jit(lambda band: band_block_mask(layout, band, block_q=block_q, block_kv=block_kv,
                                                 sink_tokens=layout.frame_tokens))
    for band in (0, 5, 20):
        token = brute.with_sink(brute.band_token_mask(layout, band), layout, layout.frame_tokens)
        np.testing.assert_array_equal(masks(band), brute.any_per_block(token, block_q, block_kv), err_msg=f"{band=}")


def test_heads_with_the_sink_attend_under_their_masks_and_report_their_recall():
    """Planted spatial/temporal heads with the sink, through the "svg" backend: each head's output is brute-force
    attention under its mask (for temporal heads the sink is the first frame_tokens keys in token-major order, as in
    the official code), and its recall is the softmax mass inside that mask (64 rows > 48 video tokens: all rows)."""
    classes = np.array([[0, 1, 1, 0]])
    q, k, v = brute.planted_qkv(WAN_LAYOUT, classes, head_dim=16, strength=3.0, seed=0)
    context = AttentionContext(rng=jax.random.key(0), video_layout=WAN_LAYOUT)
    out, aux = jax.jit(lambda q, k, v: svg_backend(q, k, v, context=context, density=0.5, block_q=8, block_kv=8,
                                                   implementation="reference",
                                                   mask_options=MaskOptions(sink_first_frame=True)))(q, k, v)
    np.testing.assert_array_equal(aux["head_is_temporal"], classes.astype(bool))
    sink = WAN_LAYOUT.frame_tokens
    band = band_for_density(WAN_LAYOUT, 0.5, block_q=8, block_kv=8, sink_tokens=sink)
    mask = brute.blocks_to_tokens(band_block_mask(WAN_LAYOUT, band, block_q=8, block_kv=8, sink_tokens=sink),
                                  WAN_LAYOUT.seq_len, 8, 8)
    assert not mask.all() and mask[:, :sink].all()
    where = np.argsort(brute.token_major_source(WAN_LAYOUT))
    token_masks = np.where(classes.astype(bool)[:, :, None, None], mask[where][:, where], mask)
    assert rel_err(out, brute.masked_attention(q, k, v, token_masks)) < 2e-5

    logits = np.einsum("qhd,khd->hqk", q[0].astype(np.float64), k[0].astype(np.float64)) / 4.0
    weights = np.exp(logits - logits.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    np.testing.assert_allclose(aux["recall"][0], (weights * token_masks[0]).sum(-1).mean(-1), rtol=1e-5)
    assert float(aux["recall"].min()) < 0.999


@pytest.mark.parametrize("frames, sink", [(2.0, 0), (1.5, 176)])
def test_official_candidates_are_the_official_masks(frames, sink):
    layout = VideoLayout(num_frames=3, frame_tokens=176, text_tokens=0)
    rows = jnp.array([0, 100, 250, 300, 527])
    spatial, temporal = official_row_masks(rows, None, layout, frames=frames, sink_tokens=sink)
    expected_spatial, expected_temporal = brute.official_candidates(layout, frames, sink)
    np.testing.assert_array_equal(spatial, expected_spatial[np.asarray(rows)])
    np.testing.assert_array_equal(temporal, expected_temporal[np.asarray(rows)])

