"""Mosaic GPU (Hopper) W4A4 GEMM: two consumer warpgroups in ping-pong, a TMA warpgroup and a widening warpgroup.

    out[m, n] = sum_b a_scales[b, m] * b_scales[b, n] * (sum over k in block b of a[m, k] * w'[n, k])
                + (low @ up)[m, n] + bias[n],         w'[n, k] = e4m3(w[n, k] * factors[k / 64, n]) or e4m3(w[n, k])

`a` holds e4m3 activation codes [M, K]; `w` the 4-bit weight codes as int4 [N, K] (K-major: the bytes of the
canonical [K / 2, N] packing transposed, `kmajor_weights`). The kernel reads the weights at 0.5 B a weight and widens
them to e4m3 itself, instead of reading the 1 B e4m3 codes of a separate XLA pass (28.8 µs at 3072 x 12288). 8-bit
wgmma needs K-major operands and the canonical packing is N-major, so `ops.py` still transposes the packed bytes in
XLA per call (0.5 B read and written a weight, against 0.5 read + 1 written for the widening pass); a layer that
caches `kmajor_weights` once would read its weights once. A promotion block is `block_steps` 64-deep K steps:
- the exact spec (`reference.w4a4_matmul`, group 64): block_steps 1, no factors, the spec's activation and weight
  group scales. Every code is exact in e4m3 and a group's 64 products sum exactly in the float32 accumulator
  (|sum| <= 64 * 8 * 8), so this equals the spec's per-group float32 sum up to the order of the float32 operations.
- opt-in fast paths (`ops.py`, `BlockSizes.w4a4_scales`), each with its error against the spec measured in the tests:
  "act128" (activations quantized in groups of 128, the weight scale of each 64-group folded into the widened e4m3
  weight as its ratio to the larger of the block's two: half the promotions) and "folded" (activations and weights
  each folded into e4m3 with one scale per row / column: a plain FP8 GEMM, one block spanning K, no promotion).

Why this structure (issue 27). The per-tile CUDA-core work of group-64 W4A4 on Hopper, the promotion (a multiply and
an FMA per accumulator element and group), is of the same order as the tensor-core work of the group (a 64 x 128 x 64
e4m3 wgmma is ~128 tensor-core cycles per SM; the promotion of its 64 x 128 float32 results ~128 issue cycles per
scheduler). `kernel_mosaic_gpu.py` overlaps each warpgroup's promotion with its own next wgmma, which keeps two partial
sums live per thread and measured at ~3x the tensor-core time per group (experiments/bench/int4_matmul_notes.md). Here,
as in DeepGEMM's FP8 kernels and CUTLASS's ping-pong schedule, the two consumer warpgroups take turns on the tensor
cores: consumer c issues block b's wgmmas, hands the turn to the other consumer (a barrier each way), waits for its own
wgmmas and promotes block b on the CUDA cores while the other consumer's wgmmas of block b run. One partial sum per
thread is live, and the tensor cores see a wgmma queue fed alternately by the two consumers.

Warpgroups of a CTA (a 128 x 128 output tile; consumers own 64 rows each and share the weight tile):
- 0, 1: consumers (wgmma A = their 64 activation rows, B = the widened weight tile; promotion; the epilogue: the
  low-rank up-projection as one bf16 wgmma, the bias, a bf16 TMA store), as in `kernel_mosaic_gpu.py`.
- 2: TMA: per 64-deep K step, the activation codes [128, 64], the packed weights [128, 64] int4, the promotion scale
  rows and the widening factors into a ring of `stages` slots.
- 3: widening: per step, the int4 weights from shared memory into registers, to e4m3 (Mosaic GPU's byte-permute
  lookup; with factors: to float32, times the factor, rounded to e4m3), stored into the slot's e4m3 weight tile, then
  a proxy fence and an arrival on the slot's `widened` barrier. It runs on the warp schedulers' idle issue slots: the
  consumers spend most of their time waiting for wgmmas.
A slot is free once both consumers and the widener are done with it.

Expected bound (to be measured; the command is in experiments/bench/int4_matmul_notes.md): at best the e4m3 tensor-core
time, ~1.6-2x below XLA's bf16 dot, when the promotion hides fully under the other consumer's wgmmas; the in-kernel
widening adds ~1 instruction per weight per CTA (the weight tile is widened once per 128 output rows), about half of
the promotion's issue cost, so where the issue slots, not the tensor cores, bound the kernel it can cost more than the
XLA pass it replaces; `kernel_mosaic_gpu.py` stays the default until the H100 says otherwise.

Requires M a multiple of 128 (`ops.py` pads), N of 128, K of 64 * block_steps; low [M, r] and up [r, N] bf16 with r a
multiple of 64.
"""

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import mosaic_gpu as plgpu

