"""Mosaic GPU (Hopper: wgmma + TMA) grouped 8-bit GEMM: the tensor-core core of W4A4 and W8A8 on an H100.

    out[m, n] = sum_g a_scales[g, m] * b_scales[g, n] * (sum over k in group g of a[m, k] * b[n, k])
                + (low @ up)[m, n] + bias[n]

`a` and `b` hold 8-bit codes, both K-major ([M, K] and [N, K]), as int8 or as float8_e4m3fn. Hopper has no 4-bit
tensor-core instruction, so 4-bit codes arrive here widened to 8 bits (`ops.py` does that in XLA). The e4m3 form is
the "int4 as fp8" route: every code in -8..15 is exact in e4m3 and a group's products sum exactly in the float32
accumulator (|sum| <= 64 * 8 * 15 < 2**24), so fp8 wgmma hands back float32 partial sums and the per-group rescale
skips the int32 -> float32 conversion that int8 wgmma needs (faster on an H100; the timings are in
experiments/bench/int4_matmul_notes.md), so `ops.py` sends e4m3 codes for W4A4; W8A8's 8-bit codes only fit int8.

Structure (the block-sparse attention kernels' pattern): a CTA owns a 128 x `tile_n` output tile; two compute
warpgroups own 64 rows each, and a third "memory" warpgroup streams 64-deep K steps of `a`, `b` and their group's
scale rows by TMA into a ring of `stages` shared-memory slots (one barrier per slot, four copies arriving on it).
Per group a compute warpgroup runs the group's wgmmas into a fresh accumulator, the first of them written rather than
added to (`wgmma_overwriting`: no zeroing of the accumulator), and, while they run, scales the
previous group's partial sum by the outer product of its scale vectors into the float32 running sum. That rescale
(a multiply and an FMA per accumulator element and group) is CUDA-core work of the same order as the group's
tensor-core work, and it, not the tensor cores, bounds the kernel (experiments/bench/int4_matmul_notes.md). A slot
is freed only once its scale rows are read, one group later, hence at least two stages. The copies of the low-rank
operands and the bias start with the K loop and are used after it: one bf16 wgmma (low @ up) and a broadcast add,
then a cast and a TMA store.

Requires M a multiple of 128 (`ops.py` pads), N a multiple of `tile_n` (a multiple of 128), K a multiple of
`group_size`, which is a multiple of 64; `low` [M, r] and `up` [r, N] bf16 with r a multiple of 64.
"""


import math

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import mosaic_gpu as plgpu

from pallas_kernels import mosaic_gpu_compat as compat
from pallas_kernels.mosaic_gpu_overwrite import wgmma_overwriting

STEP_K = 64  # K per pipeline step: 64 bytes of 8-bit codes, one 64-byte swizzle row
_ROWS = 64  # rows per compute warpgroup, the wgmma M tile
_COMPUTE_WGS = 2
TILE_M = _COMPUTE_WGS * _ROWS
TILE_N_MULTIPLE = 128
RANK_MULTIPLE = 64  # the low-rank product's K: one 128-byte swizzle row of bf16; zero padding is exact
_MEMORY_WG = _COMPUTE_WGS
CODE_DTYPES = (jnp.dtype(jnp.int8), jnp.dtype(jnp.float8_e4m3fn))
SHARED_MEMORY_BYTES = 227 * 1024  # per thread block on Hopper (sm_90); barriers and alignment take a little more
MULTIPROCESSORS = 132  # an H100 SXM's SMs: one wave of CTAs that each need most of an SM's shared memory


def _shared_arrays(stages, tile_n, rank, bias, code_dtype, out_dtype):
  """(shape, dtype, swizzle or None) of every shared-memory array, in the kernel's scratch order: the ring (codes and
  scale rows per K step), both compute warpgroups' output tiles, low-rank operands and bias row."""
  arrays = [((stages, TILE_M, STEP_K), code_dtype, STEP_K), ((stages, tile_n, STEP_K), code_dtype, STEP_K),
            ((stages, 1, TILE_M), jnp.float32, None), ((stages, 1, tile_n), jnp.float32, None),
            ((_COMPUTE_WGS, _ROWS, tile_n), out_dtype, 128)]
  if rank:
    arrays += [((_COMPUTE_WGS, _ROWS, rank), jnp.bfloat16, 128), ((_COMPUTE_WGS, rank, tile_n), jnp.bfloat16, 128)]
  if bias:
    arrays.append(((_COMPUTE_WGS, 1, tile_n), jnp.float32, None))
  return arrays


def one_wave_splits(tiles: int, steps: int) -> int:
  """The most K ranges (a divisor of `steps`) that keep `tiles` x ranges CTAs within one wave, one CTA per SM."""
  return max((s for s in range(1, steps + 1) if steps % s == 0 and tiles * s <= MULTIPROCESSORS), default=1)


