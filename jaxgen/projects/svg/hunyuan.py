"""HunyuanVideo's video transformer (diffusers' `HunyuanVideoTransformer3DModel`, text-to-video) in Flax.

Layout: latents `[batch, frames, height, width, channels]` (channels last), timestep `[batch]` in diffusers' units
(`1000 * t` of the flow-matching time, as the pipeline passes it), `encoder_hidden_states` `[batch, text_len,
text_dim]` (the LLaVA-Llama states, right-padded to 256 by the pipeline). Keywords: `pooled_projections`
`[batch, pooled_dim]` (CLIP's pooled vector), `encoder_attention_mask` `[batch, text_len]` (1 for real text tokens, 0
for padding; None: all real), `guidance` `[batch]` (the embedded guidance scale times 1000; the released 13B model is
guidance-distilled and needs it). Output: the velocity in the latents' layout, float32.

Pieces, in the order the original runs them:
  - token refiner (`context_embedder`): the masked mean of the text states and the timestep make a conditioning
    vector; a Linear lifts the text to the model width; `num_refiner_layers` blocks of self-attention among the text
    tokens (padding hidden by the mask) and a SiLU MLP, each gated by that vector;
  - conditioning `temb` = timestep embedding + guidance embedding + a projection of `pooled_projections`;
  - 3D RoPE on the video tokens: the head dim split `rope_axes_dim` (16/56/56) over time/height/width at integer
    positions, `theta` 256 (`jaxgen.projects.svg.model.rope_3d`, the same interleaved-pair rotation);
  - `num_layers` dual-stream blocks: video and text keep their own adaLN-Zero modulation, projections, per-head QK
    RMSNorm and MLP, and meet in one joint attention over `[video, text]` (text last);
  - `num_single_layers` single-stream blocks over the concatenated sequence: one adaLN-Zero, the attention and a
    GELU-tanh MLP computed side by side from the same normed input and merged by one Linear. Here video and text
    stay two arrays through them (the same layers on each, token-wise: the same numbers), joined only in the
    attention call, so that sequence parallelism ("ulysses") keeps the video split: a joint array of split video and
    whole text cannot stay split (`SingleStreamBlock`, docs/scale_out.md);
  - adaLN (scale, shift) LayerNorm and `proj_out` on the video tokens.
Each kind of block is one `nn.scan` (parameters stacked on "layers"); the joint attention of both kinds goes through
`attention_backend`, with layer indices 0 .. num_layers + num_single_layers - 1 in the attention context, so SVG's
dense gate counts the 60 layers of the 13B model as the official code does. Norms and modulation run in float32.

Padded text: diffusers hides a padded text key from every query in the joint attention (a key mask from the number
of real tokens, which assumes right-padding) and lets padded rows attend to the real keys; the official SVG code lets
padded rows see only padding. The two differ only in the outputs of padded text rows, which no later layer reads
(their keys are hidden) and which are dropped at the end, so the video output is the same. Two ways in:
  - `text_padding` (a static count, the same for the whole batch: the official code's `prompt_length`): the joint
    attention runs on the real tokens and the padding apart (`attention.with_padding_apart`), with any backend and
    no mask: cuDNN and SVG ("svg" sees the real tokens' `VideoLayout`). The sampling entry passes it.
  - the mask alone (rows padded differently): diffusers' key mask, which only XLA's "dense" backend can take (jax's
    cuDNN path wants a full `[queries, keys]` bias; SVG takes no dense mask).

Not ported: the image-to-video variants (`image_condition_type`: "latent_concat", "token_replace").
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
from jaxgen.nn.sequence_parallel import keep_sequence_split
from jaxgen.nn.transformer import XAVIER, apply_rope, partitioned, scan_layers
from jaxgen.projects.svg import ports
from jaxgen.projects.svg.attention import with_padding_apart
from jaxgen.projects.svg.layout import VideoLayout
from jaxgen.projects.svg.model import patch_grid, patchify, rope_3d
from jaxgen.projects.svg.port_layers import QK_NORMS, FeedForward, feed_forward_rows, project_out

# diffusers config.json fields of the released model (hunyuanvideo-community/HunyuanVideo: its defaults) and a
# CPU-tiny one.
CONFIGS: dict[str, dict[str, Any]] = {
    "13B": dict(num_attention_heads=24, attention_head_dim=128, num_layers=20, num_single_layers=40,
                num_refiner_layers=2, text_embed_dim=4096, pooled_projection_dim=768, rope_axes_dim=(16, 56, 56)),
    "tiny": dict(num_attention_heads=2, attention_head_dim=16, num_layers=2, num_single_layers=2, num_refiner_layers=2,
                 in_channels=4, out_channels=4, text_embed_dim=12, pooled_projection_dim=8, rope_axes_dim=(4, 6, 6)),
}

EPS = 1e-6  # every norm of the original


def _dense(features: int, dtype: Any, name: str, axes: tuple[str | None, str | None] = ("embed", "mlp")) -> nn.Dense:
    return nn.Dense(features, dtype=dtype, name=name, kernel_init=partitioned(XAVIER, *axes),
                    bias_init=partitioned(nn.initializers.zeros, axes[1]))


def _layer_norm(x: jax.Array) -> jax.Array:
    """LayerNorm without affine parameters, in float32."""
    return nn.LayerNorm(EPS, use_scale=False, use_bias=False, dtype=jnp.float32)(x.astype(jnp.float32))


def _modulation(emb: jax.Array, count: int, width: int, name: str) -> list[jax.Array]:
    """adaLN vectors: Linear(SiLU(emb)) split into `count` float32 `[batch, 1, width]`, in the original's order."""
    values = _dense(count * width, jnp.float32, name)(nn.silu(emb.astype(jnp.float32)))
    return jnp.split(values[:, None], count, axis=-1)


