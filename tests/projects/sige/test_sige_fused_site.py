"""The fused sparse conv site (`IncrementalEngine(implementation="pallas_interpret")`: the Pallas kernel body
interpreted on CPU) against today's XLA chain of the same sparse pass: per kind of conv site, and through a UNet."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgen.projects.sige import IncrementalEngine, SigeUNet, random_params
from jaxgen.projects.sige.layers import IMPLEMENTATIONS, SigeConv, SigeGroupNorm

FAST = {"xla_backend_optimization_level": 0}


def _skip_resnet_conv(x):
    """A ResBlock's conv2 over a skip concatenation: GroupNorm on both parts, SiLU, and a 1×1 shortcut (itself a
    two-part site) as the residual."""
    parts = (x[..., :16], x[..., 16:])
    scale, shift = SigeGroupNorm(4)(parts)
    shortcut = SigeConv(16, kernel=1)(parts)
    return SigeConv(16)(parts, scale, shift, act=nn.silu, residual=shortcut)


def _down_up(x):
    """A stride-2 downsampler, then a nearest-2× upsampler read from its low-resolution output."""
    return SigeConv(16, upsample=True)(SigeConv(16, stride=2)(x), act=nn.relu)


class Site(nn.Module):
    build: object

    @nn.compact
    def __call__(self, x):
        return self.build(x)


def _engines(module, x, **kwargs):
    params = random_params(module, x, **kwargs)
    return [IncrementalEngine(module, params, dilation=1, min_sparse_res=8, levels=(0.25, 1.0), compiler_options=FAST,
                              implementation=name) for name in ("xla", "pallas_interpret")]


@pytest.mark.parametrize("build, fused", [(_skip_resnet_conv, 2), (_down_up, 2)])
def test_each_kind_of_site_equals_the_xla_chain(build, fused):
    x = jax.random.normal(jax.random.key(0), (2, 32, 32, 32))
    edited = x.at[:, 5:8, 20:22, :].add(1.0)
    xla, pallas = _engines(Site(build), x)
    outs = []
    for engine in (xla, pallas):
        original = engine.full(x)
        outs.append(engine.edit(edited))
    assert xla.last_plan.level == 0.25 and not xla.fused_sites
    assert len(pallas.fused_sites) == fused
    assert not np.allclose(outs[0], original, atol=1e-3)  # the edit reached the output
    np.testing.assert_allclose(outs[1], outs[0], atol=1e-5)


def test_sparse_unet_with_the_fused_kernel_equals_the_xla_chain():
    # One level of 16 channels, GroupNorm(4) before every conv, a time embedding folded into norm2's shift, skip
    # concatenations on the way up: every 32² conv but the RGB conv_in / conv_out runs fused (12 sites).
    module = SigeUNet(block_out_channels=(16,), layers_per_block=1, attention_levels=(False,), mid_attention=False,
                      groups=4)
    x = jax.random.normal(jax.random.key(1), (2, 32, 32, 3))
    edited = x.at[:, 5:8, 20:23, :].add(1.0)
    t = jnp.array([10.0, 700.0])
    xla, pallas = _engines(module, x, timesteps=t)
    outs = []
    for engine in (xla, pallas):
        engine.full(x, timesteps=t)
        outs.append(engine.edit(edited, timesteps=t))
    assert xla.last_plan.level == pallas.last_plan.level == 0.25
    assert len(pallas.fused_sites) == 12
    assert not any("conv_in" in s or "conv_out" in s for s in pallas.fused_sites)
    np.testing.assert_allclose(outs[1], outs[0], atol=1e-5)


def test_unknown_implementation_fails_clearly():
    module = Site(_down_up)
    with pytest.raises(ValueError, match="implementation"):
        IncrementalEngine(module, {}, implementation="cuda")
    assert IMPLEMENTATIONS[0] == "xla"
