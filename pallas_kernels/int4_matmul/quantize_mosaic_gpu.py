"""Mosaic GPU activation quantization for W4A4 with the low-rank down-projection fused: one read of x.

    codes, scales = Q(x * inv_smooth) per token and 64-wide group (`reference.quantize_activations`, bit for bit)
    low[s] = x[:, K range s] @ down[K range s]              (bf16 operands, float32 partial sums per K range)

Why: the Mosaic GPU W4A4 path otherwise runs two XLA fusions that both read x (quantization, down-projection); this
kernel does both in one read, which is what brings the low-rank branch's overhead within its goal (the timings, with
and without it: experiments/bench/README.md). Nunchaku fuses them the same way.

Structure (`kernel_mosaic_gpu.py`'s pattern): a CTA owns 128 rows and one of `k_splits` equal K ranges. The split is
what makes it fast: 32 row tiles at M = 4096 leave 100 of an H100's 132 multiprocessors idle (unsplit it was no faster
than XLA's two fusions), and the quantization arithmetic, not memory, bounds each CTA. A memory warpgroup streams
64-deep K steps of x, of `inv_smooth` and of `down` by TMA into a ring of `stages` slots; each of two compute
warpgroups, for its 64 rows and per step, starts the wgmma x_step @ down_step into the low-rank accumulator, quantizes
the same x tile from shared memory on the CUDA cores while it runs (row max over the group, divide, round half to even,
clip), and stores the codes and the scale row by TMA from one of two output buffers. Each K range writes its float32
partial x @ down, which `ops.py` adds up in XLA. Codes are written as int8 or e4m3 (through float16, exact for 4-bit
values), the form the grouped GEMM takes. Group size 64 only (one group per K step); x bf16; M a multiple of 128
(`ops.py` pads), K of 64, the rank of 64.
"""

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import mosaic_gpu as plgpu

from pallas_kernels import mosaic_gpu_compat as compat
from pallas_kernels.int4_matmul import kernel_mosaic_gpu

GROUP_SIZE = 64
STEP_K = GROUP_SIZE
_ROWS = 64
_COMPUTE_WGS = 2
TILE_M = _COMPUTE_WGS * _ROWS
_MEMORY_WG = _COMPUTE_WGS
_OUT_BUFFERS = 2


def _shared_arrays(stages, rank, smooth, code_dtype):
  """(shape, dtype, swizzle or None) of every shared-memory array, in the kernel's scratch order; `smooth`: whether
  the smoothing reciprocals are streamed."""
  arrays = [((stages, TILE_M, STEP_K), jnp.bfloat16, 128)]
  if smooth:
    arrays.append(((stages, 1, STEP_K), jnp.float32, None))
  if rank:
    arrays.append(((stages, STEP_K, rank), jnp.bfloat16, 128))
  arrays += [((_COMPUTE_WGS, _OUT_BUFFERS, _ROWS, STEP_K), code_dtype, 64),
             ((_COMPUTE_WGS, _OUT_BUFFERS, 1, _ROWS), jnp.float32, None)]
  if rank:
    arrays.append(((_COMPUTE_WGS, _ROWS, rank), jnp.float32, 128))
  return arrays


def shared_memory_bytes(stages: int, rank: int, smooth: bool = True) -> int:
  """The bytes of the kernel's shared-memory arrays (8-bit codes either way; barriers not counted)."""
  return kernel_mosaic_gpu.array_bytes(_shared_arrays(stages, rank, smooth, jnp.int8))


def fits(rank: int, smooth: bool = True) -> bool:
  """Whether the shallowest ring (2 stages) fits in an H100's shared memory at this rank."""
  return shared_memory_bytes(2, rank, smooth) <= kernel_mosaic_gpu.SHARED_MEMORY_BYTES


def deepest_ring(stages: int, rank: int, smooth: bool = True) -> int:
  """`stages`, or fewer (at least 2) where that many K steps would not fit in an H100's shared memory."""
  return kernel_mosaic_gpu.deepest_fitting(stages, lambda s: shared_memory_bytes(s, rank, smooth))


