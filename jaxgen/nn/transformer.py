"""The one adaLN-Zero transformer block of the diffusion transformers (image DiT, SVG's video DiT, the benchmarks).

`AdaLNZeroBlock` is DiT's block (Peebles & Xie): LayerNorm without affine parameters, then shift/scale from the
conditioning vector; attention and MLP outputs are multiplied by gates that start at zero, so every block starts as
the identity. Options cover what the video models add without forking the block:
  - `modulation_groups`: tokens of different kinds (captions and video in CogVideoX's "expert" adaLN) read their own
    modulation from one Dense; `groups[token]` picks the row. One group is plain DiT.
  - `qk_norm`: RMSNorm on queries and keys (CogVideoX, HunyuanVideo), which keeps bf16 logits tame in deep stacks.
  - `rope`: (cos, sin) tables over the whole sequence; tokens without a position (captions) get angle 0 (the
    identity), so the block needs no notion of where video tokens start.
  - `norm_implementation`: how LayerNorm and the adaLN modulation `norm(x) * (1 + scale) + shift` run
    (`NORM_MODULATE`): "xla" (default) as flax's LayerNorm followed by the modulation; "pallas_gpu" as one fused
    kernel each way (`pallas_kernels.norm_modulate`), which for the MLP's norm also takes the attention's gated
    residual `x + gate1 * attn` (one read of each input, one write of the stream and of the MLP's input);
    "pallas_gpu_interpret" its interpreted twin for CPU tests. The fused kernels compute in float32 and round once,
    so in bf16 they differ from "xla" by rounding. They need one modulation per sample (`modulation_groups` 1).
  - `cross_attention`: PixArt-α's text conditioning: between self-attention and the MLP, the tokens attend to a
    sequence of caption embeddings (`CrossAttention`), added without a norm or gate, its output projection starting
    at zero so the block still starts as the identity. The call then takes `captions` and `caption_mask` too.
The signature `(x, layer, c, rope, groups, context) -> (x, None)` is the one `nn.scan` iterates over layers with;
`layer` is the traced layer index, written into the attention context (SVG's per-layer gate reads it) and folded
into the context's key so sampling backends draw fresh rows in every layer.

Parameter names (`adaln`, `attn/{qkv,q_norm,k_norm,out}`, `Dense_0`, `Dense_1`) are those SVG's checkpoints were
written with; `jaxgen.nn.dit.from_diffusers` maps diffusers' names onto them.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxgen.nn import attention as nn_attention
from pallas_kernels import norm_modulate

XAVIER = nn.initializers.xavier_uniform()


def partitioned(init, *axes):
    """`init` tagged with logical axis names ("embed", "mlp", "heads", "kv", ...; see jaxgen.core.sharding)."""
    return nn.with_logical_partitioning(init, axes)


def scan_layers(block: type[nn.Module], depth: int, *, remat: bool = False, broadcast_inputs: int,
                unroll: int = 1) -> type[nn.Module]:
    """`block` as one `nn.scan` over `depth` layers (one compiled block; unrolled deep DiTs took minutes to compile on
    an H100): its first input is the carry, its second the layer index (`jnp.arange(depth)`), the next
    `broadcast_inputs` are the same in every layer. Parameters and sown "intermediates" are stacked on a leading
    "layers" axis whatever `unroll` is, so checkpoints do not depend on it.

    `unroll`: layers per loop iteration (`depth`: no loop at all). A rolled scan's backward pass saves every layer's
    activations by writing them into buffers stacked over the layers and stacks the per-layer gradients the same way;
    on DiT-XL/2 training those copies took 51 of 283 ms per step on an H200 (experiments/bench/README.md). Unrolling
    trades them for compile time."""
    if not 1 <= unroll <= depth:
        raise ValueError(f"scan unroll must be between 1 and depth={depth}; got {unroll}")
    block = nn.remat(block) if remat else block
    return nn.scan(block, variable_axes={"params": 0, "intermediates": 0}, split_rngs={"params": True},
                   in_axes=(0,) + (nn.broadcast,) * broadcast_inputs, length=depth, unroll=unroll,
                   metadata_params={nn.PARTITION_NAME: "layers"})


def attend(module: nn.Module, q, k, v, *, rope=None, backend: str, backend_options: Mapping[str, Any] | None = None,
           context: nn_attention.AttentionContext | None = None) -> jax.Array:
    """RoPE on q and k `[batch, seq, heads, head_dim]` (when `rope` is given), then the `jaxgen.nn.attention` backend
    named `backend`; its diagnostics (SVG's `head_is_temporal`) are sown into `module`'s "intermediates"."""
    if rope is not None:
        q, k = apply_rope(q, *rope), apply_rope(k, *rope)
    out, aux = nn_attention.attention(q, k, v, backend=backend, context=context, **dict(backend_options or {}))
    for name, value in aux.items():
        module.sow("intermediates", name, value)
    return out


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """Rotates channel pairs (2i, 2i+1) of `x` `[batch, seq, heads, head_dim]` by the angles of each position."""
    if x.shape[1] != cos.shape[0] or x.shape[-1] != 2 * cos.shape[-1]:
        raise ValueError(f"rope tables {cos.shape} do not fit x {x.shape} ([batch, seq, heads, 2 * pairs])")
    pairs = x.astype(jnp.float32).reshape(*x.shape[:-1], -1, 2)
    c, s = cos[None, :, None], sin[None, :, None]
    rotated = jnp.stack([pairs[..., 0] * c - pairs[..., 1] * s, pairs[..., 0] * s + pairs[..., 1] * c], -1)
    return rotated.reshape(x.shape).astype(x.dtype)


def _flax_norm_modulate(x, shift, scale, *, eps, dtype):
    return nn.LayerNorm(eps, use_scale=False, use_bias=False, dtype=dtype)(x) * (1 + scale) + shift


def _flax_residual_norm_modulate(x, h, gate, shift, scale, *, eps, dtype):
    x = x + gate * h
    return x, _flax_norm_modulate(x, shift, scale, eps=eps, dtype=dtype)


def _per_sample(x, implementation, **modulation):
    """`[batch, 1, width]` modulation arrays -> `[batch, width]`, the fused kernels' form."""
    if any(a.shape != (x.shape[0], 1, x.shape[2]) for a in modulation.values()):
        raise ValueError(f"norm_implementation {implementation!r} takes one modulation per sample, [batch, 1, width] "
                         f"for x {x.shape}; got " + ", ".join(f"{k} {a.shape}" for k, a in modulation.items())
                         + " (per-token modulation, e.g. modulation_groups > 1, needs norm_implementation 'xla')")
    return [a[:, 0] for a in modulation.values()]


def _fused_norm_modulate(x, shift, scale, *, eps, dtype, implementation):
    del dtype  # the kernel's output has x's dtype
    shift, scale = _per_sample(x, implementation, shift=shift, scale=scale)
    return norm_modulate.layer_norm_modulate(x, shift, scale, eps, implementation=implementation)


def _fused_residual_norm_modulate(x, h, gate, shift, scale, *, eps, dtype, implementation):
    del dtype
    gate, shift, scale = _per_sample(x, implementation, gate=gate, shift=shift, scale=scale)
    return norm_modulate.residual_layer_norm_modulate(x, h, gate, shift, scale, eps, implementation=implementation)


class NormModulate(NamedTuple):
    """How one `norm_implementation` runs adaLN's norm-modulate, alone (`plain(x, shift, scale, *, eps, dtype) -> y`)
    and after a gated residual (`residual(x, h, gate, shift, scale, *, eps, dtype) -> (x + gate * h, y)`)."""
    plain: Callable
    residual: Callable


def _fused(implementation: str) -> NormModulate:
    return NormModulate(functools.partial(_fused_norm_modulate, implementation=implementation),
                        functools.partial(_fused_residual_norm_modulate, implementation=implementation))


# Called inside a compact module ("xla" adds a parameter-free `nn.LayerNorm` there).
NORM_MODULATE = {
    "xla": NormModulate(_flax_norm_modulate, _flax_residual_norm_modulate),
    "pallas_gpu": _fused("pallas_gpu"),
    "pallas_gpu_interpret": _fused("pallas_gpu_interpret"),
}


def _norm_modulate(implementation: str) -> NormModulate:
    if implementation not in NORM_MODULATE:
        raise ValueError(f"norm_implementation must be one of {sorted(NORM_MODULATE)}; got {implementation!r}")
    return NORM_MODULATE[implementation]


def adaln_norm_modulate(x, shift, scale, *, eps: float, implementation: str = "xla", dtype: Any = None):
    """adaLN: LayerNorm without affine parameters, then `* (1 + scale) + shift`; x `[batch, seq, width]`, shift and
    scale broadcastable to it (`[batch, 1, width]` for the fused kernels). Call it inside a compact module."""
    return _norm_modulate(implementation).plain(x, shift, scale, eps=eps, dtype=dtype)


def adaln_residual_norm_modulate(x, h, gate, shift, scale, *, eps: float, implementation: str = "xla",
                                 dtype: Any = None):
    """`x + gate * h`, then `adaln_norm_modulate` of it; returns both (the residual stream and the normalised input of
    the next layer), which the fused kernels produce in one pass. Call it inside a compact module."""
    return _norm_modulate(implementation).residual(x, h, gate, shift, scale, eps=eps, dtype=dtype)


class Attention(nn.Module):
    """Multi-head self-attention with a fused qkv projection; the core is a `jaxgen.nn.attention` backend by name."""

    num_heads: int
    head_dim: int
    backend: str = "dense"
    backend_options: Mapping[str, Any] | None = None
    qkv_bias: bool = True
    qk_norm: bool = False
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, *, rope=None, context: nn_attention.AttentionContext | None = None):
        qkv = nn.DenseGeneral((3, self.num_heads, self.head_dim), use_bias=self.qkv_bias, dtype=self.dtype,
                              name="qkv", kernel_init=partitioned(XAVIER, "embed", None, "heads", "kv"),
                              bias_init=partitioned(nn.initializers.zeros, None, "heads", "kv"))(x)
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        if self.qk_norm:
            q = nn.RMSNorm(dtype=self.dtype, name="q_norm", scale_init=partitioned(nn.initializers.ones, "kv"))(q)
            k = nn.RMSNorm(dtype=self.dtype, name="k_norm", scale_init=partitioned(nn.initializers.ones, "kv"))(k)
        out = attend(self, q, k, v, rope=rope, backend=self.backend, backend_options=self.backend_options,
                     context=context)
        return nn.DenseGeneral(x.shape[-1], axis=(-2, -1), dtype=self.dtype, name="out",
                               kernel_init=partitioned(XAVIER, "heads", "kv", "embed"),
                               bias_init=partitioned(nn.initializers.zeros, "embed"))(out)


