"""GPU kernels (Pallas, Triton lowering) for 4-bit and 8-bit matmuls; the same bodies run in interpret mode on CPU.

Hopper has no 4-bit tensor-core instruction, so 4-bit weights are unpacked in registers to int8 and multiplied on the
int8 tensor cores (W4A4, W8A8) or dequantized to bf16 (W4A16). Design points, each chosen for the H100:

* The contraction runs as a loop inside the kernel, one quantization group (64) per step: every group has its own
  activation and weight scale, so each step is an exact int32 dot followed by a float32 rescale of the tile.
* Packed weights keep the canonical layout (element 2i low nibble, 2i+1 high). Rather than interleaving the two
  nibbles back, a step multiplies the even-K codes (low nibbles) and the odd-K codes (high nibbles) separately:
  a sum over K does not care about order. Activation codes are written by the quantize kernel in the matching
  order within each group (its 32 even elements, then its 32 odd ones), so the GEMM reads them contiguously.
  Activation codes stay int8 (not packed): they are produced and consumed on the device, and unpacking them would
  cost the GEMM more than the extra bytes do.
* int32 -> float32 goes through the "magic number" trick (add 1.5 * 2**23 to the bits, subtract it as a float):
  two full-rate instructions instead of a quarter-rate conversion, exact for |v| < 2**22 (a group sum of 64
  products of 4-bit codes is at most 7680). Run backwards, the same trick rounds half to even in the quantizer and
  yields the code as an int32 with no float -> int conversion at all.
* The low-rank branch follows Nunchaku: the down-projection is a second dot in the activation-quantize kernel (it
  reads the same x tile), the up-projection a dot in the GEMM epilogue.
* `k_splits` > 1 gives several programs one output tile, each a slice of the groups, and returns float32 partial
  sums; for small M this is what fills the GPU's 132 multiprocessors.
* W4A16 for a few tokens (decode) has a GEMV form with no dot at all: a tensor-core dot needs 16 rows, so one token
  would be 1/16 of its work and the loop's layout conversions would bound it. Instead each weight is one multiply-add
  per token on the CUDA cores, its code assembled as float32 bits (no int -> float conversion). Its work grows with
  every token, so the H100 table uses it for one token only (`tuning.py`).

Every kernel takes operands already padded to its tiles; `ops.py` validates, pads and dispatches.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu_triton

# 1.5 * 2**23: a float32 whose ulp is 1, so adding it rounds to an integer (half to even) and its bit pattern plus a
# small integer is that float plus the integer.
_MAGIC = 12582912.0
_MAGIC_BITS = 0x4B400000
# 2**23 as float32 bits, xor 8: `nibble ^ _CODE_BITS` is the float32 2**23 + (code + 8) for the signed 4-bit code in
# the nibble (xor 8 maps two's complement -8..7 to 0..15); subtracting _CODE_OFFSET leaves the code, exactly.
_CODE_BITS = 0x4B000008
_CODE_OFFSET = 8388616.0
GEMV_MAX_M = 8  # the W4A16 GEMV keeps one accumulator row per token in registers


def _round_half_to_even_int32(v):
  """round_half_to_even(v) as int32 for |v| < 2**22: the bits of v + 1.5 * 2**23, less the bits of 1.5 * 2**23.

  Not `(v + _MAGIC) - _MAGIC` in float32: XLA's algebraic simplifier (the one in jaxlib 0.10, which compiles the
  bodies in interpret mode) reassociates that into `v + (_MAGIC - _MAGIC)` = v, so the rounding vanished and the
  int8 conversion truncated. Reading the integer back through the bits leaves no constant pair to fold.
  """
  return jax.lax.bitcast_convert_type(v + _MAGIC, jnp.int32) - _MAGIC_BITS


def _int32_to_float32(v, exact_magic):
  if exact_magic:
    return jax.lax.bitcast_convert_type(v + _MAGIC_BITS, jnp.float32) - _MAGIC
  return v.astype(jnp.float32)


def _unpack_nibbles(packed):
  """Packed uint8 -> (low-nibble codes, high-nibble codes) as sign-extended int8 of the same shape."""
  as_int8 = jax.lax.bitcast_convert_type(packed, jnp.int8)
  low = jax.lax.shift_right_arithmetic(jax.lax.shift_left(as_int8, jnp.int8(4)), jnp.int8(4))
  high = jax.lax.shift_right_arithmetic(as_int8, jnp.int8(4))
  return low, high


def _compiler_params(blocks, interpret):
  if interpret:
    return None
  return plgpu_triton.CompilerParams(num_warps=blocks.num_warps, num_stages=blocks.num_stages)


def _group_range(num_groups, k_splits):
  """First group and group count of this program's K slice."""
  per_split = num_groups // k_splits
  return pl.program_id(2) * per_split, per_split


