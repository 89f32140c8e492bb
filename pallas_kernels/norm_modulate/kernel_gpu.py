"""Fused LayerNorm + adaLN modulation, forward and backward (Pallas, Triton lowering; the same bodies run in
interpret mode on CPU).

Forward: one program normalises `rows_forward` whole rows of one sample: it reads them once, computes mean and
variance in float32 (two passes over the registers, so no E[x^2] - E[x]^2 cancellation), applies `(1 + scale) *` and
`+ shift` and writes y once. Nothing else is saved for the backward pass: it recomputes the statistics from x, which
it reads anyway.

Backward, per row, with xhat = (x - mean) * rstd, g = dy * (1 + scale) and means over the width:
    dx = rstd * (g - mean(g) - xhat * mean(g * xhat))
and per sample, over the sequence:  dshift = sum_s dy,  dscale = sum_s dy * xhat.
The sequence sums cross rows that different programs own. Rather than atomics (float atomics make the result depend on
the order programs finish in), each program owns a contiguous `seq / splits` stretch of one sample's rows, loops over it
`rows_backward` rows at a time, writes dx per step and keeps its dshift / dscale partial sums in registers, written once
at the end as one row of a `[batch, splits, width]` float32 array; `ops.py` adds the `splits` rows. So x and dy are
read once, dx written once, and the second reduction touches `splits` rows per sample.

The width is padded in registers to a power of two (`block_width`): loads and stores past it are masked by Pallas
(the BlockSpec's block is wider than the array), and the padded lanes are zeroed before every reduction (in interpret
mode they hold NaN, so the tests catch a missed mask).
"""

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu_triton


def _row_stats(x, valid, width, eps):
  """x float32 `[rows, block_width]` with zeros in the padded lanes -> (x - mean, zeroed past `width`; rstd)."""
  mean = jnp.sum(x, axis=1, keepdims=True) / width
  centered = jnp.where(valid, x - mean, 0.0)
  variance = jnp.sum(centered * centered, axis=1, keepdims=True) / width
  return centered, jax.lax.rsqrt(variance + eps)


def _forward_kernel(x_ref, shift_ref, scale_ref, y_ref, *, width, eps):
  block_width = x_ref.shape[-1]
  valid = (jnp.arange(block_width) < width)[None, :]
  x = jnp.where(valid, x_ref[...].astype(jnp.float32), 0.0)
  centered, rstd = _row_stats(x, valid, width, eps)
  scale = scale_ref[...].astype(jnp.float32)[None, :]
  shift = shift_ref[...].astype(jnp.float32)[None, :]
  y_ref[...] = (centered * rstd * (1.0 + scale) + shift).astype(y_ref.dtype)


def _backward_kernel(x_ref, scale_ref, dy_ref, dx_ref, dshift_ref, dscale_ref, *, width, eps, rows, steps):
  block_width = x_ref.shape[-1]
  valid = (jnp.arange(block_width) < width)[None, :]
  gain = 1.0 + jnp.where(valid, scale_ref[...].astype(jnp.float32)[None, :], 0.0)
  first = pl.program_id(1) * steps

  def step(i, sums):
    dshift, dscale = sums
    block = pl.ds(pl.multiple_of((first + i) * rows, rows), rows)
    x = jnp.where(valid, x_ref[block, :].astype(jnp.float32), 0.0)
    dy = jnp.where(valid, dy_ref[block, :].astype(jnp.float32), 0.0)
    centered, rstd = _row_stats(x, valid, width, eps)
    xhat = centered * rstd
    g = dy * gain
    mean_g = jnp.sum(g, axis=1, keepdims=True) / width
    mean_gx = jnp.sum(g * xhat, axis=1, keepdims=True) / width
    dx_ref[block, :] = (rstd * (g - mean_g - xhat * mean_gx)).astype(dx_ref.dtype)
    return dshift + jnp.sum(dy, axis=0), dscale + jnp.sum(dy * xhat, axis=0)

  zeros = jnp.zeros((block_width,), jnp.float32)
  dshift, dscale = jax.lax.fori_loop(0, steps, step, (zeros, zeros))
  dshift_ref[...] = dshift
  dscale_ref[...] = dscale


def _compiler_params(blocks, interpret, num_stages=1):
  return None if interpret else plgpu_triton.CompilerParams(num_warps=blocks.num_warps, num_stages=num_stages)


def forward(x, shift, scale, *, eps, blocks, interpret):
  """x `[batch, seq, width]`, shift / scale `[batch, width]` -> y like x."""
  batch, seq, width = x.shape
  block_width = pl.next_power_of_2(width)
  rows = min(blocks.rows_forward, pl.next_power_of_2(seq))
  return pl.pallas_call(
      functools.partial(_forward_kernel, width=width, eps=eps),
      out_shape=jax.ShapeDtypeStruct(x.shape, x.dtype),
      grid=(batch, pl.cdiv(seq, rows)),
      in_specs=[pl.BlockSpec((None, rows, block_width), lambda b, i: (b, i, 0)),
                pl.BlockSpec((None, block_width), lambda b, i: (b, 0)),
                pl.BlockSpec((None, block_width), lambda b, i: (b, 0))],
      out_specs=pl.BlockSpec((None, rows, block_width), lambda b, i: (b, i, 0)),
      compiler_params=_compiler_params(blocks, interpret), interpret=interpret, name="layer_norm_modulate_fwd",
  )(x, shift, scale)


def backward(x, scale, dy, *, eps, rows, splits, blocks, interpret):
  """x, dy `[batch, seq, width]` with seq a multiple of `rows * splits`, scale `[batch, width]` -> dx like x, and the
  per-split partial sums of dshift and dscale, float32 `[batch, splits, width]` each."""
  batch, seq, width = x.shape
  block_width = pl.next_power_of_2(width)
  steps = seq // (rows * splits)
  whole_sample = pl.BlockSpec((None, seq, block_width), lambda b, s: (b, 0, 0))
  per_sample = pl.BlockSpec((None, block_width), lambda b, s: (b, 0))
  partial_row = pl.BlockSpec((None, None, block_width), lambda b, s: (b, s, 0))
  partial_shape = jax.ShapeDtypeStruct((batch, splits, width), jnp.float32)
  return pl.pallas_call(
      functools.partial(_backward_kernel, width=width, eps=eps, rows=rows, steps=steps),
      out_shape=(jax.ShapeDtypeStruct(x.shape, x.dtype), partial_shape, partial_shape),
      grid=(batch, splits),
      in_specs=[whole_sample, per_sample, whole_sample],
      out_specs=(whole_sample, partial_row, partial_row),
      compiler_params=_compiler_params(blocks, interpret, blocks.num_stages), interpret=interpret,
      name="layer_norm_modulate_bwd",
  )(x, scale, dy)
