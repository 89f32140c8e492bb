"""The public ops (`layer_norm_modulate`, `residual_layer_norm_modulate`): validation, dispatch through a
registry, and the gradients of the fused kernels.

`implementation` names an `IMPLEMENTATIONS` entry; None picks the platform default ("pallas_gpu" on a GPU, "xla"
elsewhere):
  "xla"                   the jnp reference; XLA fuses and differentiates it (the baseline the kernels must beat).
  "pallas_gpu"            the Triton-lowered Pallas kernels (`kernel_gpu.py`), forward and backward.
  "pallas_gpu_interpret"  the same kernel bodies in Pallas' interpreter, for CPU tests.
`jax.grad` cannot differentiate a `pallas_call`, so the kernels sit behind a `custom_vjp` whose backward pass is the
backward kernel plus the small sum over its per-split partials.
"""

import functools
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from pallas_kernels.norm_modulate import kernel_gpu
from pallas_kernels.norm_modulate import reference
from pallas_kernels.norm_modulate import tuning

_FLOAT_DTYPES = (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16), jnp.dtype(jnp.float32))


def _backward_tiling(seq: int, blocks: tuning.BlockSizes) -> tuple[int, int, int]:
  """(rows per step, splits, seq padded to rows * splits): no more splits than the sequence has row blocks."""
  rows = min(blocks.rows_backward, pl.next_power_of_2(seq))
  splits = min(blocks.splits, pl.cdiv(seq, rows))
  return rows, splits, pl.cdiv(seq, rows * splits) * rows * splits


def _padded_rows(a, padded):
  return jnp.pad(a, ((0, 0), (0, padded - a.shape[1]), (0, 0)))


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5))
def _fused(x, shift, scale, eps, blocks, interpret):
  return kernel_gpu.forward(x, shift, scale, eps=eps, blocks=blocks, interpret=interpret)


def _fused_forward(x, shift, scale, eps, blocks, interpret):
  return _fused(x, shift, scale, eps, blocks, interpret), (x, shift, scale)


def _fused_backward(eps, blocks, interpret, residuals, dy):
  """Zero rows pad the sequence to whole backward steps: they have xhat = 0 and dy = 0, so add nothing to the sums."""
  x, shift, scale = residuals
  seq = x.shape[1]
  rows, splits, padded = _backward_tiling(seq, blocks)
  dx, dshift, dscale = kernel_gpu.backward(_padded_rows(x, padded), scale, _padded_rows(dy.astype(x.dtype), padded),
                                           eps=eps, rows=rows, splits=splits, blocks=blocks, interpret=interpret)
  return dx[:, :seq], dshift.sum(axis=1).astype(shift.dtype), dscale.sum(axis=1).astype(scale.dtype)


_fused.defvjp(_fused_forward, _fused_backward)


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6, 7))
def _fused_residual(x, h, gate, shift, scale, eps, blocks, interpret):
  return kernel_gpu.forward(x, shift, scale, h=h, gate=gate, eps=eps, blocks=blocks, interpret=interpret)


def _fused_residual_forward(x, h, gate, shift, scale, eps, blocks, interpret):
  z, y = _fused_residual(x, h, gate, shift, scale, eps, blocks, interpret)
  return (z, y), (z, h, gate, shift, scale)


def _fused_residual_backward(eps, blocks, interpret, residuals, cotangents):
  """The same zero-row padding: padded rows also have h = 0 and dz = 0, so dgate gains nothing from them."""
  z, h, gate, shift, scale = residuals
  dz, dy = cotangents
  seq = z.shape[1]
  rows, splits, padded = _backward_tiling(seq, blocks)
  pad = functools.partial(_padded_rows, padded=padded)
  dx, dh, dshift, dscale, dgate = kernel_gpu.backward(
      pad(z), scale, pad(dy.astype(z.dtype)), h=pad(h), gate=gate, dz=pad(dz.astype(z.dtype)), eps=eps, rows=rows,
      splits=splits, blocks=blocks, interpret=interpret)
  return (dx[:, :seq], dh[:, :seq], dgate.sum(axis=1).astype(gate.dtype), dshift.sum(axis=1).astype(shift.dtype),
          dscale.sum(axis=1).astype(scale.dtype))


_fused_residual.defvjp(_fused_residual_forward, _fused_residual_backward)


class _Implementation(NamedTuple):
  """One implementation of both ops: `plain(x, shift, scale, *, eps, blocks) -> y` and `residual(x, h, gate, shift,
  scale, *, eps, blocks) -> (z, y)`."""
  plain: Callable
  residual: Callable


def _xla():
  return _Implementation(
      plain=lambda x, shift, scale, *, eps, blocks: reference.layer_norm_modulate(x, shift, scale, eps),
      residual=lambda x, h, gate, shift, scale, *, eps, blocks: reference.residual_layer_norm_modulate(
          x, h, gate, shift, scale, eps))


