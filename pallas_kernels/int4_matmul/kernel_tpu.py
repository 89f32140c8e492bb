"""TPU kernels (Pallas, Mosaic TPU lowering) for 4-bit and 8-bit matmuls.

Never run on a TPU: none has been available to this project. What has run, on CPU: the public ops over these kernels
under the generic Pallas interpreter (test_int4_matmul.py's TpuInterpretTest), and each kernel once under the
TPU-semantics simulator (`pltpu.InterpretParams()`, TpuSimulatorTest: TPU memory spaces, DMAs and the kernels'
compiler params). Neither compiles through Mosaic TPU, so lowering errors, VMEM limits and speed on a TPU are unknown.

The classic TPU matmul shape: grid (M tiles, N tiles, K steps) with K innermost ("arbitrary"), a float32
accumulator in VMEM, the epilogue (low-rank up-projection, bias) on the last K step. Packed weights are read in
their canonical layout and unpacked in int32 lanes (the VPU has no int8 shifts on older chips) to int8 for the MXU
(W4A4) or to bf16 after scaling (W4A16).

Mosaic wants the two minor block dimensions aligned to (8, 128) tiles or equal to the full array dimension, and
slicing 32 lanes out of a vector is not a cheap operation. So the per-group operands arrive in layouts where a
group is indexed on a leading (untiled) dimension: activations as [groups, 2, M, group/2] (even-K half, then odd-K
half, matching the low and high nibbles of the weights), activation scales as [groups, M, 1] and weight scales as
[groups, 1, N]. `ops.py` builds them in XLA (an extra pass over the activations, small next to the GEMM).
Activation quantization itself and the low-rank down-projection also run in XLA on this path.
"""

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu


def _unpack_nibbles_int32(packed):
  """Packed uint8 -> (low, high) sign-extended codes as int32."""
  wide = packed.astype(jnp.int32)
  low = jax.lax.shift_right_arithmetic(jax.lax.shift_left(wide, 28), 28)
  high = jax.lax.shift_right_arithmetic(jax.lax.shift_left(wide, 24), 28)
  return low, high


def _finish(acc_ref, low_ref, up_ref, bias_ref, out_ref):
  @pl.when(pl.program_id(2) == pl.num_programs(2) - 1)
  def _():
    result = acc_ref[...]
    if low_ref is not None:
      result += jnp.dot(low_ref[...].astype(up_ref.dtype), up_ref[...], preferred_element_type=jnp.float32)
    if bias_ref is not None:
      result += bias_ref[...].astype(jnp.float32)
    out_ref[...] = result.astype(out_ref.dtype)


def _zero_on_first_step(acc_ref):
  @pl.when(pl.program_id(2) == 0)
  def _():
    acc_ref[...] = jnp.zeros_like(acc_ref)


def _grouped_kernel(a_ref, a_scales_ref, w_ref, w_scales_ref, low_ref, up_ref, bias_ref, out_ref, acc_ref, *,
                    integer_activations):
  """One K step of W4A4 (integer_activations) or W4A16: a static loop over the groups of the step."""
  _zero_on_first_step(acc_ref)
  groups, _, _, half = a_ref.shape
  w_low, w_high = _unpack_nibbles_int32(w_ref[...])
  acc = acc_ref[...]
  for g in range(groups):
    rows = slice(g * half, (g + 1) * half)
    if integer_activations:
      exact = (jnp.dot(a_ref[g, 0], w_low[rows].astype(jnp.int8), preferred_element_type=jnp.int32)
               + jnp.dot(a_ref[g, 1], w_high[rows].astype(jnp.int8), preferred_element_type=jnp.int32))
      acc += exact.astype(jnp.float32) * (a_scales_ref[g] * w_scales_ref[g])
    else:
      scale = w_scales_ref[g]
      w_even = (w_low[rows].astype(jnp.float32) * scale).astype(a_ref.dtype)
      w_odd = (w_high[rows].astype(jnp.float32) * scale).astype(a_ref.dtype)
      acc += (jnp.dot(a_ref[g, 0], w_even, preferred_element_type=jnp.float32)
              + jnp.dot(a_ref[g, 1], w_odd, preferred_element_type=jnp.float32))
  acc_ref[...] = acc
  _finish(acc_ref, low_ref, up_ref, bias_ref, out_ref)


