"""Mosaic GPU W4A16 on Hopper with the weights as the register operand of wgmma, for every M (built, not yet timed).

    out = x @ dequant(W)   computed as   out^T = dequant(W)^T @ x^T   (bf16 operands, float32 accumulation)

Why: Hopper's wgmma takes its left operand A from registers or shared memory, its right operand B only from shared
memory. Weights that must be widened from 4 bits can reach the tensor cores without a shared-memory round trip only as
A, so the kernel computes the transposed product (Machete's choice on Hopper): A = the widened weights [64 output
columns, K], B = x^T [K, tokens], the accumulator [64 columns, tokens]. Two consequences make this one kernel serve
both ends of issue 27's W4A16 goals:
- Large M (M >= 1024). Each warpgroup widens a 64 x 64 block of codes per K step (32 weights a thread) and reuses it
  for up to 256 tokens of wgmma: the CUDA-core work is 1/256 of the tensor-core work per weight, and no bf16 weight
  tile is written to shared memory (the previous Mosaic W4A16 kernel, `w4a16_mosaic_gpu.py`, stored one and synced on
  it every step; the Triton kernel runs at 0.19x bf16 at 4096 x 3072 x 12288).
- Small M (2-64). Tokens are wgmma's N dimension, which goes down to 8: at M = 16 the tile is 16 tokens wide, not
  padded to the 64 rows that a token-as-M kernel needs, so the tensor cores do 4x less wasted work and the kernel is a
  pure weight stream: TMA copies of packed codes into a ring, widened in registers straight into the A fragments.

Weight layout (`shuffle_for_w4a16_rs`, a pure function with an exact inverse `unshuffle_from_w4a16_rs`): the packed
codes as 64 x 64 blocks, [N / 64, K / 64, 64 (n), 32 bytes (k)], each block 2 KB contiguous in memory, K packed two
per byte in the canonical order (element 2i low nibble). One TMA copy moves one block with full DRAM bursts and lands
it, 32-byte swizzled, where one warpgroup reads its A fragment; the canonical [K / 2, N] array would need a transpose
per call (a pass over the weights: ~12.6 us of traffic at 3072 x 12288 at 3 TB/s) and 32-byte strided rows. It is
meant to be computed once, at quantization or on load; `ops.py` derives it per call (an XLA transpose), and a caller
holding weights in it calls `w4a16_rs` directly.

What Pallas Mosaic GPU could not express (the full Marlin/Machete register layout): Marlin permutes each tile's codes
so that one 128-bit shared-memory load gives a thread exactly the 32 codes of its mma fragments, and widens them with
three bit operations per pair. Here the load is written at the level of logical arrays: `plgpu.load` with a layout
and `layout_cast`, which always preserve logical positions. A layout whose vectors are wide (WGMMA_UPCAST_2X: 4 codes,
WGMMA_UPCAST_4X: 8) holds a thread's codes in a different arrangement than the WGMMA layout that wgmma's A operand
needs, and `layout_cast` to WGMMA moves them between lanes (shuffles and byte permutes; from UPCAST_4X to WGMMA in
bf16 it is not implemented in JAX 0.12.1). A pre-permuted K order would make the wide registers already *be* the
WGMMA fragment, but saying so needs a cast that reinterprets registers without moving data, which exists only below
Pallas (`plgpu.inline_mgpu`, building a `FragmentedArray` from the registers with another layout), and the Mosaic GPU
interpreter cannot run `inline_mgpu`, so the kernel could not be tested on CPU. The two expressible variants are
`code_layout` choices: "WGMMA" (the codes loaded in the fragment layout itself: two codes a byte load, no data
movement) and "WGMMA_UPCAST_2X" (16-bit loads of four codes, then Mosaic's relayout). Which is faster is measured by
`experiments/bench/int4_matmul.py`.

Widening: codes -> bf16 by Mosaic's int4 conversion (byte permutes and a lop3, no int -> float conversion), times the
group scale. `exact_scale=True` multiplies in float32 and rounds once, bf16(code * scale): the same bf16 weights as the
Triton kernels, so the output is the spec's up to float32 summation order. False multiplies in bf16 with the scale
rounded to bf16 (a second rounding of 2^-9 relative; about half the instructions a weight), an opt-in fast path.

Structure: a CTA owns `tile_m` tokens x 64 * `compute_wgs` output columns and one of `k_splits` K ranges. A memory
warpgroup streams 64-deep K steps into a ring of `stages` slots (per step: the x tile [tile_m, 64] bf16, one 2 KB
code block per compute warpgroup and the step's scale row), each slot freed once every compute warpgroup's wgmma of
that step has completed (`wgmma_wait(1)` one step later). Each compute warpgroup widens its block, issues the wgmma
and widens the next step's block while it runs, into a second register set: the K loop runs two steps an
iteration, because wgmma reads its register operand asynchronously and a loop body rewrites the same registers every
iteration (tokamax's Hopper quantized ragged dot waits for every wgmma instead, for the same reason). ptxas may
still serialize the wgmmas if it cannot prove the registers untouched; it says so in its output
(`MOSAIC_GPU_DUMP_PTXAS=1`). The epilogue adds the bias (k_splits = 1) and writes the accumulator
transposed, through a transposed view of a swizzled shared-memory tile, then a TMA store into out [tokens, N].
With k_splits > 1 the float32 partials are written as accumulated, [k_splits, N, M], and the caller sums and
transposes them (small at the small M that needs K splits).

Requires group size 64 (one scale row per K step), K a multiple of 64 * k_splits, N of 64 * compute_wgs, the padded
token count a multiple of tile_m, tile_m a multiple of 8 up to 256 (a power of two with k_splits > 1).
"""

