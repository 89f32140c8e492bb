"""FLUX.1 (Black Forest Labs) transformer: a Linen port of diffusers' `FluxTransformer2DModel`, and the parts of
diffusers' `FluxPipeline` around it (latent packing, position ids, the shifted flow-matching schedule, sampling).

Data flow (`FluxTransformer.__call__`): packed image latents `[batch, image_tokens, in_channels]` (2×2 patches of
a 16-channel VAE latent, 64 features; `pack_latents`) and T5 text embeddings `[batch, text_tokens, 4096]` are
projected to the model width (3,072 for FLUX.1). The conditioning vector is `timestep embedding (+ guidance
embedding) + MLP(pooled CLIP embedding)`; both timestep and guidance come in as diffusers' pipeline passes them
(sigma in [0, 1], the guidance scale) and are multiplied by 1,000 before the sinusoid. Then:
  - `num_layers` double-stream blocks (MMDiT): text and image tokens keep their own weights (modulation, q/k/v,
    q/k RMSNorm, output projection, MLP) and meet in one joint attention over `[text; image]`;
  - `num_single_layers` single-stream blocks over the concatenated sequence: one modulation, then attention and MLP
    in parallel from the same normalised input, summed into the residual through one gate;
  - the image tokens leave through a final adaptive LayerNorm (scale and shift from the conditioning) and a Dense.
Positions are FLUX's multi-axis RoPE: every token has `len(axes_dims_rope)` coordinates (0 / row / column for image
tokens, all zero for text); axis `i` rotates `axes_dims_rope[i]` channels of each head.

Parameter paths, chosen so a regex selects a kind of layer (SVDQuant's rules) and both streams read alike:
  x_embedder, context_embedder, time_text_embed/{timestep,guidance}_embedder/linear_{1,2},
  time_text_embed/text_embedder/linear_{1,2}, norm_out (final scale/shift), proj_out;
  transformer_blocks/{img,txt}_mod (adaLN-Zero, 6·width), transformer_blocks/{img,txt}_attn/{qkv,q_norm,k_norm,out},
  transformer_blocks/{img,txt}_mlp/{fc1,fc2};
  single_transformer_blocks/mod (3·width), single_transformer_blocks/attn/{qkv,q_norm,k_norm,out},
  single_transformer_blocks/mlp/{fc1,fc2}.
Every projection is a plain `nn.Dense` whose input is exactly the activation it multiplies; in particular every
`mlp/fc2` reads the GELU output (the unsigned input SVDQuant quantizes with a shift). diffusers' single block
projects `concat(attention, GELU(fc1 x))` with one Linear `proj_out`; here that Linear is split by input columns into
`attn/out` (with the bias) and `mlp/fc2` (no bias) whose outputs are summed: the same function, with the post-GELU
activation visible on its own, as nunchaku (SVDQuant's engine) splits it. q, k and v share one fused Dense (one GEMM;
one smoothing vector for SVDQuant, as nunchaku fuses them). A calibration pass sees every Dense's input under its
parameter path with `nn.intercept_methods` (inside the scans too: values sown there come back stacked over layers);
tests/nn/flux_vs_reference_test.py does exactly that. Logical axes: "embed" for the width, "mlp" for fused or widened
outputs (q/k/v, modulation, MLP hidden), "heads" for the attention output's input, "kv" for the per-head norms,
"layers" for the scan axis.

Blocks run as two `nn.scan`s (parameters stacked on a leading "layers" axis; optional `remat`), and attention goes
through `jaxgen.nn.attention` backends by name ("dense" on CPU, "cudnn" on GPU in bf16). `dtype` is the compute
dtype; `init` makes float32 parameters, `from_diffusers(dtype=...)` and `random_params(dtype=...)` any dtype (the
model computes in `dtype` whatever they are). Named configs: `CONFIGS` ("dev", "schnell", "tiny"), built with
`flux(name, **overrides)`; FLUX.1-dev has 11,901,408,320 parameters.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxgen.diffusion.flow_matching import resolution_shift
from jaxgen.diffusion.sampling import euler_sample, euler_timesteps
from jaxgen.nn import attention as nn_attention
from jaxgen.nn import porting, safetensors_io
from jaxgen.nn.embeddings import TimestepEmbedding
from jaxgen.nn.transformer import XAVIER, attend, partitioned, scan_layers

_EPS = 1e-6  # every LayerNorm and RMSNorm of FLUX


def _dense(features: int, axes: tuple[str | None, str | None], dtype: Any, name: str | None = None,
           use_bias: bool = True) -> nn.Dense:
    """A plain Dense with logical axes on kernel and bias (`name` only outside `setup`)."""
    return nn.Dense(features, use_bias=use_bias, dtype=dtype, kernel_init=partitioned(XAVIER, *axes),
                    bias_init=partitioned(nn.initializers.zeros, axes[1]), **({"name": name} if name else {}))


def _layer_norm(x: jax.Array) -> jax.Array:
    """LayerNorm without affine parameters (epsilon 1e-6), computed in float32 and returned in x's dtype."""
    x32 = x.astype(jnp.float32)
    centred = x32 - x32.mean(-1, keepdims=True)
    return (centred * jax.lax.rsqrt(jnp.mean(centred ** 2, -1, keepdims=True) + _EPS)).astype(x.dtype)


