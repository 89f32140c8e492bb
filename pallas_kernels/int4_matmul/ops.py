"""Public int4/int8 matmul ops: validation, padding to tiles and dispatch to a backend through a registry.

`implementation` names a backend in `IMPLEMENTATIONS`; None picks the platform default (`_default_implementation`):
Mosaic GPU on Hopper, the Triton-lowered kernels on other GPUs, Mosaic TPU on TPU, the jnp reference on CPU, where
the Pallas bodies only run interpreted, for tests.
These are inference ops: quantization has no useful gradient, so none is defined.
"""

import dataclasses

import jax
import jax.numpy as jnp

from pallas_kernels import mosaic_gpu_compat as compat
from pallas_kernels.int4_matmul import kernel_gpu
from pallas_kernels.int4_matmul import kernel_mosaic_gpu
from pallas_kernels.int4_matmul import kernel_tpu
from pallas_kernels.int4_matmul import quantize_mosaic_gpu
from pallas_kernels.int4_matmul import reference
from pallas_kernels.int4_matmul import tuning
from pallas_kernels.int4_matmul import w4a16_mosaic_gpu
from pallas_kernels.int4_matmul import w4a4_pingpong_mosaic_gpu as pingpong
from pallas_kernels.int4_matmul import w4a16_rs_mosaic_gpu

_FLOAT_DTYPES = (jnp.bfloat16, jnp.float16, jnp.float32)
_GPU_MIN_ROWS = 16  # smallest M of a Triton dot
_TPU_MIN_ROWS = 32  # int8 sublane tile
_RANK_MULTIPLE = 16  # the low-rank rank is zero-padded to this (smallest N / K of a Triton dot); exact


def _next_power_of_2(n):
  return 1 << max(n - 1, 0).bit_length()


