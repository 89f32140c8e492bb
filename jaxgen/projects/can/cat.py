"""A small CaT-like diffusion model: DiT's isotropic adaLN-Zero layout built from EfficientViT blocks.

CaT (the CAN paper's "CAN + EfficientViT") replaces the transformer blocks of a diffusion model with EfficientViT's
(Cai et al., "EfficientViT: Multi-Scale Linear Attention for High-Resolution Dense Prediction", ICCV 2023), whose
costs grow linearly with the number of tokens, and makes their depthwise convolutions condition-aware. This is a
CaT-like model, not the paper's (its macro architecture is not public): DiT's layout (patch embedding, a stack of
blocks with adaLN-Zero modulation from `c = timestep embedding + class embedding`, a final adaLN LayerNorm and a
zero-initialised projection to patches) with each block made of EfficientViT's two modules on the token grid:

- context: ReLU linear attention over all tokens ("lite multi-scale attention"): a 1x1 qkv projection; for each
  aggregation scale s, a depthwise s x s convolution and a grouped 1x1 convolution of the qkv map (one group per
  head and q/k/v) give each head a multi-scale copy; per head `relu(q) (relu(k)^T v) / (relu(q) sum relu(k))`; a 1x1
  output projection `proj`.
- local: MBConv, a 1x1 expansion (`expand`), SiLU, a depthwise 3x3 convolution (`depthwise`), SiLU, a 1x1
  projection (`project`).

Both modules are residual and gated like DiT's attention and MLP, so a new model is the zero function. Images are
NHWC; the token grid is `[batch, height / p, width / p, width]`; there is no position embedding (the convolutions
see positions). Parameter paths for placement rules: `patch_embed`, `blocks/attn/{qkv,aggregate_<s>_depthwise,
aggregate_<s>_pointwise,proj}`, `blocks/mbconv/{expand,depthwise,project}`, `blocks/adaln`, `final_adaln`,
`unpatchify` (blocks stacked by one `nn.scan`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxgen.nn.dit import patchify, unpatchify
from jaxgen.nn.embeddings import LabelEmbedding, TimestepEmbedding


def relu_linear_attention(q: jax.Array, k: jax.Array, v: jax.Array, eps: float = 1e-6) -> jax.Array:
    """`out_i = sum_j (φq_i · φk_j) v_j / sum_j (φq_i · φk_j)`, φ = ReLU, in O(tokens): q, k, v `[batch, tokens,
    heads, head_dim]` -> `[batch, tokens, heads, head_dim]`, accumulated in float32."""
    q, k, v = (jax.nn.relu(q.astype(jnp.float32)), jax.nn.relu(k.astype(jnp.float32)), v.astype(jnp.float32))
    kv = jnp.einsum("bnhd,bnhe->bhde", k, v)
    numerator = jnp.einsum("bnhd,bhde->bnhe", q, kv)
    denominator = jnp.einsum("bnhd,bhd->bnh", q, k.sum(axis=1))
    return numerator / (denominator[..., None] + eps)


class LiteMultiScaleAttention(nn.Module):
    """EfficientViT's context module on a token grid `[batch, h, w, width]`; see the module docstring."""

    num_heads: int
    head_dim: int
    scales: Sequence[int] = (5,)
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        channels = 3 * self.num_heads * self.head_dim
        qkv = nn.Dense(channels, use_bias=False, dtype=self.dtype, name="qkv")(x)
        maps = [qkv]
        for s in self.scales:
            aggregated = nn.Conv(channels, (s, s), feature_group_count=channels, use_bias=False, dtype=self.dtype,
                                 name=f"aggregate_{s}_depthwise")(qkv)
            maps.append(nn.Conv(channels, (1, 1), feature_group_count=3 * self.num_heads, use_bias=False,
                                dtype=self.dtype, name=f"aggregate_{s}_pointwise")(aggregated))
        batch, height, width = x.shape[:3]
        heads = jnp.concatenate(maps, axis=-1).reshape(batch, height * width, -1, 3, self.head_dim)
        out = relu_linear_attention(heads[..., 0, :], heads[..., 1, :], heads[..., 2, :])
        out = out.reshape(batch, height, width, -1).astype(self.dtype)
        return nn.Dense(x.shape[-1], dtype=self.dtype, name="proj")(out)


