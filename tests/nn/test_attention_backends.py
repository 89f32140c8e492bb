"""The attention backend registry: names, one signature, agreement between backends, clear errors, the Linen module."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgen.nn import attention as attention_lib
from jaxgen.nn.attention import AttentionContext, SelfAttention, attention

SEQ, HEADS, HEAD_DIM = 40, 2, 16


def _qkv(seed=0, batch=2):
    keys = jax.random.split(jax.random.key(seed), 3)
    return [jax.random.normal(key, (batch, SEQ, HEADS, HEAD_DIM)) for key in keys]


def _softmax_attention(q, k, v, mask=None):
    q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
    logits = np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(q.shape[-1])
    if mask is not None:
        logits = np.where(mask, logits, -np.inf)
    weights = np.exp(logits - logits.max(-1, keepdims=True))
    return np.einsum("bhqk,bkhd->bqhd", weights / weights.sum(-1, keepdims=True), v)


def test_registry_holds_the_four_backends_and_suggests_close_names():
    assert attention_lib.get_backend("svg") is not None  # a paper's backend: its package registers it when imported
    assert {"dense", "cudnn", "block_sparse", "svg"} <= set(attention_lib.BACKENDS)
    with pytest.raises(ValueError, match="Did you mean 'block_sparse'"):
        attention_lib.get_backend("block_sprase")
    with pytest.raises(ValueError, match="already registered"):
        attention_lib.register_backend("dense", attention_lib.BACKENDS["dense"])


def test_dense_is_softmax_attention_and_honours_masks():
    q, k, v = _qkv()
    mask = np.random.default_rng(0).random((2, HEADS, SEQ, SEQ)) < 0.5
    mask[..., 0] = True
    out, aux = attention(q, k, v, backend="dense", mask=jnp.asarray(mask))
    np.testing.assert_allclose(out, _softmax_attention(q, k, v, mask), rtol=2e-5, atol=2e-6)
    assert aux == {}


@pytest.mark.skipif(jax.default_backend() == "gpu", reason="checks the error raised off GPU")
def test_cudnn_off_gpu_is_a_clear_error():
    q, k, v = _qkv()
    with pytest.raises(ValueError, match="needs a GPU"):
        attention(q, k, v, backend="cudnn")


@pytest.mark.parametrize("implementation", ["interpret", "reference"])
def test_block_sparse_matches_masked_dense(implementation):
    q, k, v = _qkv()
    block_mask = np.random.default_rng(1).random((2, HEADS, 5, 5)) < 0.5
    block_mask[..., 0] = True
    context = AttentionContext(block_mask=jnp.asarray(block_mask))
    out, _ = attention(q, k, v, backend="block_sparse", context=context, block_q=8, block_kv=8,
                       implementation=implementation)
    token_mask = block_mask[..., np.arange(SEQ) // 8, :][..., np.arange(SEQ) // 8]
    np.testing.assert_allclose(out, _softmax_attention(q, k, v, token_mask), rtol=2e-5, atol=2e-5)


def test_block_sparse_refuses_what_it_cannot_honour():
    q, k, v = _qkv()
    with pytest.raises(ValueError, match="context.block_mask"):
        attention(q, k, v, backend="block_sparse")
    with pytest.raises(ValueError, match="mask"):
        attention(q, k, v, backend="block_sparse", mask=jnp.ones((1, 1, SEQ, SEQ), bool),
                  context=AttentionContext(block_mask=jnp.ones((1, HEADS, 5, 5), bool)))
    with pytest.raises(ValueError, match=r"\(2, 40, 16\)"):
        attention(q[:, :, 0], k, v)


def test_svg_backend_equals_svg_attention():
    from jaxgen.projects.svg import VideoLayout, svg_attention

    layout = VideoLayout(num_frames=2, frame_tokens=16, text_tokens=8)
    q, k, v = _qkv()
    rng = jax.random.key(3)
    out, aux = attention(q, k, v, backend="svg", context=AttentionContext(rng=rng, video_layout=layout),
                         density=0.5, block_q=8, block_kv=8, implementation="reference")
    expected, head_is_temporal = svg_attention(q, k, v, layout, density=0.5, rng=rng, block_q=8, block_kv=8,
                                               implementation="reference")
    np.testing.assert_array_equal(out, expected)
    np.testing.assert_array_equal(aux["head_is_temporal"], head_is_temporal)
    with pytest.raises(TypeError, match="densty"):
        attention(q, k, v, backend="svg", context=AttentionContext(rng=rng, video_layout=layout), densty=0.5)


def test_self_attention_module_switches_backend_without_changing_parameters():
    """Same parameters, three backends at full density: the same output; SVG sows its head classes."""
    from jaxgen.projects.svg import VideoLayout

    layout = VideoLayout(num_frames=2, frame_tokens=16, text_tokens=8)
    x = jax.random.normal(jax.random.key(4), (1, SEQ, 24))
    dense = SelfAttention(num_heads=HEADS, head_dim=HEAD_DIM)
    params = dense.init(jax.random.key(5), x)
    reference = dense.apply(params, x)
    block = SelfAttention(num_heads=HEADS, head_dim=HEAD_DIM, backend="block_sparse",
                          backend_options={"block_q": 8, "block_kv": 8, "implementation": "reference"})
    context = AttentionContext(block_mask=jnp.ones((1, HEADS, 5, 5), bool))
    np.testing.assert_allclose(block.apply(params, x, context=context), reference, rtol=1e-5, atol=1e-5)
    svg = SelfAttention(num_heads=HEADS, head_dim=HEAD_DIM, backend="svg",
                        backend_options={"density": 1.0, "block_q": 8, "block_kv": 8, "implementation": "reference"})
    out, state = svg.apply(params, x, context=AttentionContext(rng=jax.random.key(6), video_layout=layout),
                           mutable=["intermediates"])
    np.testing.assert_allclose(out, reference, rtol=1e-5, atol=1e-5)
    assert state["intermediates"]["head_is_temporal"][0].shape == (1, HEADS)


def test_gin_selects_the_backend_by_name():
    """The edge: a gin file binds the module's backend name and options; library code never imports gin."""
    gin = pytest.importorskip("gin")
    gin.clear_config()
    try:
        gin.parse_config("""
            from __gin__ import dynamic_registration
            from jaxgen.nn import attention
            from jaxgen.projects.svg import gating
            attention.SelfAttention:
              backend = 'svg'
              backend_options = {'density': 0.25, 'gate': @gating.DenseGate()}
            gating.DenseGate.dense_step_fraction = 0.1
        """)
        module = gin.get_configurable(SelfAttention)(num_heads=HEADS, head_dim=HEAD_DIM)
    finally:
        gin.clear_config()
    assert module.backend == "svg"
    assert module.backend_options["gate"].dense_step_fraction == 0.1
