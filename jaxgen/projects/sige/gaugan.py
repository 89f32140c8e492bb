"""A GauGAN-like SPADE generator (Park et al., CVPR 2019) made of SIGE-aware layers: the conditional GAN of the SIGE
paper, whose edit is a change of the semantic map (`IncrementalEngine.full(original_map)`, then
`.edit(edited_map)`: the difference mask comes from the one-hot maps).

Layout as the official GauGAN generator that lmxyy/sige makes sparse: the one-hot map, nearest-downsampled to the
lowest resolution, goes through a 3×3 conv (`fc`); then SPADE residual blocks, each after a nearest-2× upsampling
where `upsample` says; leaky ReLU, `conv_img`, tanh. A block is `conv_1(lrelu(SPADE_1(conv_0(lrelu(SPADE_0(x))))))`
plus the shortcut `conv_s(SPADE_s(x))` (1×1, no bias) where the channels change, else `x`. A SPADE normalises `x`
without parameters and modulates it with `(1 + γ) · x̂ + β`, where `γ, β` come from the map at the block's resolution
through `mlp_shared` (3×3 conv, ReLU) and `mlp_gamma_beta` (3×3 conv to `γ` and `β` on channels: the two convs of
the original SPADE fused into one, as the official SIGE code does).

How the pieces run sparsely: every conv is a `SigeConv`. The normalisation is a per-(image, channel) scale / shift
and the `(γ, β)` map a spatial modulation, both applied in the gather of the conv that consumes them, so no
full-size normalised map is ever built; an upsampling block's `conv_0` / `conv_s` gather straight from the
low-resolution map.

Normalisation statistics (`norm`, a registry): the official SIGE GauGAN uses eval-mode (Sync)BatchNorm — running
statistics fixed by training, read in the full pass and applied unchanged in the sparse one, so the generator is
convs and pointwise functions only and the sparse output equals the dense one wherever the mask (with its dilation)
covers the edit's reach; its instance-norm SPADE raises `NotImplementedError`. `"instance"` is supported here the way
GroupNorm is in the UNets: each map's own statistics, computed by the full pass on the original and reused by the
sparse pass (the tests compare it with a dense pass on the same statistics). Spectral norm, a training-time
reparametrisation, is left out (the official SIGE generator refuses it too).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxgen.projects.sige.layers import CACHE, SigeConv, pass_mode

Array = jax.Array
leaky_relu = functools.partial(nn.leaky_relu, negative_slope=0.2)


def _running_statistics(module: nn.Module, x: Array) -> tuple[Array, Array]:
    """Eval-mode batch norm: the `batch_stats` collection's running mean and variance, the same in every pass."""
    channels = x.shape[-1]
    mean = module.variable("batch_stats", "mean", jnp.zeros, (channels,)).value
    var = module.variable("batch_stats", "var", jnp.ones, (channels,)).value
    return jnp.broadcast_to(mean, (x.shape[0], channels)), jnp.broadcast_to(var, (x.shape[0], channels))


def _map_statistics(module: nn.Module, x: Array) -> tuple[Array, Array]:
    """Instance norm: each image's mean and variance per channel over the map — of the original in the full pass
    (cached), reused by the sparse pass. Nearest upsampling leaves them unchanged, so a block computes them on its
    low-resolution input."""
    if pass_mode() == "sparse":
        return module.get_variable(CACHE, "mean"), module.get_variable(CACHE, "var")
    h = x.astype(jnp.float32)
    mean, var = h.mean(axis=(1, 2)), h.var(axis=(1, 2))
    if pass_mode() == "full":
        module.put_variable(CACHE, "mean", mean)
        module.put_variable(CACHE, "var", var)
    return mean, var


NORMS: dict[str, Callable[[nn.Module, Array], tuple[Array, Array]]] = {
    "batch": _running_statistics, "instance": _map_statistics}


def nearest_resize(segmap: Array, height: int, width: int) -> Array:
    """`F.interpolate(mode="nearest")` to an integer fraction of the size: every `f`-th pixel from the top left."""
    fy, fx = segmap.shape[1] // height, segmap.shape[2] // width
    if fy * height != segmap.shape[1] or fx * width != segmap.shape[2]:
        raise ValueError(f"nearest_resize: {segmap.shape[1:3]} is not an integer multiple of {(height, width)}")
    return segmap[:, ::fy, ::fx]


class Spade(nn.Module):
    """SPADE of `x` conditioned on `segmap` (already at the conv input's resolution), returned as the keyword
    arguments of the `SigeConv` that consumes it: `scale` / `shift` ([B, C], the parameter-free norm) and
    `modulation` ([B, H, W, 2C], `γ` then `β`)."""

    hidden: int = 128
    norm: str = "batch"
    eps: float = 1e-5
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array, segmap: Array) -> dict[str, Array]:
        if self.norm not in NORMS:
            raise ValueError(f"Spade: unknown norm {self.norm!r}; known: {sorted(NORMS)}")
        mean, var = NORMS[self.norm](self, x)
        scale = jax.lax.rsqrt(var + self.eps)
        actv = SigeConv(self.hidden, dtype=self.dtype, name="mlp_shared")(segmap)
        gamma_beta = SigeConv(2 * x.shape[-1], dtype=self.dtype, name="mlp_gamma_beta")(actv, act=nn.relu)
        return {"scale": scale, "shift": -mean * scale, "modulation": gamma_beta}