def filling_splits(m: int, k: int) -> int:
  """The K ranges that fill an H100 with [m, k] activations (`kernel_mosaic_gpu.one_wave_splits`)."""
  return kernel_mosaic_gpu.one_wave_splits(m // TILE_M, k // STEP_K)


def quantize_activations(x, inv_smooth, down, *, code_dtype, signed: bool = True, stages: int = 4, k_splits: int = 1,
                         interpret: bool = False):
  """x [M, K] bf16, inv_smooth [1, K] float32 (`reference.smoothing_reciprocal`) or None, down [K, r] bf16 or None ->
  (codes [M, K] int8 or e4m3, float32 scales [K / 64, M], float32 partial sums of x @ down per K range
  [k_splits, M, r] or None)."""
  m, k = x.shape
  steps = k // STEP_K
  rank = 0 if down is None else down.shape[1]
  code_dtype = jnp.dtype(code_dtype)
  if x.dtype != jnp.bfloat16 or m % TILE_M or k % STEP_K:
    raise ValueError(f"quantize_activations needs bf16 x [M, K] with M % {TILE_M} and K % {STEP_K} == 0, got "
                     f"{x.dtype} {x.shape}")
  if code_dtype not in kernel_mosaic_gpu.CODE_DTYPES:
    raise ValueError(f"code_dtype must be int8 or float8_e4m3fn, got {code_dtype}")
  if down is not None and (down.dtype != jnp.bfloat16 or down.shape[0] != k
                           or rank % kernel_mosaic_gpu.RANK_MULTIPLE):
    raise ValueError(f"down must be bf16 [K={k}, r] with r a multiple of {kernel_mosaic_gpu.RANK_MULTIPLE}, got "
                     f"{down.dtype} {down.shape}")
  if k_splits < 1 or steps % k_splits:
    raise ValueError(f"k_splits must divide the {steps} K steps of 64, got {k_splits}")
  steps_per_split = steps // k_splits
  needed = shared_memory_bytes(stages, rank, inv_smooth is not None)
  if needed > kernel_mosaic_gpu.SHARED_MEMORY_BYTES:
    raise ValueError(f"{stages} stages with rank {rank} need {needed} bytes of shared memory, more than "
                     f"{kernel_mosaic_gpu.SHARED_MEMORY_BYTES}: use deepest_ring()")
  lowest, highest, levels = (-8.0, 7.0, 7.0) if signed else (0.0, 15.0, 15.0)

  def body(x_ref, *refs):
    refs = list(refs)
    inv_smooth_ref = refs.pop(0) if inv_smooth is not None else None
    down_ref = refs.pop(0) if rank else None
    codes_ref, scales_ref = refs.pop(0), refs.pop(0)
    low_ref = refs.pop(0) if rank else None
    x_smem = refs.pop(0)
    inv_smooth_smem = refs.pop(0) if inv_smooth is not None else None
    down_smem = refs.pop(0) if rank else None
    codes_smem, scales_smem = refs.pop(0), refs.pop(0)
    low_smem = refs.pop(0) if rank else None
    ready, free = refs
    mi, ki, wg = lax.axis_index("m"), lax.axis_index("k"), lax.axis_index("wg")
    first_step = ki * steps_per_split
    wg_rows = pl.ds(wg * _ROWS, _ROWS)
    row0 = mi * TILE_M + wg * _ROWS

    @pl.when(wg < _COMPUTE_WGS)
    def _compute():
      def quantize(j, slot):
        buf = lax.rem(j, _OUT_BUFFERS)
        step_k = first_step + j
        values = compat.load(x_smem.at[slot, wg_rows], plgpu.Layout.WGMMA).astype(jnp.float32)
        if inv_smooth is not None:
          values = values * lax.broadcast_in_dim(
              compat.load(inv_smooth_smem.at[slot, 0], compat.col_layout()), values.shape, [1])
        peak = jnp.max(jnp.abs(values) if signed else values, axis=1)
        scale = jnp.maximum(peak, 0.0) * jnp.float32(1 / levels)
        divisor = jnp.where(scale == 0.0, 1.0, scale)
        codes = jnp.round(jnp.clip(values / lax.broadcast_in_dim(divisor, values.shape, [0]), lowest, highest))
        # Two stores (codes, scales) per step: at most the last step's may still be reading the other buffer.
        plgpu.wait_smem_to_gmem(2, wait_read_only=True)
        if code_dtype == jnp.int8:
          codes_smem.at[wg, buf][...] = codes.astype(jnp.int8)
        else:
          codes_smem.at[wg, buf][...] = codes.astype(jnp.float16).astype(code_dtype)
        scales_smem.at[wg, buf, 0][...] = scale
        plgpu.commit_smem()
        plgpu.copy_smem_to_gmem(codes_smem.at[wg, buf],
                                codes_ref.at[pl.ds(row0, _ROWS), pl.ds(step_k * STEP_K, STEP_K)])
        plgpu.copy_smem_to_gmem(scales_smem.at[wg, buf], scales_ref.at[pl.ds(step_k, 1), pl.ds(row0, _ROWS)])

      def step(j, acc_ref):
        slot = lax.rem(j, stages)
        plgpu.barrier_wait(ready.at[slot])
        if acc_ref is not None:
          plgpu.wgmma(acc_ref, x_smem.at[slot, wg_rows], down_smem.at[slot])
        quantize(j, slot)
        if acc_ref is not None:
          plgpu.wgmma_wait(0)
        plgpu.barrier_arrive(free.at[slot])

      if rank:
        def scope(acc_ref):
          @pl.loop(0, steps_per_split)
          def _(j):
            step(j, acc_ref)
          return acc_ref[...]
        low_smem.at[wg][...] = pl.run_scoped(scope, plgpu.ACC((_ROWS, rank), jnp.float32))
        plgpu.commit_smem()
        plgpu.copy_smem_to_gmem(low_smem.at[wg], low_ref.at[ki, pl.ds(row0, _ROWS)])
      else:
        @pl.loop(0, steps_per_split)
        def _(j):
          step(j, None)
      plgpu.wait_smem_to_gmem(0)

    @pl.when(wg == _MEMORY_WG)
    def _memory():
      def fetch(j, slot):
        depth = pl.ds((first_step + j) * STEP_K, STEP_K)
        plgpu.copy_gmem_to_smem(x_ref.at[pl.ds(mi * TILE_M, TILE_M), depth], x_smem.at[slot], ready.at[slot])
        if inv_smooth is not None:
          plgpu.copy_gmem_to_smem(inv_smooth_ref.at[:, depth], inv_smooth_smem.at[slot], ready.at[slot])
        if rank:
          plgpu.copy_gmem_to_smem(down_ref.at[depth], down_smem.at[slot], ready.at[slot])

      kernel_mosaic_gpu.stream_ring(fetch, steps_per_split, stages, free)

  scratch = kernel_mosaic_gpu.smem_scratch(_shared_arrays(stages, rank, inv_smooth is not None, code_dtype))
  copies = 1 + (inv_smooth is not None) + bool(rank)
  scratch += [plgpu.Barrier(num_arrivals=copies, num_barriers=stages),
              plgpu.Barrier(num_arrivals=_COMPUTE_WGS, num_barriers=stages)]
  outs = [jax.ShapeDtypeStruct((m, k), code_dtype), jax.ShapeDtypeStruct((steps, m), jnp.float32)]
  if rank:
    outs.append(jax.ShapeDtypeStruct((k_splits, m, rank), jnp.float32))
  operands = [x] + ([inv_smooth] if inv_smooth is not None else []) + ([down] if rank else [])
  codes, scales, *low = compat.launch(body, out=outs, scratch=scratch, grid=(m // TILE_M, k_splits),
                                      grid_names=("m", "k"), num_threads=_COMPUTE_WGS + 1,
                                      interpret=interpret)(*operands)
  return codes, scales, (low[0] if rank else None)
