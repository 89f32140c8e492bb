"""svg_attention end to end: dense at density 1.0, brute-force masked attention below it, planted classes, no
recompilation for new densities or keys, dense gating through the backend."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import svg_brute_force as brute
from jaxgen.nn.attention import AttentionContext
from jaxgen.projects.svg import DenseGate, VideoLayout, band_block_mask, band_for_density, svg_attention, svg_backend
from jaxgen.projects.svg import attention as svg_lib
from support.numerics import as_f32, rel_err

LAYOUTS = [VideoLayout(4, 16, 8, text_first=True), VideoLayout(3, 16, 5, text_first=False)]
CLASSES = np.array([[0, 1, 0, 1], [1, 1, 0, 0]])


def _random_qkv(layout, seed=0, heads=3, head_dim=16):
    keys = jax.random.split(jax.random.key(seed), 3)
    return [jax.random.normal(key, (2, layout.seq_len, heads, head_dim)) for key in keys]


@pytest.mark.parametrize("layout", LAYOUTS, ids=str)
@pytest.mark.parametrize("implementation, block", [("interpret", 16), ("reference", 8)])
def test_density_one_equals_dense_attention(layout, implementation, block):
    q, k, v = _random_qkv(layout)
    out, head_is_temporal = svg_attention(q, k, v, layout, density=1.0, rng=jax.random.key(1), block_q=block,
                                          block_kv=block, implementation=implementation)
    assert out.shape == q.shape and head_is_temporal.shape == (2, 3)
    assert rel_err(out, jax.nn.dot_product_attention(q, k, v)) < 2e-5


@pytest.mark.parametrize("layout", LAYOUTS, ids=str)
def test_sparse_output_is_masked_attention_with_each_heads_mask(layout):
    """Planted heads: the classes come out right, and each head's output is brute-force attention under its mask."""
    q, k, v = brute.planted_qkv(layout, CLASSES, head_dim=16, strength=3.0, seed=0)
    density, block = 0.4, 16
    out, head_is_temporal = svg_attention(q, k, v, layout, density=density, rng=jax.random.key(0), block_q=block,
                                          block_kv=block, implementation="interpret")
    np.testing.assert_array_equal(head_is_temporal, CLASSES.astype(bool))

    band_mask = band_block_mask(layout, band_for_density(layout, density, block_q=block, block_kv=block),
                                block_q=block, block_kv=block)
    spatial = brute.blocks_to_tokens(band_mask, layout.seq_len, block, block)
    assert not spatial.all()
    where = np.argsort(brute.token_major_source(layout))
    token_masks = np.where(CLASSES.astype(bool)[:, :, None, None], spatial[where][:, where], spatial)
    expected = brute.masked_attention(q, k, v, token_masks)
    assert rel_err(out, expected) < 2e-5
    assert rel_err(out, brute.masked_attention(q, k, v, True)) > 1e-3  # the masks really cut something


def test_new_density_or_key_reuses_the_compiled_program():
    layout = LAYOUTS[0]
    q, k, v = _random_qkv(layout)
    run = lambda density, seed: svg_attention(q, k, v, layout, density=density, rng=jax.random.key(seed),
                                              block_q=16, block_kv=16, implementation="reference")
    run(0.3, 0)
    size = svg_lib._svg._cache_size()
    run(0.6, 1)
    run(0.9, 2)
    assert svg_lib._svg._cache_size() == size


def test_bf16_inputs_keep_their_dtype():
    layout = LAYOUTS[1]
    q, k, v = (x.astype(jnp.bfloat16) for x in _random_qkv(layout))
    out, _ = svg_attention(q, k, v, layout, density=1.0, rng=jax.random.key(0), block_q=16, block_kv=16,
                           implementation="interpret")
    assert out.dtype == jnp.bfloat16
    assert rel_err(out, jax.nn.dot_product_attention(q, k, v)) < 2e-2


def test_errors_name_the_shapes():
    layout = LAYOUTS[0]
    q, k, v = _random_qkv(layout)
    with pytest.raises(ValueError, match=r"\(2, 71, 3, 16\)"):
        svg_attention(q[:, 1:], k[:, 1:], v[:, 1:], layout, rng=jax.random.key(0))
    with pytest.raises(ValueError, match=r"k \(2, 72, 2, 16\)"):
        svg_attention(q, k[:, :, 1:], v, layout, rng=jax.random.key(0))
    with pytest.raises(ValueError, match="density"):
        svg_attention(q, k, v, layout, density=0.0, rng=jax.random.key(0))


def test_backend_gates_early_steps_to_dense_inside_jit():
    layout = LAYOUTS[0]
    q, k, v = brute.planted_qkv(layout, CLASSES, head_dim=16, strength=3.0, seed=1)
    gate = DenseGate(dense_step_fraction=0.2)

    @jax.jit
    def step_fn(step):
        context = AttentionContext(rng=jax.random.key(0), video_layout=layout, step=step, num_steps=10, layer=3,
                                   num_layers=4)
        return svg_backend(q, k, v, context=context, density=0.4, gate=gate, block_q=16, block_kv=16,
                           implementation="interpret")

    dense = jax.nn.dot_product_attention(q, k, v)
    for step in (0, 1):
        out, aux = step_fn(step)
        assert rel_err(out, dense) < 2e-5
        assert not np.asarray(aux["head_is_temporal"]).any() and float(aux["density"]) == 1.0
    out, aux = step_fn(2)
    assert rel_err(out, dense) > 1e-3
    np.testing.assert_array_equal(aux["head_is_temporal"], CLASSES.astype(bool))
    assert float(aux["density"]) < 1.0


def test_backend_names_missing_context():
    layout = LAYOUTS[0]
    q, k, v = _random_qkv(layout)
    with pytest.raises(ValueError, match="video_layout"):
        svg_backend(q, k, v, context=AttentionContext(rng=jax.random.key(0)))
    with pytest.raises(ValueError, match="step"):
        svg_backend(q, k, v, context=AttentionContext(rng=jax.random.key(0), video_layout=layout),
                    gate=DenseGate(dense_layer_fraction=0.5))
    with pytest.raises(ValueError, match="bias"):
        svg_backend(q, k, v, bias=jnp.zeros((1, 3, 72, 72)),
                    context=AttentionContext(rng=jax.random.key(0), video_layout=layout))