def array_bytes(arrays) -> int:
  """The bytes of a list of (shape, dtype, swizzle) shared-memory arrays."""
  return sum(math.prod(shape) * jnp.dtype(dtype).itemsize for shape, dtype, _ in arrays)


def smem_scratch(arrays):
  """plgpu.SMEM scratch for a list of (shape, dtype, swizzle or None), swizzled ones tiled for wgmma and TMA."""
  return [plgpu.SMEM(shape, dtype, transforms=compat.smem_tiles(dtype, swizzle) if swizzle else ())
          for shape, dtype, swizzle in arrays]


def stream_ring(fetch, steps, stages: int, free, min_steps: int | None = None):
  """The memory warpgroup's whole job: `fetch(j, slot)` starts the copies of K step j into ring slot j % stages,
  each slot refilled once the compute warpgroups have arrived on its `free` barrier. Issuing copies needs few
  registers, so it gives most of its share to the compute warpgroups. `steps` may be traced (a persistent CTA's
  tile count times the steps per tile) if `min_steps`, a static lower bound, is given."""
  plgpu.set_max_registers(40, action="decrease")
  primed = min(stages, steps if min_steps is None else min_steps)
  for first in range(primed):
    fetch(first, first)

  @pl.loop(primed, steps)
  def _(j):
    slot = lax.rem(j, stages)
    if primed < stages:  # a traced step count may still reach slots never used: their first fill waits for nobody
      @pl.when(j >= stages)
      def _():
        plgpu.barrier_wait(free.at[slot])
    else:
      plgpu.barrier_wait(free.at[slot])
    fetch(j, slot)

  # Observe the last release of every slot too, so that no barrier ends the kernel with a phase nobody saw
  # (the Mosaic GPU interpreter of JAX 0.11 rejects that; the hardware would not mind).
  if isinstance(steps, int):
    for j in range(max(steps - stages, 0), steps):
      plgpu.barrier_wait(free.at[j % stages])
  else:
    @pl.loop(jnp.maximum(steps - stages, 0), steps)
    def _(j):
      plgpu.barrier_wait(free.at[lax.rem(j, stages)])


def shared_memory_bytes(stages: int, tile_n: int, rank: int = 0, bias: bool = False, out_dtype=jnp.bfloat16) -> int:
  """The bytes of the kernel's shared-memory arrays (8-bit codes either way; barriers not counted)."""
  return array_bytes(_shared_arrays(stages, tile_n, rank, bias, jnp.int8, out_dtype))


def deepest_fitting(stages: int, bytes_at) -> int:
  """`stages`, or fewer (at least 2) where `bytes_at(stages)` of shared memory would not fit in an H100's."""
  while stages > 2 and bytes_at(stages) > SHARED_MEMORY_BYTES:
    stages -= 1
  return stages


def deepest_ring(stages: int, tile_n: int, rank: int = 0, bias: bool = False, out_dtype=jnp.bfloat16) -> int:
  """`stages`, or fewer (at least 2) where that many K steps would not fit in an H100's shared memory."""
  return deepest_fitting(stages, lambda s: shared_memory_bytes(s, tile_n, rank, bias, out_dtype))


