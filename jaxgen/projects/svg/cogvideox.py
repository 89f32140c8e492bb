"""CogVideoX-1.5's video transformer (diffusers' `CogVideoXTransformer3DModel` with `patch_size_t`) in Flax.

Layout: latents `[batch, frames, height, width, channels]` (channels last; frames a multiple of `patch_t`), timestep
`[batch]` (the 0-999 discrete timesteps of its v-prediction scheduler), `encoder_hidden_states`
`[batch, text_len, text_dim]` (T5 states, 226 in the pipeline). Output: the model's prediction in the latents' layout,
float32.

Joint text-video attention: the text tokens come first, then the `(patch_t, patch, patch)` video patches in
frame-major order, one sequence through every block, so the attention's `VideoLayout` has `text_tokens = text_len`
first (`CogVideoXTransformer.layout`), which is where SVG's masks keep text rows and columns dense. Per block
(diffusers' `CogVideoXBlock`): one Dense of the time embedding gives six vectors for the video tokens and six for the
text tokens (shift, scale, gate each, for attention and MLP: CogVideoX's "expert" adaLN), applied after one shared
LayerNorm; attention with a per-head LayerNorm on q and k and 3D RoPE on the video tokens only (head dim split
`hd/4, 3hd/8, 3hd/8` over time/height/width at integer positions, the pipeline's "slice" grid); a GELU-tanh MLP.
After the blocks, the video tokens alone go through a LayerNorm and an adaLN LayerNorm before the output projection.

Not ported: CogVideoX 1.0 (no `patch_size_t`: a Conv2d patch embedding and sin-cos positions) and the image-to-video
model's `ofs` embedding.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxgen.nn import attention as nn_attention
from jaxgen.nn import porting
from jaxgen.nn.embeddings import TimestepEmbedding
from jaxgen.nn.transformer import XAVIER, partitioned, scan_layers
from jaxgen.projects.svg import ports
from jaxgen.projects.svg.layout import VideoLayout
from jaxgen.projects.svg.model import patch_grid, patchify, rope_3d
from jaxgen.projects.svg.port_layers import (FeedForward, VideoAttention, attention_rows, check_text_inputs,
                                              feed_forward_rows, project_out)

CONFIGS: dict[str, dict[str, Any]] = {
    "1.5-5B": dict(num_attention_heads=48, attention_head_dim=64, num_layers=42, time_embed_dim=512,
                   text_embed_dim=4096, patch_size=2, patch_size_t=2, use_rotary_positional_embeddings=True),
    "tiny": dict(num_attention_heads=2, attention_head_dim=16, num_layers=2, time_embed_dim=24, text_embed_dim=12,
                 in_channels=4, out_channels=4, patch_size=2, patch_size_t=2, sample_width=8, sample_height=8,
                 sample_frames=9, max_text_seq_length=5, use_rotary_positional_embeddings=True),
}


def rope_dims(head_dim: int) -> tuple[int, int, int]:
    """CogVideoX's (time, height, width) split of the head dim."""
    dims = (head_dim // 4, head_dim // 8 * 3, head_dim // 8 * 3)
    if head_dim % 16 or sum(dims) != head_dim:
        raise ValueError(f"CogVideoX's 3D RoPE needs head_dim divisible by 16; got {head_dim}")
    return dims


class CogVideoXBlock(nn.Module):
    """`(x [batch, text + video, width], layer, emb, rope, context) -> (x, None)` for `nn.scan`."""

    width: int
    num_heads: int
    ffn_dim: int
    text_tokens: int
    eps: float = 1e-5
    backend: str = "dense"
    backend_options: Mapping[str, Any] | None = None
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, layer, emb, rope, context: nn_attention.AttentionContext):
        is_text = (jnp.arange(x.shape[1]) < self.text_tokens)[None, :, None]

        def modulation(name):
            """(shift, scale, gate) per token: video tokens read the first three vectors, text tokens the last."""
            values = nn.Dense(6 * self.width, dtype=self.dtype, name=name,
                              kernel_init=partitioned(nn.initializers.zeros, "embed", "mlp"),
                              bias_init=partitioned(nn.initializers.zeros, "mlp"))(nn.silu(emb))
            video_shift, video_scale, video_gate, text_shift, text_scale, text_gate = jnp.split(values[:, None], 6, -1)
            return tuple(jnp.where(is_text, t, v) for v, t in ((video_shift, text_shift), (video_scale, text_scale),
                                                              (video_gate, text_gate)))

        def norm(name, inputs):
            return nn.LayerNorm(self.eps, dtype=self.dtype, name=name,
                                scale_init=partitioned(nn.initializers.ones, "embed"),
                                bias_init=partitioned(nn.initializers.zeros, "embed"))(inputs)

        context = context.at_layer(layer)
        shift, scale, gate = modulation("norm1_linear")
        h = norm("norm1", x) * (1 + scale) + shift
        x = x + gate * VideoAttention(self.num_heads, self.width // self.num_heads, "layer_norm", 1e-6, self.backend,
                                      self.backend_options, self.dtype, name="attn1")(h, rope=rope, context=context)
        shift, scale, gate = modulation("norm2_linear")
        h = norm("norm2", x) * (1 + scale) + shift
        h = FeedForward(self.ffn_dim, self.dtype, name="ff")(h)
        return (x + gate * h).astype(self.dtype), None