def _heads(num_heads: int, head_dim: int, dtype: Any, name: str) -> nn.DenseGeneral:
    return nn.DenseGeneral((num_heads, head_dim), dtype=dtype, name=name,
                           kernel_init=partitioned(XAVIER, "embed", "heads", "kv"),
                           bias_init=partitioned(nn.initializers.zeros, "heads", "kv"))


def _out(width: int, dtype: Any, name: str) -> nn.DenseGeneral:
    return nn.DenseGeneral(width, axis=(-2, -1), dtype=dtype, name=name,
                           kernel_init=partitioned(XAVIER, "heads", "kv", "embed"),
                           bias_init=partitioned(nn.initializers.zeros, "embed"))


def _attend(module: nn.Module, q, k, v, *, mask, backend: str, options: Mapping[str, Any] | None,
            context: nn_attention.AttentionContext) -> jax.Array:
    """The `jaxgen.nn.attention` backend on the joint sequence, its diagnostics sown. With padded text in the
    context's layout, the backend runs on the real tokens and the padding among itself
    (`attention.with_padding_apart`); otherwise on the whole sequence, with the key `mask` if any."""

    def attend(q, k, v, layout):
        return nn_attention.attention(q, k, v, backend=backend, mask=mask, context=context.replace(video_layout=layout),
                                      **dict(options or {}))

    out, aux = with_padding_apart(attend, q, k, v, context.video_layout, q.shape[-1] ** -0.5)
    for name, value in aux.items():
        module.sow("intermediates", name, value)
    return out