def _modulate(x: jax.Array, shift: jax.Array, scale: jax.Array) -> jax.Array:
    return _layer_norm(x) * (1 + scale[:, None]) + shift[:, None]


def rope_tables(ids: jax.Array, axes_dims: tuple[int, ...], theta: float = 10000.0) -> tuple[jax.Array, jax.Array]:
    """FLUX's multi-axis RoPE: ids `[seq, len(axes_dims)]` -> (cos, sin) `[seq, sum(axes_dims) / 2]`.

    Axis `i` contributes `axes_dims[i] / 2` angles `ids[:, i] * theta ** (-2j / axes_dims[i])`, concatenated over
    axes; `jaxgen.nn.transformer.apply_rope` rotates channel pair (2j, 2j+1) by angle j, which is diffusers'
    interleaved ("repeat_interleave_real") layout. Angles are computed in float32 (diffusers: float64; positions up
    to a few hundred keep the difference near 1e-5).
    """
    if ids.ndim != 2 or ids.shape[1] != len(axes_dims) or any(d % 2 for d in axes_dims):
        raise ValueError(f"rope_tables takes ids [seq, {len(axes_dims)}] for even axes_dims {tuple(axes_dims)}; got "
                         f"ids {ids.shape}")
    angles = [ids[:, i:i + 1].astype(jnp.float32) * theta ** (-jnp.arange(0, d, 2, dtype=jnp.float32) / d)
              for i, d in enumerate(axes_dims)]
    angles = jnp.concatenate(angles, axis=-1)
    return jnp.cos(angles), jnp.sin(angles)


class TextProjection(nn.Module):
    """Pooled text embedding -> width: Dense -> SiLU -> Dense (diffusers' `PixArtAlphaTextProjection`, act "silu")."""

    width: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, pooled: jax.Array) -> jax.Array:
        h = _dense(self.width, (None, "embed"), self.dtype, "linear_1")(pooled)
        return _dense(self.width, ("mlp", "embed"), self.dtype, "linear_2")(nn.silu(h))


class TimeTextEmbedding(nn.Module):
    """`c = MLP(sinusoid(1000 t)) (+ MLP(sinusoid(1000 guidance))) + MLP(pooled)`: diffusers'
    `CombinedTimestepGuidanceTextProjEmbeddings` (FLUX.1-dev) or, without guidance, `CombinedTimestepTextProjEmbeddings`
    (FLUX.1-schnell). Sinusoids are `[cos, sin]` of 256 channels with frequency shift 0."""

    width: int
    guidance_embeds: bool
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, timestep: jax.Array, guidance: jax.Array | None, pooled: jax.Array) -> jax.Array:
        c = TimestepEmbedding(self.width, freq_shift=0.0, dtype=self.dtype, name="timestep_embedder")(
            self._scaled(timestep))
        if self.guidance_embeds:
            c = c + TimestepEmbedding(self.width, freq_shift=0.0, dtype=self.dtype,
                                      name="guidance_embedder")(self._scaled(guidance))
        return c + TextProjection(self.width, self.dtype, name="text_embedder")(pooled)

    def _scaled(self, t: jax.Array) -> jax.Array:
        """`1000 t` after rounding t to the compute dtype, as diffusers (`timestep.to(hidden_states.dtype)`) and BFL's
        sampler (`torch.full(..., t, dtype=img.dtype)`) both feed it: in bf16, sigma 0.7 becomes 699.2, not 700."""
        return t.astype(self.dtype).astype(jnp.float32) * 1000


