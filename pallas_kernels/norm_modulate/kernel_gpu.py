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

The width is padded in registers to a power of two (`block_width`): loads and stores past it are masked by Pallas
(the BlockSpec's block is wider than the array), and the padded lanes are zeroed before every reduction (in interpret
mode they hold NaN, so the tests catch a missed mask).
"""

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu_triton


def _lanes(ref, valid):
  """A block as float32, its padded lanes zeroed."""
  return jnp.where(valid, ref.astype(jnp.float32), 0.0)


def _row_stats(x, valid, width, eps):
  """x float32 `[rows, block_width]` with zeros in the padded lanes -> (x - mean, zeroed past `width`; rstd)."""
  mean = jnp.sum(x, axis=1, keepdims=True) / width
  centered = jnp.where(valid, x - mean, 0.0)
  variance = jnp.sum(centered * centered, axis=1, keepdims=True) / width
  return centered, jax.lax.rsqrt(variance + eps)


def _norm_modulate(x, valid, shift_ref, scale_ref, *, width, eps):
  centered, rstd = _row_stats(x, valid, width, eps)
  scale = scale_ref[...].astype(jnp.float32)[None, :]
  shift = shift_ref[...].astype(jnp.float32)[None, :]
  return centered * rstd * (1.0 + scale) + shift


def _forward_kernel(x_ref, shift_ref, scale_ref, y_ref, *, width, eps):
  valid = (jnp.arange(x_ref.shape[-1]) < width)[None, :]
  y = _norm_modulate(_lanes(x_ref[...], valid), valid, shift_ref, scale_ref, width=width, eps=eps)
  y_ref[...] = y.astype(y_ref.dtype)


def _residual_forward_kernel(x_ref, h_ref, gate_ref, shift_ref, scale_ref, z_ref, y_ref, *, width, eps):
  valid = (jnp.arange(x_ref.shape[-1]) < width)[None, :]
  gate = gate_ref[...].astype(jnp.float32)[None, :]
  z = (x_ref[...].astype(jnp.float32) + gate * h_ref[...].astype(jnp.float32)).astype(z_ref.dtype)
  z_ref[...] = z
  y = _norm_modulate(_lanes(z, valid), valid, shift_ref, scale_ref, width=width, eps=eps)
  y_ref[...] = y.astype(y_ref.dtype)


def _backward_kernel(x_ref, scale_ref, dy_ref, *refs, width, eps, rows, steps, residual):
  """Without the residual, refs = (dx, dshift, dscale); with it, x_ref holds z and refs = (h, gate, dz, dx, dh, dshift,
  dscale, dgate)."""
  if residual:
    h_ref, gate_ref, dz_ref, dx_ref, dh_ref, *sum_refs = refs
  else:
    dx_ref, *sum_refs = refs
  block_width = x_ref.shape[-1]
  valid = (jnp.arange(block_width) < width)[None, :]
  gain = 1.0 + _lanes(scale_ref[...][None, :], valid)
  gate = _lanes(gate_ref[...][None, :], valid) if residual else None
  first = pl.program_id(1) * steps

  def step(i, sums):
    block = pl.ds(pl.multiple_of((first + i) * rows, rows), rows)
    dy = _lanes(dy_ref[block, :], valid)
    centered, rstd = _row_stats(_lanes(x_ref[block, :], valid), valid, width, eps)
    xhat = centered * rstd
    g = dy * gain
    mean_g = jnp.sum(g, axis=1, keepdims=True) / width
    mean_gx = jnp.sum(g * xhat, axis=1, keepdims=True) / width
    dx = rstd * (g - mean_g - xhat * mean_gx)
    terms = [jnp.sum(dy, axis=0), jnp.sum(dy * xhat, axis=0)]
    if residual:
      dx = jnp.where(valid, dx + _lanes(dz_ref[block, :], valid), 0.0)
      dh_ref[block, :] = (gate * dx).astype(dh_ref.dtype)
      terms.append(jnp.sum(dx * _lanes(h_ref[block, :], valid), axis=0))
    dx_ref[block, :] = dx.astype(dx_ref.dtype)
    return tuple(total + term for total, term in zip(sums, terms))

  zeros = tuple(jnp.zeros((block_width,), jnp.float32) for _ in sum_refs)
  for ref, total in zip(sum_refs, jax.lax.fori_loop(0, steps, step, zeros)):
    ref[...] = total


def _compiler_params(blocks, interpret, num_stages=1):
  return None if interpret else plgpu_triton.CompilerParams(num_warps=blocks.num_warps, num_stages=num_stages)


def forward(x, shift, scale, *, eps, blocks, interpret, h=None, gate=None):
  """x `[batch, seq, width]`, shift / scale `[batch, width]` -> y like x; with h (like x) and gate (like shift),
  -> (z = x + gate * h, y of z)."""
  batch, seq, width = x.shape
  block_width = pl.next_power_of_2(width)
  rows = min(blocks.rows_forward, pl.next_power_of_2(seq))
  row_block = pl.BlockSpec((None, rows, block_width), lambda b, i: (b, i, 0))
  per_sample = pl.BlockSpec((None, block_width), lambda b, i: (b, 0))
  out = jax.ShapeDtypeStruct(x.shape, x.dtype)
  if h is None:
    body, operands, in_specs, out_shape, out_specs = _forward_kernel, (x, shift, scale), [row_block] + [
        per_sample] * 2, out, row_block
  else:
    body, operands, in_specs, out_shape, out_specs = _residual_forward_kernel, (x, h, gate, shift, scale), [
        row_block] * 2 + [per_sample] * 3, (out, out), (row_block, row_block)
  return pl.pallas_call(
      functools.partial(body, width=width, eps=eps), out_shape=out_shape, grid=(batch, pl.cdiv(seq, rows)),
      in_specs=in_specs, out_specs=out_specs, compiler_params=_compiler_params(blocks, interpret),
      interpret=interpret, name="layer_norm_modulate_fwd",
  )(*operands)


def backward(x, scale, dy, *, eps, rows, splits, blocks, interpret, h=None, gate=None, dz=None):
  """x, dy `[batch, seq, width]` with seq a multiple of `rows * splits`, scale `[batch, width]` -> dx like x, and the
  per-split partial sums of dshift and dscale, float32 `[batch, splits, width]` each. With the residual, x is z and
  h, gate and dz (z's own cotangent) come too -> (dx, dh, dshift, dscale, dgate partials)."""
  batch, seq, width = x.shape
  block_width = pl.next_power_of_2(width)
  whole_sample = pl.BlockSpec((None, seq, block_width), lambda b, s: (b, 0, 0))
  per_sample = pl.BlockSpec((None, block_width), lambda b, s: (b, 0))
  partial_row = pl.BlockSpec((None, None, block_width), lambda b, s: (b, s, 0))
  partial = jax.ShapeDtypeStruct((batch, splits, width), jnp.float32)
  residual = h is not None
  operands, in_specs = [x, scale, dy], [whole_sample, per_sample, whole_sample]
  out_shape, out_specs = [jax.ShapeDtypeStruct(x.shape, x.dtype)], [whole_sample]
  if residual:
    operands += [h, gate, dz]
    in_specs += [whole_sample, per_sample, whole_sample]
    out_shape.append(jax.ShapeDtypeStruct(h.shape, h.dtype))
    out_specs.append(whole_sample)
  sums = 3 if residual else 2
  return pl.pallas_call(
      functools.partial(_backward_kernel, width=width, eps=eps, rows=rows, steps=seq // (rows * splits),
                        residual=residual),
      out_shape=(*out_shape, *[partial] * sums), grid=(batch, splits), in_specs=in_specs,
      out_specs=(*out_specs, *[partial_row] * sums),
      compiler_params=_compiler_params(blocks, interpret, blocks.num_stages), interpret=interpret,
      name="layer_norm_modulate_bwd",
  )(*operands)