import math

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import mosaic_gpu as plgpu

from pallas_kernels import mosaic_gpu_compat as compat
from pallas_kernels.int4_matmul import kernel_mosaic_gpu

GROUP_SIZE = 64
STEP_K = 64  # one group per K step: one scale row; 32 bytes of codes a row, the 32-byte swizzle
BLOCK_N = 64  # output columns per compute warpgroup: the wgmma M tile; one code block of the stored layout
MAX_TILE_M = 256  # the wgmma N limit
TILE_M_MULTIPLE = 8
CODE_LAYOUTS = ("WGMMA", "WGMMA_UPCAST_2X")


def shuffle_for_w4a16_rs(w_packed):
  """Canonical packed weights [K / 2, N] uint8 -> the kernel's layout [N / 64, K / 64, 64, 32] uint8 (see module)."""
  half_k, n = w_packed.shape
  if w_packed.dtype != jnp.uint8 or half_k % (STEP_K // 2) or n % BLOCK_N:
    raise ValueError(f"w_packed must be uint8 [K / 2, N] with K % {STEP_K} == 0 and N % {BLOCK_N} == 0, got "
                     f"{w_packed.dtype} {w_packed.shape}")
  blocks = w_packed.reshape(half_k // (STEP_K // 2), STEP_K // 2, n // BLOCK_N, BLOCK_N)
  return blocks.transpose(2, 0, 3, 1)


def unshuffle_from_w4a16_rs(w_rs):
  """Inverse of `shuffle_for_w4a16_rs`: [N / 64, K / 64, 64, 32] uint8 -> canonical [K / 2, N] uint8."""
  n_blocks, k_blocks, rows, cols = w_rs.shape
  if w_rs.dtype != jnp.uint8 or (rows, cols) != (BLOCK_N, STEP_K // 2):
    raise ValueError(f"w_rs must be uint8 [N / {BLOCK_N}, K / {STEP_K}, {BLOCK_N}, {STEP_K // 2}], got "
                     f"{w_rs.dtype} {w_rs.shape}")
  return w_rs.transpose(1, 3, 0, 2).reshape(k_blocks * cols, n_blocks * rows)


def as_int4_codes(w_rs):
  """The stored bytes as the int4 array the kernel copies, [N / 64, K / 64, 64, 64] (low nibble first); int4 codes
  pass through. Whether XLA makes this bitcast a copy on the GPU is not known yet, so a caller that stores the layout
  can store this view and skip it."""
  if w_rs.dtype == jnp.int4:
    return w_rs
  return lax.bitcast_convert_type(w_rs, jnp.int4).reshape(*w_rs.shape[:3], STEP_K)


def supports(k: int, n: int, group_size: int, compute_wgs: int = 2) -> bool:
  """Whether the kernel takes [M, k] x [k, n] products with this group size (any M: x is padded to the token tile)."""
  return k % STEP_K == 0 and n % (compute_wgs * BLOCK_N) == 0 and group_size == GROUP_SIZE


def _out_tile(compute_wgs, tile_m, out_dtype):
  """The epilogue's tile per warpgroup: bf16 [tokens, 64] written through a transposed view; float32 partials
  [64, tokens] as accumulated (Mosaic has no transposed store of a float32 WGMMA array; the caller transposes them)."""
  if jnp.dtype(out_dtype).itemsize == 2:
    return (compute_wgs, tile_m, BLOCK_N), out_dtype, 128
  return (compute_wgs, BLOCK_N, tile_m), out_dtype, min(128, tile_m * 4)


def _shared_arrays(stages, tile_m, compute_wgs, out_dtype, bias):
  """(shape, dtype, swizzle or None) of every shared-memory array in scratch order; int4 tiles take (8, 64) tiles."""
  arrays = [((stages, tile_m, STEP_K), jnp.bfloat16, 128),
            ((stages, compute_wgs, BLOCK_N, STEP_K), jnp.int4, 32),
            ((stages, 1, compute_wgs * BLOCK_N), jnp.float32, None),
            _out_tile(compute_wgs, tile_m, out_dtype)]
  if bias:
    arrays.append(((1, compute_wgs * BLOCK_N), jnp.float32, None))
  return arrays


def shared_memory_bytes(stages: int, tile_m: int, compute_wgs: int = 2, out_dtype=jnp.bfloat16,
                        bias: bool = True) -> int:
  """Bytes of the kernel's shared-memory arrays (barriers not counted)."""
  arrays = _shared_arrays(stages, tile_m, compute_wgs, out_dtype, bias)
  return sum(math.prod(shape) * jnp.dtype(dtype).itemsize // (2 if dtype == jnp.int4 else 1)
             for shape, dtype, _ in arrays)


def deepest_ring(stages: int, tile_m: int, compute_wgs: int = 2, out_dtype=jnp.bfloat16, bias: bool = True) -> int:
  """`stages`, or fewer (at least 2) where the ring would not fit in an H100's shared memory."""
  return kernel_mosaic_gpu.deepest_fitting(
      stages, lambda s: shared_memory_bytes(s, tile_m, compute_wgs, out_dtype, bias))


def token_tile(m: int, limit: int = MAX_TILE_M) -> int:
  """The token tile for M tokens: the power of two >= max(M, 8), at most `limit` (a power of two >= 8); a power of
  two so that float32 partial tiles [64, tile_m] have a swizzle of 32, 64 or 128 bytes."""
  return min(max(TILE_M_MULTIPLE, 1 << (m - 1).bit_length()), limit)


def filling_splits(m_tiles: int, n: int, k: int, compute_wgs: int = 2) -> int:
  """The K ranges that fill an H100 with one wave (`kernel_mosaic_gpu.one_wave_splits`)."""
  return kernel_mosaic_gpu.one_wave_splits(m_tiles * (n // (BLOCK_N * compute_wgs)), k // STEP_K)


def _compute_registers(compute_wgs):
  """Registers a compute thread may take once the memory warpgroup has given its share back (down to 40,
  `kernel_mosaic_gpu.stream_ring`): 232 with two compute warpgroups (a 64 x 256 float32 accumulator is 128)."""
  return min(256, (65536 - 128 * 40) // (128 * compute_wgs) // 8 * 8)


def _smem(shape, dtype, swizzle):
  if swizzle is None:
    return plgpu.SMEM(shape, dtype)
  if dtype == jnp.int4:  # 64 codes a 32-byte row
    return plgpu.SMEM(shape, dtype, transforms=(plgpu.TilingTransform((8, 2 * swizzle)),
                                                 plgpu.SwizzleTransform(swizzle)))
  return plgpu.SMEM(shape, dtype, transforms=compat.smem_tiles(dtype, swizzle))


def w4a16_rs(x, w_rs, w_scales, bias=None, *, tile_m: int, compute_wgs: int = 2, k_splits: int = 1,
             stages: int = 4, code_layout: str = "WGMMA", exact_scale: bool = True, interpret: bool = False):
  """x [M, K] bf16 (M a multiple of tile_m), w_rs (`shuffle_for_w4a16_rs`, or `as_int4_codes` of it), w_scales
  [K / 64, N] float32, bias [N]
  or None -> x.dtype [M, N] (k_splits = 1) or float32 partials, transposed, [k_splits, N, M] (no bias then)."""
  m, k = x.shape
  n = w_rs.shape[0] * BLOCK_N
  tile_n = compute_wgs * BLOCK_N
  if x.dtype != jnp.bfloat16 or k % STEP_K:
    raise ValueError(f"x must be bf16 [M, K] with K % {STEP_K} == 0, got {x.dtype} {x.shape}")
  blocks = (n // BLOCK_N, k // STEP_K, BLOCK_N)
  if not ((w_rs.dtype == jnp.uint8 and w_rs.shape == (*blocks, STEP_K // 2))
          or (w_rs.dtype == jnp.int4 and w_rs.shape == (*blocks, STEP_K))):
    raise ValueError(f"w_rs must be uint8 [N / {BLOCK_N}, K / {STEP_K} = {k // STEP_K}, {BLOCK_N}, {STEP_K // 2}] "
                     f"(shuffle_for_w4a16_rs) or its int4 view (as_int4_codes) for x {x.shape}, got {w_rs.dtype} "
                     f"{w_rs.shape}")
  if w_scales.shape != (k // GROUP_SIZE, n):
    raise ValueError(f"w_scales must be [K / {GROUP_SIZE} = {k // GROUP_SIZE}, N = {n}], got {w_scales.shape}")
  if tile_m % TILE_M_MULTIPLE or not 0 < tile_m <= MAX_TILE_M or m % tile_m:
    raise ValueError(f"tile_m must be a multiple of {TILE_M_MULTIPLE} up to {MAX_TILE_M} dividing M, got tile_m="
                     f"{tile_m} for x {x.shape}")
  if k_splits > 1 and tile_m & (tile_m - 1):
    raise ValueError(f"tile_m must be a power of two with k_splits > 1 (float32 partial tiles), got {tile_m}")
  if compute_wgs < 1 or n % tile_n:
    raise ValueError(f"N = {n} must be a multiple of 64 * compute_wgs = {tile_n}")
  steps = k // STEP_K
  if k_splits < 1 or steps % k_splits:
    raise ValueError(f"k_splits must divide the {steps} K steps of {STEP_K}, got {k_splits}")
  if bias is not None and (k_splits > 1 or bias.shape != (n,)):
    raise ValueError(f"bias must be [N = {n}] and comes only with k_splits = 1, got {bias.shape}, k_splits="
                     f"{k_splits}")
  if code_layout not in CODE_LAYOUTS:
    raise ValueError(f"code_layout must be one of {CODE_LAYOUTS}, got {code_layout!r}")
  out_dtype = x.dtype if k_splits == 1 else jnp.float32
  needed = shared_memory_bytes(stages, tile_m, compute_wgs, out_dtype, bias is not None)
  if stages < 2 or needed > kernel_mosaic_gpu.SHARED_MEMORY_BYTES:
    raise ValueError(f"stages must be at least 2 and fit in shared memory: {stages} stages at tile_m={tile_m} need "
                     f"{needed} bytes, more than {kernel_mosaic_gpu.SHARED_MEMORY_BYTES}: use deepest_ring()")
  steps_per_split = steps // k_splits
  shape = (BLOCK_N, tile_m)
  load_layout = getattr(plgpu.Layout, code_layout)
  has_bias = bias is not None

  def body(x_ref, w_ref, s_ref, *refs):
    if has_bias:
      bias_ref, out_ref, x_smem, w_smem, s_smem, out_smem, bias_smem, ready, free, bias_ready = refs
    else:
      out_ref, x_smem, w_smem, s_smem, out_smem, ready, free = refs
    ni, mi, ki = lax.axis_index("n"), lax.axis_index("m"), lax.axis_index("k")
    wg = lax.axis_index("wg")
    first_step = ki * steps_per_split

    @pl.when(wg < compute_wgs)
    def _compute():
      if compute_wgs > 1:
        plgpu.set_max_registers(_compute_registers(compute_wgs), action="increase")
      wg_cols = pl.ds(wg * BLOCK_N, BLOCK_N)

      def widen(slot):
        """This warpgroup's code block of ring slot `slot` -> bf16 weights [64, 64] in the WGMMA layout."""
        codes = compat.load(w_smem.at[slot, wg], load_layout).astype(jnp.bfloat16)
        if code_layout != "WGMMA":
          codes = plgpu.layout_cast(codes, plgpu.Layout.WGMMA)
        scale = lax.broadcast_in_dim(compat.load(s_smem.at[slot, 0, wg_cols], compat.row_layout()),
                                     (BLOCK_N, STEP_K), [0])
        if exact_scale:
          return (codes.astype(jnp.float32) * scale).astype(jnp.bfloat16)
        return codes * scale.astype(jnp.bfloat16)

      def scope(acc_ref):
        def step(j):
          slot = lax.rem(j, stages)
          plgpu.barrier_wait(ready.at[slot])
          plgpu.wgmma(acc_ref, widen(slot), compat.transposed(x_smem.at[slot]))
          plgpu.wgmma_wait(1)  # step j - 1's wgmma is done: its ring slot and its A registers are free

          @pl.when(j > 0)
          def _():
            plgpu.barrier_arrive(free.at[lax.rem(j + stages - 1, stages)])

        # wgmma reads its register operand asynchronously, and a loop body writes the same registers on every
        # iteration: widening step j + 1 into them while step j's wgmma runs would corrupt it. Two steps per
        # iteration give two register sets, each rewritten only after `wgmma_wait(1)` has seen its wgmma finish.
        # An odd step out runs before the loop, in registers of its own.
        first = steps_per_split % 2
        if first:
          step(0)

        @pl.loop(0, steps_per_split // 2)
        def _(p):
          step(first + 2 * p)
          step(first + 2 * p + 1)

        plgpu.wgmma_wait(0)
        plgpu.barrier_arrive(free.at[(steps_per_split - 1) % stages])
        return acc_ref[...]

      acc = pl.run_scoped(scope, plgpu.ACC(shape, jnp.float32))
      if has_bias:
        plgpu.barrier_wait(bias_ready.at[0])
        acc = acc + lax.broadcast_in_dim(compat.load(bias_smem.at[0, wg_cols], compat.row_layout()), shape, [0])
      tokens, cols = pl.ds(mi * tile_m, tile_m), pl.ds(ni * tile_n + wg * BLOCK_N, BLOCK_N)
      if k_splits == 1:
        compat.transposed(out_smem.at[wg])[...] = acc.astype(out_dtype)
        dst = out_ref.at[tokens, cols]
      else:
        out_smem.at[wg][...] = acc
        dst = out_ref.at[ki, cols, tokens]
      plgpu.commit_smem()
      plgpu.copy_smem_to_gmem(out_smem.at[wg], dst)
      plgpu.wait_smem_to_gmem(0)

    @pl.when(wg == compute_wgs)
    def _memory():
      if has_bias:
        plgpu.copy_gmem_to_smem(bias_ref.at[:, pl.ds(ni * tile_n, tile_n)], bias_smem, bias_ready.at[0])

      def fetch(j, slot):
        step = first_step + j
        plgpu.copy_gmem_to_smem(x_ref.at[pl.ds(mi * tile_m, tile_m), pl.ds(step * STEP_K, STEP_K)], x_smem.at[slot],
                                ready.at[slot])
        for w in range(compute_wgs):
          plgpu.copy_gmem_to_smem(w_ref.at[ni * compute_wgs + w, step], w_smem.at[slot, w], ready.at[slot])
        plgpu.copy_gmem_to_smem(s_ref.at[pl.ds(step, 1), pl.ds(ni * tile_n, tile_n)], s_smem.at[slot],
                                ready.at[slot])

      kernel_mosaic_gpu.stream_ring(fetch, steps_per_split, stages, free)

  scratch = [_smem(*array) for array in _shared_arrays(stages, tile_m, compute_wgs, out_dtype, has_bias)]
  scratch += [plgpu.Barrier(num_arrivals=2 + compute_wgs, num_barriers=stages),
              plgpu.Barrier(num_arrivals=compute_wgs, num_barriers=stages)]
  if has_bias:
    scratch.append(plgpu.Barrier(num_arrivals=1, num_barriers=1))
  out = jax.ShapeDtypeStruct((m, n) if k_splits == 1 else (k_splits, n, m), out_dtype)
  operands = [x, as_int4_codes(w_rs), w_scales.astype(jnp.float32)]
  if has_bias:
    operands.append(bias.reshape(1, n).astype(jnp.float32))
  return compat.launch(body, out=out, scratch=scratch, grid=(n // tile_n, m // tile_m, k_splits),
                       grid_names=("n", "m", "k"), num_threads=compute_wgs + 1, interpret=interpret)(*operands)