class MBConv(nn.Module):
    """EfficientViT's local module: 1x1 expansion, SiLU, depthwise 3x3, SiLU, 1x1 projection."""

    expand_ratio: float = 4.0
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        hidden = int(self.expand_ratio * x.shape[-1])
        h = nn.silu(nn.Dense(hidden, dtype=self.dtype, name="expand")(x))
        h = nn.silu(nn.Conv(hidden, (3, 3), feature_group_count=hidden, dtype=self.dtype, name="depthwise")(h))
        return nn.Dense(x.shape[-1], dtype=self.dtype, name="project")(h)


class EfficientViTBlock(nn.Module):
    """adaLN-Zero around the two modules: `x + gate * module(norm(x) * (1 + scale) + shift)`; `(x, c) -> (x, None)`
    for `nn.scan`."""

    num_heads: int
    head_dim: int
    expand_ratio: float = 4.0
    scales: Sequence[int] = (5,)
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, c: jax.Array) -> tuple[jax.Array, None]:
        modulation = nn.Dense(6 * x.shape[-1], name="adaln", kernel_init=nn.initializers.zeros)(nn.silu(c))
        shift1, scale1, gate1, shift2, scale2, gate2 = jnp.split(modulation[:, None, None], 6, axis=-1)
        h = nn.LayerNorm(1e-6, use_scale=False, use_bias=False, dtype=self.dtype)(x) * (1 + scale1) + shift1
        x = x + gate1 * LiteMultiScaleAttention(self.num_heads, self.head_dim, self.scales, self.dtype,
                                                name="attn")(h)
        h = nn.LayerNorm(1e-6, use_scale=False, use_bias=False, dtype=self.dtype)(x) * (1 + scale2) + shift2
        x = x + gate2 * MBConv(self.expand_ratio, self.dtype, name="mbconv")(h)
        return x.astype(self.dtype), None


class CaTDiT(nn.Module):
    """Class-conditional CaT-like model: `model(x [batch, H, W, in_channels], t [batch], y [batch])` -> NHWC float32
    (`out_channels`, default `in_channels`). Labels in [0, num_classes]; `num_classes` is the CFG null label."""

    num_classes: int
    width: int = 256
    depth: int = 8
    num_heads: int = 8
    head_dim: int = 32
    patch_size: int = 2
    in_channels: int = 3
    out_channels: int | None = None
    expand_ratio: float = 4.0
    scales: Sequence[int] = (5,)
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, t: jax.Array, y: jax.Array) -> jax.Array:
        batch, height, width, channels = x.shape
        p = self.patch_size
        if channels != self.in_channels or height % p or width % p or t.shape != (batch,) or y.shape != (batch,):
            raise ValueError(f"CaTDiT takes x [batch, H, W, {self.in_channels}] with H and W divisible by {p}, t and "
                             f"y [batch]; got x {x.shape}, t {t.shape}, y {y.shape}")
        grid = (height // p, width // p)
        h = nn.Dense(self.width, dtype=self.dtype, name="patch_embed")(patchify(x, p))
        h = h.reshape(batch, *grid, self.width)
        c = TimestepEmbedding(self.width, name="t_embed")(t) + LabelEmbedding(self.num_classes, self.width,
                                                                              name="class_embed")(y)
        blocks = nn.scan(EfficientViTBlock, variable_axes={"params": 0}, split_rngs={"params": True},
                         in_axes=nn.broadcast, length=self.depth)
        h, _ = blocks(self.num_heads, self.head_dim, self.expand_ratio, tuple(self.scales), self.dtype,
                      name="blocks")(h, c)
        shift, scale = jnp.split(nn.Dense(2 * self.width, name="final_adaln", kernel_init=nn.initializers.zeros)(
            nn.silu(c))[:, None, None], 2, axis=-1)
        h = nn.LayerNorm(1e-6, use_scale=False, use_bias=False)(h) * (1 + scale) + shift
        out_channels = self.out_channels or self.in_channels
        h = nn.Dense(p * p * out_channels, dtype=jnp.float32, name="unpatchify",
                     kernel_init=nn.initializers.zeros)(h)
        return unpatchify(h.reshape(batch, -1, p * p * out_channels), grid, p, out_channels).astype(jnp.float32)