class AttentionProjections(nn.Module):
    """One stream's attention weights: fused q/k/v Dense, per-head RMSNorm on q and k, output Dense.

    `project(x)` -> q, k, v `[batch, seq, heads, head_dim]` (normalised q and k); `output(o)` projects the attention
    output `[batch, seq, heads, head_dim]` back to the width. Two methods because the double-stream block attends
    over both streams between them.
    """

    width: int
    num_heads: int
    head_dim: int
    dtype: Any = jnp.float32

    def setup(self):
        inner = self.num_heads * self.head_dim
        self.qkv = _dense(3 * inner, ("embed", "mlp"), self.dtype)
        self.q_norm = nn.RMSNorm(epsilon=_EPS, dtype=self.dtype, scale_init=partitioned(nn.initializers.ones, "kv"))
        self.k_norm = nn.RMSNorm(epsilon=_EPS, dtype=self.dtype, scale_init=partitioned(nn.initializers.ones, "kv"))
        self.out = _dense(self.width, ("heads", "embed"), self.dtype)

    def project(self, x: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        qkv = self.qkv(x).reshape(*x.shape[:2], 3, self.num_heads, self.head_dim)
        return self.q_norm(qkv[:, :, 0]), self.k_norm(qkv[:, :, 1]), qkv[:, :, 2]

    def output(self, o: jax.Array) -> jax.Array:
        return self.out(o.reshape(*o.shape[:2], -1))


class MLP(nn.Module):
    """fc1 -> GELU (tanh) -> fc2; `fc2` sees the GELU output as its input."""

    hidden: int
    width: int
    out_bias: bool = True
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        h = nn.gelu(_dense(self.hidden, ("embed", "mlp"), self.dtype, "fc1")(x), approximate=True)
        return _dense(self.width, ("mlp", "embed"), self.dtype, "fc2", use_bias=self.out_bias)(h)


class DoubleStreamBlock(nn.Module):
    """MMDiT block (diffusers' `FluxTransformerBlock`): per-stream adaLN-Zero, joint attention over [text; image],
    per-stream MLP. `(carry=(img, txt), layer, temb, rope, context) -> ((img, txt), None)`, the `nn.scan` signature."""

    width: int
    num_heads: int
    head_dim: int
    mlp_ratio: float = 4.0
    backend: str = "dense"
    backend_options: Mapping[str, Any] | None = None
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, carry, layer, temb, rope, context: nn_attention.AttentionContext):
        img, txt = carry
        cond = nn.silu(temb)
        img_mod = jnp.split(_dense(6 * self.width, ("embed", "mlp"), self.dtype, "img_mod")(cond), 6, axis=-1)
        txt_mod = jnp.split(_dense(6 * self.width, ("embed", "mlp"), self.dtype, "txt_mod")(cond), 6, axis=-1)
        img_attn = AttentionProjections(self.width, self.num_heads, self.head_dim, self.dtype, name="img_attn")
        txt_attn = AttentionProjections(self.width, self.num_heads, self.head_dim, self.dtype, name="txt_attn")
        img_q, img_k, img_v = img_attn.project(_modulate(img, img_mod[0], img_mod[1]))
        txt_q, txt_k, txt_v = txt_attn.project(_modulate(txt, txt_mod[0], txt_mod[1]))
        out = attend(self, jnp.concatenate([txt_q, img_q], 1), jnp.concatenate([txt_k, img_k], 1),
                     jnp.concatenate([txt_v, img_v], 1), rope=rope, backend=self.backend,
                     backend_options=self.backend_options, context=context.replace(layer=layer))
        text_len, hidden = txt.shape[1], int(self.mlp_ratio * self.width)

        img = img + img_mod[2][:, None] * img_attn.output(out[:, text_len:])
        img_mlp = MLP(hidden, self.width, dtype=self.dtype, name="img_mlp")
        img = img + img_mod[5][:, None] * img_mlp(_modulate(img, img_mod[3], img_mod[4]))

        txt = txt + txt_mod[2][:, None] * txt_attn.output(out[:, :text_len])
        txt_mlp = MLP(hidden, self.width, dtype=self.dtype, name="txt_mlp")
        txt = txt + txt_mod[5][:, None] * txt_mlp(_modulate(txt, txt_mod[3], txt_mod[4]))
        return (img.astype(carry[0].dtype), txt.astype(carry[1].dtype)), None


