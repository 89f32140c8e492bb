"""UNets made of SIGE-aware layers, laid out like diffusers' `UNet2DModel` (DDPM) and `UNet2DConditionModel` (Stable
Diffusion), so a small name table ports their weights (`port.py`).

`SigeUNet` covers both: self-attention blocks (`SigeAttnBlock`) where `cross_attention_dim` is None, transformer
blocks with cross-attention on `context` (`SigeTransformer`) otherwise. Submodules are named after the diffusers
paths with dots as underscores (`down_blocks_0_resnets_1` is `down_blocks.0.resnets.1`). NHWC images.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxgen.nn.embeddings import timestep_embedding
from jaxgen.projects.sige.layers import SigeAttnBlock, SigeConv, SigeGroupNorm, SigeTransformer, channel_parts


class ResnetBlock(nn.Module):
    """diffusers' `ResnetBlock2D` (output scale 1): norm1, SiLU, conv1, + projected time embedding, norm2, SiLU,
    conv2, + shortcut (a 1×1 conv where the channels change). `groups` 0 drops the norms (a conv-only network)."""

    out_channels: int
    groups: int = 32
    eps: float = 1e-6
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, temb=None):
        parts = channel_parts(x)
        in_channels = sum(p.shape[-1] for p in parts)
        bias = None
        if temb is not None:
            bias = nn.Dense(self.out_channels, dtype=self.dtype, name="time_emb_proj")(nn.silu(temb))
        norm1 = SigeGroupNorm(self.groups, self.eps, name="norm1")(x) if self.groups else (None, None)
        h = SigeConv(self.out_channels, dtype=self.dtype, name="conv1")(x, *norm1, act=nn.silu)
        if self.groups:
            norm2 = SigeGroupNorm(self.groups, self.eps, name="norm2")(h, bias)
        elif bias is not None:
            norm2 = (jnp.ones_like(bias, jnp.float32), bias.astype(jnp.float32))
        else:
            norm2 = (None, None)
        if in_channels != self.out_channels:
            shortcut = SigeConv(self.out_channels, kernel=1, dtype=self.dtype, name="conv_shortcut")(x)
        else:
            shortcut = parts[0] if len(parts) == 1 else jnp.concatenate(parts, axis=-1)
        return SigeConv(self.out_channels, dtype=self.dtype, name="conv2")(h, *norm2, act=nn.silu, residual=shortcut)


class SigeUNet(nn.Module):
    """A diffusion UNet: `conv_in`, per level `layers_per_block` resnets (+ attention where `attention_levels`
    says) and a stride-2 downsampler, a middle resnet / attention / resnet, the mirrored up path over skip
    concatenations with nearest-2× upsamplers, GroupNorm + SiLU + `conv_out`.

    `groups` 0 builds a conv-only network (no norms, no attention). `time_embedding` False drops the timestep input
    (a plain image-to-image network). Heads: `num_heads`, else `channels // head_dim`, else one.
    """

    in_channels: int = 3
    out_channels: int = 3
    block_out_channels: tuple[int, ...] = (128, 128, 256, 256, 512, 512)
    layers_per_block: int = 2
    attention_levels: tuple[bool, ...] = (False, False, False, False, True, False)
    mid_attention: bool = True
    groups: int = 32
    eps: float = 1e-6
    head_dim: int | None = None
    num_heads: int | None = None
    cross_attention_dim: int | None = None
    time_embedding: bool = True
    flip_sin_to_cos: bool = False
    freq_shift: float = 1.0
    dtype: Any = jnp.float32

    def __post_init__(self):
        if len(self.attention_levels) != len(self.block_out_channels):
            raise ValueError(f"SigeUNet: attention_levels {self.attention_levels} needs one entry per level of "
                             f"block_out_channels {self.block_out_channels}")
        if not self.groups and (any(self.attention_levels) or self.mid_attention):
            raise ValueError("SigeUNet: a conv-only network (groups=0) has no attention; set attention_levels all "
                             "False and mid_attention False")
        super().__post_init__()

    def _attention(self, name: str, h, context):
        heads = self.num_heads or (h.shape[-1] // self.head_dim if self.head_dim else 1)
        if self.cross_attention_dim is None:
            return SigeAttnBlock(heads, self.groups, self.eps, dtype=self.dtype, name=name)(h)
        # diffusers' Transformer2DModel fixes its GroupNorm eps at 1e-6, whatever the UNet's norm_eps.
        return SigeTransformer(heads, self.groups, 1e-6, dtype=self.dtype, name=name)(h, context)

    def _time(self, timesteps, batch: int):
        if not self.time_embedding:
            return None
        if timesteps is None:
            raise ValueError("SigeUNet: this network embeds timesteps; call it as apply(params, x, timesteps)")
        width = self.block_out_channels[0]
        t = jnp.broadcast_to(jnp.asarray(timesteps, jnp.float32).reshape(-1), (batch,))
        features = timestep_embedding(t, width, freq_shift=self.freq_shift)
        if not self.flip_sin_to_cos:
            features = jnp.concatenate([features[:, width // 2:], features[:, :width // 2]], axis=-1)
        h = nn.Dense(4 * width, dtype=self.dtype, name="time_embedding_linear_1")(features)
        return nn.Dense(4 * width, dtype=self.dtype, name="time_embedding_linear_2")(nn.silu(h))

    @nn.compact
    def __call__(self, x: jax.Array, timesteps=None, context=None) -> jax.Array:
        if x.ndim != 4 or x.shape[-1] != self.in_channels:
            raise ValueError(f"SigeUNet: expected NHWC images with {self.in_channels} channels, got {x.shape}")
        if self.cross_attention_dim is not None and context is None:
            raise ValueError("SigeUNet: this network cross-attends; pass context [batch, tokens, "
                             f"{self.cross_attention_dim}]")
        levels = len(self.block_out_channels)
        if x.shape[1] % 2 ** (levels - 1) or x.shape[2] % 2 ** (levels - 1):
            raise ValueError(f"SigeUNet: height and width {x.shape[1:3]} must divide by 2^{levels - 1}")
        temb = self._time(timesteps, x.shape[0])
        resnet = lambda c, name: ResnetBlock(c, self.groups, self.eps, self.dtype, name=name)  # noqa: E731

        h = SigeConv(self.block_out_channels[0], dtype=self.dtype, name="conv_in")(x)
        skips = [h]
        for i, channels in enumerate(self.block_out_channels):
            for j in range(self.layers_per_block):
                h = resnet(channels, f"down_blocks_{i}_resnets_{j}")(h, temb)
                if self.attention_levels[i]:
                    h = self._attention(f"down_blocks_{i}_attentions_{j}", h, context)
                skips.append(h)
            if i < levels - 1:
                h = SigeConv(channels, stride=2, padding=1, dtype=self.dtype, name=f"down_blocks_{i}_downsamplers_0")(h)
                skips.append(h)

        h = resnet(self.block_out_channels[-1], "mid_block_resnets_0")(h, temb)
        if self.mid_attention:
            h = self._attention("mid_block_attentions_0", h, context)
        h = resnet(self.block_out_channels[-1], "mid_block_resnets_1")(h, temb)

        for i, channels in enumerate(reversed(self.block_out_channels)):
            level = levels - 1 - i
            for j in range(self.layers_per_block + 1):
                h = resnet(channels, f"up_blocks_{i}_resnets_{j}")((h, skips.pop()), temb)
                if self.attention_levels[level]:
                    h = self._attention(f"up_blocks_{i}_attentions_{j}", h, context)
            if i < levels - 1:
                h = SigeConv(channels, upsample=True, dtype=self.dtype, name=f"up_blocks_{i}_upsamplers_0")(h)

        if self.groups:
            norm = SigeGroupNorm(self.groups, self.eps, name="conv_norm_out")(h)
        else:
            norm = (None, None)
        return SigeConv(self.out_channels, dtype=self.dtype, name="conv_out")(h, *norm, act=nn.silu)


def tiny_unet(conv_only: bool = False, dtype: Any = jnp.float32) -> SigeUNet:
    """A two-level image-to-image UNet (16 and 32 channels, no timestep) for tests and the notebook: GroupNorm(8)
    and self-attention at the lower level and in the middle, or, with `conv_only`, convs and SiLUs only."""
    return SigeUNet(in_channels=3, out_channels=3, block_out_channels=(16, 32), layers_per_block=1,
                    attention_levels=(False, not conv_only), mid_attention=not conv_only,
                    groups=0 if conv_only else 8, time_embedding=False, dtype=dtype)


def ddpm_unet(dtype: Any = jnp.float32) -> SigeUNet:
    """The DDPM UNet of google/ddpm-church-256 (ch 128, mult 1,1,2,2,4,4, attention at 16², 256 px)."""
    return SigeUNet(dtype=dtype)


def sd_unet(dtype: Any = jnp.float32) -> SigeUNet:
    """A Stable-Diffusion-1.x-shaped latent UNet (320, 640, 1280, 1280; one transformer block per attention;
    cross-attention on 768-wide text tokens; 8 heads)
    — random weights for timing; real SD weights load through `port.from_diffusers`."""
    return SigeUNet(in_channels=4, out_channels=4, block_out_channels=(320, 640, 1280, 1280), layers_per_block=2,
                    attention_levels=(True, True, True, False), mid_attention=True, groups=32, eps=1e-5,
                    num_heads=8, cross_attention_dim=768, flip_sin_to_cos=True, freq_shift=0.0, dtype=dtype)


def random_params(module: nn.Module, *args, seed: int = 0, **kwargs) -> dict:
    """Parameters for `module.apply(params, *args, **kwargs)` drawn with numpy from their shapes alone: kernels
    `N(0, 1/fan_in)`, norm scales `1 + N(0, 0.1²)`, biases and running means `N(0, 0.1²)`, running variances
    `exp(N(0, 0.2²))`.

    Why not `module.init`: compiling the initialisers of a UNet's ~100 tensors (threefry, truncated normals) takes
    tens of seconds on a CPU (measured 25 s for the tiny UNet on 2 loaded cores), more than the whole test budget.
    Timing and equality tests need any weights, not those initialisers; norm scales and biases are perturbed so a
    test also sees them.
    """
    shapes = nn.unbox(jax.eval_shape(module.init, jax.random.key(0), *args, **kwargs))
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        name = path[-1].key
        if name == "scale":
            value = 1 + 0.1 * rng.standard_normal(leaf.shape)
        elif name in ("bias", "mean"):
            value = 0.1 * rng.standard_normal(leaf.shape)
        elif name == "var":
            value = np.exp(0.2 * rng.standard_normal(leaf.shape))
        else:
            value = rng.standard_normal(leaf.shape) / np.sqrt(max(1, int(np.prod(leaf.shape[:-1]))))
        return jnp.asarray(value, leaf.dtype)

    return jax.tree_util.tree_map_with_path(draw, shapes)