from pallas_kernels import mosaic_gpu_compat as compat
from pallas_kernels.int4_matmul import kernel_mosaic_gpu
from pallas_kernels.mosaic_gpu_overwrite import wgmma_overwriting

STEP_K = 64
_ROWS = 64
_CONSUMERS = 2
TILE_M = _CONSUMERS * _ROWS
TILE_N = 128
RANK_MULTIPLE = kernel_mosaic_gpu.RANK_MULTIPLE
_TMA_WG = _CONSUMERS
_WIDEN_WG = _CONSUMERS + 1
_CODE_DTYPE = jnp.dtype(jnp.float8_e4m3fn)
# Registers per thread: 4 warpgroups start at 65536 / 512 = 128. The TMA warpgroup drops to 40 (`stream_ring`), the
# widener to 72 (it widens 64 rows at a time), the consumers take the rest: one float32 running sum and one partial
# sum (64 each), the column scales (32) and addresses.
_WIDEN_REGISTERS = 72
_CONSUMER_REGISTERS = 200


def kmajor_weights(w_packed):
  """The canonical packing [K / 2, N] uint8 (`reference.pack_int4` along K) -> int4 [N, K], the layout the kernel's
  TMA reads: the same bytes transposed (the low nibble is the even k, as in XLA's int4)."""
  half_k, n = w_packed.shape
  return lax.bitcast_convert_type(w_packed.T, jnp.int4).reshape(n, 2 * half_k)


def _shared_arrays(stages, rank, bias, factors, out_dtype):
  """(shape, dtype, swizzle or None) of every shared-memory array, in the kernel's scratch order."""
  arrays = [((stages, TILE_M, STEP_K), _CODE_DTYPE, STEP_K), ((stages, TILE_N, STEP_K), jnp.int4, None),
            ((stages, TILE_N, STEP_K), _CODE_DTYPE, STEP_K),
            ((stages, 1, TILE_M), jnp.float32, None), ((stages, 1, TILE_N), jnp.float32, None)]
  if factors:
    arrays.append(((stages, 1, TILE_N), jnp.float32, None))
  arrays.append(((_CONSUMERS, _ROWS, TILE_N), out_dtype, 128))
  if rank:
    arrays += [((_CONSUMERS, _ROWS, rank), jnp.bfloat16, 128), ((_CONSUMERS, rank, TILE_N), jnp.bfloat16, 128)]
  if bias:
    arrays.append(((_CONSUMERS, 1, TILE_N), jnp.float32, None))
  return arrays


def shared_memory_bytes(stages: int, rank: int = 0, bias: bool = False, factors: bool = False,
                        out_dtype=jnp.bfloat16) -> int:
  """The bytes of the kernel's shared-memory arrays (barriers not counted)."""
  return kernel_mosaic_gpu.array_bytes(_shared_arrays(stages, rank, bias, factors, out_dtype))


def deepest_ring(stages: int, rank: int = 0, bias: bool = False, factors: bool = False,
                 out_dtype=jnp.bfloat16) -> int:
  """`stages`, or fewer (at least 2) where that many K steps would not fit in an H100's shared memory."""
  return kernel_mosaic_gpu.deepest_fitting(
      stages, lambda s: shared_memory_bytes(s, rank, bias, factors, out_dtype))