def _pallas(interpret):
  return _Implementation(
      plain=lambda x, shift, scale, *, eps, blocks: _fused(x, shift, scale, eps, blocks, interpret),
      residual=lambda x, h, gate, shift, scale, *, eps, blocks: _fused_residual(x, h, gate, shift, scale, eps,
                                                                                blocks, interpret))


IMPLEMENTATIONS: dict[str, _Implementation] = {
    "xla": _xla(),
    "pallas_gpu": _pallas(interpret=False),
    "pallas_gpu_interpret": _pallas(interpret=True),
}

DEFAULT_BY_PLATFORM = {"gpu": "pallas_gpu", "cuda": "pallas_gpu", "rocm": "pallas_gpu"}


def default_implementation() -> str:
  """The implementation `layer_norm_modulate` runs on this platform when none is named."""
  return DEFAULT_BY_PLATFORM.get(jax.default_backend(), "xla")


def _check_dtypes(op, **arrays):
  if any(jnp.dtype(a.dtype) not in _FLOAT_DTYPES for a in arrays.values()):
    raise ValueError(f"{op} takes bf16 / f16 / f32 arrays; got "
                     + ", ".join(f"{name} {a.dtype}" for name, a in arrays.items()))


def _resolve(op, implementation, block_sizes):
  name = implementation or default_implementation()
  if name not in IMPLEMENTATIONS:
    raise ValueError(f"{op} implementation must be one of {sorted(IMPLEMENTATIONS)} or None; got {name!r}")
  return IMPLEMENTATIONS[name], block_sizes or tuning.block_sizes_for(jax.devices()[0].device_kind)


def layer_norm_modulate(x: jax.Array, shift: jax.Array, scale: jax.Array, eps: float = 1e-6, *,
                        implementation: str | None = None,
                        block_sizes: tuning.BlockSizes | None = None) -> jax.Array:
  """`LayerNorm(x) * (1 + scale) + shift` (no affine LayerNorm parameters; float32 statistics and arithmetic).

  x: `[batch, seq, width]`, bf16 / f16 / f32, seq and width >= 1; the result has its shape and dtype.
  shift, scale: `[batch, width]`, one modulation per sample (adaLN); their gradients come back in their dtypes.
  eps: the LayerNorm's epsilon (a Python float: it is compiled into the kernels).
  implementation: a key of `IMPLEMENTATIONS`, None for `default_implementation()`.
  block_sizes: `tuning.BlockSizes` for the Pallas kernels; by default the tuned entry for this device.
  """
  if x.ndim != 3 or 0 in x.shape[1:] or shift.shape != (x.shape[0], x.shape[2]) or scale.shape != shift.shape:
    raise ValueError(f"layer_norm_modulate takes x [batch, seq >= 1, width >= 1] with shift and scale [batch, width]; "
                     f"got x {x.shape}, shift {shift.shape}, scale {scale.shape}")
  _check_dtypes("layer_norm_modulate", x=x, shift=shift, scale=scale)
  impl, blocks = _resolve("layer_norm_modulate", implementation, block_sizes)
  return impl.plain(x, shift, scale, eps=float(eps), blocks=blocks)


def residual_layer_norm_modulate(x: jax.Array, h: jax.Array, gate: jax.Array, shift: jax.Array, scale: jax.Array,
                                 eps: float = 1e-6, *, implementation: str | None = None,
                                 block_sizes: tuning.BlockSizes | None = None) -> tuple[jax.Array, jax.Array]:
  """`z = x + gate * h` and `y = LayerNorm(z) * (1 + scale) + shift`, returned as (z, y): a DiT block's gated residual
  after attention and the MLP's norm-modulate in one pass (z is the residual stream, y the MLP's input).

  x, h: `[batch, seq, width]`; z and y have x's dtype (h's gradient has h's). gate, shift, scale: `[batch, width]`.
  Other arguments as `layer_norm_modulate`.
  """
  if (x.ndim != 3 or 0 in x.shape[1:] or h.shape != x.shape
      or any(a.shape != (x.shape[0], x.shape[2]) for a in (gate, shift, scale))):
    raise ValueError(f"residual_layer_norm_modulate takes x and h [batch, seq >= 1, width >= 1] with gate, shift and "
                     f"scale [batch, width]; got x {x.shape}, h {h.shape}, gate {gate.shape}, shift {shift.shape}, "
                     f"scale {scale.shape}")
  _check_dtypes("residual_layer_norm_modulate", x=x, h=h, gate=gate, shift=shift, scale=scale)
  impl, blocks = _resolve("residual_layer_norm_modulate", implementation, block_sizes)
  return impl.residual(x, h, gate, shift, scale, eps=float(eps), blocks=blocks)