class JointAttention(nn.Module):
    """The joint attention over `[video, text]`, taking and returning the two streams apart.

    Dual-stream (`separate_text=True`): video and text have their own q/k/v projections and norms (`to_*`, `norm_*`
    for video, `add_*_proj`, `norm_added_*` for text) and outputs (`to_out`, `to_add_out`).
    Single-stream: one set of projections, applied to each stream (a token-wise layer: the same as over the joint
    sequence), and no output projection (the block's `proj_out` merges it with the MLP); returns the attention
    outputs `[batch, tokens, heads, head_dim]` of both streams.
    The streams meet only in the attention call: a joint sequence anywhere else would lose the split of the video
    tokens under sequence parallelism ("ulysses"), as a concatenation with the unsplit text cannot be split evenly.
    RoPE (`rope`: the video tokens' tables) turns the video's q and k only; the original's text rows rotate by angle
    0, the identity.
    """

    num_heads: int
    head_dim: int
    separate_text: bool
    backend: str
    backend_options: Mapping[str, Any] | None = None
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, video, text, *, rope, mask, context):
        norm = QK_NORMS["rms_norm"].module

        def projections(proj_names, norm_names):
            q_proj, k_proj, v_proj = (_heads(self.num_heads, self.head_dim, self.dtype, name) for name in proj_names)
            q_norm, k_norm = (norm(EPS, self.dtype, name) for name in norm_names)
            return lambda inputs: (q_norm(q_proj(inputs)), k_norm(k_proj(inputs)), v_proj(inputs))

        video_qkv = projections(("to_q", "to_k", "to_v"), ("norm_q", "norm_k"))
        text_qkv = (projections(("add_q_proj", "add_k_proj", "add_v_proj"), ("norm_added_q", "norm_added_k"))
                    if self.separate_text else video_qkv)
        q, k, v = video_qkv(video)
        q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        # Joined from three pieces (video, real text, padding), so that every slice of the joint sequence after this
        # (`with_padding_apart`'s, the "ulysses" backend's) falls on a piece boundary and XLA folds it away; a slice
        # across pieces makes XLA move video tokens between devices under sequence parallelism.
        real = text.shape[1] - context.video_layout.text_padding
        q, k, v = (jnp.concatenate([a, b[:, :real], b[:, real:]], axis=1) for a, b in zip((q, k, v), text_qkv(text)))
        out = _attend(self, q, k, v, mask=mask, backend=self.backend, options=self.backend_options,
                      context=context).astype(self.dtype)
        video_out, text_out = out[:, :video.shape[1]], out[:, video.shape[1]:]
        if not self.separate_text:
            return video_out, text_out
        width = self.num_heads * self.head_dim
        return _out(width, self.dtype, "to_out")(video_out), _out(width, self.dtype, "to_add_out")(text_out)


class DualStreamBlock(nn.Module):
    """`HunyuanVideoTransformerBlock`: `((video, text), layer, temb, rope, mask, context) -> ((video, text), None)`."""

    num_heads: int
    head_dim: int
    mlp_dim: int
    backend: str = "dense"
    backend_options: Mapping[str, Any] | None = None
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, streams, layer, temb, rope, mask, context: nn_attention.AttentionContext):
        video, text = streams
        video = keep_sequence_split(video, self.backend, self.backend_options)
        width = self.num_heads * self.head_dim
        shift, scale, gate, mlp_shift, mlp_scale, mlp_gate = _modulation(temb, 6, width, "norm1_linear")
        (text_shift, text_scale, text_gate, text_mlp_shift, text_mlp_scale,
         text_mlp_gate) = _modulation(temb, 6, width, "norm1_context_linear")
        attn_video, attn_text = JointAttention(self.num_heads, self.head_dim, True, self.backend, self.backend_options,
                                               self.dtype, name="attn")(
            (_layer_norm(video) * (1 + scale) + shift).astype(self.dtype),
            (_layer_norm(text) * (1 + text_scale) + text_shift).astype(self.dtype),
            rope=rope, mask=mask, context=context.at_layer(layer))
        video = video.astype(jnp.float32) + attn_video * gate
        text = text.astype(jnp.float32) + attn_text * text_gate
        ff = FeedForward(self.mlp_dim, self.dtype, name="ff")(
            (_layer_norm(video) * (1 + mlp_scale) + mlp_shift).astype(self.dtype))
        ff_text = FeedForward(self.mlp_dim, self.dtype, name="ff_context")(
            (_layer_norm(text) * (1 + text_mlp_scale) + text_mlp_shift).astype(self.dtype))
        video = keep_sequence_split((video + ff * mlp_gate).astype(self.dtype), self.backend, self.backend_options)
        return (video, (text + ff_text * text_mlp_gate).astype(self.dtype)), None


