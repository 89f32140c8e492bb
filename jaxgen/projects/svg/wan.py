"""Wan2.1's video transformer (diffusers' `WanTransformer3DModel`) in Flax, with SVG-ready self-attention.

Layout: latents `[batch, frames, height, width, channels]` (the VAE's latent video, channels last), timestep `[batch]`
in diffusers' units (`1000 * t` of the flow-matching time, as the Wan pipeline passes it), `encoder_hidden_states`
`[batch, text_len, text_dim]` (umT5 states, zero-padded to 512 by the pipeline; the padding is attended, as in the
original). The output is the velocity in the latents' layout, float32.

Per block (diffusers' `WanTransformerBlock`): six modulation vectors from a per-block table plus the projected time
embedding; LayerNorm (no affine) -> shift/scale -> self-attention over the video tokens only (QK RMSNorm across all
heads, Wan's 3D RoPE) -> gated residual; then LayerNorm (affine, `cross_attn_norm`) -> cross-attention to the text
(QK RMSNorm, no RoPE, ungated residual); then LayerNorm -> shift/scale -> GELU-tanh MLP -> gated residual.
Wan's self-attention holds no text tokens, so its `VideoLayout` is the patch grid alone (`WanTransformer.layout`).

RoPE: the head dim splits into time / height / width pairs, `h = w = 2 * (head_dim // 6)` channels, time the rest
(44/42/42 at head dim 128), each axis at `theta ** (-2i / axis_dim)`: `jaxgen.projects.svg.model.rope_3d` with those
dims. Blocks are one `nn.scan` (optionally rematerialised), parameters stacked on a "layers" axis. Self-attention runs
the `attention_backend` ("dense", "cudnn", "svg"); cross-attention `cross_attention_backend` (never SVG: it has no
video layout). Norms and modulation run in float32 whatever `dtype` is, as diffusers keeps them.

Not ported: image conditioning (the I2V models' `image_dim` / `added_kv_proj_dim`) and Wan2.2's per-token timesteps.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxgen.nn import attention as nn_attention
from jaxgen.nn import porting
from jaxgen.nn.dit import CaptionProjection
from jaxgen.nn.embeddings import TimestepEmbedding
from jaxgen.nn.sequence_parallel import keep_sequence_split
from jaxgen.nn.transformer import XAVIER, partitioned, scan_layers
from jaxgen.projects.svg import ports
from jaxgen.projects.svg.layout import VideoLayout
from jaxgen.projects.svg.model import patch_grid, patchify, rope_3d
from jaxgen.projects.svg.port_layers import (FeedForward, VideoAttention, attention_rows, check_text_inputs,
                                              feed_forward_rows, project_out)

# diffusers config.json fields of the released models (Wan-AI/Wan2.1-T2V-{1.3B,14B}-Diffusers) and a CPU-tiny one.
CONFIGS: dict[str, dict[str, Any]] = {
    "1.3B": dict(num_attention_heads=12, attention_head_dim=128, ffn_dim=8960, num_layers=30),
    "14B": dict(num_attention_heads=40, attention_head_dim=128, ffn_dim=13824, num_layers=40),
    "tiny": dict(num_attention_heads=2, attention_head_dim=12, ffn_dim=32, num_layers=2, text_dim=16, freq_dim=16,
                 in_channels=4, out_channels=4, rope_max_seq_len=32),
}


def rope_dims(head_dim: int) -> tuple[int, int, int]:
    """Wan's (time, height, width) split of the head dim."""
    height = 2 * (head_dim // 6)
    time = head_dim - 2 * height
    if head_dim % 2 or time <= 0:
        raise ValueError(f"Wan's 3D RoPE needs an even head_dim >= 6; got {head_dim}")
    return time, height, height


class WanBlock(nn.Module):
    """One Wan block; `(x, layer, time_mod [batch, 6, width], text, rope, context) -> (x, None)` for `nn.scan`."""

    width: int
    num_heads: int
    ffn_dim: int
    eps: float = 1e-6
    cross_attn_norm: bool = True
    backend: str = "dense"
    backend_options: Mapping[str, Any] | None = None
    cross_attention_backend: str = "dense"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, layer, time_mod, text, rope, context: nn_attention.AttentionContext):
        x = keep_sequence_split(x, self.backend, self.backend_options)
        table = self.param("scale_shift_table", partitioned(nn.initializers.normal(self.width ** -0.5), None, "embed"),
                           (6, self.width))
        modulation = table + time_mod.astype(jnp.float32)  # [batch, 6, width]
        shift1, scale1, gate1, shift2, scale2, gate2 = (modulation[:, i:i + 1] for i in range(6))
        context = context.at_layer(layer)
        head_dim = self.width // self.num_heads

        def norm(inputs, affine=False, name=None):
            return nn.LayerNorm(self.eps, use_scale=affine, use_bias=affine, dtype=jnp.float32, name=name,
                                scale_init=partitioned(nn.initializers.ones, "embed"),
                                bias_init=partitioned(nn.initializers.zeros, "embed"))(inputs.astype(jnp.float32))

        h = (norm(x) * (1 + scale1) + shift1).astype(self.dtype)
        h = VideoAttention(self.num_heads, head_dim, "rms_norm_across_heads", self.eps, self.backend,
                           self.backend_options, self.dtype, name="attn1")(h, rope=rope, context=context)
        x = (x.astype(jnp.float32) + h * gate1).astype(self.dtype)
        h = (norm(x, True, "norm2") if self.cross_attn_norm else x).astype(self.dtype)
        x = x + VideoAttention(self.num_heads, head_dim, "rms_norm_across_heads", self.eps,
                               self.cross_attention_backend, None, self.dtype, name="attn2")(h, text)
        h = (norm(x) * (1 + scale2) + shift2).astype(self.dtype)
        h = FeedForward(self.ffn_dim, self.dtype, name="ffn")(h)
        x = (x.astype(jnp.float32) + h.astype(jnp.float32) * gate2).astype(self.dtype)
        return keep_sequence_split(x, self.backend, self.backend_options), None


