"""Mosaic GPU W4A16 for decode-sized M (<= 64) on Hopper: the packed weights streamed once, widened in registers.

    partial[s] = x[:, K range s] @ dequant(W)[K range s]        (bf16 operands, float32 partial sums per K range)

Why: at M <= 64 the product is a stream of weights, and int4 moves 3.56x fewer bytes than bf16, but the Triton kernel
reads them at well under the bandwidth XLA's bf16 GEMV reaches (experiments/bench/README.md): it is latency-bound, one
64-deep group per loop step with the nibble unpacking between the loads and the dot. Here a memory warpgroup keeps a
ring of TMA copies in flight, and the tensor cores do the product, so the CUDA cores only widen weights.

Structure (`kernel_mosaic_gpu.py`'s pattern): a CTA owns 128 output columns and one of `k_splits` K ranges (the
split fills the GPU where N / 128 CTAs would not). Per 128-deep K step (two groups, so the 64 packed rows match the
wgmma layout's 64-row granularity) the memory warpgroup copies the packed bytes [64, 128], their two scale rows and
the x tile [64, 128] into a ring slot. Each of two compute warpgroups takes 64 of the columns: it splits every byte
into its low nibble (even k) and high nibble (odd k), sign-extends (c ^ 8) - 8 and scales in one float32 FMA (the
scale row of the byte's group, selected by row: rows 0-31 are the step's first group), and writes the bf16 weights to
a shared-memory B tile, low nibbles in rows 0-63 and high in 64-127. x must be reordered to match: each 128-deep
block of K holds its even k, then its odd k (`interleaved_x`, a small XLA op at this M). The wgmma of step j runs
while the warpgroup widens step j + 1 into its other B tile. x is padded to 64 rows, the wgmma M; only the first
`out_rows` rows of each partial are written.

Requires group size 64, K a multiple of 128, N of 128, M <= 64.

On an H100 it measured slower than the Triton kernels at every shape timed (experiments/bench/README.md), so it is
opt-in (`BlockSizes.mosaic_w4a16`).
"""

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import mosaic_gpu as plgpu

from pallas_kernels import mosaic_gpu_compat as compat
from pallas_kernels.int4_matmul import kernel_mosaic_gpu

GROUP_SIZE = 64
STEP_K = 2 * GROUP_SIZE
MAX_M = 64  # the wgmma M tile; x is padded to it
_WG_N = 64
_COMPUTE_WGS = 2
TILE_N = _COMPUTE_WGS * _WG_N
_MEMORY_WG = _COMPUTE_WGS


