"""What the diffusers video ports (`wan`, `cogvideox`) share: diffusers' attention and feed-forward layouts (each with
its name-table rows), the output projection, and the input checks; HunyuanVideo (`hunyuan`) uses the norms and the
feed-forward too, in its own joint attention.

Both originals run diffusers' attention with separate `to_q` / `to_k` / `to_v` projections (bias on), a norm on q and
k, RoPE, and `to_out`; they differ only in that norm (diffusers' `qk_norm`): Wan's "rms_norm_across_heads" (one
RMSNorm over the flat projection, all heads together), CogVideoX's "layer_norm" (a LayerNorm per head, with bias);
HunyuanVideo's "rms_norm" is an RMSNorm per head. `VideoAttention` is that layout with the norm chosen by name,
`attention_rows` its rows of a port's name table. The feed-forward is diffusers' `FeedForward` with its activation by
name (`FeedForward`, `feed_forward_rows`: the tanh GELU of all three, HunyuanVideo's token refiner's "linear-silu"),
and the ports end in `proj_out`, a Linear from the video tokens to their patches (`project_out`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxgen.nn import attention as nn_attention
from jaxgen.nn import porting
from jaxgen.nn.transformer import XAVIER, attend, partitioned
from jaxgen.projects.svg.model import unpatchify


class QKNorm(NamedTuple):
    """module(eps, dtype, name) -> the norm of q or k `[batch, seq, heads, head_dim]`; params(heads) -> our parameter
    name -> (diffusers' parameter name, conversion)."""

    module: Callable[[float, Any, str], nn.Module]
    params: Callable[[int], dict[str, tuple[str, Callable]]]


def _rms_norm_across_heads(eps: float, dtype: Any, name: str) -> nn.Module:
    return nn.RMSNorm(eps, dtype=dtype, reduction_axes=(-2, -1), feature_axes=(-2, -1), name=name,
                      scale_init=partitioned(nn.initializers.ones, "heads", "kv"))


def _rms_norm(eps: float, dtype: Any, name: str) -> nn.Module:
    return nn.RMSNorm(eps, dtype=dtype, name=name, scale_init=partitioned(nn.initializers.ones, "kv"))


def _layer_norm(eps: float, dtype: Any, name: str) -> nn.Module:
    return nn.LayerNorm(eps, dtype=dtype, name=name, scale_init=partitioned(nn.initializers.ones, "kv"),
                        bias_init=partitioned(nn.initializers.zeros, "kv"))


# diffusers' `qk_norm` name -> the norm
QK_NORMS: dict[str, QKNorm] = {
    "rms_norm_across_heads": QKNorm(_rms_norm_across_heads,
                                    lambda heads: {"scale": ("weight", porting.heads_bias(heads))}),
    "rms_norm": QKNorm(_rms_norm, lambda heads: {"scale": ("weight", porting.same)}),
    "layer_norm": QKNorm(_layer_norm,
                         lambda heads: {"scale": ("weight", porting.same), "bias": ("bias", porting.same)}),
}


def _qk_norm(name: str) -> QKNorm:
    if name not in QK_NORMS:
        raise ValueError(f"unknown qk_norm {name!r}; known: {sorted(QK_NORMS)}")
    return QK_NORMS[name]


class VideoAttention(nn.Module):
    """Self-attention (`context_tokens=None`) or cross-attention to `context_tokens`, in diffusers' layout; the core is
    the `jaxgen.nn.attention` backend `backend` (SVG's "svg" on self-attention)."""

    num_heads: int
    head_dim: int
    qk_norm: str
    eps: float
    backend: str
    backend_options: Mapping[str, Any] | None = None
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, context_tokens=None, *, rope=None, context: nn_attention.AttentionContext | None = None):
        norm = _qk_norm(self.qk_norm).module
        source = x if context_tokens is None else context_tokens

        def project(name, inputs):
            return nn.DenseGeneral((self.num_heads, self.head_dim), dtype=self.dtype, name=name,
                                   kernel_init=partitioned(XAVIER, "embed", "heads", "kv"),
                                   bias_init=partitioned(nn.initializers.zeros, "heads", "kv"))(inputs)

        q = norm(self.eps, self.dtype, "norm_q")(project("to_q", x))
        k = norm(self.eps, self.dtype, "norm_k")(project("to_k", source))
        out = attend(self, q, k, project("to_v", source), rope=rope, backend=self.backend,
                     backend_options=self.backend_options, context=context)
        return nn.DenseGeneral(x.shape[-1], axis=(-2, -1), dtype=self.dtype, name="to_out",
                               kernel_init=partitioned(XAVIER, "heads", "kv", "embed"),
                               bias_init=partitioned(nn.initializers.zeros, "embed"))(out.astype(self.dtype))