class WanTransformer(nn.Module):
    """`WanTransformer3DModel`; fields are its config's (`from_config` maps names), plus run-time settings:
    `attention_backend` / `attention_options` for self-attention (SVG here), `cross_attention_backend`, compute
    `dtype`, `remat`."""

    num_heads: int = 40
    head_dim: int = 128
    in_channels: int = 16
    out_channels: int = 16
    text_dim: int = 4096
    freq_dim: int = 256
    ffn_dim: int = 13824
    depth: int = 40
    patch: tuple[int, int, int] = (1, 2, 2)
    cross_attn_norm: bool = True
    eps: float = 1e-6
    rope_max_seq_len: int = 1024
    attention_backend: str = "dense"
    attention_options: Mapping[str, Any] | None = None
    cross_attention_backend: str = "dense"
    dtype: Any = jnp.float32
    remat: bool = False

    @property
    def width(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def num_layers(self) -> int:
        """Layers holding the attention SVG runs in (the attention context's `num_layers`)."""
        return self.depth

    def grid(self, latents_shape: Sequence[int]) -> tuple[int, int, int]:
        """Token grid (frames, height, width) of latents `[batch, frames, height, width, in_channels]`."""
        grid = patch_grid(latents_shape, self.patch, self.in_channels, "Wan's latents")
        if max(grid) > self.rope_max_seq_len:
            raise ValueError(f"token grid {grid} exceeds Wan's RoPE table of {self.rope_max_seq_len} positions")
        return grid

    def layout(self, latents_shape: Sequence[int]) -> VideoLayout:
        """SVG's view of the self-attention sequence: frame-major patches, no text tokens."""
        frames, height, width = self.grid(latents_shape)
        return VideoLayout(num_frames=frames, frame_tokens=height * width, text_tokens=0)

    @nn.compact
    def __call__(self, latents: jax.Array, timestep: jax.Array, encoder_hidden_states: jax.Array, *, step=None,
                 num_steps: int | None = None, rng: jax.Array | None = None) -> jax.Array:
        """`step` / `num_steps` / `rng` feed the attention context (SVG's dense gate and profiling rows)."""
        batch = latents.shape[0]
        grid = self.grid(latents.shape)
        check_text_inputs("Wan", latents, timestep, encoder_hidden_states, self.text_dim)
        x = nn.Dense(self.width, dtype=self.dtype, name="patch_embedding",
                     kernel_init=partitioned(XAVIER, None, "embed"),
                     bias_init=partitioned(nn.initializers.zeros, "embed"))(
            patchify(latents, self.patch).astype(self.dtype))

        temb = TimestepEmbedding(self.width, frequency_dim=self.freq_dim, freq_shift=0.0, name="time_embedder")(
            timestep)
        time_mod = nn.Dense(6 * self.width, name="time_proj", kernel_init=partitioned(XAVIER, "embed", "mlp"),
                            bias_init=partitioned(nn.initializers.zeros, "mlp"))(nn.silu(temb))
        text = CaptionProjection(self.width, self.dtype, name="text_embedder")(
            encoder_hidden_states.astype(self.dtype))

        rope = rope_3d(grid, rope_dims(self.head_dim))
        context = nn_attention.AttentionContext(rng=rng, step=step, video_layout=self.layout(latents.shape),
                                                num_steps=num_steps, num_layers=self.depth)
        blocks = scan_layers(WanBlock, self.depth, remat=self.remat, broadcast_inputs=4)(
            self.width, self.num_heads, self.ffn_dim, self.eps, self.cross_attn_norm, self.attention_backend,
            self.attention_options, self.cross_attention_backend, self.dtype, name="blocks")
        x, _ = blocks(x, jnp.arange(self.depth), time_mod.reshape(batch, 6, self.width), text, rope, context)

        table = self.param("scale_shift_table", partitioned(nn.initializers.normal(self.width ** -0.5), None, "embed"),
                           (2, self.width))
        shift, scale = jnp.split((table + temb[:, None].astype(jnp.float32)), 2, axis=1)
        h = nn.LayerNorm(self.eps, use_scale=False, use_bias=False, dtype=jnp.float32)(x.astype(jnp.float32))
        h = (h * (1 + scale) + shift).astype(self.dtype)
        return project_out(h, grid, self.patch, self.out_channels)


def from_config(config: Mapping[str, Any], **overrides) -> WanTransformer:
    """Our module for a diffusers `WanTransformer3DModel` config.json (text-to-video); `overrides` set run-time
    fields."""
    unsupported = {key: config[key] for key in ("image_dim", "added_kv_proj_dim", "pos_embed_seq_len")
                   if config.get(key) is not None}
    if config.get("qk_norm", "rms_norm_across_heads") != "rms_norm_across_heads":
        unsupported["qk_norm"] = config["qk_norm"]
    if unsupported:
        raise ValueError(f"WanTransformer3DModel config not supported: {unsupported} (ported: text-to-video Wan2.1, "
                         f"qk_norm 'rms_norm_across_heads'; image conditioning is not)")
    heads, head_dim = config.get("num_attention_heads", 40), config.get("attention_head_dim", 128)
    rope_dims(head_dim)
    fields = dict(num_heads=heads, head_dim=head_dim, in_channels=config.get("in_channels", 16),
                  out_channels=config.get("out_channels") or config.get("in_channels", 16),
                  text_dim=config.get("text_dim", 4096), freq_dim=config.get("freq_dim", 256),
                  ffn_dim=config.get("ffn_dim", 13824), depth=config.get("num_layers", 40),
                  patch=tuple(config.get("patch_size", (1, 2, 2))), cross_attn_norm=config.get("cross_attn_norm", True),
                  eps=config.get("eps", 1e-6), rope_max_seq_len=config.get("rope_max_seq_len", 1024))
    return WanTransformer(**{**fields, **overrides})


def named(name: str, **overrides) -> WanTransformer:
    """`WanTransformer` of a named config ("1.3B", "14B", "tiny")."""
    if name not in CONFIGS:
        raise ValueError(f"unknown Wan config {name!r}; known: {sorted(CONFIGS)}")
    return from_config(CONFIGS[name], **overrides)


def example_inputs(module: WanTransformer, batch: int = 1, text_len: int = 2) -> tuple:
    return (jnp.zeros((batch, module.patch[0], 2 * module.patch[1], 2 * module.patch[2], module.in_channels)),
            jnp.zeros((batch,)), jnp.zeros((batch, text_len, module.text_dim)))


def name_table(module: WanTransformer) -> porting.NameTable:
    blk = "blocks.{i}."
    rows = [
        ("patch_embedding/kernel", ["patch_embedding.weight"], ports.conv3d_patch),
        ("patch_embedding/bias", ["patch_embedding.bias"], porting.same),
        ("time_embedder/linear_1/kernel", ["condition_embedder.time_embedder.linear_1.weight"], porting.linear),
        ("time_embedder/linear_1/bias", ["condition_embedder.time_embedder.linear_1.bias"], porting.same),
        ("time_embedder/linear_2/kernel", ["condition_embedder.time_embedder.linear_2.weight"], porting.linear),
        ("time_embedder/linear_2/bias", ["condition_embedder.time_embedder.linear_2.bias"], porting.same),
        ("time_proj/kernel", ["condition_embedder.time_proj.weight"], porting.linear),
        ("time_proj/bias", ["condition_embedder.time_proj.bias"], porting.same),
        ("text_embedder/Dense_0/kernel", ["condition_embedder.text_embedder.linear_1.weight"], porting.linear),
        ("text_embedder/Dense_0/bias", ["condition_embedder.text_embedder.linear_1.bias"], porting.same),
        ("text_embedder/Dense_1/kernel", ["condition_embedder.text_embedder.linear_2.weight"], porting.linear),
        ("text_embedder/Dense_1/bias", ["condition_embedder.text_embedder.linear_2.bias"], porting.same),
        ("blocks/scale_shift_table", [blk + "scale_shift_table"], lambda t: t[0]),
        ("blocks/norm2/scale", [blk + "norm2.weight"], porting.same),
        ("blocks/norm2/bias", [blk + "norm2.bias"], porting.same),
        ("scale_shift_table", ["scale_shift_table"], lambda t: t[0]),
        ("proj_out/kernel", ["proj_out.weight"], porting.linear),
        ("proj_out/bias", ["proj_out.bias"], porting.same),
    ]
    rows += feed_forward_rows("blocks/ffn", blk + "ffn")
    for attn in ("attn1", "attn2"):
        rows += attention_rows(f"blocks/{attn}", blk + attn, module.num_heads, "rms_norm_across_heads")
    return {path: (names, convert) for path, names, convert in rows}


PORT = ports.Port(module_from_config=from_config, name_table=name_table, example_inputs=example_inputs)
ports.register_port("WanTransformer3DModel", PORT)