class SingleStreamBlock(nn.Module):
    """`HunyuanVideoSingleTransformerBlock`: `((video, text), layer, temb, rope, mask, context) -> ((video, text),
    None)`. The original runs on the joint sequence; every layer here but the attention is token-wise, so it runs on
    each stream with the same parameters (the same numbers), and only the attention joins them (`JointAttention`)."""

    num_heads: int
    head_dim: int
    mlp_dim: int
    backend: str = "dense"
    backend_options: Mapping[str, Any] | None = None
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, streams, layer, temb, rope, mask, context: nn_attention.AttentionContext):
        video, text = streams
        video = keep_sequence_split(video, self.backend, self.backend_options)
        width = self.num_heads * self.head_dim
        shift, scale, gate = _modulation(temb, 3, width, "norm_linear")
        normed = [(_layer_norm(x) * (1 + scale) + shift).astype(self.dtype) for x in (video, text)]
        attn = JointAttention(self.num_heads, self.head_dim, False, self.backend, self.backend_options, self.dtype,
                              name="attn")(*normed, rope=rope, mask=mask, context=context.at_layer(layer))
        proj_mlp = _dense(self.mlp_dim, self.dtype, "proj_mlp")
        proj_out = _dense(width, self.dtype, "proj_out", ("mlp", "embed"))

        def merge(x, h, attn):
            mlp = nn.gelu(proj_mlp(h), approximate=True)
            out = proj_out(jnp.concatenate([attn.reshape(*attn.shape[:2], width), mlp], axis=-1))
            return (x.astype(jnp.float32) + out * gate).astype(self.dtype)

        video, text = (merge(*args) for args in zip((video, text), normed, attn))
        return (keep_sequence_split(video, self.backend, self.backend_options), text), None


class RefinerBlock(nn.Module):
    """`HunyuanVideoIndividualTokenRefinerBlock`: `(text, layer, temb, mask) -> (text, None)`; self-attention among
    the text tokens by XLA ("dense": 256 tokens, nothing to gain from a kernel) under the token mask."""

    num_heads: int
    head_dim: int
    mlp_dim: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, layer, temb, mask):
        del layer
        width = self.num_heads * self.head_dim

        def norm(name, inputs):
            return nn.LayerNorm(EPS, dtype=jnp.float32, name=name,
                                scale_init=partitioned(nn.initializers.ones, "embed"),
                                bias_init=partitioned(nn.initializers.zeros, "embed"))(inputs.astype(jnp.float32))

        gate, mlp_gate = _modulation(temb, 2, width, "norm_out_linear")
        h = norm("norm1", x).astype(self.dtype)
        q, k, v = (_heads(self.num_heads, self.head_dim, self.dtype, name)(h) for name in ("to_q", "to_k", "to_v"))
        attn, _ = nn_attention.attention(q, k, v, backend="dense", mask=mask)
        x = x.astype(jnp.float32) + _out(width, self.dtype, "to_out")(attn.astype(self.dtype)) * gate
        ff = FeedForward(self.mlp_dim, self.dtype, "linear-silu", name="ff")(norm("norm2", x).astype(self.dtype))
        return (x + ff * mlp_gate).astype(self.dtype), None


class TextProjection(nn.Module):
    """diffusers' `PixArtAlphaTextProjection` with `act_fn="silu"`: Linear -> SiLU -> Linear."""

    width: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        h = _dense(self.width, self.dtype, "linear_1", (None, "mlp"))(x)
        return _dense(self.width, self.dtype, "linear_2", ("mlp", "embed"))(nn.silu(h))


