"""The public fused condition-aware product: validation, padding to tiles, dispatch through a registry, gradient.

`can_matmul(x, kernel, h, generator)` = `reference.can_matmul`; `implementation` names an `IMPLEMENTATIONS` entry,
None picks the platform's default: the Pallas kernel on a GPU, the jnp reference elsewhere (the Pallas body runs on
CPU only interpreted, for tests). `jax.grad` cannot differentiate a `pallas_call`, so the op has a `custom_vjp` whose
backward pass is the reference's (it forms the per-sample weights; this op is meant for sampling, where there is no
backward pass).
"""

import functools

import jax
import jax.numpy as jnp

from pallas_kernels.can_matmul import kernel_gpu
from pallas_kernels.can_matmul import reference
from pallas_kernels.can_matmul.tuning import BlockSizes

_MIN_TILE = 16  # the smallest dimension of a Triton dot


def _round_up(n, multiple):
  return -(-n // multiple) * multiple


def _next_power_of_2(n):
  return 1 << max(n - 1, 0).bit_length()


def _pad_axis(a, axis, size):
  pad = [(0, 0)] * a.ndim
  pad[axis] = (0, size - a.shape[axis])
  return a if a.shape[axis] == size else jnp.pad(a, pad)


def _fit(blocks, rows, k, n):
  """Block sizes no larger than the (power-of-2 rounded) problem, and at least a Triton dot's 16."""
  fit = lambda block, size: max(_MIN_TILE, min(block, _next_power_of_2(size)))
  return BlockSizes(block_m=fit(blocks.block_m, rows), block_n=fit(blocks.block_n, n),
                    block_k=fit(blocks.block_k, k), num_warps=blocks.num_warps, num_stages=blocks.num_stages)


def _pallas(x, kernel, h, generator, *, blocks, interpret):
  """Pads every operand to the tiles with zeros (exact: zero rows, columns and rank terms add nothing)."""
  batch, rows, k = x.shape
  n, rank = kernel.shape[1], h.shape[1]
  blocks = _fit(blocks, rows, k, n)
  rows_p, k_p, n_p = _round_up(rows, blocks.block_m), _round_up(k, blocks.block_k), _round_up(n, blocks.block_n)
  rank_p = _next_power_of_2(rank)
  x_p = _pad_axis(_pad_axis(x, 1, rows_p), 2, k_p)
  kernel_p = _pad_axis(_pad_axis(kernel, 0, k_p), 1, n_p)
  generator_p = _pad_axis(_pad_axis(_pad_axis(generator, 0, rank_p), 1, k_p), 2, n_p)
  h_p = _pad_axis(h, 1, rank_p)
  y = kernel_gpu.can_matmul(x_p, kernel_p, h_p, generator_p, blocks=blocks, interpret=interpret)
  return y[:, :rows, :n]


def _reference(x, kernel, h, generator, *, blocks):
  del blocks
  return reference.can_matmul(x, kernel, h, generator)


# name -> forward implementation (x, kernel, h, generator, *, blocks) -> y
IMPLEMENTATIONS = {
    "reference": _reference,
    "pallas": functools.partial(_pallas, interpret=False),
    "interpret": functools.partial(_pallas, interpret=True),
}


def _default_implementation():
  return "pallas" if jax.default_backend() == "gpu" else "reference"


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _can_matmul(forward, blocks, x, kernel, h, generator):
  return forward(x, kernel, h, generator, blocks=blocks)


def _forward(forward, blocks, x, kernel, h, generator):
  return forward(x, kernel, h, generator, blocks=blocks), (x, kernel, h, generator)


def _backward(forward, blocks, residuals, cotangent):
  del forward, blocks
  _, vjp = jax.vjp(reference.can_matmul, *residuals)
  return vjp(cotangent)


_can_matmul.defvjp(_forward, _backward)


def can_matmul(x: jax.Array, kernel: jax.Array, h: jax.Array, generator: jax.Array, *,
               implementation: str | None = None, blocks: BlockSizes | None = None) -> jax.Array:
  """`y[b] = x[b] . (kernel + sum_j h[b, j] generator[j])`: x `[batch, rows, in]`, kernel `[in, out]`, h `[batch,
  rank]`, generator `[rank, in, out]` -> `[batch, rows, out]` in x's dtype (float32 accumulation)."""
  if (x.ndim != 3 or kernel.ndim != 2 or h.ndim != 2 or generator.ndim != 3 or kernel.shape[0] != x.shape[2]
      or h.shape[0] != x.shape[0] or generator.shape != (h.shape[1], *kernel.shape)):
    raise ValueError(f"can_matmul takes x [batch, rows, in], kernel [in, out], h [batch, rank], generator [rank, in, "
                     f"out]; got x {x.shape}, kernel {kernel.shape}, h {h.shape}, generator {generator.shape}")
  name = implementation or _default_implementation()
  if name not in IMPLEMENTATIONS:
    raise ValueError(f"can_matmul implementation must be one of {sorted(IMPLEMENTATIONS)} or None; got {name!r}")
  return _can_matmul(IMPLEMENTATIONS[name], blocks or BlockSizes(), x, kernel, h, generator)