class SingleStreamBlock(nn.Module):
    """Parallel block (diffusers' `FluxSingleTransformerBlock`) over `[text; image]` tokens:
    `x + gate * (attn/out(attention) + mlp/fc2(GELU(mlp/fc1 h)))`, `h` the modulated LayerNorm of x.
    `(x, layer, temb, rope, context) -> (x, None)`."""

    width: int
    num_heads: int
    head_dim: int
    mlp_ratio: float = 4.0
    backend: str = "dense"
    backend_options: Mapping[str, Any] | None = None
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, layer, temb, rope, context: nn_attention.AttentionContext):
        shift, scale, gate = jnp.split(_dense(3 * self.width, ("embed", "mlp"), self.dtype, "mod")(nn.silu(temb)), 3,
                                       axis=-1)
        h = _modulate(x, shift, scale)
        attn = AttentionProjections(self.width, self.num_heads, self.head_dim, self.dtype, name="attn")
        out = attend(self, *attn.project(h), rope=rope, backend=self.backend, backend_options=self.backend_options,
                     context=context.replace(layer=layer))
        mlp = MLP(int(self.mlp_ratio * self.width), self.width, out_bias=False, dtype=self.dtype, name="mlp")
        return (x + gate[:, None] * (attn.output(out) + mlp(h))).astype(x.dtype), None