class CogVideoXTransformer(nn.Module):
    """`CogVideoXTransformer3DModel` (1.5); `attention_backend` / `attention_options` for the joint attention."""

    num_heads: int = 48
    head_dim: int = 64
    in_channels: int = 16
    out_channels: int = 16
    time_embed_dim: int = 512
    text_dim: int = 4096
    depth: int = 42
    patch: tuple[int, int, int] = (2, 2, 2)
    freq_shift: float = 0.0
    eps: float = 1e-5
    attention_backend: str = "dense"
    attention_options: Mapping[str, Any] | None = None
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
        return patch_grid(latents_shape, self.patch, self.in_channels, "CogVideoX's latents")

    def layout(self, latents_shape: Sequence[int], text_tokens: int) -> VideoLayout:
        """SVG's view of the joint sequence: text first, then the frame-major patches."""
        frames, height, width = self.grid(latents_shape)
        return VideoLayout(num_frames=frames, frame_tokens=height * width, text_tokens=text_tokens, text_first=True)

    @nn.compact
    def __call__(self, latents: jax.Array, timestep: jax.Array, encoder_hidden_states: jax.Array, *, step=None,
                 num_steps: int | None = None, rng: jax.Array | None = None) -> jax.Array:
        grid = self.grid(latents.shape)
        check_text_inputs("CogVideoX", latents, timestep, encoder_hidden_states, self.text_dim)
        layout = self.layout(latents.shape, encoder_hidden_states.shape[1])
        emb = TimestepEmbedding(self.time_embed_dim, frequency_dim=self.width, freq_shift=self.freq_shift,
                                name="time_embedding")(timestep)
        text = nn.Dense(self.width, dtype=self.dtype, name="text_proj", kernel_init=partitioned(XAVIER, None, "embed"),
                        bias_init=partitioned(nn.initializers.zeros, "embed"))(encoder_hidden_states.astype(self.dtype))
        video = nn.Dense(self.width, dtype=self.dtype, name="patch_proj",
                         kernel_init=partitioned(XAVIER, None, "embed"),
                         bias_init=partitioned(nn.initializers.zeros, "embed"))(
            patchify(latents, self.patch).astype(self.dtype))
        x = jnp.concatenate([text, video], axis=1)

        # RoPE on the video tokens only: text rows rotate by angle 0 (the identity).
        cos, sin = rope_3d(grid, rope_dims(self.head_dim))
        rope = (jnp.concatenate([jnp.ones((layout.text_tokens, cos.shape[1])), cos]),
                jnp.concatenate([jnp.zeros((layout.text_tokens, sin.shape[1])), sin]))
        context = nn_attention.AttentionContext(rng=rng, step=step, video_layout=layout, num_steps=num_steps,
                                                num_layers=self.depth)
        blocks = scan_layers(CogVideoXBlock, self.depth, remat=self.remat, broadcast_inputs=3)(
            self.width, self.num_heads, 4 * self.width, layout.text_tokens, self.eps, self.attention_backend,
            self.attention_options, self.dtype, name="blocks")
        x, _ = blocks(x, jnp.arange(self.depth), emb, rope, context)

        def norm(name, inputs):
            return nn.LayerNorm(self.eps, dtype=jnp.float32, name=name,
                                scale_init=partitioned(nn.initializers.ones, "embed"),
                                bias_init=partitioned(nn.initializers.zeros, "embed"))(inputs)

        h = norm("norm_final", x[:, layout.text_tokens:])
        shift, scale = jnp.split(nn.Dense(2 * self.width, name="norm_out_linear",
                                          kernel_init=partitioned(nn.initializers.zeros, "embed", "mlp"),
                                          bias_init=partitioned(nn.initializers.zeros, "mlp"))(nn.silu(emb))[:, None],
                                 2, axis=-1)
        h = (norm("norm_out", h) * (1 + scale) + shift).astype(self.dtype)
        return project_out(h, grid, self.patch, self.out_channels)


