"""The incremental engine: sparse equals dense where the paper says it should, compiles stay bounded by the
buckets, bad calls fail clearly."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgen.projects.sige import IncrementalEngine, SigeUNet, random_params, tiny_unet
from jaxgen.projects.sige.layers import SigeAttnBlock, SigeConv, SigeTransformer

# A 2×2-pixel edit near a corner of a 64² image. Dilation 28 covers the edit's whole receptive-field growth through
# the tiny UNet, so the sparse pass must match the dense one; the 32² sites run dense (min_sparse_res=64), the 64²
# sites sparse on about a third of their tiles.
SIZE, DILATION = 64, 28
# LLVM at -O0: these programs compile 2.4× faster on CPU and run in milliseconds either way.
FAST = {"xla_backend_optimization_level": 0}


def images(batch=2, dtype=jnp.float32):
    x = jax.random.normal(jax.random.key(0), (batch, SIZE, SIZE, 3), dtype)
    return x, x.at[:, 2:4, 3:5, :].add(1.0)


def sparse_sites(engine):
    return {key: (int(grid.sum()), grid.size) for key, grid in engine.last_plan.active.items()}


def test_conv_only_sparse_equals_dense_on_the_edit():
    module = tiny_unet(conv_only=True)
    x, edited = images()
    params = random_params(module, x)
    engine = IncrementalEngine(module, params, dilation=DILATION, min_sparse_res=SIZE, levels=(0.5, 1.0),
                               compiler_options=FAST)
    engine.full(x)
    out = engine.edit(edited)
    assert engine.last_plan.level == 0.5
    assert all(0 < active < total for active, total in sparse_sites(engine).values())
    dense = engine.full(edited, cache_id="dense")  # the full pass is the plain dense model (and compiled already)
    np.testing.assert_allclose(out, dense, atol=1e-5)
    macs = engine.macs()
    assert macs["sparse"] <= macs["executed"] < macs["dense"]


def test_groupnorm_sparse_equals_dense_on_cached_statistics():
    # One level (cheaper to compile), GroupNorm on every conv input including the skip concatenations, and a
    # timestep embedding added before norm2 (folded into the cached shift); no attention, which would spread the
    # edit everywhere. Dilation 12 covers its receptive-field growth.
    module = SigeUNet(block_out_channels=(8,), layers_per_block=1, attention_levels=(False,), mid_attention=False,
                      groups=4)
    x, edited = images()
    t = jnp.array([10.0, 700.0])
    params = random_params(module, x, t)
    engine = IncrementalEngine(module, params, dilation=12, min_sparse_res=SIZE, levels=(0.5, 1.0),
                               compiler_options=FAST)
    original = engine.full(x, timesteps=t)
    # On the original, cached statistics (shift recomposed with the time embedding) are the fresh ones.
    np.testing.assert_allclose(engine.dense_with_cached_statistics(x, timesteps=t), original, atol=1e-5)
    out = engine.edit(edited, timesteps=t)
    assert engine.last_plan.level == 0.5
    np.testing.assert_allclose(out, engine.dense_with_cached_statistics(edited, timesteps=t), atol=1e-4)


class Attentions(nn.Module):
    """A DDPM attention block and an SD transformer block (self- and cross-attention) side by side on the input, so
    each sees the exact input and the sparse pass's only approximation is the stale rows outside the edit (chained,
    the second block's keys / values would come from the first one's stale rows)."""

    @nn.compact
    def __call__(self, x, context):
        return SigeAttnBlock(heads=2, groups=4)(x) + SigeTransformer(heads=2, groups=4)(x, context)


def test_attention_equals_dense_on_the_active_rows():
    module = Attentions()
    x = jax.random.normal(jax.random.key(0), (2, 16, 16, 8))
    edited = x.at[:, 5:7, 9:10, :].add(1.0)
    context = jax.random.normal(jax.random.key(2), (2, 5, 6))
    engine = IncrementalEngine(module, random_params(module, x, context), dilation=0, min_sparse_res=8,
                               compiler_options=FAST)
    original = engine.full(x, context=context)
    out = engine.edit(edited, context=context)
    reference = engine.dense_with_cached_statistics(edited, context=context)
    scatter_map = engine.last_plan.arrays["16x16/k1s1p0t4"]["map"].reshape(16, 16)
    active = scatter_map >= 0
    assert 0 < active.sum() < active.size
    np.testing.assert_allclose(np.asarray(out)[:, active], np.asarray(reference)[:, active], atol=1e-5)
    np.testing.assert_array_equal(np.asarray(out)[:, ~active], np.asarray(original)[:, ~active])


class TwoConvs(nn.Module):
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        return SigeConv(4, dtype=self.dtype)(SigeConv(4, dtype=self.dtype)(x), act=nn.silu)


def test_compiles_are_bounded_by_the_buckets_in_bfloat16():
    module = TwoConvs(jnp.bfloat16)
    x = jax.random.normal(jax.random.key(0), (1, 32, 32, 3), jnp.bfloat16)
    levels = (0.125, 0.5)                           # 8 and 32 of the 64 tiles of the 32² site
    engine = IncrementalEngine(module, random_params(module, x), dilation=1, min_sparse_res=32, levels=levels,
                               compiler_options=FAST)
    engine.full(x)
    seen = set()
    for corner, size in [(0, 2), (10, 3), (20, 2), (4, 12), (10, 10), (0, 24), (8, 3)]:
        edited = x.at[:, corner:corner + size, corner:corner + size, :].add(1.0)
        out = engine.edit(edited)
        seen.add(engine.last_plan.level)
    assert seen == {0.125, 0.5, None}               # both buckets and the dense fallback were used
    assert engine.compiles == len(levels) + 1
    dense = engine.full(edited, cache_id="dense")   # two convs, no norm: sparse is exact up to bf16 rounding
    assert out.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(out, np.float32), np.asarray(dense, np.float32), atol=2e-2)


def test_bad_calls_fail_clearly():
    module = TwoConvs()
    x = jnp.zeros((1, 8, 8, 3))
    engine = IncrementalEngine(module, random_params(module, x), compiler_options=FAST)
    with pytest.raises(ValueError, match="call full"):
        engine.edit(x)
    engine.full(x)
    with pytest.raises(ValueError, match="shape"):
        engine.edit(x[:, :4])
    with pytest.raises(ValueError, match="NHWC"):
        jax.eval_shape(tiny_unet().init, jax.random.key(1), x[..., :2])