class SpadeResnetBlock(nn.Module):
    """SPADE residual block (see the module docstring), after a nearest-2× upsampling of `x` if `upsample`."""

    out_channels: int
    hidden: int = 128
    norm: str = "batch"
    upsample: bool = False
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array, segmap: Array) -> Array:
        in_channels, up = x.shape[-1], 2 if self.upsample else 1
        middle = min(in_channels, self.out_channels)
        seg = nearest_resize(segmap, x.shape[1] * up, x.shape[2] * up)
        spade = lambda name: Spade(self.hidden, self.norm, dtype=self.dtype, name=name)  # noqa: E731
        conv = lambda features, name, **kw: SigeConv(features, dtype=self.dtype, name=name, **kw)  # noqa: E731
        if in_channels != self.out_channels:
            shortcut = conv(self.out_channels, "conv_s", kernel=1, use_bias=False, upsample=self.upsample)(
                x, **spade("norm_s")(x, seg))
        elif self.upsample:
            shortcut = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
        else:
            shortcut = x
        dx = conv(middle, "conv_0", upsample=self.upsample)(x, act=leaky_relu, **spade("norm_0")(x, seg))
        return conv(self.out_channels, "conv_1")(dx, act=leaky_relu, residual=shortcut, **spade("norm_1")(dx, seg))


class SpadeGenerator(nn.Module):
    """GauGAN's generator on `[B, H, W, num_classes]` one-hot semantic maps (NHWC), returning `[B, H, W, 3]` in
    [-1, 1]. `block_channels[i]` is the width of block `i`, `upsample[i]` whether a nearest-2× upsampling precedes
    it; H and W must divide by 2^(number of upsamplings). `fc` maps the downsampled map to `block_channels[0]`."""

    num_classes: int = 36
    block_channels: tuple[int, ...] = (1024, 1024, 1024, 512, 256, 128, 64)
    upsample: tuple[bool, ...] = (False, True, True, True, True, True, True)
    hidden: int = 128
    norm: str = "batch"
    out_channels: int = 3
    dtype: Any = jnp.float32

    def __post_init__(self):
        if len(self.upsample) != len(self.block_channels):
            raise ValueError(f"SpadeGenerator: upsample {self.upsample} needs one entry per block of "
                             f"block_channels {self.block_channels}")
        if self.norm not in NORMS:
            raise ValueError(f"SpadeGenerator: unknown norm {self.norm!r}; known: {sorted(NORMS)}")
        super().__post_init__()

    @nn.compact
    def __call__(self, segmap: Array) -> Array:
        factor = 2 ** sum(self.upsample)
        if segmap.ndim != 4 or segmap.shape[-1] != self.num_classes:
            raise ValueError(f"SpadeGenerator: expected one-hot NHWC maps with {self.num_classes} classes, got "
                             f"{segmap.shape}")
        if segmap.shape[1] % factor or segmap.shape[2] % factor:
            raise ValueError(f"SpadeGenerator: height and width {segmap.shape[1:3]} must divide by {factor} "
                             f"(2^{sum(self.upsample)} upsamplings)")
        x = nearest_resize(segmap, segmap.shape[1] // factor, segmap.shape[2] // factor).astype(self.dtype)
        x = SigeConv(self.block_channels[0], dtype=self.dtype, name="fc")(x)
        for i, (channels, up) in enumerate(zip(self.block_channels, self.upsample)):
            x = SpadeResnetBlock(channels, self.hidden, self.norm, up, self.dtype, name=f"blocks_{i}")(x, segmap)
        return jnp.tanh(SigeConv(self.out_channels, dtype=self.dtype, name="conv_img")(x, act=leaky_relu))


UPSAMPLINGS: dict[str, tuple[bool, ...]] = {
    # blocks head_0, G_middle_0, G_middle_1, up_0 … up_3 (, up_4) of the official generator
    "normal": (False, True, False, True, True, True, True),
    "more": (False, True, True, True, True, True, True),
    "most": (False, True, True, True, True, True, True, True),
}


def gaugan(ngf: int = 64, num_classes: int = 36, upsampling: str = "more", norm: str = "batch",
           dtype: Any = jnp.float32) -> SpadeGenerator:
    """The generator the official SIGE benchmark times: Cityscapes (35 labels + the instance-edge channel), `ngf`
    64, "more" upsampling (4×8 → 256×512 maps), eval-mode batch norm, SPADE hidden width `2 · ngf`."""
    if upsampling not in UPSAMPLINGS:
        raise ValueError(f"gaugan: unknown upsampling {upsampling!r}; known: {sorted(UPSAMPLINGS)}")
    widths = (16, 16, 16, 8, 4, 2, 1) + ((0.5,) if upsampling == "most" else ())
    return SpadeGenerator(num_classes, tuple(int(w * ngf) for w in widths), UPSAMPLINGS[upsampling], 2 * ngf, norm,
                          dtype=dtype)


def tiny_gaugan(norm: str = "batch", dtype: Any = jnp.float32) -> SpadeGenerator:
    """Three blocks (16, 16, 8 channels; the last two upsample, the last one with a learned shortcut) on 4-class
    maps whose sides divide by 4, for tests."""
    return SpadeGenerator(num_classes=4, block_channels=(16, 16, 8), upsample=(False, True, True), hidden=8,
                          norm=norm, dtype=dtype)
