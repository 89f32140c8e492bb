"""Mosaic GPU (Hopper: wgmma + TMA) kernels for block-sparse attention, forward and backward.

Every kernel is warp-specialised: two compute warpgroups own 64 rows each, and a third "memory" warpgroup walks the
block's active list from mask_info, loading the next blocks by TMA into a ring of `stages` shared-memory slots while
the compute warpgroups work. Inactive blocks are never loaded or visited. The forward follows the FlashAttention-3
schedule (a barrier ping-pongs the two compute warpgroups between tensor-core and softmax work).

No padding pass: TMA fills rows past the array end with zeros on load and skips them on store. Keys past `seq_len`
still need masking where a softmax sees them: the forward and dq mask the last key block only, which ascending
active lists put last in every row, so a row runs its unmasked steps and then at most one masked block. For dk/dv,
keys past the end only produce rows the store drops, and padded query rows have q = dO = 0 and delta = 0, so they add
nothing.

lse here is in base 2 of the scaled logits (`log2(sum(exp2(s * scale * log2(e))))`), private to this forward/backward
pair. Requires: bf16 or f16, head_dim a multiple of 64 (up to 128), block_q = 128, block_kv a multiple of 64.
"""

import functools
import math

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import mosaic_gpu as plgpu

from pallas_kernels import mosaic_gpu_compat as compat
from pallas_kernels.block_sparse_attention import mask_info as mask_info_lib
from pallas_kernels.block_sparse_attention import tuning
from pallas_kernels.mosaic_gpu_overwrite import wgmma_overwriting

_LOG2E = math.log2(math.e)
_ROWS = 64  # rows per compute warpgroup, the wgmma M tile
_COMPUTE_WGS = 2
_MEMORY_WG = _COMPUTE_WGS
# Valid rows have a row sum >= 1 (the max element contributes exp2(0)); empty rows have 0 and must not divide by it.
_TINY = 1e-30


def supports(dtype, head_dim: int, block_q: int, block_kv: int) -> bool:
  """Whether these kernels handle the configuration (the op falls back to the Triton path otherwise)."""
  return (jnp.dtype(dtype) in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16)) and head_dim % 64 == 0
          and head_dim <= 128 and block_q == _COMPUTE_WGS * _ROWS and block_kv % _ROWS == 0 and block_kv <= 128)


def _launch(body, *, out, scratch, grid, grid_names, interpret, num_threads=_COMPUTE_WGS + 1):
  return compat.launch(body, out=out, scratch=scratch, grid=grid, grid_names=grid_names, num_threads=num_threads,
                       interpret=interpret)


# ---- helpers shared by the kernels -----------------------------------------------------------------------------------

def _accumulate(acc, issue):
  """acc + (the wgmma that `issue(acc_ref)` starts), accumulated in place in registers."""
  return pl.run_state(issue)(plgpu.ACC.init(acc))


def _unmasked_steps(indices_row_ref, count, num_kv_blocks: int, mask_tail: bool):
  """Steps before the key block that needs the sequence-end mask (the last block, listed last when active)."""
  if not mask_tail:
    return count
  last = indices_row_ref[jnp.maximum(count - 1, 0)]
  return jnp.maximum(count - jnp.where(last == num_kv_blocks - 1, 1, 0), 0)


def _grid(block_axis: str, num_blocks: int, num_heads: int, batch: int):
  """(grid, names), heads varying fastest across consecutively launched CTAs.

  On an H100, launching the blocks of one head consecutively instead (so neighbouring rows, which share most K/V
  blocks, run together) made the forward slower (experiments/bench/block_sparse_attention_notes.md).
  """
  return dict(grid=(num_heads, num_blocks, batch), grid_names=("heads", block_axis, "batch"))


def _mask_row(mask_batch: int, batch_index):
  return batch_index if mask_batch > 1 else 0


# ---- forward ---------------------------------------------------------------------------------------------------------