class FluxTransformer(nn.Module):
    """FLUX.1's transformer; field names follow diffusers' config.json where they exist (see `module_from_config`).

    `__call__(hidden_states, encoder_hidden_states, pooled_projections, timestep, img_ids, txt_ids, guidance=None)`
    -> `[batch, image_tokens, patch_size² * out_channels]` float32, the velocity of the packed latents:
      hidden_states `[batch, image_tokens, in_channels]` packed latents (`pack_latents`);
      encoder_hidden_states `[batch, text_tokens, joint_attention_dim]` (T5-XXL output in FLUX.1);
      pooled_projections `[batch, pooled_projection_dim]` (CLIP-L pooled output);
      timestep `[batch]` sigma in [0, 1]; guidance `[batch]` (the guidance scale) iff `guidance_embeds`;
      img_ids `[image_tokens, len(axes_dims_rope)]`, txt_ids `[text_tokens, len(axes_dims_rope)]` (`image_ids`,
      `text_ids`).
    """

    in_channels: int = 64
    out_channels: int | None = None
    patch_size: int = 1
    num_layers: int = 19
    num_single_layers: int = 38
    num_heads: int = 24
    head_dim: int = 128
    joint_attention_dim: int = 4096
    pooled_projection_dim: int = 768
    guidance_embeds: bool = False
    axes_dims_rope: tuple[int, ...] = (16, 56, 56)
    rope_theta: float = 10000.0
    mlp_ratio: float = 4.0
    attention_backend: str = "dense"
    attention_options: Mapping[str, Any] | None = None
    dtype: Any = jnp.float32
    remat: bool = False

    def __post_init__(self):
        if sum(self.axes_dims_rope) != self.head_dim or any(d % 2 for d in self.axes_dims_rope):
            raise ValueError(f"FLUX axes_dims_rope {tuple(self.axes_dims_rope)} must be even and sum to head_dim "
                             f"{self.head_dim}")
        if self.num_layers < 1 or self.num_single_layers < 1:
            raise ValueError(f"FLUX needs at least one block of each kind; got num_layers {self.num_layers}, "
                             f"num_single_layers {self.num_single_layers}")
        super().__post_init__()

    @property
    def width(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def output_channels(self) -> int:
        return self.patch_size ** 2 * (self.out_channels or self.in_channels)

    def _check_inputs(self, hidden_states, encoder_hidden_states, pooled_projections, timestep, img_ids, txt_ids,
                      guidance):
        if hidden_states.ndim != 3 or encoder_hidden_states.ndim != 3:
            raise ValueError(f"FLUX takes hidden_states and encoder_hidden_states as [batch, tokens, channels]; got "
                             f"{hidden_states.shape} and {encoder_hidden_states.shape}")
        if guidance is not None and not self.guidance_embeds:
            raise ValueError(f"this FLUX transformer has no guidance embedding (guidance_embeds=False, like "
                             f"FLUX.1-schnell); got guidance {jnp.shape(guidance)}")
        (batch, image_tokens, _), text_tokens = hidden_states.shape, encoder_hidden_states.shape[1]
        n_axes = len(self.axes_dims_rope)
        expected = {"hidden_states": (hidden_states, (batch, image_tokens, self.in_channels)),
                    "encoder_hidden_states": (encoder_hidden_states, (batch, text_tokens, self.joint_attention_dim)),
                    "pooled_projections": (pooled_projections, (batch, self.pooled_projection_dim)),
                    "timestep": (timestep, (batch,)), "img_ids": (img_ids, (image_tokens, n_axes)),
                    "txt_ids": (txt_ids, (text_tokens, n_axes))}
        if self.guidance_embeds:
            expected["guidance"] = (guidance, (batch,))
        wrong = {name: f"expected {want}, got {None if x is None else tuple(x.shape)}"
                 for name, (x, want) in expected.items() if x is None or tuple(x.shape) != want}
        if wrong:
            raise ValueError(f"FLUX inputs of the wrong shape: {wrong}")

    @nn.compact
    def __call__(self, hidden_states: jax.Array, encoder_hidden_states: jax.Array, pooled_projections: jax.Array,
                 timestep: jax.Array, img_ids: jax.Array, txt_ids: jax.Array,
                 guidance: jax.Array | None = None) -> jax.Array:
        self._check_inputs(hidden_states, encoder_hidden_states, pooled_projections, timestep, img_ids, txt_ids,
                           guidance)
        img = _dense(self.width, (None, "embed"), self.dtype, "x_embedder")(hidden_states)
        txt = _dense(self.width, (None, "embed"), self.dtype, "context_embedder")(encoder_hidden_states)
        temb = TimeTextEmbedding(self.width, self.guidance_embeds, self.dtype, name="time_text_embed")(
            timestep, guidance, pooled_projections)
        rope = rope_tables(jnp.concatenate([txt_ids, img_ids]), tuple(self.axes_dims_rope), self.rope_theta)

        depth = self.num_layers + self.num_single_layers
        context = nn_attention.AttentionContext(num_layers=depth)
        fields = dict(width=self.width, num_heads=self.num_heads, head_dim=self.head_dim, mlp_ratio=self.mlp_ratio,
                      backend=self.attention_backend, backend_options=self.attention_options, dtype=self.dtype)
        double = scan_layers(DoubleStreamBlock, self.num_layers, remat=self.remat, broadcast_inputs=3)(
            name="transformer_blocks", **fields)
        (img, txt), _ = double((img, txt), jnp.arange(self.num_layers), temb, rope, context)
        single = scan_layers(SingleStreamBlock, self.num_single_layers, remat=self.remat, broadcast_inputs=3)(
            name="single_transformer_blocks", **fields)
        x, _ = single(jnp.concatenate([txt, img], 1), jnp.arange(self.num_layers, depth), temb, rope, context)
        img = x[:, txt.shape[1]:]

        scale, shift = jnp.split(_dense(2 * self.width, ("embed", "mlp"), self.dtype, "norm_out")(nn.silu(temb)), 2,
                                 axis=-1)
        img = _modulate(img, shift, scale)
        return _dense(self.output_channels, ("embed", None), self.dtype, "proj_out")(img).astype(jnp.float32)


_DEV = dict(in_channels=64, num_layers=19, num_single_layers=38, num_heads=24, head_dim=128, joint_attention_dim=4096,
            pooled_projection_dim=768, axes_dims_rope=(16, 56, 56))
CONFIGS: dict[str, dict[str, Any]] = {
    "dev": {**_DEV, "guidance_embeds": True},  # FLUX.1-dev: guidance-distilled, takes the guidance scale as input
    "schnell": {**_DEV, "guidance_embeds": False},  # FLUX.1-schnell: timestep-distilled, no guidance input
    "tiny": dict(in_channels=16, num_layers=2, num_single_layers=2, num_heads=2, head_dim=16, joint_attention_dim=32,
                 pooled_projection_dim=24, guidance_embeds=True, axes_dims_rope=(4, 6, 6)),
}


def flux(name: str, **overrides) -> FluxTransformer:
    """`FluxTransformer` of the named config (`CONFIGS`); `overrides` set any field (dtype, attention_backend,
    remat)."""
    if name not in CONFIGS:
        raise ValueError(f"unknown FLUX config {name!r}; known: {sorted(CONFIGS)}")
    return FluxTransformer(**{**CONFIGS[name], **overrides})


def example_inputs(module: FluxTransformer, *, batch: int = 1, image_tokens: int = 4, text_tokens: int = 2,
                   dtype: Any = jnp.float32) -> tuple:
    """Zero inputs of the right shapes, for `init` / `eval_shape` (ids as `image_ids`/`text_ids` would give)."""
    n_axes = len(module.axes_dims_rope)
    return (jnp.zeros((batch, image_tokens, module.in_channels), dtype),
            jnp.zeros((batch, text_tokens, module.joint_attention_dim), dtype),
            jnp.zeros((batch, module.pooled_projection_dim), dtype), jnp.zeros((batch,), jnp.float32),
            jnp.zeros((image_tokens, n_axes), jnp.float32), jnp.zeros((text_tokens, n_axes), jnp.float32),
            jnp.ones((batch,), jnp.float32) if module.guidance_embeds else None)


def random_params(module: FluxTransformer, seed: int = 0, dtype: Any = jnp.float32) -> dict:
    """`{"params": ...}` of random weights in `dtype`, made without running the model (`module.init` would trace and
    compile the whole forward pass too): kernels uniform with std 1/sqrt(fan_in), so activations keep their scale
    through the blocks; biases uniform with std 0.02; norm scales one. For benchmarks and tests where no checkpoint
    exists; on an accelerator every weight is made on the device, never on the host.

    The weights are slices of a few long uniform draws, one jit per ~2^30 values (so a 12B model needs one draw's
    worth of scratch memory beside its weights), rather than one draw per tensor: XLA on CPU took about 0.2-0.5 s
    to compile each random op, so ~60 draws cost 10-25 s at the tiny size.
    """
    abstract = nn.unbox(jax.eval_shape(module.init, jax.random.key(0), *example_inputs(module)))
    leaves, treedef = jax.tree_util.tree_flatten_with_path(abstract)
    specs = []  # (shape, std or None for a norm scale of ones), per leaf
    for path, leaf in leaves:
        kind = path[-1].key
        std = None if kind == "scale" else 0.02 if kind == "bias" else leaf.shape[-2] ** -0.5
        specs.append((tuple(leaf.shape), std))
    groups, size = [[]], 0
    for i, (shape, _) in enumerate(specs):
        if groups[-1] and size + math.prod(shape) > _DRAW_SIZE:
            groups, size = groups + [[]], 0
        groups[-1].append(i)
        size += math.prod(shape)
    key, values = jax.random.key(seed, impl="rbg"), [None] * len(specs)
    for g, group in enumerate(groups):
        drawn = _draw(jax.random.fold_in(key, g), tuple(specs[i] for i in group), jnp.dtype(dtype))
        for i, value in zip(group, drawn):
            values[i] = value
    return jax.tree_util.tree_unflatten(treedef, values)


_DRAW_SIZE = 2 ** 30


@functools.partial(jax.jit, static_argnums=(1, 2))
def _draw(key, specs, dtype):
    """Arrays of `specs` ((shape, std) pairs; std None: ones) cut from one uniform draw."""
    total = sum(math.prod(shape) for shape, std in specs if std is not None)
    flat, offset, out = jax.random.uniform(key, (total,), dtype, -1.0, 1.0), 0, []
    for shape, std in specs:
        if std is None:
            out.append(jnp.ones(shape, dtype))
            continue
        out.append(flat[offset:offset + math.prod(shape)].reshape(shape) * jnp.asarray(math.sqrt(3) * std, dtype))
        offset += math.prod(shape)
    return out


def num_params(module: FluxTransformer) -> int:
    """Parameter count from shapes alone (no allocation)."""
    abstract = jax.eval_shape(module.init, jax.random.key(0), *example_inputs(module))
    return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(nn.unbox(abstract)))