def grouped_gemm(a, b, a_scales, b_scales, low, up, bias, *, group_size: int, out_dtype, tile_n: int, stages: int,
                 ctas: int | None = None, interpret: bool = False):
  """See the module docstring. a_scales [K/group, M] and b_scales [K/group, N] float32; low/up/bias may be None.

  ctas: None launches one CTA per output tile. A number launches that many persistent CTAs (at most one per tile):
  CTA c computes tiles c, c + ctas, ... (row-major over the M x N tiles) with one ring running on across its tiles,
  so the next tile's first K steps load during this tile's epilogue, whose output store is not waited for.
  """
  m, k = a.shape
  n = b.shape[0]
  if a.dtype != b.dtype or a.dtype not in CODE_DTYPES:
    raise ValueError(f"a and b must both be int8 or float8_e4m3fn, got {a.dtype} and {b.dtype}")
  if m % TILE_M or n % tile_n or tile_n % TILE_N_MULTIPLE or k % group_size or group_size % STEP_K:
    raise ValueError(f"grouped_gemm needs M % {TILE_M}, N % tile_n={tile_n}, tile_n % {TILE_N_MULTIPLE}, "
                     f"K % group_size={group_size} and group_size % {STEP_K} to be 0: a {a.shape}, b {b.shape}")
  if stages < 2:
    raise ValueError(f"grouped_gemm needs at least 2 stages, got {stages}")
  if low is not None and low.shape[1] % RANK_MULTIPLE:
    raise ValueError(f"the low-rank rank must be a multiple of {RANK_MULTIPLE}, got low {low.shape}")
  n_tiles = n // tile_n
  tiles = (m // TILE_M) * n_tiles
  if ctas is not None and not 0 < ctas <= tiles:
    raise ValueError(f"ctas must be between 1 and the {tiles} output tiles, got {ctas}")
  rank = 0 if low is None else low.shape[1]
  needed = shared_memory_bytes(stages, tile_n, rank, bias is not None, out_dtype)
  if needed > SHARED_MEMORY_BYTES:
    raise ValueError(f"{stages} stages with tile_n={tile_n}, rank {rank} and {jnp.dtype(out_dtype).name} output need "
                     f"{needed} bytes of shared memory, more than {SHARED_MEMORY_BYTES}: use deepest_ring()")
  integer = jnp.issubdtype(a.dtype, jnp.integer)
  part_dtype = jnp.int32 if integer else jnp.float32
  steps_per_group = group_size // STEP_K
  groups = k // group_size
  steps = k // STEP_K
  lowrank = low is not None

  def body(a_ref, b_ref, a_scales_ref, b_scales_ref, *refs):
    *refs, ready, free, epilogue_ready = refs
    low_ref, up_ref = (refs.pop(0), refs.pop(0)) if lowrank else (None, None)
    bias_ref = refs.pop(0) if bias is not None else None
    out_ref, a_smem, b_smem, a_scales_smem, b_scales_smem, out_smem = refs[:6]
    optional = refs[6:]
    low_smem, up_smem = (optional.pop(0), optional.pop(0)) if lowrank else (None, None)
    bias_smem = optional.pop(0) if bias is not None else None
    wg = lax.axis_index("wg")
    wg_rows = pl.ds(wg * _ROWS, _ROWS)
    shape = (_ROWS, tile_n)
    if ctas is None:
      tile_count = 1
      tile_coords = lambda i: (lax.axis_index("m"), lax.axis_index("n"))
    else:
      cta = lax.axis_index("cta")
      tile_count = (tiles - cta + ctas - 1) // ctas

      def tile_coords(i):
        tile = cta + i * ctas
        return tile // n_tiles, lax.rem(tile, n_tiles)

    @pl.when(wg < _COMPUTE_WGS)
    def _compute():
      plgpu.set_max_registers(232, action="increase")

      def run_tile(i, first_step):
        """Output tile i of this CTA, whose K steps are the ring's first_step, first_step + 1, ..."""
        mi, ni = tile_coords(i)
        cols = pl.ds(ni * tile_n, tile_n)
        ring_slot = lambda j: lax.rem(first_step + j, stages)

        def load_epilogue_operands():
          """Starts the copies of this warpgroup's low-rank rows, up-projection and bias; they land during the K
          loop."""
          row0 = mi * TILE_M + wg * _ROWS
          if lowrank:
            plgpu.copy_gmem_to_smem(low_ref.at[pl.ds(row0, _ROWS)], low_smem.at[wg], epilogue_ready.at[3 * wg])
            plgpu.copy_gmem_to_smem(up_ref.at[:, cols], up_smem.at[wg], epilogue_ready.at[3 * wg + 1])
          if bias is not None:
            plgpu.copy_gmem_to_smem(bias_ref.at[:, cols], bias_smem.at[wg], epilogue_ready.at[3 * wg + 2])

        def with_epilogue(acc):
          """acc + low @ up + bias for this warpgroup's rows: one bf16 wgmma and a broadcast add after the K loop."""
          if lowrank:
            plgpu.barrier_wait(epilogue_ready.at[3 * wg])
            plgpu.barrier_wait(epilogue_ready.at[3 * wg + 1])
            acc = acc + compat.matmul(low_smem.at[wg], up_smem.at[wg], shape)
          if bias is not None:
            plgpu.barrier_wait(epilogue_ready.at[3 * wg + 2])
            acc = acc + lax.broadcast_in_dim(compat.load(bias_smem.at[wg, 0], compat.col_layout()), shape, [1])
          return acc

        def issue(j):
          slot = ring_slot(j)
          plgpu.barrier_wait(ready.at[slot])
          return slot

        def run_group(g, overlap):
          """Starts group g's wgmmas, runs `overlap()` on the CUDA cores while they run, then reads the partial sum."""
          def scope(part_ref):
            first = g * steps_per_group
            slot = issue(first)
            wgmma_overwriting(part_ref, a_smem.at[slot, wg_rows], compat.transposed(b_smem.at[slot]))
            result = overlap()

            @pl.loop(1, steps_per_group)
            def _(s):
              slot = issue(first + s)
              plgpu.wgmma(part_ref, a_smem.at[slot, wg_rows], compat.transposed(b_smem.at[slot]))
              plgpu.wgmma_wait(1)  # the previous step's wgmma is done with its slot
              plgpu.barrier_arrive(free.at[ring_slot(first + s - 1)])

            return result, part_ref[...]
          return pl.run_scoped(scope, plgpu.ACC(shape, part_dtype))

        def rescaled(acc, part, g):
          """acc + group g's partial sum times its scales, read from the slot of g's last step, which is then free."""
          slot = ring_slot((g + 1) * steps_per_group - 1)
          a_scale = compat.load(a_scales_smem.at[slot, 0, wg_rows], compat.row_layout())
          b_scale = compat.load(b_scales_smem.at[slot, 0], compat.col_layout())
          plgpu.barrier_arrive(free.at[slot])
          scaled = part.astype(jnp.float32) * lax.broadcast_in_dim(a_scale, shape, [0])
          return acc + scaled * lax.broadcast_in_dim(b_scale, shape, [1])

        def later_group(g, carry):
          acc, previous_part = carry
          return run_group(g, lambda: rescaled(acc, previous_part, g - 1))

        # Two groups per loop iteration: the partial sum handed from one group to the next then alternates between
        # two register sets instead of being copied back into the loop-carried one (64 moves per thread and group,
        # a large share of the kernel's time on an H100: int4_matmul_notes.md). An odd group out runs before the loop.
        load_epilogue_operands()
        carry = (compat.zeros(shape), run_group(0, lambda: None)[1])
        if groups % 2 == 0:
          carry = later_group(1, carry)
        first_pair = 2 - groups % 2
        acc, last_part = lax.fori_loop(
            0, (groups - first_pair) // 2,
            lambda p, carry: later_group(first_pair + 2 * p + 1, later_group(first_pair + 2 * p, carry)), carry)
        acc = with_epilogue(rescaled(acc, last_part, groups - 1))
        if ctas is not None:
          plgpu.wait_smem_to_gmem(0, wait_read_only=True)  # the previous tile's store has read out_smem
        out_smem.at[wg][...] = acc.astype(out_dtype)
        plgpu.commit_smem()
        plgpu.copy_smem_to_gmem(out_smem.at[wg], out_ref.at[pl.ds(mi * TILE_M + wg * _ROWS, _ROWS), cols])

      if ctas is None:
        run_tile(0, 0)
      else:
        @pl.loop(0, tile_count)
        def _(i):
          run_tile(i, i * steps)
      plgpu.wait_smem_to_gmem(0)

    @pl.when(wg == _MEMORY_WG)
    def _memory():
      def fetch(q, slot):
        """Ring step q: K step q % steps of this CTA's tile q // steps."""
        i, j = (0, q) if ctas is None else (q // steps, lax.rem(q, steps))
        mi, ni = tile_coords(i)
        cta_rows, cols, depth = pl.ds(mi * TILE_M, TILE_M), pl.ds(ni * tile_n, tile_n), pl.ds(j * STEP_K, STEP_K)
        g = j // steps_per_group
        # Four copies, one barrier: each copy arrives on it once (with its byte count), hence num_arrivals=4.
        plgpu.copy_gmem_to_smem(a_ref.at[cta_rows, depth], a_smem.at[slot], ready.at[slot])
        plgpu.copy_gmem_to_smem(b_ref.at[cols, depth], b_smem.at[slot], ready.at[slot])
        plgpu.copy_gmem_to_smem(a_scales_ref.at[pl.ds(g, 1), cta_rows], a_scales_smem.at[slot], ready.at[slot])
        plgpu.copy_gmem_to_smem(b_scales_ref.at[pl.ds(g, 1), cols], b_scales_smem.at[slot], ready.at[slot])

      stream_ring(fetch, tile_count * steps, stages, free, min_steps=steps)

  scratch = smem_scratch(_shared_arrays(stages, tile_n, rank, bias is not None, a.dtype, out_dtype))
  scratch += [
      plgpu.Barrier(num_arrivals=4, num_barriers=stages),
      plgpu.Barrier(num_arrivals=_COMPUTE_WGS, num_barriers=stages),
      plgpu.Barrier(num_barriers=3 * _COMPUTE_WGS),  # low, up, bias per warpgroup
  ]
  operands = [a, b, a_scales, b_scales]
  if lowrank:
    operands += [low, up]
  if bias is not None:
    operands.append(bias.reshape(1, n).astype(jnp.float32))
  grid, grid_names = ((m // TILE_M, n_tiles), ("m", "n")) if ctas is None else ((ctas,), ("cta",))
  return compat.launch(body, out=jax.ShapeDtypeStruct((m, n), out_dtype), scratch=scratch, grid=grid,
                       grid_names=grid_names, num_threads=_COMPUTE_WGS + 1, interpret=interpret)(*operands)