def _w8a8_kernel(a_ref, a_scales_ref, w_ref, w_scales_ref, bias_ref, out_ref, acc_ref):
  _zero_on_first_step(acc_ref)
  exact = jnp.dot(a_ref[...], w_ref[...], preferred_element_type=jnp.int32)
  acc_ref[...] += exact.astype(jnp.float32) * a_scales_ref[...]
  @pl.when(pl.program_id(2) == pl.num_programs(2) - 1)
  def _():
    acc_ref[...] *= w_scales_ref[...]
  _finish(acc_ref, None, None, bias_ref, out_ref)


def _call(body, operands, specs, m, n, steps, out_dtype, blocks, interpret, name):
  present = [(op, spec) for op, spec in zip(operands, specs) if op is not None]
  presence = [op is not None for op in operands]

  def kernel(*refs):
    refs = iter(refs)
    full = [next(refs) if here else None for here in presence]
    body(*full, *refs)

  return pl.pallas_call(
      kernel,
      out_shape=jax.ShapeDtypeStruct((m, n), out_dtype),
      grid=(m // blocks.block_m, n // blocks.block_n, steps),
      in_specs=[spec for _, spec in present],
      out_specs=pl.BlockSpec((blocks.block_m, blocks.block_n), lambda i, j, k: (i, j)),
      scratch_shapes=[pltpu.VMEM((blocks.block_m, blocks.block_n), jnp.float32)],
      compiler_params=pltpu.CompilerParams(dimension_semantics=("parallel", "parallel", "arbitrary")),
      interpret=interpret, name=name,
  )(*[op for op, _ in present])


def grouped_gemm(a_grouped, a_scales, w_packed, w_scales, low, up, bias, *, out_dtype, group_size, blocks,
                 interpret):
  """W4A4 (int8 `a_grouped`, with `a_scales` [groups, M, 1]) or W4A16 (bf16/f32 `a_grouped`, `a_scales` None).

  a_grouped [groups, 2, M, group/2]; w_packed [K/2, N] canonical; w_scales [groups, 1, N]; low [M, r]; up [r, N];
  bias [1, N]. `blocks.block_k` must divide K and be a multiple of `group_size`.
  """
  groups, _, m, half = a_grouped.shape
  n = w_packed.shape[1]
  step_groups = blocks.block_k // group_size
  bm, bn = blocks.block_m, blocks.block_n
  specs = [
      pl.BlockSpec((step_groups, 2, bm, half), lambda i, j, k: (k, 0, i, 0)),
      None if a_scales is None else pl.BlockSpec((step_groups, bm, 1), lambda i, j, k: (k, i, 0)),
      pl.BlockSpec((blocks.block_k // 2, bn), lambda i, j, k: (k, j)),
      pl.BlockSpec((step_groups, 1, bn), lambda i, j, k: (k, 0, j)),
      None if low is None else pl.BlockSpec((bm, low.shape[1]), lambda i, j, k: (i, 0)),
      None if up is None else pl.BlockSpec((up.shape[0], bn), lambda i, j, k: (0, j)),
      None if bias is None else pl.BlockSpec((1, bn), lambda i, j, k: (0, j)),
  ]
  body = functools.partial(_grouped_kernel, integer_activations=a_scales is not None)
  return _call(body, [a_grouped, a_scales, w_packed, w_scales, low, up, bias], specs, m, n,
               groups // step_groups, out_dtype, blocks, interpret, "int4_grouped_gemm_tpu")


def w8a8_gemm(codes, a_scales, w_codes, w_scales, bias, *, out_dtype, blocks, interpret):
  """int8 codes [M, K] with scales [M, 1] times int8 weights [K, N] with scales [1, N]."""
  (m, k), n = codes.shape, w_codes.shape[1]
  bm, bn, bk = blocks.block_m, blocks.block_n, blocks.block_k
  specs = [
      pl.BlockSpec((bm, bk), lambda i, j, s: (i, s)),
      pl.BlockSpec((bm, 1), lambda i, j, s: (i, 0)),
      pl.BlockSpec((bk, bn), lambda i, j, s: (s, j)),
      pl.BlockSpec((1, bn), lambda i, j, s: (0, j)),
      None if bias is None else pl.BlockSpec((1, bn), lambda i, j, s: (0, j)),
  ]
  return _call(_w8a8_kernel, [codes, a_scales, w_codes, w_scales, bias], specs, m, n, k // bk, out_dtype, blocks,
               interpret, "w8a8_gemm_tpu")
