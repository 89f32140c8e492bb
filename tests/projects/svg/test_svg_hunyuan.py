"""SVG with HunyuanVideo's padded text (`VideoLayout.text_padding`): real tokens never see padding and padding sees
only padding (the official mask), checked against brute-force masked attention with the Pallas kernel in interpret
mode, where the real/padding boundary falls inside a kernel block. SVG at density 1.0 on the whole port:
hunyuan_vs_reference_test.py."""

import jax
import numpy as np
import pytest

import svg_brute_force as brute
from jaxgen.projects.svg import VideoLayout, band_block_mask, band_for_density, svg_attention
from jaxgen.projects.svg.attention import with_padding_apart
from support.numerics import rel_err

# 48 video tokens, then 8 text tokens of which the last 5 are padding: 51 real tokens, 3 into the fourth 16-block.
LAYOUT = VideoLayout(3, 16, 8, text_first=False, text_padding=5)
CLASSES = np.array([[0, 1, 0, 1], [1, 1, 0, 0]])
BLOCK = 16
FAST = {"xla_backend_optimization_level": 0}  # LLVM at -O0: compiles about 2x faster on CPU; the run is tiny


def _segments(layout):
    """[S, S]: the official mask's two segments, real tokens among themselves and padding among itself."""
    real = np.arange(layout.seq_len) < layout.seq_len - layout.text_padding
    return real[:, None] == real[None, :]


def test_padded_text_attends_apart_under_each_heads_mask():
    q, k, v = brute.planted_qkv(LAYOUT, CLASSES, head_dim=16, strength=3.0, seed=0)
    density = 0.4
    out, head_is_temporal = jax.jit(
        lambda q, k, v: svg_attention(q, k, v, LAYOUT, density=density, rng=jax.random.key(0), block_q=BLOCK,
                                      block_kv=BLOCK, implementation="interpret"), compiler_options=FAST)(q, k, v)
    np.testing.assert_array_equal(head_is_temporal, CLASSES.astype(bool))

    real = LAYOUT.real  # the kernel's band is that of the real sequence
    band = band_for_density(real, density, block_q=BLOCK, block_kv=BLOCK)
    spatial_real = brute.blocks_to_tokens(band_block_mask(real, band, block_q=BLOCK, block_kv=BLOCK), real.seq_len,
                                          BLOCK, BLOCK)
    spatial = np.ones((LAYOUT.seq_len, LAYOUT.seq_len), bool)
    spatial[:real.seq_len, :real.seq_len] = spatial_real
    where = np.argsort(brute.token_major_source(LAYOUT))  # padding text stays in place, as all text does
    token_masks = np.where(CLASSES.astype(bool)[:, :, None, None], spatial[where][:, where], spatial) & _segments(
        LAYOUT)
    assert rel_err(out, brute.masked_attention(q, k, v, token_masks)) < 2e-5
    assert rel_err(out, brute.masked_attention(q, k, v, _segments(LAYOUT))) > 1e-3  # the band cuts something


def test_dense_attention_keeps_padding_apart_too():
    """`with_padding_apart` around a dense attention, as the backend's gated dense branch (the first steps / layers)
    runs it: the segment-masked attention."""
    q, k, v = brute.planted_qkv(LAYOUT, CLASSES, head_dim=16, strength=1.0, seed=1)

    def dense(q, k, v, layout):
        assert layout == LAYOUT.real and q.shape[1] == layout.seq_len
        return (jax.nn.dot_product_attention(q, k, v),)

    out, = jax.jit(lambda q, k, v: with_padding_apart(dense, q, k, v, LAYOUT, sm_scale=0.25),
                   compiler_options=FAST)(q, k, v)
    assert rel_err(out, brute.masked_attention(q, k, v, _segments(LAYOUT))) < 2e-5


def test_padding_must_end_the_sequence():
    with pytest.raises(ValueError, match="text_padding"):
        VideoLayout(3, 16, 8, text_first=True, text_padding=2)
    with pytest.raises(ValueError, match="text_padding"):
        VideoLayout(3, 16, 8, text_first=False, text_padding=9)


def test_generate_reads_hunyuans_extra_inputs():
    """The `jaxgen run` entry's extras: pooled projections, the text mask with its (static) padding count, and the
    embedded guidance scale times 1000; a mask padded differently per row cannot give SVG one layout."""
    from jaxgen.projects.svg.generate import model_inputs

    mask = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 0, 0]])
    arrays, static = model_inputs({"pooled_prompt_embeds": np.ones((2, 3)), "prompt_attention_mask": mask}, 2,
                                  np.float32, 6.0)
    assert static == {"text_padding": 2}
    np.testing.assert_array_equal(arrays["guidance"], [6000.0, 6000.0])
    assert arrays["pooled_projections"].shape == (2, 3) and arrays["encoder_attention_mask"].dtype == bool
    with pytest.raises(ValueError, match=r"padding \[2, 1\]"):
        model_inputs({"prompt_attention_mask": np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 0]])}, 2, np.float32, None)
    with pytest.raises(ValueError, match="right-padded"):
        model_inputs({"prompt_attention_mask": np.array([[0, 1, 1, 0, 0]])}, 1, np.float32, None)


def test_diagnostics_of_two_scans_are_stacked_in_layer_order():
    """HunyuanVideo sows SVG's diagnostics from two scans (dual-, then single-stream blocks); `sown` joins them."""
    from jaxgen.projects.svg.sampling import sown

    recall = sown({"double_blocks": {"attn": {"recall": (np.zeros((2, 1, 3)),)}},
                   "single_blocks": {"attn": {"recall": (np.ones((3, 1, 3)),)}}})["recall"]
    np.testing.assert_array_equal(recall[:, 0, 0], [0, 0, 1, 1, 1])


def test_the_port_says_which_backends_take_a_per_row_text_mask():
    from jaxgen.projects.svg import hunyuan

    model = hunyuan.named("tiny")
    inputs = (np.zeros((1, 1, 2, 2, 4)), np.zeros(1), np.zeros((1, 3, 12)))
    extras = dict(pooled_projections=np.zeros((1, 8)), guidance=np.zeros(1))
    with pytest.raises(ValueError, match="'cudnn' cannot take a per-row text mask.*text_padding"):
        model.clone(attention_backend="cudnn").init(jax.random.key(0), *inputs, **extras,
                                                    encoder_attention_mask=np.ones((1, 3)))
    with pytest.raises(ValueError, match="text_padding=1 needs the encoder_attention_mask"):
        model.init(jax.random.key(0), *inputs, **extras, text_padding=1)