class CrossAttention(nn.Module):
    """Multi-head attention from tokens `x [batch, seq, width]` to a context `[batch, context_len, context_width]`
    (PixArt-α's text cross-attention). `mask [batch, context_len]` (true: attend) leaves padding out; a row whose
    mask is all false (an empty caption: the unconditional input of classifier-free guidance) gets exactly zero."""

    num_heads: int
    head_dim: int
    backend: str = "dense"
    backend_options: Mapping[str, Any] | None = None
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, context_tokens, mask=None):
        if context_tokens.ndim != 3 or context_tokens.shape[0] != x.shape[0]:
            raise ValueError(f"cross-attention context must be [batch, length, width] for x {x.shape}; got "
                             f"{context_tokens.shape}")
        if mask is not None and mask.shape != context_tokens.shape[:2]:
            raise ValueError(f"cross-attention mask must be [batch, length] = {context_tokens.shape[:2]}; got "
                             f"{mask.shape}")
        q = nn.DenseGeneral((self.num_heads, self.head_dim), dtype=self.dtype, name="q",
                            kernel_init=partitioned(XAVIER, "embed", "heads", "kv"),
                            bias_init=partitioned(nn.initializers.zeros, "heads", "kv"))(x)
        kv = nn.DenseGeneral((2, self.num_heads, self.head_dim), dtype=self.dtype, name="kv",
                             kernel_init=partitioned(XAVIER, "embed", None, "heads", "kv"),
                             bias_init=partitioned(nn.initializers.zeros, None, "heads", "kv"))(context_tokens)
        attend = None if mask is None else mask[:, None, None, :]  # [batch, heads, q, kv], broadcast
        out, _ = nn_attention.attention(q, kv[:, :, 0], kv[:, :, 1], backend=self.backend, mask=attend,
                                        **dict(self.backend_options or {}))
        out = nn.DenseGeneral(x.shape[-1], axis=(-2, -1), dtype=self.dtype, name="out",
                              kernel_init=partitioned(nn.initializers.zeros, "heads", "kv", "embed"),
                              bias_init=partitioned(nn.initializers.zeros, "embed"))(out)
        if mask is not None:  # the output bias too: an empty caption leaves the tokens exactly as they were
            out = jnp.where(jnp.any(mask, axis=1)[:, None, None], out, 0.0)
        return out