def interleaved_x(x):
  """x [M, K] -> bf16 [64, K]: rows zero-padded to the wgmma M, each 128-deep block of K as its even k, then odd k."""
  m, k = x.shape
  blocks = x.astype(jnp.bfloat16).reshape(m, k // STEP_K, STEP_K // 2, 2).transpose(0, 1, 3, 2).reshape(m, k)
  return jnp.pad(blocks, ((0, MAX_M - m), (0, 0)))


def _shared_arrays(stages):
  """(shape, dtype, swizzle or None) of every shared-memory array, in the kernel's scratch order."""
  return [((stages, MAX_M, STEP_K), jnp.bfloat16, 128),
          ((stages, STEP_K // 2, TILE_N), jnp.uint8, 64),
          ((stages, 2, TILE_N), jnp.float32, None),
          ((_COMPUTE_WGS, 2, STEP_K, _WG_N), jnp.bfloat16, 128),
          ((_COMPUTE_WGS, MAX_M, _WG_N), jnp.float32, 128)]


def shared_memory_bytes(stages: int) -> int:
  """The bytes of the kernel's shared-memory arrays (barriers not counted): 4 stages take 196 KB."""
  return kernel_mosaic_gpu.array_bytes(_shared_arrays(stages))


def filling_splits(n: int, k: int) -> int:
  """The K ranges that fill an H100 with [k, n] weights (`kernel_mosaic_gpu.one_wave_splits`)."""
  return kernel_mosaic_gpu.one_wave_splits(n // TILE_N, k // STEP_K)


def supports(m: int, k: int, n: int, group_size: int) -> bool:
  """Whether the kernel takes an [m, k] x [k, n] product with this group size (see the module docstring)."""
  return m <= MAX_M and k % STEP_K == 0 and n % TILE_N == 0 and group_size == GROUP_SIZE


def w4a16_partials(x_interleaved, w_packed, w_scales, *, out_rows: int, k_splits: int, stages: int = 4,
                   interpret: bool = False):
  """x_interleaved [64, K] bf16 (`interleaved_x`), w_packed [K / 2, N] uint8, w_scales [K / 64, N] float32 ->
  float32 [k_splits, out_rows, N], the partial products of x's first out_rows rows."""
  rows, k = x_interleaved.shape
  n = w_packed.shape[1]
  if x_interleaved.dtype != jnp.bfloat16 or rows != MAX_M or k % STEP_K:
    raise ValueError(f"x must be bf16 [{MAX_M}, K] with K % {STEP_K} == 0 (interleaved_x), got "
                     f"{x_interleaved.dtype} {x_interleaved.shape}")
  if w_packed.dtype != jnp.uint8 or w_packed.shape != (k // 2, n) or n % TILE_N:
    raise ValueError(f"w_packed must be uint8 [K / 2 = {k // 2}, N] with N % {TILE_N} == 0, got "
                     f"{w_packed.dtype} {w_packed.shape}")
  if w_scales.shape != (k // GROUP_SIZE, n):
    raise ValueError(f"w_scales must be [K / {GROUP_SIZE} = {k // GROUP_SIZE}, N = {n}], got {w_scales.shape}")
  steps = k // STEP_K
  if k_splits < 1 or steps % k_splits:
    raise ValueError(f"k_splits must divide the {steps} K steps of {STEP_K}, got {k_splits}")
  if out_rows % 8 or not 0 < out_rows <= MAX_M:
    raise ValueError(f"out_rows must be a multiple of 8 up to {MAX_M}, got {out_rows}")
  if stages < 2 or shared_memory_bytes(stages) > kernel_mosaic_gpu.SHARED_MEMORY_BYTES:
    raise ValueError(f"stages must be at least 2 and fit in shared memory, got {stages}")
  steps_per_split = steps // k_splits
  shape = (MAX_M, _WG_N)

  def body(x_ref, w_ref, s_ref, out_ref, x_smem, w_smem, s_smem, b_smem, out_smem, ready, free):
    ni, ki, wg = lax.axis_index("n"), lax.axis_index("k"), lax.axis_index("wg")
    first_step = ki * steps_per_split
    wg_cols = pl.ds(wg * _WG_N, _WG_N)

    @pl.when(wg < _COMPUTE_WGS)
    def _compute():
      second_group = plgpu.broadcasted_iota(jnp.int32, shape, 0, layout=plgpu.Layout.WGMMA) >= GROUP_SIZE // 2

      def widen(slot, buf):
        """The slot's packed bytes for this warpgroup's columns -> bf16 weights in B tile `buf` (see docstring)."""
        # Mosaic GPU does arithmetic (the shift) on 16- and 32-bit values only.
        packed = compat.load(w_smem.at[slot, :, wg_cols], plgpu.Layout.WGMMA).astype(jnp.int32)
        scale_rows = [lax.broadcast_in_dim(compat.load(s_smem.at[slot, g, wg_cols], compat.col_layout()), shape, [1])
                      for g in range(2)]
        scale = jnp.where(second_group, scale_rows[1], scale_rows[0])
        offset = scale * -8.0
        for half, nibbles in enumerate((packed & 15, packed >> 4)):
          weights = (nibbles ^ 8).astype(jnp.float32) * scale + offset
          b_smem.at[wg, buf, pl.ds(half * MAX_M, MAX_M)][...] = weights.astype(jnp.bfloat16)
        plgpu.commit_smem()

      def scope(acc_ref):
        @pl.loop(0, steps_per_split)
        def _(j):
          slot = lax.rem(j, stages)
          plgpu.barrier_wait(ready.at[slot])
          buf = lax.rem(j, 2)
          widen(slot, buf)
          plgpu.wgmma(acc_ref, x_smem.at[slot], b_smem.at[wg, buf])
          plgpu.wgmma_wait(1)  # step j - 1's wgmma is done: its ring slot and B tile are free

          @pl.when(j > 0)
          def _():
            plgpu.barrier_arrive(free.at[lax.rem(j + stages - 1, stages)])

        plgpu.wgmma_wait(0)
        plgpu.barrier_arrive(free.at[(steps_per_split - 1) % stages])
        return acc_ref[...]

      out_smem.at[wg][...] = pl.run_scoped(scope, plgpu.ACC(shape, jnp.float32))
      plgpu.commit_smem()
      plgpu.copy_smem_to_gmem(out_smem.at[wg, pl.ds(0, out_rows)],
                              out_ref.at[ki, :, pl.ds(ni * TILE_N + wg * _WG_N, _WG_N)])
      plgpu.wait_smem_to_gmem(0)

    @pl.when(wg == _MEMORY_WG)
    def _memory():
      cols = pl.ds(ni * TILE_N, TILE_N)

      def fetch(j, slot):
        step = first_step + j
        plgpu.copy_gmem_to_smem(x_ref.at[:, pl.ds(step * STEP_K, STEP_K)], x_smem.at[slot], ready.at[slot])
        plgpu.copy_gmem_to_smem(w_ref.at[pl.ds(step * (STEP_K // 2), STEP_K // 2), cols], w_smem.at[slot],
                                ready.at[slot])
        plgpu.copy_gmem_to_smem(s_ref.at[pl.ds(step * 2, 2), cols], s_smem.at[slot], ready.at[slot])

      kernel_mosaic_gpu.stream_ring(fetch, steps_per_split, stages, free)

  scratch = kernel_mosaic_gpu.smem_scratch(_shared_arrays(stages))
  scratch += [plgpu.Barrier(num_arrivals=3, num_barriers=stages),
              plgpu.Barrier(num_arrivals=_COMPUTE_WGS, num_barriers=stages)]
  return compat.launch(body, out=jax.ShapeDtypeStruct((k_splits, out_rows, n), jnp.float32), scratch=scratch,
                       grid=(n // TILE_N, k_splits), grid_names=("n", "k"), num_threads=_COMPUTE_WGS + 1,
                       interpret=interpret)(x_interleaved, w_packed, w_scales.astype(jnp.float32))