def forward(q, k, v, info: mask_info_lib.MaskInfo, *, block_q: int, block_kv: int, sm_scale: float, seq_len: int,
            block_sizes: tuning.BlockSizes, interpret: bool = False):
  """Returns (out like q, lse2 f32 `[batch, heads, num_q_blocks * block_q]`); q/k/v unpadded."""
  batch, _, num_heads, head_dim = q.shape
  mask_batch, _, num_q_blocks, num_kv_blocks = info.kv_indices.shape
  stages = block_sizes.mosaic_stages
  dtype = q.dtype
  scale2 = sm_scale * _LOG2E
  tail_keys = seq_len - (num_kv_blocks - 1) * block_kv
  mask_tail = tail_keys < block_kv

  def body(q_ref, k_ref, v_ref, indices_ref, counts_ref, out_ref, lse_ref,
           qo_smem, k_smem, v_smem, lse_smem, q_ready, k_ready, v_ready, k_free, v_free, turn):
    b, h, qi = lax.axis_index("batch"), lax.axis_index("heads"), lax.axis_index("q_block")
    wg = lax.axis_index("wg")
    row_list = indices_ref.at[_mask_row(mask_batch, b), h, qi]
    count = counts_ref[_mask_row(mask_batch, b), h, qi]

    def take_turn():
      plgpu.barrier_arrive(turn)
      plgpu.barrier_wait(turn)

    @pl.when(wg < _COMPUTE_WGS)
    def _compute():
      plgpu.set_max_registers(232, action="increase")
      q_tile = qo_smem.at[wg]
      row0 = qi * block_q + wg * _ROWS
      plgpu.copy_gmem_to_smem(q_ref.at[b, pl.ds(row0, _ROWS), h], q_tile, q_ready.at[wg])
      plgpu.barrier_wait(q_ready.at[wg])

      @pl.when(count > 0)
      def _():
        plgpu.barrier_wait(k_ready.at[0])

      pl.when(wg == 1)(take_turn)

      def step(j, carry, mask_keys):
        acc, row_max, row_sum = carry
        slot = lax.rem(j, stages)

        def logits_scope(acc_ref):
          wgmma_overwriting(acc_ref, q_tile, compat.transposed(k_smem.at[slot]))
          take_turn()
          return acc_ref[...]

        logits = pl.run_scoped(logits_scope, plgpu.ACC((_ROWS, block_kv), jnp.float32))
        plgpu.barrier_arrive(k_free.at[slot])
        if mask_keys:
          key = plgpu.broadcasted_iota(jnp.int32, (_ROWS, block_kv), 1, layout=plgpu.Layout.WGMMA)
          logits = jnp.where(key < tail_keys, logits, -jnp.inf)
        new_max = jnp.maximum(row_max, logits.max(axis=1) * scale2)
        correction = jnp.exp2(row_max - new_max)
        probs = jnp.exp2(logits * scale2 - lax.broadcast_in_dim(new_max, logits.shape, [0]))
        acc = acc * lax.broadcast_in_dim(correction, acc.shape, [0])
        row_sum = row_sum * correction + probs.sum(axis=1)
        probs_lo = probs.astype(dtype)
        # Pin the softmax before the hand-over so the other warpgroup's wgmma overlaps all of it.
        acc, row_sum, new_max, probs_lo = lax.optimization_barrier((acc, row_sum, new_max, probs_lo))
        plgpu.barrier_arrive(turn)
        plgpu.barrier_wait(v_ready.at[slot])
        plgpu.barrier_wait(turn)

        def output_scope(acc_ref):
          plgpu.wgmma(acc_ref, probs_lo, v_smem.at[slot])

          @pl.when(j + 1 < count)
          def _():
            plgpu.barrier_wait(k_ready.at[lax.rem(j + 1, stages)])

        acc = _accumulate(acc, output_scope)
        plgpu.barrier_arrive(v_free.at[slot])
        return acc, new_max, row_sum

      carry = (compat.zeros((_ROWS, head_dim)),
               plgpu.layout_cast(jnp.full((_ROWS,), -jnp.inf, jnp.float32), compat.row_layout()),
               plgpu.layout_cast(jnp.zeros((_ROWS,), jnp.float32), compat.row_layout()))
      plain = _unmasked_steps(row_list, count, num_kv_blocks, mask_tail)
      carry = lax.fori_loop(0, plain, functools.partial(step, mask_keys=False), carry)
      if mask_tail:
        carry = lax.fori_loop(plain, count, functools.partial(step, mask_keys=True), carry)
      acc, row_max, row_sum = carry
      pl.when(wg == 0)(take_turn)

      safe_sum = jnp.maximum(row_sum, _TINY)
      q_tile[...] = (acc / lax.broadcast_in_dim(safe_sum, acc.shape, [0])).astype(dtype)
      lse_smem.at[wg][...] = row_max + jnp.log(safe_sum) * _LOG2E
      plgpu.commit_smem()
      plgpu.copy_smem_to_gmem(q_tile, out_ref.at[b, pl.ds(row0, _ROWS), h])
      plgpu.copy_smem_to_gmem(lse_smem.at[wg], lse_ref.at[b, h, pl.ds(row0, _ROWS)])
      plgpu.wait_smem_to_gmem(0)

    @pl.when(wg == _MEMORY_WG)
    def _memory():
      plgpu.set_max_registers(40, action="decrease")

      def fetch(j, slot):
        keys = pl.ds(row_list[j] * block_kv, block_kv)
        plgpu.copy_gmem_to_smem(k_ref.at[b, keys, h], k_smem.at[slot], k_ready.at[slot])
        plgpu.copy_gmem_to_smem(v_ref.at[b, keys, h], v_smem.at[slot], v_ready.at[slot])

      for first in range(stages):
        pl.when(first < count)(functools.partial(fetch, first, first))

      @pl.loop(stages, jnp.maximum(count, stages))
      def _(j):
        slot = lax.rem(j, stages)
        keys = pl.ds(row_list[j] * block_kv, block_kv)
        plgpu.barrier_wait(k_free.at[slot])
        plgpu.copy_gmem_to_smem(k_ref.at[b, keys, h], k_smem.at[slot], k_ready.at[slot])
        plgpu.barrier_wait(v_free.at[slot])
        plgpu.copy_gmem_to_smem(v_ref.at[b, keys, h], v_smem.at[slot], v_ready.at[slot])

  tiles = compat.smem_tiles(dtype)
  lse_len = num_q_blocks * block_q
  scratch = [
      plgpu.SMEM((_COMPUTE_WGS, _ROWS, head_dim), dtype, transforms=tiles),
      plgpu.SMEM((stages, block_kv, head_dim), dtype, transforms=tiles),
      plgpu.SMEM((stages, block_kv, head_dim), dtype, transforms=tiles),
      plgpu.SMEM((_COMPUTE_WGS, _ROWS), jnp.float32),
      plgpu.Barrier(num_barriers=_COMPUTE_WGS),
      plgpu.Barrier(num_barriers=stages),
      plgpu.Barrier(num_barriers=stages),
      plgpu.Barrier(num_arrivals=_COMPUTE_WGS, num_barriers=stages),
      plgpu.Barrier(num_arrivals=_COMPUTE_WGS, num_barriers=stages),
      plgpu.Barrier(num_arrivals=_COMPUTE_WGS),
  ]
  out = [jax.ShapeDtypeStruct(q.shape, dtype), jax.ShapeDtypeStruct((batch, num_heads, lse_len), jnp.float32)]
  return _launch(body, out=out, scratch=scratch, interpret=interpret,
                 **_grid("q_block", num_q_blocks, num_heads, batch))(
                     q, k, v, info.kv_indices, info.kv_counts)


