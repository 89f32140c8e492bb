"""Attention backends behind one signature, so any attention in the framework can be switched in gin by name.

Every backend is `fn(q, k, v, *, bias, mask, context, **options) -> (out, aux)`:
  q, k, v   `[batch, seq, heads, head_dim]` (the layout of `jax.nn.dot_product_attention` and of the kernels);
  bias/mask the dense-attention extras (`jax.nn.dot_product_attention` semantics); backends that cannot honour them
            raise instead of silently ignoring them;
  context   `AttentionContext`: per-call runtime data (rng, block mask, video layout, step/layer indices); a backend
            reads only the fields it documents and names the missing one when it needs it;
  options   static settings (block sizes, density, kernel implementation), bound in gin through
            `SelfAttention.backend_options` or passed to `attention(...)`;
  aux       a dict of small diagnostics (empty for most; SVG reports which heads it ran temporal).

Names resolve through `BACKENDS` (house rule: registries, not ladders); a paper adds its own entry with
`register_backend` when its package is imported ("svg" from the SVG paper's package), so `jaxgen.nn` imports no paper.
A name not registered yet imports the papers' packages once (`jaxgen.core.plugins`) before it is called unknown.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import flax.struct
import jax

from jaxgen.core import plugins
from pallas_kernels.block_sparse_attention import block_sparse_attention

Aux = dict[str, jax.Array]
Backend = Callable[..., tuple[jax.Array, Aux]]


@flax.struct.dataclass
class AttentionContext:
    """Runtime data for one attention call; a pytree, so it can cross jit/scan boundaries.

    rng: a key for backends that sample (SVG's profiling rows).
    block_mask: bool `[batch or 1, heads, q_blocks, kv_blocks]` for "block_sparse".
    video_layout: where video and text tokens sit (the SVG paper's `VideoLayout`) for "svg"; static.
    step, num_steps: denoising-step index (may be traced; 0 is the first, noisiest step) and the step count.
    layer, num_layers: this attention's layer index (may be traced) and the layer count.
    """

    rng: jax.Array | None = None
    block_mask: jax.Array | None = None
    step: Any = None
    layer: Any = None
    video_layout: Any = flax.struct.field(pytree_node=False, default=None)
    num_steps: int | None = flax.struct.field(pytree_node=False, default=None)
    num_layers: int | None = flax.struct.field(pytree_node=False, default=None)

    def at_layer(self, layer) -> AttentionContext:
        """This context inside layer `layer` of a scan: the index written in, and the key (if any) folded with it so
        that sampling backends draw fresh rows in every layer."""
        rng = None if self.rng is None else jax.random.fold_in(self.rng, layer)
        return self.replace(layer=layer, rng=rng)


def reject_bias_and_mask(backend: str, q: jax.Array, bias, mask) -> None:
    """For backends whose sparsity pattern is the whole mask: a dense bias/mask would be silently dropped."""
    if bias is not None or mask is not None:
        shapes = {name: getattr(x, "shape", None) for name, x in (("bias", bias), ("mask", mask)) if x is not None}
        raise ValueError(f"attention backend {backend!r} takes no dense bias/mask (got {shapes} for q {q.shape}); "
                         f"its pattern comes from the context or its options")


def _dense(q, k, v, *, bias=None, mask=None, context: AttentionContext, sm_scale: float | None = None):
    """XLA attention (`jax.nn.dot_product_attention`, implementation=None): the portable reference."""
    del context
    return jax.nn.dot_product_attention(q, k, v, bias=bias, mask=mask, scale=sm_scale), {}


def _cudnn(q, k, v, *, bias=None, mask=None, context: AttentionContext, sm_scale: float | None = None):
    """cuDNN flash attention; GPU only (bf16/f16)."""
    del context
    if jax.default_backend() != "gpu":
        raise ValueError(f"attention backend 'cudnn' needs a GPU; this process runs on {jax.default_backend()!r} "
                         f"(q {q.shape} {q.dtype}). Use 'dense' here.")
    return jax.nn.dot_product_attention(q, k, v, bias=bias, mask=mask, scale=sm_scale, implementation="cudnn"), {}


def _block_sparse(q, k, v, *, bias=None, mask=None, context: AttentionContext, block_q: int = 128,
                  block_kv: int = 128, sm_scale: float | None = None, implementation: str | None = None):
    """The Pallas block-sparse kernel with `context.block_mask`."""
    reject_bias_and_mask("block_sparse", q, bias, mask)
    if context.block_mask is None:
        raise ValueError(f"attention backend 'block_sparse' needs context.block_mask (q {q.shape})")
    out = block_sparse_attention(q, k, v, context.block_mask, block_q=block_q, block_kv=block_kv, sm_scale=sm_scale,
                                 implementation=implementation)
    return out, {}


BACKENDS: dict[str, Backend] = {
    "dense": _dense,
    "cudnn": _cudnn,
    "block_sparse": _block_sparse,
}


def register_backend(name: str, backend: Backend) -> None:
    if name in BACKENDS:
        raise ValueError(f"attention backend {name!r} is already registered")
    BACKENDS[name] = backend


def get_backend(name: str) -> Backend:
    if name not in BACKENDS:
        plugins.import_projects()
    if name not in BACKENDS:
        close = difflib.get_close_matches(name, BACKENDS, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"Unknown attention backend {name!r}; known: {sorted(BACKENDS)}.{hint}")
    return BACKENDS[name]


def attention(q: jax.Array, k: jax.Array, v: jax.Array, *, backend: str = "dense", bias=None, mask=None,
              context: AttentionContext | None = None, **options) -> tuple[jax.Array, Aux]:
    """Runs `backend` on `[batch, seq, heads, head_dim]` inputs; returns `(out, aux)`."""
    if q.ndim != 4 or k.ndim != 4 or v.ndim != 4:
        raise ValueError(f"q, k, v must be [batch, seq, heads, head_dim]; got q {q.shape}, k {k.shape}, v {v.shape}")
    return get_backend(backend)(q, k, v, bias=bias, mask=mask, context=context or AttentionContext(), **options)


class SelfAttention(nn.Module):
    """Multi-head self-attention whose core is a registered backend: `SelfAttention.backend = 'svg'` in gin.

    The backend's diagnostics (`aux`) are sown into the "intermediates" collection under their own names.
    """

    num_heads: int
    head_dim: int
    backend: str = "dense"
    backend_options: Mapping[str, Any] | None = None

    @nn.compact
    def __call__(self, x: jax.Array, *, context: AttentionContext | None = None, mask=None) -> jax.Array:
        init = nn.initializers.lecun_normal()
        qkv = nn.DenseGeneral((3, self.num_heads, self.head_dim), name="qkv",
                              kernel_init=nn.with_logical_partitioning(init, ("embed", None, "heads", "kv")))(x)
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        out, aux = attention(q, k, v, backend=self.backend, mask=mask, context=context,
                             **dict(self.backend_options or {}))
        for name, value in aux.items():
            self.sow("intermediates", name, value)
        return nn.DenseGeneral(x.shape[-1], axis=(-2, -1), name="out",
                               kernel_init=nn.with_logical_partitioning(init, ("heads", "kv", "embed")))(out)