class HunyuanVideoTransformer(nn.Module):
    """`HunyuanVideoTransformer3DModel` (text-to-video); fields are its config's (`from_config` maps names), plus
    run-time settings: `attention_backend` / `attention_options` for the joint attention (SVG here), compute `dtype`,
    `remat`."""

    num_heads: int = 24
    head_dim: int = 128
    in_channels: int = 16
    out_channels: int = 16
    depth: int = 20  # dual-stream blocks
    single_depth: int = 40
    refiner_depth: int = 2
    mlp_ratio: float = 4.0
    patch: tuple[int, int, int] = (1, 2, 2)
    guidance_embeds: bool = True
    text_dim: int = 4096
    pooled_dim: int = 768
    rope_theta: float = 256.0
    rope_axes_dim: tuple[int, int, int] = (16, 56, 56)
    attention_backend: str = "dense"
    attention_options: Mapping[str, Any] | None = None
    dtype: Any = jnp.float32
    remat: bool = False

    @property
    def width(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def num_layers(self) -> int:
        """Layers holding a joint attention: dual- then single-stream blocks."""
        return self.depth + self.single_depth

    def grid(self, latents_shape: Sequence[int]) -> tuple[int, int, int]:
        return patch_grid(latents_shape, self.patch, self.in_channels, "HunyuanVideo's latents")

    def layout(self, latents_shape: Sequence[int], text_tokens: int, text_padding: int = 0) -> VideoLayout:
        """SVG's view of the joint sequence: the frame-major patches, then the text, its last `text_padding` tokens
        padding."""
        frames, height, width = self.grid(latents_shape)
        return VideoLayout(num_frames=frames, frame_tokens=height * width, text_tokens=text_tokens, text_first=False,
                           text_padding=text_padding)

    def _check_inputs(self, latents, timestep, text, pooled, mask, guidance) -> None:
        batch = latents.shape[0]
        problems = []
        if timestep.shape != (batch,):
            problems.append(f"timestep {timestep.shape} (expected [{batch}])")
        if text.ndim != 3 or text.shape[::2] != (batch, self.text_dim):
            problems.append(f"encoder_hidden_states {text.shape} (expected [{batch}, text_len, {self.text_dim}])")
        if pooled is None or pooled.shape != (batch, self.pooled_dim):
            problems.append(f"pooled_projections {getattr(pooled, 'shape', None)} (expected [{batch}, "
                            f"{self.pooled_dim}])")
        if mask is not None and mask.shape != text.shape[:2]:
            problems.append(f"encoder_attention_mask {mask.shape} (expected {text.shape[:2]})")
        if self.guidance_embeds and (guidance is None or guidance.shape != (batch,)):
            problems.append(f"guidance {getattr(guidance, 'shape', None)} (expected [{batch}]: this model embeds "
                            f"the guidance scale)")
        if problems:
            raise ValueError(f"HunyuanVideo for latents {latents.shape}: " + "; ".join(problems))

    @nn.compact
    def __call__(self, latents: jax.Array, timestep: jax.Array, encoder_hidden_states: jax.Array, *,
                 pooled_projections: jax.Array, encoder_attention_mask: jax.Array | None = None,
                 guidance: jax.Array | None = None, text_padding: int | None = None, step=None,
                 num_steps: int | None = None, rng: jax.Array | None = None) -> jax.Array:
        """`text_padding`: the static number of padded text tokens, for backends other than "dense" (module
        docstring);
        `step` / `num_steps` / `rng` feed the attention context (SVG's dense gate and profiling rows)."""
        self._check_inputs(latents, timestep, encoder_hidden_states, pooled_projections, encoder_attention_mask,
                           guidance)
        batch, text_len = encoder_hidden_states.shape[:2]
        if self.attention_backend != "dense" and encoder_attention_mask is not None and text_padding is None:
            raise ValueError(f"attention backend {self.attention_backend!r} cannot take a per-row text mask (only "
                             f"'dense' can): pass text_padding, the number of padded text tokens, the same in every "
                             f"row, with encoder_attention_mask")
        if text_padding and encoder_attention_mask is None:
            raise ValueError(f"text_padding={text_padding} needs the encoder_attention_mask it counts (the dense "
                             f"backends and the token refiner read the mask)")
        grid = self.grid(latents.shape)
        layout = self.layout(latents.shape, text_len, text_padding or 0)
        text_mask = (jnp.ones((batch, text_len), bool) if encoder_attention_mask is None
                     else jnp.asarray(encoder_attention_mask).astype(bool))
        mlp_dim = int(self.width * self.mlp_ratio)

        # The conditioning vector: timestep + guidance + pooled text.
        def time_embedding(name):
            return TimestepEmbedding(self.width, frequency_dim=256, freq_shift=0.0, name=name)

        temb = time_embedding("timestep_embedder")(timestep) + TextProjection(self.width, name="text_embedder")(
            pooled_projections.astype(jnp.float32))
        if self.guidance_embeds:
            temb = temb + time_embedding("guidance_embedder")(guidance)

        # The token refiner: text tokens attend among the real ones (a padded row sees the first token only).
        keep = text_mask[..., None].astype(jnp.float32)
        pooled_text = jnp.sum(encoder_hidden_states.astype(jnp.float32) * keep, 1) / jnp.sum(keep, 1)
        refiner_temb = (time_embedding("refiner_timestep_embedder")(timestep)
                        + TextProjection(self.width, name="refiner_text_embedder")(pooled_text))
        text = _dense(self.width, self.dtype, "refiner_proj_in", (None, "embed"))(
            encoder_hidden_states.astype(self.dtype))
        refiner_mask = (text_mask[:, None, :, None] & text_mask[:, None, None, :]).at[..., 0].set(True)
        # diffusers builds the refiner with its default MLP ratio, 4, whatever the config's mlp_ratio.
        refiner = scan_layers(RefinerBlock, self.refiner_depth, remat=self.remat, broadcast_inputs=2)(
            self.num_heads, self.head_dim, 4 * self.width, self.dtype, name="refiner_blocks")
        text, _ = refiner(text, jnp.arange(self.refiner_depth), refiner_temb, refiner_mask)

        video = _dense(self.width, self.dtype, "patch_embedding", (None, "embed"))(
            patchify(latents, self.patch).astype(self.dtype))

        rope = rope_3d(grid, self.rope_axes_dim, self.rope_theta)  # the video tokens' (text rows: the identity)
        # diffusers' key mask: the first video + (number of real text tokens) positions (right-padded text).
        real = layout.video_tokens + jnp.sum(text_mask, axis=1)
        key_mask = (jnp.arange(layout.seq_len)[None, :] < real[:, None])[:, None, None, :]
        mask = key_mask if encoder_attention_mask is not None and text_padding is None else None
        context = nn_attention.AttentionContext(rng=rng, step=step, video_layout=layout, num_steps=num_steps,
                                                num_layers=self.num_layers)

        dual = scan_layers(DualStreamBlock, self.depth, remat=self.remat, broadcast_inputs=4)(
            self.num_heads, self.head_dim, mlp_dim, self.attention_backend, self.attention_options, self.dtype,
            name="double_blocks")
        (video, text), _ = dual((video, text), jnp.arange(self.depth), temb, rope, mask, context)
        single = scan_layers(SingleStreamBlock, self.single_depth, remat=self.remat, broadcast_inputs=4)(
            self.num_heads, self.head_dim, mlp_dim, self.attention_backend, self.attention_options, self.dtype,
            name="single_blocks")
        (video, _), _ = single((video, text), self.depth + jnp.arange(self.single_depth), temb, rope, mask, context)

        scale, shift = _modulation(temb, 2, self.width, "norm_out_linear")
        h = (_layer_norm(video) * (1 + scale) + shift).astype(self.dtype)
        return project_out(h, grid, self.patch, self.out_channels)


def from_config(config: Mapping[str, Any], **overrides) -> HunyuanVideoTransformer:
    """Our module for a diffusers `HunyuanVideoTransformer3DModel` config.json (text-to-video)."""
    unsupported = {}
    if config.get("image_condition_type") is not None:
        unsupported["image_condition_type"] = config["image_condition_type"]
    if config.get("qk_norm", "rms_norm") != "rms_norm":
        unsupported["qk_norm"] = config["qk_norm"]
    if unsupported:
        raise ValueError(f"HunyuanVideoTransformer3DModel config not supported: {unsupported} (ported: text-to-video "
                         f"HunyuanVideo, qk_norm 'rms_norm')")
    heads, head_dim = config.get("num_attention_heads", 24), config.get("attention_head_dim", 128)
    rope_axes = tuple(config.get("rope_axes_dim", (16, 56, 56)))
    if len(rope_axes) != 3 or sum(rope_axes) != head_dim or any(d % 2 for d in rope_axes):
        raise ValueError(f"HunyuanVideo's rope_axes_dim {rope_axes} must be three even sizes summing to "
                         f"attention_head_dim {head_dim}")
    patch = config.get("patch_size", 2)
    fields = dict(num_heads=heads, head_dim=head_dim, in_channels=config.get("in_channels", 16),
                  out_channels=config.get("out_channels") or config.get("in_channels", 16),
                  depth=config.get("num_layers", 20), single_depth=config.get("num_single_layers", 40),
                  refiner_depth=config.get("num_refiner_layers", 2), mlp_ratio=float(config.get("mlp_ratio", 4.0)),
                  patch=(config.get("patch_size_t", 1), patch, patch),
                  guidance_embeds=config.get("guidance_embeds", True), text_dim=config.get("text_embed_dim", 4096),
                  pooled_dim=config.get("pooled_projection_dim", 768),
                  rope_theta=float(config.get("rope_theta", 256.0)),
                  rope_axes_dim=rope_axes)
    return HunyuanVideoTransformer(**{**fields, **overrides})


def named(name: str, **overrides) -> HunyuanVideoTransformer:
    """`HunyuanVideoTransformer` of a named config ("13B", "tiny")."""
    if name not in CONFIGS:
        raise ValueError(f"unknown HunyuanVideo config {name!r}; known: {sorted(CONFIGS)}")
    return from_config(CONFIGS[name], **overrides)


def example_inputs(module: HunyuanVideoTransformer, batch: int = 1, text_len: int = 2) -> tuple:
    return (jnp.zeros((batch, *module.patch[:1], 2 * module.patch[1], 2 * module.patch[2], module.in_channels)),
            jnp.zeros((batch,)), jnp.zeros((batch, text_len, module.text_dim)))


def example_kwargs(module: HunyuanVideoTransformer, batch: int = 1) -> dict:
    """The keyword inputs: pooled projections, and guidance where the model embeds it."""
    return dict(pooled_projections=jnp.zeros((batch, module.pooled_dim)),
                guidance=jnp.zeros((batch,)) if module.guidance_embeds else None)


def depth_of(module: HunyuanVideoTransformer, path: str) -> int:
    """How many blocks a per-block parameter stacks: the scan it belongs to."""
    scans = {"double_blocks": module.depth, "single_blocks": module.single_depth,
             "refiner_blocks": module.refiner_depth}
    return scans[path.split("/")[0]]


def _attention_rows(path: str, prefix: str, heads: int, projections: Sequence[tuple[str, str]],
                    norms: Sequence[tuple[str, str]], outputs: Sequence[tuple[str, str]]) -> list[tuple]:
    """Rows of q/k/v projections `(ours, theirs)`, per-head RMSNorms and output projections of an attention."""
    rows = []
    for ours, theirs in projections:
        rows += [(f"{path}/{ours}/kernel", [f"{prefix}.{theirs}.weight"], porting.heads_in(heads)),
                 (f"{path}/{ours}/bias", [f"{prefix}.{theirs}.bias"], porting.heads_bias(heads))]
    rows += [(f"{path}/{ours}/scale", [f"{prefix}.{theirs}.weight"], porting.same) for ours, theirs in norms]
    for ours, theirs in outputs:
        rows += [(f"{path}/{ours}/kernel", [f"{prefix}.{theirs}.weight"], porting.heads_out(heads)),
                 (f"{path}/{ours}/bias", [f"{prefix}.{theirs}.bias"], porting.same)]
    return rows


def _linear_rows(ours: str, theirs: str) -> list[tuple]:
    return [(f"{ours}/kernel", [f"{theirs}.weight"], porting.linear),
            (f"{ours}/bias", [f"{theirs}.bias"], porting.same)]


def name_table(module: HunyuanVideoTransformer) -> porting.NameTable:
    heads = module.num_heads
    qkv = [(p, p) for p in ("to_q", "to_k", "to_v")]
    out_kernel, out_bias = ports.linear_patch_out(module.patch, module.out_channels)
    refiner, dual, single = ("context_embedder.token_refiner.refiner_blocks.{i}.", "transformer_blocks.{i}.",
                             "single_transformer_blocks.{i}.")
    rows = [
        ("patch_embedding/kernel", ["x_embedder.proj.weight"], ports.conv3d_patch),
        ("patch_embedding/bias", ["x_embedder.proj.bias"], porting.same),
        ("proj_out/kernel", ["proj_out.weight"], out_kernel),
        ("proj_out/bias", ["proj_out.bias"], out_bias),
        *_linear_rows("norm_out_linear", "norm_out.linear"),
        *_linear_rows("refiner_proj_in", "context_embedder.proj_in"),
    ]
    embedders = {"timestep_embedder": "time_text_embed.timestep_embedder",
                 "text_embedder": "time_text_embed.text_embedder",
                 "refiner_timestep_embedder": "context_embedder.time_text_embed.timestep_embedder",
                 "refiner_text_embedder": "context_embedder.time_text_embed.text_embedder"}
    if module.guidance_embeds:
        embedders["guidance_embedder"] = "time_text_embed.guidance_embedder"
    for ours, theirs in embedders.items():
        rows += _linear_rows(f"{ours}/linear_1", f"{theirs}.linear_1") + _linear_rows(f"{ours}/linear_2",
                                                                                     f"{theirs}.linear_2")
    # token refiner blocks
    for norm in ("norm1", "norm2"):
        rows += [(f"refiner_blocks/{norm}/scale", [f"{refiner}{norm}.weight"], porting.same),
                 (f"refiner_blocks/{norm}/bias", [f"{refiner}{norm}.bias"], porting.same)]
    rows += _attention_rows("refiner_blocks", refiner + "attn", heads, qkv, (), [("to_out", "to_out.0")])
    rows += feed_forward_rows("refiner_blocks/ff", refiner + "ff")
    rows += _linear_rows("refiner_blocks/norm_out_linear", refiner + "norm_out.linear")
    # dual-stream blocks
    rows += _linear_rows("double_blocks/norm1_linear", dual + "norm1.linear")
    rows += _linear_rows("double_blocks/norm1_context_linear", dual + "norm1_context.linear")
    rows += _attention_rows("double_blocks/attn", dual + "attn", heads,
                            qkv + [(p, p) for p in ("add_q_proj", "add_k_proj", "add_v_proj")],
                            [(n, n) for n in ("norm_q", "norm_k", "norm_added_q", "norm_added_k")],
                            [("to_out", "to_out.0"), ("to_add_out", "to_add_out")])
    rows += feed_forward_rows("double_blocks/ff", dual + "ff")
    rows += feed_forward_rows("double_blocks/ff_context", dual + "ff_context")
    # single-stream blocks
    rows += _linear_rows("single_blocks/norm_linear", single + "norm.linear")
    rows += _attention_rows("single_blocks/attn", single + "attn", heads, qkv, [(n, n) for n in ("norm_q", "norm_k")],
                            ())
    rows += _linear_rows("single_blocks/proj_mlp", single + "proj_mlp")
    rows += _linear_rows("single_blocks/proj_out", single + "proj_out")
    return {path: (names, convert) for path, names, convert in rows}


PORT = ports.Port(module_from_config=from_config, name_table=name_table, example_inputs=example_inputs,
                  example_kwargs=example_kwargs, depth_of=depth_of)
ports.register_port("HunyuanVideoTransformer3DModel", PORT)