class AdaLNZeroBlock(nn.Module):
    """adaLN-Zero block: `x + gate1 * attn(modulate(norm(x)))`, then the same with an MLP; see the module docstring.

    `attn_norm_eps` / `mlp_norm_eps`: the two LayerNorms' epsilons (diffusers' DiT uses 1e-6 and its `norm_eps`,
    1e-5 by default; the original DiT 1e-6 for both).
    """

    width: int
    num_heads: int
    mlp_ratio: float = 4.0
    modulation_groups: int = 1
    qkv_bias: bool = True
    qk_norm: bool = False
    attn_norm_eps: float = 1e-6
    mlp_norm_eps: float = 1e-6
    approximate_gelu: bool = True
    cross_attention: bool = False
    backend: str = "dense"
    backend_options: Mapping[str, Any] | None = None
    norm_implementation: str = "xla"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, layer, c, rope, groups, context: nn_attention.AttentionContext, captions=None,
                 caption_mask=None):
        """x `[batch, seq, width]`, c `[batch, cond]`, groups int `[seq]` in [0, modulation_groups) or None;
        with `cross_attention`, captions `[batch, length, width]` and caption_mask bool `[batch, length]` or None."""
        if self.cross_attention == (captions is None):
            raise ValueError(f"a block {'with' if self.cross_attention else 'without'} cross_attention takes "
                             f"{'captions' if self.cross_attention else 'no captions'}")
        modulation = nn.Dense(6 * self.modulation_groups * self.width, dtype=self.dtype, name="adaln",
                              kernel_init=partitioned(nn.initializers.zeros, "embed", "mlp"),
                              bias_init=partitioned(nn.initializers.zeros, "mlp"))(nn.silu(c))
        if self.modulation_groups == 1:
            per_token = modulation[:, None]
        else:
            if groups is None or groups.shape != (x.shape[1],):
                raise ValueError(f"{self.modulation_groups} modulation groups need groups [{x.shape[1]}] (one id "
                                 f"per token); got {None if groups is None else groups.shape}")
            per_token = modulation.reshape(x.shape[0], self.modulation_groups, -1)[:, groups]
        shift1, scale1, gate1, shift2, scale2, gate2 = jnp.split(per_token, 6, axis=-1)
        context = context.at_layer(layer)
        h = adaln_norm_modulate(x, shift1, scale1, eps=self.attn_norm_eps, implementation=self.norm_implementation,
                                dtype=self.dtype)
        residual = Attention(self.num_heads, self.width // self.num_heads, self.backend, self.backend_options,
                             self.qkv_bias, self.qk_norm, self.dtype, name="attn")(h, rope=rope, context=context)
        gate = gate1
        if self.cross_attention:  # then the ungated cross-attention residual is the one the MLP's norm follows
            x = x + gate * residual
            residual = CrossAttention(self.num_heads, self.width // self.num_heads, self.backend,
                                      self.backend_options, self.dtype, name="cross_attn")(x, captions, caption_mask)
            gate = jnp.ones_like(gate1)
        x, h = adaln_residual_norm_modulate(x, residual, gate, shift2, scale2, eps=self.mlp_norm_eps,
                                            implementation=self.norm_implementation, dtype=self.dtype)
        h = nn.Dense(int(self.mlp_ratio * self.width), dtype=self.dtype, name="Dense_0",
                     kernel_init=partitioned(XAVIER, "embed", "mlp"),
                     bias_init=partitioned(nn.initializers.zeros, "mlp"))(h)
        h = nn.gelu(h, approximate=self.approximate_gelu)
        h = nn.Dense(self.width, dtype=self.dtype, name="Dense_1", kernel_init=partitioned(XAVIER, "mlp", "embed"),
                     bias_init=partitioned(nn.initializers.zeros, "embed"))(h)
        return (x + gate2 * h).astype(x.dtype), None


def scanned_blocks(depth: int, remat: bool = False, unroll: int = 1, **block_fields) -> AdaLNZeroBlock:
    """`depth` adaLN-Zero blocks as one scan (`scan_layers`); call it as `blocks(x, jnp.arange(depth), c, rope, groups,
    ctx)`, with `cross_attention=True` as `blocks(..., ctx, captions, caption_mask)`."""
    broadcast_inputs = 6 if block_fields.get("cross_attention") else 4  # c, rope, groups, context (+ captions, mask)
    return scan_layers(AdaLNZeroBlock, depth, remat=remat, broadcast_inputs=broadcast_inputs,
                       unroll=unroll)(**block_fields)