# ---------------------------------------------------------------------------------------------------------------------
# diffusers weights
# ---------------------------------------------------------------------------------------------------------------------

def _qkv_kernel(q, k, v):
    return np.concatenate([q.T, k.T, v.T], axis=1)


def _qkv_bias(q, k, v):
    return np.concatenate([q, k, v])


def _table(module: FluxTransformer) -> porting.NameTable:
    """Our path <- diffusers tensor names and conversion (`{i}`: the block index, stacked over blocks)."""
    lin, same, width = porting.linear, porting.same, module.width
    rows = [("x_embedder", "x_embedder"), ("context_embedder", "context_embedder"), ("norm_out", "norm_out.linear"),
            ("proj_out", "proj_out")]
    embedders = ["timestep_embedder", "text_embedder"] + (["guidance_embedder"] if module.guidance_embeds else [])
    rows += [(f"time_text_embed/{e}/{lin_}", f"time_text_embed.{e}.{lin_}") for e in embedders
             for lin_ in ("linear_1", "linear_2")]
    blk, single = "transformer_blocks.{i}.", "single_transformer_blocks.{i}."
    rows += [(f"transformer_blocks/{ours}", blk + theirs) for ours, theirs in [
        ("img_mod", "norm1.linear"), ("txt_mod", "norm1_context.linear"),
        ("img_attn/out", "attn.to_out.0"), ("txt_attn/out", "attn.to_add_out"),
        ("img_mlp/fc1", "ff.net.0.proj"), ("img_mlp/fc2", "ff.net.2"),
        ("txt_mlp/fc1", "ff_context.net.0.proj"), ("txt_mlp/fc2", "ff_context.net.2")]]
    rows += [("single_transformer_blocks/mod", single + "norm.linear"),
             ("single_transformer_blocks/mlp/fc1", single + "proj_mlp")]
    table = {}
    for ours, theirs in rows:
        table[f"{ours}/kernel"] = ([f"{theirs}.weight"], lin)
        table[f"{ours}/bias"] = ([f"{theirs}.bias"], same)
    attention = {"transformer_blocks/img_attn": (blk + "attn.to_{}", blk + "attn.norm_{}"),
                 "transformer_blocks/txt_attn": (blk + "attn.add_{}_proj", blk + "attn.norm_added_{}"),
                 "single_transformer_blocks/attn": (single + "attn.to_{}", single + "attn.norm_{}")}
    for ours, (proj, norm) in attention.items():
        table[f"{ours}/qkv/kernel"] = ([proj.replace("{}", n) + ".weight" for n in "qkv"], _qkv_kernel)
        table[f"{ours}/qkv/bias"] = ([proj.replace("{}", n) + ".bias" for n in "qkv"], _qkv_bias)
        table[f"{ours}/q_norm/scale"] = ([norm.replace("{}", "q") + ".weight"], same)
        table[f"{ours}/k_norm/scale"] = ([norm.replace("{}", "k") + ".weight"], same)
    # the single block's proj_out over concat(attention, GELU output), split by input columns
    table["single_transformer_blocks/attn/out/kernel"] = ([single + "proj_out.weight"], lambda w: w[:, :width].T)
    table["single_transformer_blocks/attn/out/bias"] = ([single + "proj_out.bias"], same)
    table["single_transformer_blocks/mlp/fc2/kernel"] = ([single + "proj_out.weight"], lambda w: w[:, width:].T)
    return table