def _round_up(n, multiple):
  return -(-n // multiple) * multiple


def _largest_divisor_at_most(n, limit):
  return max(d for d in range(1, min(n, limit) + 1) if n % d == 0)


def _pad_rows(a, rows):
  return a if a.shape[0] == rows else jnp.pad(a, ((0, rows - a.shape[0]), (0, 0)))


def _pad_rank(down, up, multiple=_RANK_MULTIPLE):
  rank = down.shape[1]
  padded = _round_up(rank, multiple)
  if padded == rank:
    return down, up
  return jnp.pad(down, ((0, 0), (0, padded - rank))), jnp.pad(up, ((0, padded - rank), (0, 0)))


def _combine_splits(out, m, dtype):
  """[k_splits, M_padded, N] kernel output -> [M, N] result."""
  result = out[0] if out.shape[0] == 1 else jnp.sum(out, axis=0)
  return result[:m].astype(dtype)


def _row(v, dtype=None):
  return None if v is None else v.reshape(1, -1).astype(dtype or v.dtype)


# ---------------------------------------------------------------------------------------------------------------
# Backends
# ---------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _ReferenceBackend:
  """Plain jnp (XLA): the spec itself."""

  def w4a4(self, x, w_packed, w_scales, down, up, smooth, bias, *, group_size, signed, blocks):
    del blocks
    return reference.w4a4_matmul(x, w_packed, w_scales, lowrank_down=down, lowrank_up=up, smooth=smooth,
                                 bias=bias, group_size=group_size, activations_signed=signed)

  def w4a16(self, x, w_packed, w_scales, bias, *, group_size, blocks):
    del blocks
    return reference.w4a16_matmul(x, w_packed, w_scales, bias=bias, group_size=group_size)

  def w8a8(self, x, w_codes, w_scales, bias, *, blocks):
    del blocks
    return reference.w8a8_matmul(x, w_codes, w_scales, bias=bias)


@dataclasses.dataclass(frozen=True)
class _GpuBackend:
  """Pallas Triton-lowered kernels (`kernel_gpu.py`); `interpret` runs the same bodies on CPU."""

  interpret: bool

  @staticmethod
  def _fit(blocks, m, n, steps):
    block_m = min(blocks.block_m, max(_GPU_MIN_ROWS, _next_power_of_2(m)))
    block_n = blocks.block_n
    while n % block_n:
      block_n //= 2
    return dataclasses.replace(
        blocks, block_m=block_m, block_n=block_n, quantize_block_m=min(blocks.quantize_block_m, block_m),
        k_splits=_largest_divisor_at_most(steps, blocks.k_splits))

  def w4a4(self, x, w_packed, w_scales, down, up, smooth, bias, *, group_size, signed, blocks):
    (m, k), n = x.shape, w_packed.shape[1]
    blocks = self._fit(blocks, m, n, k // group_size)
    x_padded = _pad_rows(x, _round_up(m, blocks.block_m))
    if down is not None:
      down, up = _pad_rank(down.astype(x.dtype), up.astype(x.dtype))
    codes, a_scales, low = kernel_gpu.quantize_activations_int4(
        x_padded, _row(reference.smoothing_reciprocal(smooth)), down, group_size=group_size, signed=signed,
        blocks=blocks, interpret=self.interpret)
    out = kernel_gpu.w4a4_gemm(codes, a_scales, w_packed, w_scales, low, up, _row(bias), out_dtype=x.dtype,
                               group_size=group_size, blocks=blocks, interpret=self.interpret)
    return _combine_splits(out, m, x.dtype)

  def w4a16(self, x, w_packed, w_scales, bias, *, group_size, blocks):
    (m, k), n = x.shape, w_packed.shape[1]
    blocks = self._fit(blocks, m, n, k // group_size)
    if blocks.gemv and m <= kernel_gpu.GEMV_MAX_M:
      out = kernel_gpu.w4a16_gemv(kernel_gpu.gemv_activations(x, group_size, _next_power_of_2(m)), w_packed,
                                  w_scales, _row(bias), group_size=group_size, blocks=blocks, interpret=self.interpret)
      return _combine_splits(out, m, x.dtype)
    out = kernel_gpu.w4a16_gemm(_pad_rows(x, _round_up(m, blocks.block_m)), w_packed, w_scales, _row(bias),
                                group_size=group_size, blocks=blocks, interpret=self.interpret)
    return _combine_splits(out, m, x.dtype)

  def w8a8(self, x, w_codes, w_scales, bias, *, blocks):
    (m, k), n = x.shape, w_codes.shape[1]
    blocks = self._fit(blocks, m, n, k // 64)
    codes, a_scales = kernel_gpu.quantize_activations_int8(
        _pad_rows(x, _round_up(m, blocks.block_m)), blocks=blocks, interpret=self.interpret)
    out = kernel_gpu.w8a8_gemm(codes, a_scales, w_codes, _row(w_scales, jnp.float32), _row(bias),
                               out_dtype=x.dtype, blocks=blocks, interpret=self.interpret)
    return _combine_splits(out, m, x.dtype)


def codes_as(codes, code_dtype):
  """int8 codes in [-8, 15] as `code_dtype` (int8 or float8_e4m3fn, where every such code is exact); codes already
  of `code_dtype` pass through.

  The e4m3 bits are cut out of the codes' float32 bits: e4m3 keeps the sign, the exponent rebased from 127 to 7 and
  the top three mantissa bits, which hold all of a 4-bit integer. On an H100 this made e4m3 codes as cheaply as int8
  ones, where XLA's own conversion and integer ops around clz were several times slower (the variants and their
  timings: experiments/bench/int4_matmul.json, `e4m3_conversion_variants_us`).
  """
  if codes.dtype == code_dtype:
    return codes
  bits = jax.lax.bitcast_convert_type(codes.astype(jnp.float32), jnp.uint32)
  exponent_and_mantissa = (bits >> 20) & 0x7FF
  e4m3 = jnp.where(exponent_and_mantissa == 0, 0,
                   (exponent_and_mantissa - ((127 - 7) << 3)) | ((bits >> 24) & 0x80))
  return jax.lax.bitcast_convert_type(e4m3.astype(jnp.uint8), code_dtype)


@dataclasses.dataclass(frozen=True)
class _MosaicGpuBackend:
  """Hopper: the Mosaic GPU grouped 8-bit GEMM (`kernel_mosaic_gpu.py`) on int8 or e4m3 tensor cores.

  XLA widens the packed int4 weights to 8-bit K-major codes in one memory-bound fusion. The activations are
  quantized, and the low-rank down-projection computed, by one Mosaic GPU kernel (`quantize_mosaic_gpu.py`) with
  `fused_quantize` (bf16 x, group 64; the H100 default at large M), else by two XLA fusions. The GEMM fuses the
  per-group rescale, the up-projection and the bias; with `persistent` it runs one CTA per SM over its tiles. The
  low-rank branch runs in bf16 (SVDQuant's 16-bit branch), also for float32 inputs. W8A8 weights ([K, N] int8) are
  transposed to K-major in XLA per call. W4A16 goes to the Triton-lowered kernel, or with `mosaic_w4a16` (bf16 x,
  M <= 64) to `w4a16_mosaic_gpu.py`, or with `w4a16_rs` (bf16 x, any M; the H100 default above M = 64) to
  `w4a16_rs_mosaic_gpu.py`, whose fallback runs the Triton kernel with the Triton table's blocks. Shapes the
  kernels do not take (N not a multiple of 128; for `mosaic_w4a16`, M > 64; for either W4A16 kernel, x not bf16)
  raise a ValueError when this backend is named, and go to the Triton-lowered kernels when it
  is the platform default (`fall_back`). The tuned ring depth is lowered where it would overflow shared memory (a
  large rank). How fast against XLA bf16 and the Triton kernels: experiments/bench/README.md.
  """

  interpret: bool
  fall_back: bool = False

  def supports(self, n):
    return n % kernel_mosaic_gpu.TILE_N_MULTIPLE == 0

  @property
  def _triton(self):
    return IMPLEMENTATIONS["pallas_gpu_interpret" if self.interpret else "pallas_gpu"]

  def _fall_back(self, op, x, w, reason):
    """The Triton-lowered backend for a call these kernels cannot serve, where falling back is allowed."""
    if not self.fall_back:
      name = "mosaic_gpu_interpret" if self.interpret else "mosaic_gpu"
      raise ValueError(f"implementation={name!r} cannot run {op} with x {x.shape} {x.dtype} and weights {w.shape}: "
                       f"{reason}. Name implementation='pallas_gpu' for the Triton-lowered kernels, or leave it None "
                       f"to let the platform default choose")
    return self._triton

  @staticmethod
  def _launch(m, codes, a_scales_t, b_codes, b_scales, low, up, bias, *, group_size, out_dtype, blocks, interpret):
    """The grouped GEMM's first m rows; codes, a_scales_t ([K / group, rows]) and low may already be row-padded."""
    n = b_codes.shape[0]
    rows = _round_up(m, kernel_mosaic_gpu.TILE_M)
    tile_n = next(t for t in (blocks.block_n, 256, 128) if t % kernel_mosaic_gpu.TILE_N_MULTIPLE == 0 and n % t == 0)
    code_dtype = jnp.dtype(blocks.code_dtype)
    stages = kernel_mosaic_gpu.deepest_ring(blocks.num_stages, tile_n, 0 if up is None else up.shape[0],
                                            bias is not None, out_dtype)
    tiles = rows // kernel_mosaic_gpu.TILE_M * (n // tile_n)
    out = kernel_mosaic_gpu.grouped_gemm(
        codes_as(_pad_rows(codes, rows), code_dtype), codes_as(b_codes, code_dtype),
        jnp.pad(a_scales_t, ((0, 0), (0, rows - a_scales_t.shape[1]))),
        b_scales.astype(jnp.float32), None if low is None else _pad_rows(low, rows), up, bias,
        group_size=group_size, out_dtype=out_dtype, tile_n=tile_n, stages=stages,
        ctas=min(tiles, kernel_mosaic_gpu.MULTIPROCESSORS) if blocks.persistent else None, interpret=interpret)
    return out[:m]

  def _pingpong_w4a4(self, x, w_packed, w_scales, down, up, smooth, bias, *, signed, blocks):
    """`w4a4_pingpong_mosaic_gpu.py`: the packed weights transposed to K-major int4 in XLA (a byte transpose), the
    activations quantized as the scale mode asks (the exact mode takes the fused quantize kernel where `fused_quantize`
    allows it), the kernel's operands from the mode (`pingpong.SCALE_MODES`)."""
    mode = pingpong.SCALE_MODES[blocks.w4a4_scales]
    m = x.shape[0]
    rows = _round_up(m, pingpong.TILE_M)
    x_padded = _pad_rows(x, rows)
    rank = 0 if down is None else down.shape[1]
    if (mode.activation_group == quantize_mosaic_gpu.GROUP_SIZE and blocks.w4a4_scales == "exact"
        and blocks.fused_quantize and x.dtype == jnp.bfloat16 and quantize_mosaic_gpu.fits(rank)):
      codes, a_scales_t, low_partials = quantize_mosaic_gpu.quantize_activations(
          x_padded, _row(reference.smoothing_reciprocal(smooth)), down, code_dtype=jnp.float8_e4m3fn, signed=signed,
          stages=quantize_mosaic_gpu.deepest_ring(4, rank), k_splits=quantize_mosaic_gpu.filling_splits(rows, x.shape[1]),
          interpret=self.interpret)
      a_scales = a_scales_t.T
      low = None if down is None else low_partials.sum(0)
    else:
      codes, a_scales = reference.quantize_activations(x_padded, smooth, mode.activation_group, signed=signed)
      low = None if down is None else jnp.dot(x_padded.astype(jnp.bfloat16), down, preferred_element_type=jnp.float32)
    codes, a_scales, b_scales, factors, block_steps = mode.operands(codes, a_scales, w_scales.astype(jnp.float32))
    low = None if low is None else low.astype(jnp.bfloat16)
    stages = pingpong.deepest_ring(blocks.num_stages, rank, bias is not None, factors is not None, x.dtype)
    out = pingpong.w4a4_gemm(codes_as(codes, jnp.dtype(jnp.float8_e4m3fn)), pingpong.kmajor_weights(w_packed),
                             a_scales, b_scales, low, up, bias, factors=factors, block_steps=block_steps,
                             out_dtype=x.dtype, stages=stages, interpret=self.interpret)
    return out[:m]

  def w4a4(self, x, w_packed, w_scales, down, up, smooth, bias, *, group_size, signed, blocks):
    if blocks.w4a4_scales not in pingpong.SCALE_MODES:
      raise ValueError(f"BlockSizes.w4a4_scales must be one of {sorted(pingpong.SCALE_MODES)}, got "
                       f"{blocks.w4a4_scales!r}")
    if blocks.w4a4_scales != "exact" and not (blocks.pingpong and group_size == pingpong.STEP_K
                                              and x.shape[1] % (2 * pingpong.STEP_K) == 0):
      raise ValueError(f"w4a4_scales={blocks.w4a4_scales!r} needs pingpong=True, group_size 64 and K a multiple of "
                       f"128 (got pingpong={blocks.pingpong}, group_size {group_size}, x {x.shape}): the scale modes "
                       f"other than the spec run only in the ping-pong kernel")
    if not self.supports(w_packed.shape[1]):
      return self._fall_back("W4A4", x, w_packed, f"N must be a multiple of {kernel_mosaic_gpu.TILE_N_MULTIPLE}").w4a4(
          x, w_packed, w_scales, down, up, smooth, bias, group_size=group_size, signed=signed, blocks=blocks)
    if down is not None:
      down, up = _pad_rank(down.astype(jnp.bfloat16), up.astype(jnp.bfloat16), kernel_mosaic_gpu.RANK_MULTIPLE)
    if blocks.pingpong and group_size == pingpong.STEP_K:
      return self._pingpong_w4a4(x, w_packed, w_scales, down, up, smooth, bias, signed=signed, blocks=blocks)
    w_codes = reference.unpack_int4(w_packed, axis=0).T
    rank = 0 if down is None else down.shape[1]
    if (blocks.fused_quantize and x.dtype == jnp.bfloat16 and group_size == quantize_mosaic_gpu.GROUP_SIZE
        and quantize_mosaic_gpu.fits(rank)):
      rows = _round_up(x.shape[0], quantize_mosaic_gpu.TILE_M)
      codes, a_scales_t, low_partials = quantize_mosaic_gpu.quantize_activations(
          _pad_rows(x, rows), _row(reference.smoothing_reciprocal(smooth)), down,
          code_dtype=blocks.code_dtype, signed=signed, stages=quantize_mosaic_gpu.deepest_ring(4, rank),
          k_splits=quantize_mosaic_gpu.filling_splits(rows, x.shape[1]),
          interpret=self.interpret)
      low = None if down is None else low_partials.sum(0)
    else:
      codes, a_scales = reference.quantize_activations(x, smooth, group_size, signed=signed)
      a_scales_t = a_scales.T
      low = None if down is None else jnp.dot(x.astype(jnp.bfloat16), down, preferred_element_type=jnp.float32)
    low = None if low is None else low.astype(jnp.bfloat16)
    return self._launch(x.shape[0], codes, a_scales_t, w_codes, w_scales, low, up, bias, group_size=group_size,
                        out_dtype=x.dtype, blocks=blocks, interpret=self.interpret)

  def _w4a16_rs(self, x, w_packed, w_scales, bias, *, blocks):
    """W4A16 by `w4a16_rs_mosaic_gpu`: the weights put in its blocked layout here (an XLA transpose per call; a
    caller holding them in that layout calls the kernel directly), the K range split where the tiles alone would
    not fill the GPU, the float32 partials then summed and transposed here, and the bias added after them."""
    rs = w4a16_rs_mosaic_gpu
    (m, k), n = x.shape, w_packed.shape[1]
    tile_m = rs.token_tile(m, min(rs.MAX_TILE_M, 1 << (max(blocks.block_m, rs.TILE_M_MULTIPLE).bit_length() - 1)))
    rows = _round_up(m, tile_m)
    splits = rs.filling_splits(rows // tile_m, n, k)
    out_dtype = x.dtype if splits == 1 else jnp.float32
    stages = rs.deepest_ring(blocks.num_stages, tile_m, out_dtype=out_dtype, bias=bias is not None and splits == 1)
    out = rs.w4a16_rs(_pad_rows(x, rows), rs.shuffle_for_w4a16_rs(w_packed), w_scales,
                      bias if splits == 1 else None, tile_m=tile_m, k_splits=splits, stages=stages,
                      code_layout=blocks.rs_code_layout, exact_scale=blocks.rs_exact_scale, interpret=self.interpret)
    if splits == 1:
      return out[:m]
    out = out.sum(0).T[:m]
    return (out if bias is None else out + bias.astype(jnp.float32)).astype(x.dtype)

  def w4a16(self, x, w_packed, w_scales, bias, *, group_size, blocks):
    (m, k), n = x.shape, w_packed.shape[1]
    if blocks.w4a16_rs:
      if not (x.dtype == jnp.bfloat16 and w4a16_rs_mosaic_gpu.supports(k, n, group_size)):
        reason = (f"the register-operand W4A16 kernel takes bf16 x, K a multiple of {w4a16_rs_mosaic_gpu.STEP_K}, "
                  f"N of {2 * w4a16_rs_mosaic_gpu.BLOCK_N} and group_size {w4a16_rs_mosaic_gpu.GROUP_SIZE} (got "
                  f"{group_size})")
        return self._fall_back("W4A16", x, w_packed, reason).w4a16(x, w_packed, w_scales, bias,
                                                                   group_size=group_size,
                                                                   blocks=_blocks("pallas_gpu", "w4a16", m, None))
      return self._w4a16_rs(x, w_packed, w_scales, bias, blocks=blocks)
    if not blocks.mosaic_w4a16:  # the tuned choice: W4A16 runs the Triton kernels under this backend
      return self._triton.w4a16(x, w_packed, w_scales, bias, group_size=group_size, blocks=blocks)
    if not (x.dtype == jnp.bfloat16 and w4a16_mosaic_gpu.supports(m, k, n, group_size)):
      reason = (f"the Mosaic W4A16 kernel takes bf16 x, M <= {w4a16_mosaic_gpu.MAX_M}, K a multiple of "
                f"{w4a16_mosaic_gpu.STEP_K}, N of {w4a16_mosaic_gpu.TILE_N} and group_size "
                f"{w4a16_mosaic_gpu.GROUP_SIZE} (got {group_size})")
      return self._fall_back("W4A16", x, w_packed, reason).w4a16(x, w_packed, w_scales, bias, group_size=group_size,
                                                                 blocks=blocks)
    partials = w4a16_mosaic_gpu.w4a16_partials(
        w4a16_mosaic_gpu.interleaved_x(x), w_packed, w_scales, out_rows=_round_up(m, 8),
        k_splits=w4a16_mosaic_gpu.filling_splits(n, k), interpret=self.interpret)
    out = partials.sum(0)[:m]
    return (out if bias is None else out + bias.astype(jnp.float32)).astype(x.dtype)

  def w8a8(self, x, w_codes, w_scales, bias, *, blocks):
    if not self.supports(w_codes.shape[1]):
      return self._fall_back("W8A8", x, w_codes, f"N must be a multiple of {kernel_mosaic_gpu.TILE_N_MULTIPLE}").w8a8(
          x, w_codes, w_scales, bias, blocks=blocks)
    codes, a_scales = reference.quantize_int8_rows(x)
    k = x.shape[1]
    # One group spanning K: the int32 sum over all of K, then the per-token and per-channel scales.
    return self._launch(x.shape[0], codes, a_scales[None, :], w_codes.T, w_scales.reshape(1, -1), None, None, bias,
                        group_size=k, out_dtype=x.dtype, blocks=dataclasses.replace(blocks, code_dtype="int8"),
                        interpret=self.interpret)


def _grouped_halves(a, group_size):
  """[M, K] -> [K / group, 2, M, group / 2]: per group, its even-K elements then its odd-K ones (`kernel_tpu`)."""
  m, k = a.shape
  return a.reshape(m, k // group_size, group_size // 2, 2).transpose(1, 3, 0, 2)


@dataclasses.dataclass(frozen=True)
class _TpuBackend:
  """Pallas Mosaic-TPU kernels (`kernel_tpu.py`); activation quantization and the down-projection run in XLA.

  `interpret`: False on a TPU; True for the generic Pallas interpreter; a `pltpu.InterpretParams` for the TPU-semantics
  simulator (the tests').
  """

  interpret: object

  @staticmethod
  def _fit(blocks, m, n, k, group_size):
    block_n = next((b for b in (blocks.block_n, 256, 128) if b % 128 == 0 and n % b == 0), n)
    block_k = next((b for b in (blocks.block_k, 512, 256) if b % group_size == 0 and k % b == 0), k)
    return dataclasses.replace(blocks, block_m=min(max(blocks.block_m, _TPU_MIN_ROWS),
                                                   max(_TPU_MIN_ROWS, _next_power_of_2(m))),
                               block_n=block_n, block_k=block_k)

  def _grouped(self, a_grouped, a_scales, x, w_packed, w_scales, low, up, bias, group_size, blocks):
    m, (k, n) = x.shape[0], (x.shape[1], w_packed.shape[1])
    blocks = self._fit(blocks, m, n, k, group_size)
    rows = _round_up(m, blocks.block_m)
    a_grouped = jnp.pad(a_grouped, ((0, 0), (0, 0), (0, rows - m), (0, 0)))
    if a_scales is not None:
      a_scales = jnp.pad(a_scales.T, ((0, 0), (0, rows - m)))[:, :, None]
    if low is not None:
      low = _pad_rows(low, rows)
    out = kernel_tpu.grouped_gemm(a_grouped, a_scales, w_packed, w_scales[:, None, :].astype(jnp.float32), low, up,
                                  _row(bias), out_dtype=x.dtype, group_size=group_size, blocks=blocks,
                                  interpret=self.interpret)
    return out[:m]

  def w4a4(self, x, w_packed, w_scales, down, up, smooth, bias, *, group_size, signed, blocks):
    codes, a_scales = reference.quantize_activations(x, smooth, group_size, signed=signed)
    low = None if down is None else jnp.dot(x, down.astype(x.dtype), preferred_element_type=jnp.float32)
    up = None if up is None else up.astype(x.dtype)
    return self._grouped(_grouped_halves(codes, group_size), a_scales, x, w_packed, w_scales, low, up, bias,
                         group_size, blocks)

  def w4a16(self, x, w_packed, w_scales, bias, *, group_size, blocks):
    return self._grouped(_grouped_halves(x, group_size), None, x, w_packed, w_scales, None, None, bias, group_size,
                         blocks)

  def w8a8(self, x, w_codes, w_scales, bias, *, blocks):
    (m, k), n = x.shape, w_codes.shape[1]
    blocks = self._fit(blocks, m, n, k, 64)
    codes, a_scales = reference.quantize_int8_rows(x)
    rows = _round_up(m, blocks.block_m)
    out = kernel_tpu.w8a8_gemm(_pad_rows(codes, rows), _pad_rows(a_scales[:, None], rows), w_codes,
                               _row(w_scales, jnp.float32), _row(bias), out_dtype=x.dtype, blocks=blocks,
                               interpret=self.interpret)
    return out[:m]


IMPLEMENTATIONS = {
    "reference": _ReferenceBackend(),
    "pallas_gpu": _GpuBackend(interpret=False),
    "pallas_gpu_interpret": _GpuBackend(interpret=True),
    "mosaic_gpu": _MosaicGpuBackend(interpret=False),
    "mosaic_gpu_interpret": _MosaicGpuBackend(interpret=True),
    "pallas_tpu": _TpuBackend(interpret=False),
    "pallas_tpu_interpret": _TpuBackend(interpret=True),
}

DEFAULT_BY_PLATFORM = {"gpu": "pallas_gpu", "cuda": "pallas_gpu", "rocm": "pallas_gpu", "tpu": "pallas_tpu",
                       "cpu": "reference"}


def _default_implementation():
  """The platform's default; Hopper (compute capability 9.x) gets the Mosaic GPU kernels."""
  if compat.is_hopper():
    return "mosaic_gpu"
  return DEFAULT_BY_PLATFORM.get(jax.default_backend(), "reference")


# A backend as the platform default, where it differs from the same backend named explicitly.
_AS_DEFAULT = {"mosaic_gpu": _MosaicGpuBackend(interpret=False, fall_back=True)}


def _backend(implementation):
  if implementation is None:
    name = _default_implementation()
    return name, _AS_DEFAULT.get(name, IMPLEMENTATIONS[name])
  if implementation not in IMPLEMENTATIONS:
    raise ValueError(f"unknown implementation {implementation!r}; choose one of {sorted(IMPLEMENTATIONS)}")
  return implementation, IMPLEMENTATIONS[implementation]


def _blocks(backend_name, op, m, block_sizes):
  if block_sizes is not None:
    return block_sizes
  return tuning.block_sizes(op, m, jax.devices()[0].device_kind, backend_name.removesuffix("_interpret"))


# ---------------------------------------------------------------------------------------------------------------
# Validation: every message names the shapes (and dtypes) it rejects.
# ---------------------------------------------------------------------------------------------------------------


def _check_activations(x):
  if x.ndim != 2 or x.dtype not in _FLOAT_DTYPES:
    raise ValueError(f"x must be a 2-D bf16/f16/f32 array [M, K], got shape {x.shape} dtype {x.dtype}")
  if x.shape[0] < 1:
    raise ValueError(f"x must have at least one row, got shape {x.shape}")


def _check_optional(name, v, shape):
  if v is not None and tuple(v.shape) != shape:
    raise ValueError(f"{name} must have shape {shape}, got {tuple(v.shape)}")


def _check_int4_weights(x, w_packed, w_scales, group_size):
  _check_activations(x)
  k = x.shape[1]
  if group_size < 64 or group_size & (group_size - 1):
    raise ValueError(f"group_size must be a power of two >= 64, got {group_size}")
  if w_packed.dtype != jnp.uint8 or w_packed.ndim != 2:
    raise ValueError(f"w_packed must be 2-D uint8 [K/2, N], got shape {w_packed.shape} dtype {w_packed.dtype}")
  n = w_packed.shape[1]
  if k % 64 or n % 64 or k % group_size:
    raise ValueError(f"K and N must be multiples of 64 and K of group_size={group_size}: x {x.shape}, "
                     f"w_packed {w_packed.shape} (K={k}, N={n})")
  if w_packed.shape[0] * 2 != k:
    raise ValueError(f"w_packed {w_packed.shape} must be [K/2, N] for x {x.shape} (K={k})")
  _check_optional("w_scales", w_scales, (k // group_size, n))
  return k, n


def w4a16_matmul(x, w_packed, w_scales, *, bias=None, group_size=reference.DEFAULT_GROUP_SIZE, implementation=None,
                 block_sizes=None):
  """y = x @ dequant(W) + bias for x [M, K] (bf16/f32) and 4-bit W packed along K ([K/2, N], scales [K/g, N])."""
  _, n = _check_int4_weights(x, w_packed, w_scales, group_size)
  _check_optional("bias", bias, (n,))
  name, backend = _backend(implementation)
  return backend.w4a16(x, w_packed, w_scales, bias, group_size=group_size,
                       blocks=_blocks(name, "w4a16", x.shape[0], block_sizes))


def w4a4_matmul(x, w_packed, w_scales, *, lowrank_down=None, lowrank_up=None, smooth=None, bias=None,
                group_size=reference.DEFAULT_GROUP_SIZE, activations_signed=True, implementation=None,
                block_sizes=None):
  """y = dequant(Q(x / smooth)) @ dequant(W) + (x @ lowrank_down) @ lowrank_up + bias (SVDQuant's linear layer).

  Activations are quantized on the fly per token and group (`activations_signed=False`: unsigned codes for
  non-negative inputs); integer products per group are scaled and summed in float32. The down-projection is fused
  into the quantize kernel and the up-projection into the GEMM epilogue on GPU.
  """
  k, n = _check_int4_weights(x, w_packed, w_scales, group_size)
  if (lowrank_down is None) != (lowrank_up is None):
    raise ValueError("lowrank_down and lowrank_up come together: got "
                     f"{None if lowrank_down is None else lowrank_down.shape} and "
                     f"{None if lowrank_up is None else lowrank_up.shape}")
  if lowrank_down is not None:
    rank = lowrank_down.shape[-1]
    _check_optional("lowrank_down", lowrank_down, (k, rank))
    _check_optional("lowrank_up", lowrank_up, (rank, n))
  _check_optional("smooth", smooth, (k,))
  _check_optional("bias", bias, (n,))
  name, backend = _backend(implementation)
  return backend.w4a4(x, w_packed, w_scales, lowrank_down, lowrank_up, smooth, bias, group_size=group_size,
                      signed=activations_signed, blocks=_blocks(name, "w4a4", x.shape[0], block_sizes))


def w8a8_matmul(x, w_codes, w_scales, *, bias=None, implementation=None, block_sizes=None):
  """y = dequant(Q8(x)) @ dequant(W8) + bias: int8 per-token activations, int8 [K, N] weights with scales [N]."""
  _check_activations(x)
  k = x.shape[1]
  if w_codes.dtype != jnp.int8 or w_codes.ndim != 2 or w_codes.shape[0] != k:
    raise ValueError(f"w_codes must be int8 [K, N] for x {x.shape}, got shape {w_codes.shape} dtype {w_codes.dtype}")
  n = w_codes.shape[1]
  if k % 64 or n % 64:
    raise ValueError(f"K and N must be multiples of 64: x {x.shape}, w_codes {w_codes.shape}")
  _check_optional("w_scales", w_scales, (n,))
  _check_optional("bias", bias, (n,))
  name, backend = _backend(implementation)
  return backend.w8a8(x, w_codes, w_scales, bias, blocks=_blocks(name, "w8a8", x.shape[0], block_sizes))