def from_config(config: Mapping[str, Any], **overrides) -> CogVideoXTransformer:
    """Our module for a diffusers `CogVideoXTransformer3DModel` config.json of CogVideoX 1.5 (text-to-video)."""
    unsupported = {}
    if config.get("patch_size_t") is None:
        unsupported["patch_size_t"] = None
    if config.get("ofs_embed_dim"):
        unsupported["ofs_embed_dim"] = config["ofs_embed_dim"]
    for key, wanted in (("use_rotary_positional_embeddings", True), ("use_learned_positional_embeddings", False),
                        ("activation_fn", "gelu-approximate"), ("timestep_activation_fn", "silu"),
                        ("norm_elementwise_affine", True), ("flip_sin_to_cos", True), ("attention_bias", True)):
        if config.get(key, wanted) != wanted:
            unsupported[key] = config[key]
    if unsupported:
        raise ValueError(f"CogVideoXTransformer3DModel config not supported: {unsupported} (ported: CogVideoX 1.5 "
                         f"text-to-video: patch_size_t set, rotary positions, no ofs embedding)")
    heads, head_dim = config.get("num_attention_heads", 30), config.get("attention_head_dim", 64)
    rope_dims(head_dim)
    patch, patch_t = config.get("patch_size", 2), config["patch_size_t"]
    fields = dict(num_heads=heads, head_dim=head_dim, in_channels=config.get("in_channels", 16),
                  out_channels=config.get("out_channels") or config.get("in_channels", 16),
                  time_embed_dim=config.get("time_embed_dim", 512), text_dim=config.get("text_embed_dim", 4096),
                  depth=config.get("num_layers", 30), patch=(patch_t, patch, patch),
                  freq_shift=float(config.get("freq_shift", 0)), eps=config.get("norm_eps", 1e-5))
    return CogVideoXTransformer(**{**fields, **overrides})


def named(name: str, **overrides) -> CogVideoXTransformer:
    if name not in CONFIGS:
        raise ValueError(f"unknown CogVideoX config {name!r}; known: {sorted(CONFIGS)}")
    return from_config(CONFIGS[name], **overrides)


def example_inputs(module: CogVideoXTransformer, batch: int = 1, text_len: int = 2) -> tuple:
    return (jnp.zeros((batch, *module.patch, module.in_channels)), jnp.zeros((batch,)),
            jnp.zeros((batch, text_len, module.text_dim)))


def _patch_in(patch: Sequence[int]):
    """Linear [width, c * pt * ph * pw] (features ordered channel first) -> Dense kernel on (pt, ph, pw, c) features:
    the Linear is the Conv3d of Wan's patch embedding, flattened."""
    return lambda w: ports.conv3d_patch(w.reshape(w.shape[0], -1, *patch))


def name_table(module: CogVideoXTransformer) -> porting.NameTable:
    blk = "transformer_blocks.{i}."
    out_kernel, out_bias = ports.linear_patch_out(module.patch, module.out_channels)
    rows = [
        ("patch_proj/kernel", ["patch_embed.proj.weight"], _patch_in(module.patch)),
        ("patch_proj/bias", ["patch_embed.proj.bias"], porting.same),
        ("text_proj/kernel", ["patch_embed.text_proj.weight"], porting.linear),
        ("text_proj/bias", ["patch_embed.text_proj.bias"], porting.same),
        ("time_embedding/linear_1/kernel", ["time_embedding.linear_1.weight"], porting.linear),
        ("time_embedding/linear_1/bias", ["time_embedding.linear_1.bias"], porting.same),
        ("time_embedding/linear_2/kernel", ["time_embedding.linear_2.weight"], porting.linear),
        ("time_embedding/linear_2/bias", ["time_embedding.linear_2.bias"], porting.same),
        ("norm_final/scale", ["norm_final.weight"], porting.same),
        ("norm_final/bias", ["norm_final.bias"], porting.same),
        ("norm_out_linear/kernel", ["norm_out.linear.weight"], porting.linear),
        ("norm_out_linear/bias", ["norm_out.linear.bias"], porting.same),
        ("norm_out/scale", ["norm_out.norm.weight"], porting.same),
        ("norm_out/bias", ["norm_out.norm.bias"], porting.same),
        ("proj_out/kernel", ["proj_out.weight"], out_kernel),
        ("proj_out/bias", ["proj_out.bias"], out_bias),
    ]
    for norm in ("norm1", "norm2"):
        rows += [(f"blocks/{norm}_linear/kernel", [f"{blk}{norm}.linear.weight"], porting.linear),
                 (f"blocks/{norm}_linear/bias", [f"{blk}{norm}.linear.bias"], porting.same),
                 (f"blocks/{norm}/scale", [f"{blk}{norm}.norm.weight"], porting.same),
                 (f"blocks/{norm}/bias", [f"{blk}{norm}.norm.bias"], porting.same)]
    rows += feed_forward_rows("blocks/ff", blk + "ff")
    rows += attention_rows("blocks/attn1", blk + "attn1", module.num_heads, "layer_norm")
    return {path: (names, convert) for path, names, convert in rows}


PORT = ports.Port(module_from_config=from_config, name_table=name_table, example_inputs=example_inputs)
ports.register_port("CogVideoXTransformer3DModel", PORT)
