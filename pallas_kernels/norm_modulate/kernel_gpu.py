"""Fused LayerNorm + adaLN modulation, optionally with the gated residual before it, forward and backward (Pallas,
Triton lowering; the same bodies run in interpret mode on CPU).

Forward: one program normalises `rows_forward` whole rows of one sample: it reads them once, computes mean and
variance in float32 (two passes over the registers, so no E[x^2] - E[x]^2 cancellation), applies `(1 + scale) *` and
`+ shift` and writes y once. With the residual it first forms z = x + gate * h (rounded to x's dtype, the residual
stream as the unfused block keeps it), writes z and normalises it, so z is never read back. Nothing else is saved for
the backward pass: it recomputes the statistics from x (or z), which it reads anyway.

Backward, per row, with xhat = (x - mean) * rstd, g = dy * (1 + scale) and means over the width:
    dx = rstd * (g - mean(g) - xhat * mean(g * xhat))
and per sample, over the sequence:  dshift = sum_s dy,  dscale = sum_s dy * xhat. With the residual, dx also takes
the cotangent of z (the stream continues past the norm), dh = gate * dx, and dgate = sum_s dx * h.
The sequence sums cross rows that different programs own. Rather than atomics (float atomics make the result depend on
the order programs finish in), each program owns a contiguous `seq / splits` stretch of one sample's rows, loops over it
`rows_backward` rows at a time, writes dx (and dh) per step and keeps its partial sums in registers, written once at
the end as one row of `[batch, splits, width]` float32 arrays; `ops.py` adds the `splits` rows. So every activation
is read once and every gradient written once, and the second reduction touches `splits` rows per sample.

The width is padded in registers to a power of two (`block_width`, Triton's tensors must be): every load and store
is a masked gather / scatter into the whole, unblocked array (`_tile`, `_put`), its padded lanes (and, in the forward,
the rows past the sequence) read as zero and never written. The first version let Pallas mask a BlockSpec block
wider than the array instead: in interpret mode that was right, compiled on an H100 every row but a block's first
came out wrong (2026-12-07, experiments/bench/README.md), so the kernels now state their masks themselves.
"""

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu_triton


def _tile(ref, sample, rows, lanes, valid):
  """Rows `rows` `[r, 1]` x lanes `[1, w]` of `sample` of a `[batch, seq, width]` ref as float32, zero where not
  `valid`."""
  return plgpu_triton.load(ref.at[sample, rows, lanes], mask=valid, other=0.0).astype(jnp.float32)


def _row(ref, sample, lanes, valid):
  """A `[batch, width]` ref's row `sample` as float32 `[1, w]`, zero past the width."""
  return plgpu_triton.load(ref.at[sample, lanes], mask=valid, other=0.0).astype(jnp.float32)


def _put(ref, index, value, valid):
  plgpu_triton.store(ref.at[index], value.astype(ref.dtype), mask=valid)


def _row_stats(x, valid, width, eps):
  """x float32 `[rows, block_width]` with zeros in the padded lanes -> (x - mean, zeroed past `width`; rstd)."""
  mean = jnp.sum(x, axis=1, keepdims=True) / width
  centered = jnp.where(valid, x - mean, 0.0)
  variance = jnp.sum(centered * centered, axis=1, keepdims=True) / width
  return centered, jax.lax.rsqrt(variance + eps)


def _norm_modulate(x, sample, lanes, lane_ok, shift_ref, scale_ref, *, width, eps):
  """`LayerNorm(x) * (1 + scale) + shift` of float32 rows `x` (zero past the width), the sample's scale and shift."""
  centered, rstd = _row_stats(x, lane_ok, width, eps)
  return centered * rstd * (1.0 + _row(scale_ref, sample, lanes, lane_ok)) + _row(shift_ref, sample, lanes, lane_ok)


def _forward_indices(rows, block_width, width, seq):
  """(sample, row indices `[rows, 1]`, lanes `[1, block_width]`, valid `[rows, block_width]`, valid lanes `[1,
  block_width]`) of this program's row block."""
  sample, block = pl.program_id(0), pl.program_id(1)
  row = block * rows + jnp.arange(rows)[:, None]
  lanes = jnp.arange(block_width)[None, :]
  lane_ok = lanes < width
  return sample, row, lanes, (row < seq) & lane_ok, lane_ok


def _forward_kernel(x_ref, shift_ref, scale_ref, y_ref, *, width, eps, rows, block_width):
  sample, row, lanes, valid, lane_ok = _forward_indices(rows, block_width, width, x_ref.shape[1])
  y = _norm_modulate(_tile(x_ref, sample, row, lanes, valid), sample, lanes, lane_ok, shift_ref, scale_ref,
                     width=width, eps=eps)
  _put(y_ref, (sample, row, lanes), y, valid)


def _residual_forward_kernel(x_ref, h_ref, gate_ref, shift_ref, scale_ref, z_ref, y_ref, *, width, eps, rows,
                             block_width):
  sample, row, lanes, valid, lane_ok = _forward_indices(rows, block_width, width, x_ref.shape[1])
  gate = _row(gate_ref, sample, lanes, lane_ok)
  # z rounded to the stream's dtype before it is normalised, as the unfused block keeps it.
  z = (_tile(x_ref, sample, row, lanes, valid) + gate * _tile(h_ref, sample, row, lanes, valid)).astype(z_ref.dtype)
  _put(z_ref, (sample, row, lanes), z, valid)
  y = _norm_modulate(z.astype(jnp.float32), sample, lanes, lane_ok, shift_ref, scale_ref, width=width, eps=eps)
  _put(y_ref, (sample, row, lanes), y, valid)


