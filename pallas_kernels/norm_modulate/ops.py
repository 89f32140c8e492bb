"""The public op: validation, dispatch through a registry, and the gradient of the fused kernels.

`implementation` names an `IMPLEMENTATIONS` entry; None picks the platform default ("pallas_gpu" on a GPU, "xla"
elsewhere):
  "xla"                   the jnp reference; XLA fuses and differentiates it (the baseline the kernels must beat).
  "pallas_gpu"            the Triton-lowered Pallas kernels (`kernel_gpu.py`), forward and backward.
  "pallas_gpu_interpret"  the same kernel bodies in Pallas' interpreter, for CPU tests.
`jax.grad` cannot differentiate a `pallas_call`, so the kernels sit behind a `custom_vjp` whose backward pass is the
backward kernel plus the small sum over its per-split partials.
"""

import functools
from typing import Callable

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
  pad = ((0, 0), (0, padded - seq), (0, 0))
  dx, dshift, dscale = kernel_gpu.backward(jnp.pad(x, pad), scale, jnp.pad(dy.astype(x.dtype), pad), eps=eps,
                                           rows=rows, splits=splits, blocks=blocks, interpret=interpret)
  return dx[:, :seq], dshift.sum(axis=1).astype(shift.dtype), dscale.sum(axis=1).astype(scale.dtype)


_fused.defvjp(_fused_forward, _fused_backward)


def _run_xla(x, shift, scale, *, eps, blocks):
  del blocks
  return reference.layer_norm_modulate(x, shift, scale, eps)


def _run_pallas(x, shift, scale, *, eps, blocks, interpret):
  return _fused(x, shift, scale, eps, blocks, interpret)


IMPLEMENTATIONS: dict[str, Callable] = {
    "xla": _run_xla,
    "pallas_gpu": functools.partial(_run_pallas, interpret=False),
    "pallas_gpu_interpret": functools.partial(_run_pallas, interpret=True),
}

DEFAULT_BY_PLATFORM = {"gpu": "pallas_gpu", "cuda": "pallas_gpu", "rocm": "pallas_gpu"}


def default_implementation() -> str:
  """The implementation `layer_norm_modulate` runs on this platform when none is named."""
  return DEFAULT_BY_PLATFORM.get(jax.default_backend(), "xla")


def layer_norm_modulate(x: jax.Array, shift: jax.Array, scale: jax.Array, eps: float = 1e-6, *,
                        implementation: str | None = None,
                        block_sizes: tuning.BlockSizes | None = None) -> jax.Array:
  """`LayerNorm(x) * (1 + scale) + shift` (no affine LayerNorm parameters; float32 statistics and arithmetic).

  x: `[batch, seq, width]`, bf16 / f16 / f32; the result has its shape and dtype.
  shift, scale: `[batch, width]`, one modulation per sample (adaLN); their gradients come back in their dtypes.
  eps: the LayerNorm's epsilon (a Python float: it is compiled into the kernels).
  implementation: a key of `IMPLEMENTATIONS`, None for `default_implementation()`.
  block_sizes: `tuning.BlockSizes` for the Pallas kernels; by default the tuned entry for this device.
  """
  if x.ndim != 3 or shift.shape != (x.shape[0], x.shape[2]) or scale.shape != shift.shape:
    raise ValueError(f"layer_norm_modulate takes x [batch, seq, width] with shift and scale [batch, width]; got x "
                     f"{x.shape}, shift {shift.shape}, scale {scale.shape}")
  if any(jnp.dtype(a.dtype) not in _FLOAT_DTYPES for a in (x, shift, scale)):
    raise ValueError(f"layer_norm_modulate takes bf16 / f16 / f32 arrays; got x {x.dtype}, shift {shift.dtype}, "
                     f"scale {scale.dtype}")
  if x.shape[1] == 0 or x.shape[2] == 0:
    raise ValueError(f"layer_norm_modulate needs a non-empty sequence and width; got x {x.shape}")
  name = implementation or default_implementation()
  if name not in IMPLEMENTATIONS:
    raise ValueError(f"layer_norm_modulate implementation must be one of {sorted(IMPLEMENTATIONS)} or None; got "
                     f"{name!r}")
  blocks = block_sizes or tuning.block_sizes_for(jax.devices()[0].device_kind)
  return IMPLEMENTATIONS[name](x, shift, scale, eps=float(eps), blocks=blocks)