_CONFIG_FIELDS = {  # diffusers config.json key -> our field
    "in_channels": "in_channels", "out_channels": "out_channels", "patch_size": "patch_size",
    "num_layers": "num_layers", "num_single_layers": "num_single_layers", "num_attention_heads": "num_heads",
    "attention_head_dim": "head_dim", "joint_attention_dim": "joint_attention_dim",
    "pooled_projection_dim": "pooled_projection_dim", "guidance_embeds": "guidance_embeds",
    "axes_dims_rope": "axes_dims_rope",
}


def module_from_config(config: Mapping[str, Any], **overrides) -> FluxTransformer:
    """Our `FluxTransformer` for a diffusers `FluxTransformer2DModel` config.json (diffusers' defaults for missing
    keys); `overrides` set run-time fields (dtype, attention_backend, remat)."""
    fields = {ours: config[theirs] for theirs, ours in _CONFIG_FIELDS.items() if theirs in config}
    if "axes_dims_rope" in fields:
        fields["axes_dims_rope"] = tuple(fields["axes_dims_rope"])
    defaults = dict(in_channels=64, num_layers=19, num_single_layers=38, num_heads=24, head_dim=128,
                    joint_attention_dim=4096, pooled_projection_dim=768, guidance_embeds=False,
                    axes_dims_rope=(16, 56, 56))
    return FluxTransformer(**{**defaults, **fields, **overrides})