def w4a4_gemm(a, w, a_scales, b_scales, low, up, bias, *, factors=None, block_steps: int = 1, out_dtype,
              stages: int, interpret: bool = False):
  """See the module docstring. a [M, K] e4m3 codes, w [N, K] int4 (`kmajor_weights`), a_scales [K / (64 *
  block_steps), M] and b_scales [K / (64 * block_steps), N] float32, factors [K / 64, N] float32 or None (multiplied
  into the weights before they are rounded to e4m3); low / up / bias may be None."""
  m, k = a.shape
  n = w.shape[0]
  if a.dtype != _CODE_DTYPE or w.dtype != jnp.int4 or w.shape[1] != k:
    raise ValueError(f"w4a4_gemm needs e4m3 a [M, K] and int4 w [N, K]: a {a.dtype} {a.shape}, w {w.dtype} {w.shape}")
  block_k = STEP_K * block_steps
  if m % TILE_M or n % TILE_N or block_steps < 1 or k % block_k:
    raise ValueError(f"w4a4_gemm needs M % {TILE_M}, N % {TILE_N} and K % (64 * block_steps = {block_k}) to be 0: "
                     f"a {a.shape}, w {w.shape}")
  blocks = k // block_k
  if a_scales.shape != (blocks, m) or b_scales.shape != (blocks, n):
    raise ValueError(f"a_scales must be [{blocks}, {m}] and b_scales [{blocks}, {n}], got {a_scales.shape} and "
                     f"{b_scales.shape}")
  if factors is not None and factors.shape != (k // STEP_K, n):
    raise ValueError(f"factors must be [K / 64 = {k // STEP_K}, N = {n}], got {factors.shape}")
  if low is not None and low.shape[1] % RANK_MULTIPLE:
    raise ValueError(f"the low-rank rank must be a multiple of {RANK_MULTIPLE}, got low {low.shape}")
  rank = 0 if low is None else low.shape[1]
  with_factors = factors is not None
  needed = shared_memory_bytes(stages, rank, bias is not None, with_factors, out_dtype)
  if stages < 2 or needed > kernel_mosaic_gpu.SHARED_MEMORY_BYTES:
    raise ValueError(f"{stages} stages with rank {rank} need {needed} bytes of shared memory (at least 2 stages, at "
                     f"most {kernel_mosaic_gpu.SHARED_MEMORY_BYTES}): use deepest_ring()")
  steps = k // STEP_K
  lowrank = low is not None
  shape = (_ROWS, TILE_N)

  def body(a_ref, w_ref, a_scales_ref, b_scales_ref, *refs):
    refs = list(refs)
    factors_ref = refs.pop(0) if with_factors else None
    low_ref, up_ref = (refs.pop(0), refs.pop(0)) if lowrank else (None, None)
    bias_ref = refs.pop(0) if bias is not None else None
    out_ref, a_smem, w4_smem, w8_smem, a_scales_smem, b_scales_smem = refs[:6]
    refs = refs[6:]
    factors_smem = refs.pop(0) if with_factors else None
    out_smem = refs.pop(0)
    low_smem, up_smem = (refs.pop(0), refs.pop(0)) if lowrank else (None, None)
    bias_smem = refs.pop(0) if bias is not None else None
    ready, widened, free, turn, epilogue_ready = refs
    mi, ni, wg = lax.axis_index("m"), lax.axis_index("n"), lax.axis_index("wg")
    cols = pl.ds(ni * TILE_N, TILE_N)

    @pl.when(wg < _CONSUMERS)
    def _consumer():
      plgpu.set_max_registers(_CONSUMER_REGISTERS, action="increase")
      wg_rows = pl.ds(wg * _ROWS, _ROWS)
      row0 = mi * TILE_M + wg * _ROWS
      if lowrank:
        plgpu.copy_gmem_to_smem(low_ref.at[pl.ds(row0, _ROWS)], low_smem.at[wg], epilogue_ready.at[3 * wg])
        plgpu.copy_gmem_to_smem(up_ref.at[:, cols], up_smem.at[wg], epilogue_ready.at[3 * wg + 1])
      if bias is not None:
        plgpu.copy_gmem_to_smem(bias_ref.at[:, cols], bias_smem.at[wg], epilogue_ready.at[3 * wg + 2])

      def operands(j):
        slot = lax.rem(j, stages)
        plgpu.barrier_wait(ready.at[slot])
        plgpu.barrier_wait(widened.at[slot])
        return a_smem.at[slot, wg_rows], compat.transposed(w8_smem.at[slot])

      def block(b, acc):
        """Block b's wgmmas, each in this consumer's turn, then its promotion while the other consumer's wgmmas run.
        The turn passes after every step, not every block, so that neither consumer can hold more ring slots than
        the other is waiting on (a block spanning K would otherwise deadlock the ring)."""
        first = b * block_steps

        def in_turn(issue):
          """Issues one step's wgmma in this consumer's turn and hands the turn to the other consumer."""
          plgpu.barrier_wait(turn.at[wg])
          issue()
          plgpu.barrier_arrive(turn.at[1 - wg])

        def scope(part_ref):
          in_turn(lambda: wgmma_overwriting(part_ref, *operands(first)))

          @pl.loop(1, block_steps)
          def _(s):
            in_turn(lambda: plgpu.wgmma(part_ref, *operands(first + s)))
            plgpu.wgmma_wait(1)  # step s - 1's wgmma is done with its slot
            plgpu.barrier_arrive(free.at[lax.rem(first + s - 1, stages)])

          plgpu.wgmma_wait(0)
          return part_ref[...]

        part = pl.run_scoped(scope, plgpu.ACC(shape, jnp.float32))
        slot = lax.rem(first + block_steps - 1, stages)
        a_scale = compat.load(a_scales_smem.at[slot, 0, wg_rows], compat.row_layout())
        b_scale = compat.load(b_scales_smem.at[slot, 0], compat.col_layout())
        plgpu.barrier_arrive(free.at[slot])
        scaled = part * lax.broadcast_in_dim(a_scale, shape, [0])
        return acc + scaled * lax.broadcast_in_dim(b_scale, shape, [1])

      # Consumer 0 takes the first turn; every later turn is handed over by the other consumer.
      @pl.when(wg == 0)
      def _():
        plgpu.barrier_arrive(turn.at[0])

      acc = lax.fori_loop(0, blocks, block, compat.zeros(shape))
      # Consumer 1's last hand-over has no taker: observe it, so that no barrier ends the kernel unobserved.
      @pl.when(wg == 0)
      def _():
        plgpu.barrier_wait(turn.at[0])

      if lowrank:
        plgpu.barrier_wait(epilogue_ready.at[3 * wg])
        plgpu.barrier_wait(epilogue_ready.at[3 * wg + 1])
        acc = acc + compat.matmul(low_smem.at[wg], up_smem.at[wg], shape)
      if bias is not None:
        plgpu.barrier_wait(epilogue_ready.at[3 * wg + 2])
        acc = acc + lax.broadcast_in_dim(compat.load(bias_smem.at[wg, 0], compat.col_layout()), shape, [1])
      out_smem.at[wg][...] = acc.astype(out_dtype)
      plgpu.commit_smem()
      plgpu.copy_smem_to_gmem(out_smem.at[wg], out_ref.at[pl.ds(row0, _ROWS), cols])
      plgpu.wait_smem_to_gmem(0)

    @pl.when(wg == _TMA_WG)
    def _tma():
      def fetch(j, slot):
        depth = pl.ds(j * STEP_K, STEP_K)
        b = j // block_steps
        plgpu.copy_gmem_to_smem(a_ref.at[pl.ds(mi * TILE_M, TILE_M), depth], a_smem.at[slot], ready.at[slot])
        plgpu.copy_gmem_to_smem(w_ref.at[cols, depth], w4_smem.at[slot], ready.at[slot])
        plgpu.copy_gmem_to_smem(a_scales_ref.at[pl.ds(b, 1), pl.ds(mi * TILE_M, TILE_M)], a_scales_smem.at[slot],
                                ready.at[slot])
        plgpu.copy_gmem_to_smem(b_scales_ref.at[pl.ds(b, 1), cols], b_scales_smem.at[slot], ready.at[slot])
        if with_factors:
          plgpu.copy_gmem_to_smem(factors_ref.at[pl.ds(j, 1), cols], factors_smem.at[slot], ready.at[slot])

      kernel_mosaic_gpu.stream_ring(fetch, steps, stages, free)

    @pl.when(wg == _WIDEN_WG)
    def _widen():
      plgpu.set_max_registers(_WIDEN_REGISTERS, action="decrease")

      @pl.loop(0, steps)
      def _(j):
        slot = lax.rem(j, stages)
        plgpu.barrier_wait(ready.at[slot])
        for half in range(TILE_N // _ROWS):  # 64 weight rows at a time: fewer live registers
          rows = pl.ds(half * _ROWS, _ROWS)
          if with_factors:
            codes = compat.load(w4_smem.at[slot, rows], plgpu.Layout.WGMMA).astype(jnp.float32)
            factor = compat.load(factors_smem.at[slot, 0, rows], compat.row_layout())
            weights = (codes * lax.broadcast_in_dim(factor, codes.shape, [0])).astype(_CODE_DTYPE)
          else:
            weights = compat.load(w4_smem.at[slot, rows], plgpu.Layout.WGMMA_8BIT).astype(_CODE_DTYPE)
          w8_smem.at[slot, rows][...] = weights
        plgpu.commit_smem()  # the consumers' wgmmas read these stores through the async proxy
        plgpu.barrier_arrive(widened.at[slot])
        plgpu.barrier_arrive(free.at[slot])

  scratch = kernel_mosaic_gpu.smem_scratch(_shared_arrays(stages, rank, bias is not None, with_factors, out_dtype))
  scratch += [
      plgpu.Barrier(num_arrivals=4 + with_factors, num_barriers=stages),  # ready: the TMA copies of a step
      plgpu.Barrier(num_arrivals=1, num_barriers=stages),  # widened
      plgpu.Barrier(num_arrivals=_CONSUMERS + 1, num_barriers=stages),  # free: both consumers and the widener
      plgpu.Barrier(num_arrivals=1, num_barriers=_CONSUMERS),  # turn: consumer c may issue its wgmmas
      plgpu.Barrier(num_barriers=3 * _CONSUMERS),  # low, up, bias per consumer
  ]
  operands = [a, w, a_scales, b_scales]
  if with_factors:
    operands.append(factors.astype(jnp.float32))
  if lowrank:
    operands += [low, up]
  if bias is not None:
    operands.append(bias.reshape(1, n).astype(jnp.float32))
  return compat.launch(body, out=jax.ShapeDtypeStruct((m, n), out_dtype), scratch=scratch,
                       grid=(m // TILE_M, n // TILE_N), grid_names=("m", "n"), num_threads=_CONSUMERS + 2,
                       interpret=interpret)(*operands)


def _ratio(scales, peak):
  """scales / peak, 0 where the peak is 0 (then every scale under it is 0 too)."""
  return jnp.where(peak == 0, 0.0, scales / jnp.where(peak == 0, 1.0, peak))


def _exact(codes, a_scales, w_scales):
  """The spec: a promotion per 64-group with the activation and weight group scales."""
  return codes, a_scales.T, w_scales, None, 1


def _act128(codes, a_scales, w_scales):
  """Activations in 128-groups; each weight group scale folded in as its ratio to its 128-block's larger one."""
  k_groups, n = w_scales.shape
  peak = jnp.max(w_scales.reshape(k_groups // 2, 2, n), axis=1)
  return codes, a_scales.T, peak, _ratio(w_scales, jnp.repeat(peak, 2, axis=0)), 2


def _folded(codes, a_scales, w_scales):
  """Activations folded per token (e4m3 of code * scale / the token's largest scale), weights per output channel:
  one block spanning K, scaled by those two maxima after the K loop."""
  row_peak = jnp.max(a_scales, axis=1, keepdims=True)
  group = codes.shape[1] // a_scales.shape[1]
  folded = codes.astype(jnp.float32) * jnp.repeat(_ratio(a_scales, row_peak), group, axis=1)
  col_peak = jnp.max(w_scales, axis=0, keepdims=True)
  return (folded.astype(_CODE_DTYPE), row_peak.T, col_peak, _ratio(w_scales, col_peak), w_scales.shape[0])


@dataclasses.dataclass(frozen=True)
class ScaleMode:
  """How `ops.py` feeds the kernel for a `BlockSizes.w4a4_scales` value: the activations' quantization group, and
  (codes, activation scales [M, K / group], weight scales [K / 64, N]) -> (codes, a_scales, b_scales, factors,
  block_steps), the kernel's operands."""

  activation_group: int
  operands: Callable


SCALE_MODES = {"exact": ScaleMode(64, _exact), "act128": ScaleMode(128, _act128), "folded": ScaleMode(64, _folded)}