def _loop_over_groups(first, count, groups_per_step, body, carry):
  """carry = body(g, carry) for g in [first, first + count), `groups_per_step` unrolled per loop iteration.

  Unrolling puts several groups' loads in flight before the first is used (Triton pipelines only the loads that
  feed a dot directly, and the nibble unpacking sits in between).
  """

  def step(i, carry):
    for u in range(groups_per_step):
      carry = body(first + i * groups_per_step + u, carry)
    return carry

  return jax.lax.fori_loop(0, count // groups_per_step, step, carry)


def _groups_per_step(blocks, group_size, groups):
  """Groups unrolled per loop step: block_k // group_size, reduced to a divisor of `groups`."""
  wanted = max(1, blocks.block_k // group_size)
  return max(d for d in range(1, wanted + 1) if groups % d == 0)


def _quantize_groups_per_step(blocks, group_size, k):
  return _groups_per_step(dataclasses.replace(blocks, block_k=blocks.quantize_block_k), group_size, k // group_size)


# ---------------------------------------------------------------------------------------------------------------
# Activation quantization (+ fused low-rank down-projection)
# ---------------------------------------------------------------------------------------------------------------


def _quantize_int4_kernel(x_ref, inv_smooth_ref, down_ref, codes_ref, scales_ref, low_ref, *, group_size, signed,
                          groups_per_step):
  half = group_size // 2
  num_groups = x_ref.shape[1] // group_size
  lowest, highest, levels = (-8.0, 7.0, 7.0) if signed else (0.0, 15.0, 15.0)

  def load_smoothed(start):
    values = x_ref[:, pl.ds(start, half, stride=2)].astype(jnp.float32)
    if inv_smooth_ref is not None:
      values = values * inv_smooth_ref[:, pl.ds(start, half, stride=2)]
    return values

  def step(g, low_acc):
    start = g * group_size
    even, odd = load_smoothed(start), load_smoothed(start + 1)
    if signed:
      peak = jnp.maximum(jnp.max(jnp.abs(even), axis=1), jnp.max(jnp.abs(odd), axis=1))
    else:
      peak = jnp.maximum(jnp.maximum(jnp.max(even, axis=1), jnp.max(odd, axis=1)), 0.0)
    scale = (peak * jnp.float32(1 / levels))[:, None]
    divisor = jnp.where(scale == 0.0, 1.0, scale)
    for offset, values in ((0, even), (half, odd)):
      # Clipping to integer bounds commutes with rounding; done first, it keeps |v| where the trick is exact.
      codes = _round_half_to_even_int32(jnp.clip(values / divisor, lowest, highest))
      codes_ref[:, pl.ds(start + offset, half)] = codes.astype(jnp.int8)
    scales_ref[:, pl.ds(g, 1)] = scale
    if down_ref is None:
      return low_acc
    x_group = x_ref[:, pl.ds(start, group_size)]
    down_group = down_ref[pl.ds(start, group_size), :]
    return low_acc + jnp.dot(x_group, down_group, preferred_element_type=jnp.float32)

  rank = 1 if low_ref is None else low_ref.shape[1]
  low = _loop_over_groups(0, num_groups, groups_per_step, step, jnp.zeros((x_ref.shape[0], rank), jnp.float32))
  if low_ref is not None:
    low_ref[...] = low


def quantize_activations_int4(x, inv_smooth, lowrank_down, *, group_size, signed, blocks, interpret):
  """x [M, K] -> (int8 codes [M, K] in group-halves order, float32 scales [M, K/group], float32 x @ down or None).

  M must be a multiple of `blocks.quantize_block_m`; `inv_smooth` (`reference.smoothing_reciprocal`) is float32
  [1, K] or None; `lowrank_down` [K, r] or None.
  """
  m, k = x.shape
  block_m = blocks.quantize_block_m
  rows = lambda i: (i, 0)
  whole = lambda i: (0, 0)
  in_specs = [pl.BlockSpec((block_m, k), rows)]
  operands = [x]
  out_shape = [jax.ShapeDtypeStruct((m, k), jnp.int8), jax.ShapeDtypeStruct((m, k // group_size), jnp.float32)]
  out_specs = [pl.BlockSpec((block_m, k), rows), pl.BlockSpec((block_m, k // group_size), rows)]
  if inv_smooth is not None:
    in_specs.append(pl.BlockSpec(inv_smooth.shape, whole))
    operands.append(inv_smooth)
  if lowrank_down is not None:
    in_specs.append(pl.BlockSpec(lowrank_down.shape, whole))
    operands.append(lowrank_down)
    out_shape.append(jax.ShapeDtypeStruct((m, lowrank_down.shape[1]), jnp.float32))
    out_specs.append(pl.BlockSpec((block_m, lowrank_down.shape[1]), rows))

  def kernel(*refs):
    refs = list(refs)
    x_ref = refs.pop(0)
    inv_smooth_ref = refs.pop(0) if inv_smooth is not None else None
    down_ref = refs.pop(0) if lowrank_down is not None else None
    codes_ref, scales_ref = refs.pop(0), refs.pop(0)
    low_ref = refs.pop(0) if lowrank_down is not None else None
    _quantize_int4_kernel(x_ref, inv_smooth_ref, down_ref, codes_ref, scales_ref, low_ref, group_size=group_size,
                          signed=signed, groups_per_step=_quantize_groups_per_step(blocks, group_size, k))

  outs = pl.pallas_call(
      kernel, out_shape=out_shape, grid=(m // block_m,), in_specs=in_specs, out_specs=out_specs,
      compiler_params=_compiler_params(blocks, interpret), interpret=interpret, name="quantize_activations_int4",
  )(*operands)
  codes, scales = outs[0], outs[1]
  return codes, scales, (outs[2] if lowrank_down is not None else None)


def _quantize_int8_rows_kernel(x_ref, codes_ref, scales_ref, *, step_k):
  steps = x_ref.shape[1] // step_k

  def peak_step(s, peak):
    chunk = x_ref[:, pl.ds(s * step_k, step_k)].astype(jnp.float32)
    return jnp.maximum(peak, jnp.max(jnp.abs(chunk), axis=1))

  peak = jax.lax.fori_loop(0, steps, peak_step, jnp.zeros((x_ref.shape[0],), jnp.float32))
  scale = (peak * jnp.float32(1 / 127))[:, None]
  divisor = jnp.where(scale == 0.0, 1.0, scale)

  def code_step(s, carry):
    chunk = x_ref[:, pl.ds(s * step_k, step_k)].astype(jnp.float32)
    codes = _round_half_to_even_int32(jnp.clip(chunk / divisor, -127.0, 127.0))
    codes_ref[:, pl.ds(s * step_k, step_k)] = codes.astype(jnp.int8)
    return carry

  jax.lax.fori_loop(0, steps, code_step, 0)
  scales_ref[...] = scale


def quantize_activations_int8(x, *, blocks, interpret):
  """x [M, K] -> (int8 codes [M, K], float32 per-token scales [M, 1]); two passes over each row block."""
  m, k = x.shape
  block_m = blocks.quantize_block_m
  rows = lambda i: (i, 0)
  return pl.pallas_call(
      functools.partial(_quantize_int8_rows_kernel, step_k=64 * _quantize_groups_per_step(blocks, 64, k)),
      out_shape=[jax.ShapeDtypeStruct((m, k), jnp.int8), jax.ShapeDtypeStruct((m, 1), jnp.float32)],
      grid=(m // block_m,), in_specs=[pl.BlockSpec((block_m, k), rows)],
      out_specs=[pl.BlockSpec((block_m, k), rows), pl.BlockSpec((block_m, 1), rows)],
      compiler_params=_compiler_params(blocks, interpret), interpret=interpret, name="quantize_activations_int8",
  )(x)


# ---------------------------------------------------------------------------------------------------------------
# GEMMs. Grid (M tiles, N tiles, K splits); output [k_splits, M, N]: the result itself when k_splits == 1, float32
# partial sums otherwise. Epilogue terms (low-rank up-projection, bias) are added by the first K split only.
# ---------------------------------------------------------------------------------------------------------------


def _on_first_split(extra):
  """`extra` in the program of the first K split, zeros in the others: a term each output tile adds once."""
  return (pl.program_id(2) == 0).astype(jnp.float32) * extra


def _epilogue(acc, low_ref, up_ref, bias_ref, out_ref):
  extra = jnp.zeros_like(acc)
  if low_ref is not None:
    extra += jnp.dot(low_ref[...].astype(up_ref.dtype), up_ref[...], preferred_element_type=jnp.float32)
  if bias_ref is not None:
    extra += bias_ref[...].astype(jnp.float32)
  out_ref[0] = (acc + _on_first_split(extra)).astype(out_ref.dtype)


def _dot_transposed(w_tile, a_tile, out_type):
  """(a_tile @ w_tile).T as w_tile.T @ a_tile.T: puts the weights (unpacked in registers) on the left of the MMA and
  the activations, contiguous along K, on the right; int8 wgmma needs both operands K-major."""
  return jax.lax.dot_general(w_tile, a_tile, (((0,), (1,)), ((), ())), preferred_element_type=out_type)


def _w4a4_kernel(codes_ref, a_scales_ref, w_ref, w_scales_ref, low_ref, up_ref, bias_ref, out_ref, *,
                 group_size, k_splits, groups_per_step, exact_magic, transposed):
  half = group_size // 2
  first, count = _group_range(w_scales_ref.shape[0], k_splits)

  def step(g, acc):
    w_low, w_high = _unpack_nibbles(w_ref[pl.ds(g * half, half), :])
    a_even = codes_ref[:, pl.ds(g * group_size, half)]
    a_odd = codes_ref[:, pl.ds(g * group_size + half, half)]
    a_scales, w_scales = a_scales_ref[:, pl.ds(g, 1)], w_scales_ref[pl.ds(g, 1), :]
    if transposed:
      exact = _dot_transposed(w_low, a_even, jnp.int32) + _dot_transposed(w_high, a_odd, jnp.int32)
      scales = w_scales.T * a_scales.T
    else:
      exact = (jnp.dot(a_even, w_low, preferred_element_type=jnp.int32)
               + jnp.dot(a_odd, w_high, preferred_element_type=jnp.int32))
      scales = a_scales * w_scales
    return acc + _int32_to_float32(exact, exact_magic) * scales

  tile = out_ref.shape[1:]
  acc = _loop_over_groups(first, count, groups_per_step, step,
                          jnp.zeros(tile[::-1] if transposed else tile, jnp.float32))
  _epilogue(acc.T if transposed else acc, low_ref, up_ref, bias_ref, out_ref)


def _w4a16_kernel(x_ref, w_ref, w_scales_ref, bias_ref, out_ref, *, group_size, k_splits, groups_per_step):
  half = group_size // 2
  first, count = _group_range(w_scales_ref.shape[0], k_splits)

  def step(g, acc):
    scale = w_scales_ref[pl.ds(g, 1), :]
    w_low, w_high = _unpack_nibbles(w_ref[pl.ds(g * half, half), :])
    x_even = x_ref[:, pl.ds(g * group_size, half, stride=2)]
    x_odd = x_ref[:, pl.ds(g * group_size + 1, half, stride=2)]
    w_even = (w_low.astype(jnp.float32) * scale).astype(x_ref.dtype)
    w_odd = (w_high.astype(jnp.float32) * scale).astype(x_ref.dtype)
    return (acc + jnp.dot(x_even, w_even, preferred_element_type=jnp.float32)
            + jnp.dot(x_odd, w_odd, preferred_element_type=jnp.float32))

  acc = _loop_over_groups(first, count, groups_per_step, step, jnp.zeros(out_ref.shape[1:], jnp.float32))
  _epilogue(acc, None, None, bias_ref, out_ref)


def _nibbles_as_float32(packed):
  """Packed uint8 -> (low-nibble codes, high-nibble codes) as float32, built from their bits (`_CODE_BITS`)."""
  as_int32 = packed.astype(jnp.int32)
  low = jax.lax.bitcast_convert_type((as_int32 & 15) ^ _CODE_BITS, jnp.float32) - _CODE_OFFSET
  high = jax.lax.bitcast_convert_type((as_int32 >> 4) ^ _CODE_BITS, jnp.float32) - _CODE_OFFSET
  return low, high


def _w4a16_gemv_kernel(x_ref, w_ref, w_scales_ref, bias_ref, out_ref, *, group_size, k_splits, groups_per_step):
  """Per group: codes [g/2, block_n] times the group's x as a column, summed down the column, times the scale row.
  x_ref is `gemv_activations` [K, rows]; each token keeps its own [1, block_n] accumulator."""
  half = group_size // 2
  first, count = _group_range(w_scales_ref.shape[0], k_splits)

  def step(g, accs):
    low, high = _nibbles_as_float32(w_ref[pl.ds(g * half, half), :])
    scale = w_scales_ref[pl.ds(g, 1), :]
    updated = []
    for row, acc in enumerate(accs):
      x_even = x_ref[pl.ds(g * group_size, half), pl.ds(row, 1)]
      x_odd = x_ref[pl.ds(g * group_size + half, half), pl.ds(row, 1)]
      updated.append(acc + scale * jnp.sum(low * x_even + high * x_odd, axis=0, keepdims=True))
    return tuple(updated)

  rows, cols = out_ref.shape[1:]
  accs = _loop_over_groups(first, count, groups_per_step, step, (jnp.zeros((1, cols), jnp.float32),) * rows)
  if bias_ref is not None:
    accs = [acc + _on_first_split(bias_ref[...].astype(jnp.float32)) for acc in accs]
  for row, acc in enumerate(accs):
    out_ref[0, pl.ds(row, 1), :] = acc


def _w8a8_kernel(codes_ref, a_scales_ref, w_ref, w_scales_ref, bias_ref, out_ref, *, step_k, k_splits, transposed):
  first, count = _group_range(w_ref.shape[0] // step_k, k_splits)

  def step(i, acc):
    start = (first + i) * step_k
    a, w = codes_ref[:, pl.ds(start, step_k)], w_ref[pl.ds(start, step_k), :]
    if transposed:
      return acc + _dot_transposed(w, a, jnp.int32)
    return acc + jnp.dot(a, w, preferred_element_type=jnp.int32)

  tile = out_ref.shape[1:]
  acc = jax.lax.fori_loop(0, count, step, jnp.zeros(tile[::-1] if transposed else tile, jnp.int32))
  acc = acc.T if transposed else acc
  scaled = acc.astype(jnp.float32) * a_scales_ref[...] * w_scales_ref[...]
  _epilogue(scaled, None, None, bias_ref, out_ref)


def _gemm_call(body, operands, specs, m, n, out_dtype, blocks, interpret, name):
  """Launches a GEMM body on grid (M tiles, N tiles, K splits); `specs` are per-operand BlockSpecs (None: absent)."""
  present = [(op, spec) for op, spec in zip(operands, specs) if op is not None]
  presence = [op is not None for op in operands]

  def kernel(*refs):
    refs = iter(refs)
    full = [next(refs) if here else None for here in presence]
    body(*full, next(refs))

  splits = blocks.k_splits
  out_dtype = out_dtype if splits == 1 else jnp.float32
  out = pl.pallas_call(
      kernel,
      out_shape=jax.ShapeDtypeStruct((splits, m, n), out_dtype),
      grid=(m // blocks.block_m, n // blocks.block_n, splits),
      in_specs=[spec for _, spec in present],
      out_specs=pl.BlockSpec((1, blocks.block_m, blocks.block_n), lambda i, j, s: (s, i, j)),
      compiler_params=_compiler_params(blocks, interpret), interpret=interpret, name=name,
  )(*[op for op, _ in present])
  return out


def _row_block(blocks, cols):
  return pl.BlockSpec((blocks.block_m, cols), lambda i, j, s: (i, 0))


def _col_block(blocks, rows):
  return pl.BlockSpec((rows, blocks.block_n), lambda i, j, s: (0, j))


def w4a4_gemm(codes, a_scales, w_packed, w_scales, low, up, bias, *, out_dtype, group_size, blocks, interpret,
              exact_magic=True, transposed=True):
  """Codes from `quantize_activations_int4` times packed int4 weights, plus low @ up and bias in the epilogue."""
  (m, k), n = codes.shape, w_packed.shape[1]
  specs = [_row_block(blocks, k), _row_block(blocks, k // group_size), _col_block(blocks, k // 2),
           _col_block(blocks, k // group_size),
           None if low is None else _row_block(blocks, low.shape[1]),
           None if up is None else _col_block(blocks, up.shape[0]),
           None if bias is None else _col_block(blocks, 1)]
  groups_per_step = _groups_per_step(blocks, group_size, k // group_size // blocks.k_splits)
  body = functools.partial(_w4a4_kernel, group_size=group_size, k_splits=blocks.k_splits,
                           groups_per_step=groups_per_step, exact_magic=exact_magic, transposed=transposed)
  return _gemm_call(body, [codes, a_scales, w_packed, w_scales, low, up, bias], specs, m, n, out_dtype, blocks,
                    interpret, "w4a4_gemm")


def w4a16_gemm(x, w_packed, w_scales, bias, *, group_size, blocks, interpret):
  """x [M, K] (bf16/f32) times packed int4 weights dequantized per group in registers."""
  (m, k), n = x.shape, w_packed.shape[1]
  specs = [_row_block(blocks, k), _col_block(blocks, k // 2), _col_block(blocks, k // group_size),
           None if bias is None else _col_block(blocks, 1)]
  groups_per_step = _groups_per_step(blocks, group_size, k // group_size // blocks.k_splits)
  body = functools.partial(_w4a16_kernel, group_size=group_size, k_splits=blocks.k_splits,
                           groups_per_step=groups_per_step)
  return _gemm_call(body, [x, w_packed, w_scales, bias], specs, m, n, x.dtype, blocks, interpret, "w4a16_gemm")


def gemv_activations(x, group_size, rows):
  """x [M, K] -> float32 [K, rows] for `w4a16_gemv`: tokens zero-padded to `rows` (a power of two, Triton's block
  rule) and made columns, each group's even k before its odd k (the order of a packed byte's low, high nibbles)."""
  m, k = x.shape
  if not m <= rows <= GEMV_MAX_M or rows & (rows - 1):
    raise ValueError(f"the W4A16 GEMV takes up to {GEMV_MAX_M} tokens, padded to a power of two: got M={m}, "
                     f"rows={rows}")
  halves = x.astype(jnp.float32).reshape(m, k // group_size, group_size // 2, 2).transpose(0, 1, 3, 2)
  return jnp.pad(halves.reshape(m, k), ((0, rows - m), (0, 0))).T


def w4a16_gemv(x_columns, w_packed, w_scales, bias, *, group_size, blocks, interpret):
  """`gemv_activations(x)` [K, rows] times packed int4 weights, multiply-adds on the CUDA cores (decode-sized M) ->
  float32 [k_splits, rows, N]."""
  (k, rows), n = x_columns.shape, w_packed.shape[1]
  blocks = dataclasses.replace(blocks, block_m=rows)
  specs = [pl.BlockSpec((k, rows), lambda i, j, s: (0, 0)), _col_block(blocks, k // 2),
           _col_block(blocks, k // group_size), None if bias is None else _col_block(blocks, 1)]
  body = functools.partial(_w4a16_gemv_kernel, group_size=group_size, k_splits=blocks.k_splits,
                           groups_per_step=_groups_per_step(blocks, group_size, k // group_size // blocks.k_splits))
  return _gemm_call(body, [x_columns, w_packed, w_scales, bias], specs, rows, n, jnp.float32, blocks, interpret,
                    "w4a16_gemv")


def w8a8_gemm(codes, a_scales, w_codes, w_scales, bias, *, out_dtype, blocks, interpret, transposed=True):
  """int8 codes [M, K] (per-token scales [M, 1]) times int8 weights [K, N] (per-channel scales [1, N])."""
  (m, k), n = codes.shape, w_codes.shape[1]
  specs = [_row_block(blocks, k), _row_block(blocks, 1), _col_block(blocks, k), _col_block(blocks, 1),
           None if bias is None else _col_block(blocks, 1)]
  body = functools.partial(_w8a8_kernel, step_k=64 * _groups_per_step(blocks, 64, k // 64 // blocks.k_splits),
                           k_splits=blocks.k_splits, transposed=transposed)
  return _gemm_call(body, [codes, a_scales, w_codes, w_scales, bias], specs, m, n, out_dtype, blocks, interpret,
                    "w8a8_gemm")