def attention_rows(path: str, prefix: str, heads: int, qk_norm: str) -> list[tuple]:
    """Name-table rows `(our path, diffusers names, conversion)` of a `VideoAttention` at our `path` (e.g.
    "blocks/attn1") from diffusers' attention at `prefix` (e.g. "blocks.{i}.attn1")."""
    rows = []
    for proj in ("to_q", "to_k", "to_v"):
        rows += [(f"{path}/{proj}/kernel", [f"{prefix}.{proj}.weight"], porting.heads_in(heads)),
                 (f"{path}/{proj}/bias", [f"{prefix}.{proj}.bias"], porting.heads_bias(heads))]
    rows += [(f"{path}/to_out/kernel", [f"{prefix}.to_out.0.weight"], porting.heads_out(heads)),
             (f"{path}/to_out/bias", [f"{prefix}.to_out.0.bias"], porting.same)]
    for param, (theirs, convert) in _qk_norm(qk_norm).params(heads).items():
        rows += [(f"{path}/{norm}/{param}", [f"{prefix}.{norm}.{theirs}"], convert) for norm in ("norm_q", "norm_k")]
    return rows


# diffusers' `activation_fn` name -> the activation between the two Dense layers of its `FeedForward`
ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "gelu-approximate": lambda h: nn.gelu(h, approximate=True),
    "linear-silu": nn.silu,
}


class FeedForward(nn.Module):
    """diffusers' `FeedForward`: Dense -> activation (`ACTIVATIONS`, by diffusers' name; GELU-tanh by default) ->
    Dense back to the input width."""

    hidden: int
    dtype: Any = jnp.float32
    activation: str = "gelu-approximate"

    @nn.compact
    def __call__(self, x):
        h = nn.Dense(self.hidden, dtype=self.dtype, name="linear_in", kernel_init=partitioned(XAVIER, "embed", "mlp"),
                     bias_init=partitioned(nn.initializers.zeros, "mlp"))(x)
        return nn.Dense(x.shape[-1], dtype=self.dtype, name="linear_out",
                        kernel_init=partitioned(XAVIER, "mlp", "embed"),
                        bias_init=partitioned(nn.initializers.zeros, "embed"))(ACTIVATIONS[self.activation](h))


def feed_forward_rows(path: str, prefix: str) -> list[tuple]:
    """Name-table rows of a `FeedForward` at our `path` from diffusers' `FeedForward` at `prefix`."""
    return [(f"{path}/linear_in/kernel", [f"{prefix}.net.0.proj.weight"], porting.linear),
            (f"{path}/linear_in/bias", [f"{prefix}.net.0.proj.bias"], porting.same),
            (f"{path}/linear_out/kernel", [f"{prefix}.net.2.weight"], porting.linear),
            (f"{path}/linear_out/bias", [f"{prefix}.net.2.bias"], porting.same)]


def check_text_inputs(model: str, latents: jax.Array, timestep: jax.Array, encoder_hidden_states: jax.Array,
                      text_dim: int) -> None:
    """A ValueError naming `model` unless timestep is `[batch]` and encoder_hidden_states `[batch, text_len,
    text_dim]` for latents of `batch`."""
    batch = latents.shape[0]
    if timestep.shape != (batch,) or encoder_hidden_states.ndim != 3 or encoder_hidden_states.shape[::2] != (
            batch, text_dim):
        raise ValueError(f"{model} takes timestep [{batch}] and encoder_hidden_states [{batch}, text_len, {text_dim}] "
                         f"for latents {latents.shape}; got timestep {timestep.shape}, encoder_hidden_states "
                         f"{encoder_hidden_states.shape}")


def project_out(h: jax.Array, grid: Sequence[int], patch: Sequence[int], channels: int) -> jax.Array:
    """The video tokens `h` `[batch, tokens, width]` through `proj_out` (zero-initialised, float32) to their patches,
    back to `[batch, frames, height, width, channels]` float32; call it inside the port's compact `__call__`."""
    h = nn.Dense(math.prod(patch) * channels, dtype=jnp.float32, name="proj_out",
                 kernel_init=partitioned(nn.initializers.zeros, "embed", None),
                 bias_init=partitioned(nn.initializers.zeros, None))(h)
    return unpatchify(h, grid, patch, channels).astype(jnp.float32)