# ---- backward --------------------------------------------------------------------------------------------------------

def _dq(q, k, v, do, lse, delta, info, *, block_q, block_kv, sm_scale, seq_len, stages, interpret):
  """dq: per query block, walk the row's active key blocks in 64-key sub-steps (keeps p, dp at 32 registers)."""
  batch, _, num_heads, head_dim = q.shape
  mask_batch, _, num_q_blocks, num_kv_blocks = info.kv_indices.shape
  dtype = q.dtype
  scale2 = sm_scale * _LOG2E
  subs = block_kv // _ROWS
  tail_keys = seq_len - (num_kv_blocks - 1) * block_kv
  mask_tail = tail_keys < block_kv

  def body(q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, indices_ref, counts_ref, dq_ref,
           q_smem, do_smem, lse_smem, delta_smem, k_smem, v_smem, q_ready, k_ready, v_ready, k_free, v_free):
    b, h, qi = lax.axis_index("batch"), lax.axis_index("heads"), lax.axis_index("q_block")
    wg = lax.axis_index("wg")
    row_list = indices_ref.at[_mask_row(mask_batch, b), h, qi]
    steps = counts_ref[_mask_row(mask_batch, b), h, qi] * subs

    @pl.when(wg < _COMPUTE_WGS)
    def _compute():
      plgpu.set_max_registers(232, action="increase")
      q_tile, do_tile = q_smem.at[wg], do_smem.at[wg]
      row0 = qi * block_q + wg * _ROWS
      rows = pl.ds(row0, _ROWS)
      plgpu.copy_gmem_to_smem(q_ref.at[b, rows, h], q_tile, q_ready.at[wg, 0])
      plgpu.copy_gmem_to_smem(do_ref.at[b, rows, h], do_tile, q_ready.at[wg, 1])
      plgpu.copy_gmem_to_smem(lse_ref.at[b, h, rows], lse_smem.at[wg], q_ready.at[wg, 2])
      plgpu.copy_gmem_to_smem(delta_ref.at[b, h, rows], delta_smem.at[wg], q_ready.at[wg, 3])
      for i in range(4):
        plgpu.barrier_wait(q_ready.at[wg, i])
      lse = compat.load(lse_smem.at[wg], compat.row_layout())
      delta = compat.load(delta_smem.at[wg], compat.row_layout())

      def step(j, dq, mask_keys):
        slot = lax.rem(j, stages)
        plgpu.barrier_wait(k_ready.at[slot])
        logits = compat.matmul(q_tile, compat.transposed(k_smem.at[slot]), (_ROWS, _ROWS))
        probs = jnp.exp2(logits * scale2 - lax.broadcast_in_dim(lse, logits.shape, [0]))
        if mask_keys:
          key = plgpu.broadcasted_iota(jnp.int32, (_ROWS, _ROWS), 1, layout=plgpu.Layout.WGMMA)
          probs = jnp.where(key < tail_keys - lax.rem(j, subs) * _ROWS, probs, 0.0)
        plgpu.barrier_wait(v_ready.at[slot])
        dprobs = compat.matmul(do_tile, compat.transposed(v_smem.at[slot]), (_ROWS, _ROWS))
        plgpu.barrier_arrive(v_free.at[slot])
        dlogits = probs * (dprobs - lax.broadcast_in_dim(delta, dprobs.shape, [0]))
        dlogits = dlogits.astype(dtype)
        dq = _accumulate(dq, lambda acc_ref: plgpu.wgmma(acc_ref, dlogits, k_smem.at[slot]))
        plgpu.barrier_arrive(k_free.at[slot])
        return dq

      plain = _unmasked_steps(row_list, steps // subs, num_kv_blocks, mask_tail) * subs
      dq = lax.fori_loop(0, plain, functools.partial(step, mask_keys=False), compat.zeros((_ROWS, head_dim)))
      if mask_tail:
        dq = lax.fori_loop(plain, steps, functools.partial(step, mask_keys=True), dq)
      q_tile[...] = (dq * sm_scale).astype(dtype)
      plgpu.commit_smem()
      plgpu.copy_smem_to_gmem(q_tile, dq_ref.at[b, rows, h])
      plgpu.wait_smem_to_gmem(0)

    @pl.when(wg == _MEMORY_WG)
    def _memory():
      plgpu.set_max_registers(40, action="decrease")

      def fetch(j, slot):
        keys = pl.ds(row_list[j // subs] * block_kv + lax.rem(j, subs) * _ROWS, _ROWS)
        plgpu.copy_gmem_to_smem(k_ref.at[b, keys, h], k_smem.at[slot], k_ready.at[slot])
        plgpu.copy_gmem_to_smem(v_ref.at[b, keys, h], v_smem.at[slot], v_ready.at[slot])

      for first in range(stages):
        pl.when(first < steps)(functools.partial(fetch, jnp.int32(first), first))

      @pl.loop(stages, jnp.maximum(steps, stages))
      def _(j):
        slot = lax.rem(j, stages)
        keys = pl.ds(row_list[j // subs] * block_kv + lax.rem(j, subs) * _ROWS, _ROWS)
        plgpu.barrier_wait(k_free.at[slot])
        plgpu.copy_gmem_to_smem(k_ref.at[b, keys, h], k_smem.at[slot], k_ready.at[slot])
        plgpu.barrier_wait(v_free.at[slot])
        plgpu.copy_gmem_to_smem(v_ref.at[b, keys, h], v_smem.at[slot], v_ready.at[slot])

  tiles = compat.smem_tiles(dtype)
  scratch = [
      plgpu.SMEM((_COMPUTE_WGS, _ROWS, head_dim), dtype, transforms=tiles),
      plgpu.SMEM((_COMPUTE_WGS, _ROWS, head_dim), dtype, transforms=tiles),
      plgpu.SMEM((_COMPUTE_WGS, _ROWS), jnp.float32),
      plgpu.SMEM((_COMPUTE_WGS, _ROWS), jnp.float32),
      plgpu.SMEM((stages, _ROWS, head_dim), dtype, transforms=tiles),
      plgpu.SMEM((stages, _ROWS, head_dim), dtype, transforms=tiles),
      plgpu.Barrier(num_barriers=(_COMPUTE_WGS, 4)),
      plgpu.Barrier(num_barriers=stages),
      plgpu.Barrier(num_barriers=stages),
      plgpu.Barrier(num_arrivals=_COMPUTE_WGS, num_barriers=stages),
      plgpu.Barrier(num_arrivals=_COMPUTE_WGS, num_barriers=stages),
  ]
  return _launch(body, out=jax.ShapeDtypeStruct(q.shape, dtype), scratch=scratch, interpret=interpret,
                 **_grid("q_block", num_q_blocks, num_heads, batch))(
                     q, k, v, do, lse, delta, info.kv_indices, info.kv_counts)


def _dkv(q, k, v, do, lse, delta, info, *, block_q, block_kv, sm_scale, stages, interpret):
  """dk, dv: per key block (two warpgroups of 64 keys), walk the column's active query blocks in 64-row sub-steps."""
  batch, _, num_heads, head_dim = q.shape
  mask_batch, _, num_kv_blocks, _ = info.q_indices.shape
  dtype = q.dtype
  scale2 = sm_scale * _LOG2E
  subs = block_q // _ROWS
  wgs = block_kv // _ROWS

  def body(q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, indices_ref, counts_ref, dk_ref, dv_ref,
           k_smem, v_smem, q_smem, do_smem, lse_smem, delta_smem, kv_ready, q_ready, do_ready, lse_ready,
           delta_ready, free):
    b, h, kj = lax.axis_index("batch"), lax.axis_index("heads"), lax.axis_index("kv_block")
    wg = lax.axis_index("wg")
    column_list = indices_ref.at[_mask_row(mask_batch, b), h, kj]
    steps = counts_ref[_mask_row(mask_batch, b), h, kj] * subs

    @pl.when(wg < wgs)
    def _compute():
      plgpu.set_max_registers(232, action="increase")
      k_tile, v_tile = k_smem.at[wg], v_smem.at[wg]
      keys = pl.ds(kj * block_kv + wg * _ROWS, _ROWS)
      plgpu.copy_gmem_to_smem(k_ref.at[b, keys, h], k_tile, kv_ready.at[wg, 0])
      plgpu.copy_gmem_to_smem(v_ref.at[b, keys, h], v_tile, kv_ready.at[wg, 1])
      plgpu.barrier_wait(kv_ready.at[wg, 0])
      plgpu.barrier_wait(kv_ready.at[wg, 1])

      def step(j, carry):
        dk, dv = carry
        slot = lax.rem(j, stages)
        plgpu.barrier_wait(q_ready.at[slot])
        logits_t = compat.matmul(k_tile, compat.transposed(q_smem.at[slot]), (_ROWS, _ROWS))
        plgpu.barrier_wait(lse_ready.at[slot])
        lse = compat.load(lse_smem.at[slot], compat.col_layout())
        probs_t = jnp.exp2(logits_t * scale2 - lax.broadcast_in_dim(lse, logits_t.shape, [1]))
        plgpu.barrier_wait(do_ready.at[slot])
        probs_t_lo = probs_t.astype(dtype)
        dv = _accumulate(dv, lambda acc_ref: plgpu.wgmma(acc_ref, probs_t_lo, do_smem.at[slot]))
        dprobs_t = compat.matmul(v_tile, compat.transposed(do_smem.at[slot]), (_ROWS, _ROWS))
        plgpu.barrier_wait(delta_ready.at[slot])
        delta = compat.load(delta_smem.at[slot], compat.col_layout())
        dlogits_t = probs_t * (dprobs_t - lax.broadcast_in_dim(delta, dprobs_t.shape, [1]))
        dlogits_t = dlogits_t.astype(dtype)
        dk = _accumulate(dk, lambda acc_ref: plgpu.wgmma(acc_ref, dlogits_t, q_smem.at[slot]))
        plgpu.barrier_arrive(free.at[slot])
        return dk, dv

      dk, dv = lax.fori_loop(0, steps, step, (compat.zeros((_ROWS, head_dim)), compat.zeros((_ROWS, head_dim))))
      k_tile[...] = (dk * sm_scale).astype(dtype)
      v_tile[...] = dv.astype(dtype)
      plgpu.commit_smem()
      plgpu.copy_smem_to_gmem(k_tile, dk_ref.at[b, keys, h])
      plgpu.copy_smem_to_gmem(v_tile, dv_ref.at[b, keys, h])
      plgpu.wait_smem_to_gmem(0)

    @pl.when(wg == wgs)
    def _memory():
      plgpu.set_max_registers(40, action="decrease")

      def fetch(j, slot):
        rows = pl.ds(column_list[j // subs] * block_q + lax.rem(j, subs) * _ROWS, _ROWS)
        plgpu.copy_gmem_to_smem(q_ref.at[b, rows, h], q_smem.at[slot], q_ready.at[slot])
        plgpu.copy_gmem_to_smem(lse_ref.at[b, h, rows], lse_smem.at[slot], lse_ready.at[slot])
        plgpu.copy_gmem_to_smem(do_ref.at[b, rows, h], do_smem.at[slot], do_ready.at[slot])
        plgpu.copy_gmem_to_smem(delta_ref.at[b, h, rows], delta_smem.at[slot], delta_ready.at[slot])

      for first in range(stages):
        pl.when(first < steps)(functools.partial(fetch, jnp.int32(first), first))

      @pl.loop(stages, jnp.maximum(steps, stages))
      def _(j):
        slot = lax.rem(j, stages)
        plgpu.barrier_wait(free.at[slot])
        fetch(j, slot)

  tiles = compat.smem_tiles(dtype)
  scratch = [
      plgpu.SMEM((wgs, _ROWS, head_dim), dtype, transforms=tiles),
      plgpu.SMEM((wgs, _ROWS, head_dim), dtype, transforms=tiles),
      plgpu.SMEM((stages, _ROWS, head_dim), dtype, transforms=tiles),
      plgpu.SMEM((stages, _ROWS, head_dim), dtype, transforms=tiles),
      plgpu.SMEM((stages, _ROWS), jnp.float32),
      plgpu.SMEM((stages, _ROWS), jnp.float32),
      plgpu.Barrier(num_barriers=(wgs, 2)),
      plgpu.Barrier(num_barriers=stages),
      plgpu.Barrier(num_barriers=stages),
      plgpu.Barrier(num_barriers=stages),
      plgpu.Barrier(num_barriers=stages),
      plgpu.Barrier(num_arrivals=wgs, num_barriers=stages),
  ]
  out = [jax.ShapeDtypeStruct(k.shape, dtype), jax.ShapeDtypeStruct(v.shape, dtype)]
  return _launch(body, out=out, scratch=scratch, num_threads=wgs + 1, interpret=interpret,
                 **_grid("kv_block", num_kv_blocks, num_heads, batch))(
                     q, k, v, do, lse, delta, info.q_indices, info.q_counts)


def backward(q, k, v, do, lse, delta, info: mask_info_lib.MaskInfo, *, block_q: int, block_kv: int,
             sm_scale: float, seq_len: int, block_sizes: tuning.BlockSizes, interpret: bool = False):
  """Returns (dq, dk, dv); lse from `forward` (base 2), delta f32 `[batch, heads, num_q_blocks * block_q]`."""
  stages = block_sizes.mosaic_stages
  dq = _dq(q, k, v, do, lse, delta, info, block_q=block_q, block_kv=block_kv, sm_scale=sm_scale,
           seq_len=seq_len, stages=stages, interpret=interpret)
  dk, dv = _dkv(q, k, v, do, lse, delta, info, block_q=block_q, block_kv=block_kv, sm_scale=sm_scale,
                stages=stages, interpret=interpret)
  return dq, dk, dv
