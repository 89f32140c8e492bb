"""Fused condition-aware product (Pallas, Triton lowering; the same body runs in interpret mode on CPU).

One program computes a `block_m x block_n` output tile of one sample b. Its loop over the contraction loads, per
step, the x tile, the W tile and the `rank` generator tiles, builds the weight tile `W + sum_j h[b, j] G_j` in
registers (float32) and feeds it to the dot: the per-sample weight stack `[batch, in, out]` that the XLA path writes
and reads never exists in HBM. W and G are the same for every sample, so across programs they are read from L2.

What it trades (why this is an experiment, to be timed on the H100 with experiments/bench/can_matmul.py): building a
tile costs `rank` multiply-adds per weight on the CUDA cores for every (sample, row tile), against `block_m` tensor-
core MACs per weight in the dot; at rank 8 and block_m 64-128 the build is not free, and it is redone by every row
tile of a sample (256 tokens: 2-4 tiles). It wins where the stack's HBM traffic costs more than that.

Operands come padded to the tiles (`ops.py`): rows to block_m, in to block_k, out to block_n, rank to a power of 2.
"""

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu_triton


def _kernel(x_ref, h_ref, w_ref, g_ref, o_ref, *, block_k):
  """x_ref [block_m, in] of sample b, h_ref [rank], w_ref [in, block_n], g_ref [rank, in, block_n].

  The rank terms are added one `block_k x block_n` tile at a time (unrolled): a `[rank, block_k, block_n]` float32
  tensor would not fit in registers (rank 8, 64 x 64: 128 KiB per program)."""

  def step(k, acc):
    start = pl.multiple_of(k * block_k, block_k)
    weights = w_ref[pl.ds(start, block_k), :].astype(jnp.float32)
    for j in range(g_ref.shape[0]):
      weights = weights + h_ref[j].astype(jnp.float32) * g_ref[j, pl.ds(start, block_k), :].astype(jnp.float32)
    x = x_ref[:, pl.ds(start, block_k)]
    return acc + jnp.dot(x, weights.astype(x.dtype), preferred_element_type=jnp.float32)

  acc = jax.lax.fori_loop(0, x_ref.shape[1] // block_k, step,
                          jnp.zeros((x_ref.shape[0], o_ref.shape[1]), jnp.float32))
  o_ref[...] = acc.astype(o_ref.dtype)


def can_matmul(x, kernel, h, generator, *, blocks, interpret):
  """x [batch, rows, in], kernel [in, out], h [batch, rank], generator [rank, in, out], all padded to `blocks`
  -> [batch, rows, out] in x's dtype."""
  batch, rows, k = x.shape
  rank, n = generator.shape[0], kernel.shape[1]
  grid = (batch, rows // blocks.block_m, n // blocks.block_n)
  compiler_params = None if interpret else plgpu_triton.CompilerParams(num_warps=blocks.num_warps,
                                                                        num_stages=blocks.num_stages)
  return pl.pallas_call(
      functools.partial(_kernel, block_k=blocks.block_k),
      out_shape=jax.ShapeDtypeStruct((batch, rows, n), x.dtype),
      grid=grid,
      in_specs=[pl.BlockSpec((None, blocks.block_m, k), lambda b, i, j: (b, i, 0)),
                pl.BlockSpec((None, rank), lambda b, i, j: (b, 0)),
                pl.BlockSpec((k, blocks.block_n), lambda b, i, j: (0, j)),
                pl.BlockSpec((rank, k, blocks.block_n), lambda b, i, j: (0, 0, j))],
      out_specs=pl.BlockSpec((None, blocks.block_m, blocks.block_n), lambda b, i, j: (b, i, j)),
      compiler_params=compiler_params, interpret=interpret, name="can_matmul",
  )(x, h, kernel, generator)