def from_diffusers(model_dir: str | Path, *, dtype: Any = jnp.float32, mesh: jax.sharding.Mesh | None = None,
                   **overrides) -> tuple[FluxTransformer, dict]:
    """`(module, params)` from a diffusers `FluxTransformer2DModel.save_pretrained` folder (config.json and
    `diffusion_pytorch_model.safetensors`, or its sharded index), e.g. the `transformer/` folder of FLUX.1-dev.

    Parameters come as `dtype` arrays, read, converted and placed one at a time (`jaxgen.nn.porting`); with `mesh`,
    straight into their shards. `overrides` set module fields (compute `dtype`, `attention_backend`, `remat`).
    Returns params as `{"params": ...}`, ready for `module.apply(params, *inputs)`.
    """
    config = porting.read_config(model_dir, ["FluxTransformer2DModel"])
    module = module_from_config(config, **overrides)
    reader = safetensors_io.open_checkpoint(model_dir, "diffusion_pytorch_model")
    boxed = jax.eval_shape(module.init, jax.random.key(0), *example_inputs(module))["params"]
    params = porting.load_params(
        reader, boxed, _table(module), dtype=dtype, mesh=mesh, source=str(model_dir),
        depth_of=lambda path: module.num_layers if path.startswith("transformer_blocks/") else module.num_single_layers)
    return module, params


# ---------------------------------------------------------------------------------------------------------------------
# the pipeline around the transformer (diffusers' FluxPipeline)
# ---------------------------------------------------------------------------------------------------------------------

def pack_latents(latents: jax.Array) -> jax.Array:
    """VAE latents NHWC `[batch, height, width, c]` -> tokens `[batch, height/2 * width/2, 4c]`: 2×2 patches,
    row-major, features ordered (channel, row in patch, column in patch) as diffusers' `_pack_latents`."""
    batch, height, width, channels = latents.shape
    if height % 2 or width % 2:
        raise ValueError(f"pack_latents needs even latent height and width; got {latents.shape}")
    x = latents.reshape(batch, height // 2, 2, width // 2, 2, channels).transpose(0, 1, 3, 5, 2, 4)
    return x.reshape(batch, (height // 2) * (width // 2), 4 * channels)


def unpack_latents(tokens: jax.Array, height: int, width: int) -> jax.Array:
    """The inverse of `pack_latents` for latents of `height` × `width`."""
    batch, count, features = tokens.shape
    if height % 2 or width % 2 or count != (height // 2) * (width // 2) or features % 4:
        raise ValueError(f"unpack_latents: tokens {tokens.shape} do not pack latents of {height}x{width}")
    x = tokens.reshape(batch, height // 2, width // 2, features // 4, 2, 2).transpose(0, 1, 4, 2, 5, 3)
    return x.reshape(batch, height, width, features // 4)


def image_ids(height: int, width: int) -> jax.Array:
    """`[height/2 * width/2, 3]` position ids of packed latents of `height` × `width`: (0, row, column)."""
    rows, cols = jnp.meshgrid(jnp.arange(height // 2), jnp.arange(width // 2), indexing="ij")
    return jnp.stack([jnp.zeros_like(rows), rows, cols], -1).reshape(-1, 3).astype(jnp.float32)


def text_ids(length: int) -> jax.Array:
    """`[length, 3]` zeros: FLUX's text tokens all sit at position 0 (RoPE is the identity on them)."""
    return jnp.zeros((length, 3), jnp.float32)


def schedule(num_steps: int, image_tokens: int | None) -> jax.Array:
    """`[num_steps + 1]` sigmas from 1 to 0, as `FluxPipeline` with `FlowMatchEulerDiscreteScheduler` sets them:
    `linspace(1, 1/n, n)` shifted, then 0. With `image_tokens` (FLUX.1-dev's dynamic shifting) the shift is
    `resolution_shift(image_tokens)`; None (FLUX.1-schnell, shift 1) leaves the sigmas unshifted."""
    return euler_timesteps(num_steps, 1.0 if image_tokens is None else resolution_shift(image_tokens))


def sample(module: FluxTransformer, params, noise: jax.Array, encoder_hidden_states: jax.Array,
           pooled_projections: jax.Array, sigmas: jax.Array, guidance_scale: float | None = None) -> jax.Array:
    """Denoises NHWC latent `noise` with Euler steps over `sigmas` (`schedule`); returns NHWC latents, float32.

    guidance_scale: FLUX.1-dev's distilled guidance (3.5 in diffusers' example); None for models without it.
    """
    batch, height, width, _ = noise.shape
    img_ids, txt_ids = image_ids(height, width), text_ids(encoder_hidden_states.shape[1])
    guidance = None if guidance_scale is None else jnp.full((batch,), guidance_scale, jnp.float32)

    def velocity(x, t, step):
        del step
        out = module.apply(params, x.astype(module.dtype), encoder_hidden_states, pooled_projections, t, img_ids,
                           txt_ids, guidance)
        return out, None

    packed, _ = euler_sample(velocity, pack_latents(noise), sigmas)
    return unpack_latents(packed, height, width)