def _backward_kernel(x_ref, scale_ref, dy_ref, *refs, width, eps, rows, steps, residual, block_width):
  """Without the residual, refs = (dx, dshift, dscale); with it, x_ref holds z and refs = (h, gate, dz, dx, dh, dshift,
  dscale, dgate)."""
  if residual:
    h_ref, gate_ref, dz_ref, dx_ref, dh_ref, *sum_refs = refs
  else:
    dx_ref, *sum_refs = refs
  sample, split = pl.program_id(0), pl.program_id(1)
  lanes = jnp.arange(block_width)[None, :]
  valid = lanes < width
  gain = 1.0 + _row(scale_ref, sample, lanes, valid)
  gate = _row(gate_ref, sample, lanes, valid) if residual else None
  first = split * steps

  def step(i, sums):
    row = (first + i) * rows + jnp.arange(rows)[:, None]
    tile = functools.partial(_tile, sample=sample, rows=row, lanes=lanes, valid=valid)
    dy = tile(dy_ref)
    centered, rstd = _row_stats(tile(x_ref), valid, width, eps)
    xhat = centered * rstd
    g = dy * gain
    mean_g = jnp.sum(g, axis=1, keepdims=True) / width
    mean_gx = jnp.sum(g * xhat, axis=1, keepdims=True) / width
    dx = rstd * (g - mean_g - xhat * mean_gx)
    terms = [jnp.sum(dy, axis=0, keepdims=True), jnp.sum(dy * xhat, axis=0, keepdims=True)]
    if residual:
      dx = jnp.where(valid, dx + tile(dz_ref), 0.0)
      _put(dh_ref, (sample, row, lanes), gate * dx, valid)
      terms.append(jnp.sum(dx * tile(h_ref), axis=0, keepdims=True))
    _put(dx_ref, (sample, row, lanes), dx, valid)
    return tuple(total + term for total, term in zip(sums, terms))

  zeros = tuple(jnp.zeros((1, block_width), jnp.float32) for _ in sum_refs)
  for ref, total in zip(sum_refs, jax.lax.fori_loop(0, steps, step, zeros)):
    _put(ref, (sample, split, lanes), total, valid)


def _compiler_params(blocks, interpret, num_stages=1):
  return None if interpret else plgpu_triton.CompilerParams(num_warps=blocks.num_warps, num_stages=num_stages)


def forward(x, shift, scale, *, eps, blocks, interpret, h=None, gate=None):
  """x `[batch, seq, width]`, shift / scale `[batch, width]` -> y like x; with h (like x) and gate (like shift),
  -> (z = x + gate * h, y of z). Every operand is the whole array (`_tile` and `_put` index and mask it)."""
  batch, seq, width = x.shape
  rows = min(blocks.rows_forward, pl.next_power_of_2(seq))
  out = jax.ShapeDtypeStruct(x.shape, x.dtype)
  if h is None:
    body, operands, out_shape = _forward_kernel, (x, shift, scale), out
  else:
    body, operands, out_shape = _residual_forward_kernel, (x, h, gate, shift, scale), (out, out)
  return pl.pallas_call(
      functools.partial(body, width=width, eps=eps, rows=rows, block_width=pl.next_power_of_2(width)),
      out_shape=out_shape, grid=(batch, pl.cdiv(seq, rows)), compiler_params=_compiler_params(blocks, interpret),
      interpret=interpret, name="layer_norm_modulate_fwd",
  )(*operands)


def backward(x, scale, dy, *, eps, rows, splits, blocks, interpret, h=None, gate=None, dz=None):
  """x, dy `[batch, seq, width]` with seq a multiple of `rows * splits`, scale `[batch, width]` -> dx like x, and the
  per-split partial sums of dshift and dscale, float32 `[batch, splits, width]` each. With the residual, x is z and
  h, gate and dz (z's own cotangent) come too -> (dx, dh, dshift, dscale, dgate partials)."""
  batch, seq, width = x.shape
  residual = h is not None
  operands, out_shape = [x, scale, dy], [jax.ShapeDtypeStruct(x.shape, x.dtype)]
  if residual:
    operands += [h, gate, dz]
    out_shape.append(jax.ShapeDtypeStruct(h.shape, h.dtype))
  partial = jax.ShapeDtypeStruct((batch, splits, width), jnp.float32)
  return pl.pallas_call(
      functools.partial(_backward_kernel, width=width, eps=eps, rows=rows, steps=seq // (rows * splits),
                        residual=residual, block_width=pl.next_power_of_2(width)),
      out_shape=(*out_shape, *[partial] * (3 if residual else 2)), grid=(batch, splits),
      compiler_params=_compiler_params(blocks, interpret, blocks.num_stages), interpret=interpret,
      name="layer_norm_modulate_bwd",
  )(*operands)
