"""Mosaic TPU kernels with scalar prefetch, in the style of splash attention.

Never run on a TPU: none has been available to this project. What has run, on CPU: every case of
test_block_sparse_attention.py under the generic Pallas interpreter (`interpret=True`), and one case, forward and
gradients, under the TPU-semantics simulator (`pltpu.InterpretParams()`: TPU memory spaces, DMAs, semaphores and
these kernels' compiler params). Neither compiles through Mosaic TPU, so lowering errors, VMEM limits and speed on a
TPU are unknown.

The active-block lists (mask_info) are scalar-prefetched into SMEM and drive the K/V (or Q/dO) index maps: the grid's
last axis walks a row's list, so the pipeline DMAs only active blocks. The grid extent is static (the number of
blocks per row), so steps past a row's count remain; mask_info repeats the last active index there, the block index
does not change, Pallas issues no new DMA, and `pl.when` skips the compute. Softmax state lives in VMEM scratch
across those steps, the TPU idiom, where GPU kernels loop inside one program.

Layout: these kernels take `[batch, heads, seq, head_dim]` (ops.py hands over `[batch, seq, heads, head_dim]` and
the wrappers below transpose), because a squeezed heads axis in the second-minor place is not a legal TPU block.
lse and delta are `[batch, heads, seq, 1]` blocks inside. Limits: the lists sit in SMEM, `4 * heads * q_blocks *
kv_blocks` bytes per mask row (1 MiB at 16 heads x 128 x 128 blocks); masks much larger than that need the lists
split per head (not done).
"""

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from pallas_kernels.block_sparse_attention import mask_info as mask_info_lib
from pallas_kernels.block_sparse_attention import tuning

_PARALLEL_THEN_SEQUENTIAL = ("parallel", "parallel", "parallel", "arbitrary")


def _dot(a, b, contract_a: int = 1, contract_b: int = 0):
  return lax.dot_general(a, b, (((contract_a,), (contract_b,)), ((), ())), preferred_element_type=jnp.float32)


def _mask_row(mask_batch: int):
  return (lambda b: b) if mask_batch > 1 else (lambda b: 0)


def _forward_kernel(indices_ref, counts_ref, q_ref, k_ref, v_ref, out_ref, lse_ref, max_ref, sum_ref, acc_ref, *,
                    sm_scale, block_kv, seq_len, mask_row):
  b, h, i, j = (pl.program_id(axis) for axis in range(4))
  block_q = q_ref.shape[0]

  @pl.when(j == 0)
  def _init():
    max_ref[...] = jnp.full(max_ref.shape, -jnp.inf, jnp.float32)
    sum_ref[...] = jnp.zeros(sum_ref.shape, jnp.float32)
    acc_ref[...] = jnp.zeros(acc_ref.shape, jnp.float32)

  @pl.when(j < counts_ref[mask_row(b), h, i])
  def _step():
    start = indices_ref[mask_row(b), h, i, j] * block_kv
    logits = _dot(q_ref[...], k_ref[...], 1, 1) * sm_scale
    key_position = start + lax.broadcasted_iota(jnp.int32, (block_q, block_kv), 1)
    logits = jnp.where(key_position < seq_len, logits, -jnp.inf)
    row_max = max_ref[...]
    new_max = jnp.maximum(row_max, jnp.max(logits, axis=1, keepdims=True))
    correction = jnp.exp(row_max - new_max)
    weights = jnp.exp(logits - new_max)
    sum_ref[...] = sum_ref[...] * correction + jnp.sum(weights, axis=1, keepdims=True)
    acc_ref[...] = acc_ref[...] * correction + _dot(weights.astype(v_ref.dtype), v_ref[...])
    max_ref[...] = new_max

  @pl.when(j == pl.num_programs(3) - 1)
  def _finish():
    safe_sum = jnp.where(sum_ref[...] == 0.0, 1.0, sum_ref[...])
    out_ref[...] = (acc_ref[...] / safe_sum).astype(out_ref.dtype)
    lse_ref[...] = max_ref[...] + jnp.log(safe_sum)


def _dq_kernel(indices_ref, counts_ref, q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, dq_ref, dq_acc_ref, *,
               sm_scale, block_kv, seq_len, mask_row):
  b, h, i, j = (pl.program_id(axis) for axis in range(4))
  block_q = q_ref.shape[0]

  @pl.when(j == 0)
  def _init():
    dq_acc_ref[...] = jnp.zeros(dq_acc_ref.shape, jnp.float32)

  @pl.when(j < counts_ref[mask_row(b), h, i])
  def _step():
    start = indices_ref[mask_row(b), h, i, j] * block_kv
    k = k_ref[...]
    logits = _dot(q_ref[...], k, 1, 1) * sm_scale
    key_position = start + lax.broadcasted_iota(jnp.int32, (block_q, block_kv), 1)
    probs = jnp.where(key_position < seq_len, jnp.exp(logits - lse_ref[...]), 0.0)
    dprobs = _dot(do_ref[...], v_ref[...], 1, 1)
    dlogits = probs * (dprobs - delta_ref[...])
    dq_acc_ref[...] += _dot(dlogits.astype(k.dtype), k)

  @pl.when(j == pl.num_programs(3) - 1)
  def _finish():
    dq_ref[...] = (dq_acc_ref[...] * sm_scale).astype(dq_ref.dtype)


def _dkv_kernel(indices_ref, counts_ref, q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, dk_ref, dv_ref, dk_acc_ref,
                dv_acc_ref, *, sm_scale, seq_len, mask_row):
  b, h, kj, j = (pl.program_id(axis) for axis in range(4))
  block_q = q_ref.shape[0]
  block_kv = k_ref.shape[0]

  @pl.when(j == 0)
  def _init():
    dk_acc_ref[...] = jnp.zeros(dk_acc_ref.shape, jnp.float32)
    dv_acc_ref[...] = jnp.zeros(dv_acc_ref.shape, jnp.float32)

  @pl.when(j < counts_ref[mask_row(b), h, kj])
  def _step():
    q, do = q_ref[...], do_ref[...]
    logits = _dot(q, k_ref[...], 1, 1) * sm_scale
    key_position = kj * block_kv + lax.broadcasted_iota(jnp.int32, (block_q, block_kv), 1)
    probs = jnp.where(key_position < seq_len, jnp.exp(logits - lse_ref[...]), 0.0)
    dv_acc_ref[...] += _dot(probs.astype(do.dtype), do, 0, 0)
    dprobs = _dot(do, v_ref[...], 1, 1)
    dlogits = probs * (dprobs - delta_ref[...])
    dk_acc_ref[...] += _dot(dlogits.astype(q.dtype), q, 0, 0)

  @pl.when(j == pl.num_programs(3) - 1)
  def _finish():
    dk_ref[...] = (dk_acc_ref[...] * sm_scale).astype(dk_ref.dtype)
    dv_ref[...] = dv_acc_ref[...].astype(dv_ref.dtype)


def _heads_major(x):
  return jnp.swapaxes(x, 1, 2)


def _launch_options(interpret: bool | pltpu.InterpretParams) -> dict:
  return dict(compiler_params=pltpu.CompilerParams(dimension_semantics=_PARALLEL_THEN_SEQUENTIAL),
              interpret=interpret)


def forward(q, k, v, info: mask_info_lib.MaskInfo, *, block_q: int, block_kv: int, sm_scale: float, seq_len: int,
            block_sizes: tuning.BlockSizes, interpret: bool | pltpu.InterpretParams = False):
  """Returns (out `[batch, q_len, heads, head_dim]`, lse `[batch, heads, q_len]`); inputs padded to whole blocks."""
  del block_sizes  # the TPU pipeline depth is Pallas's default double buffering
  batch, q_len, num_heads, head_dim = q.shape
  mask_batch, _, num_q_blocks, num_kv_blocks = info.kv_indices.shape
  row = _mask_row(mask_batch)
  sq = pl.squeezed
  q_spec = pl.BlockSpec((sq, sq, block_q, head_dim), lambda b, h, i, j, idx, cnt: (b, h, i, 0))
  kv_spec = pl.BlockSpec((sq, sq, block_kv, head_dim), lambda b, h, i, j, idx, cnt: (b, h, idx[row(b), h, i, j], 0))
  stats_spec = pl.BlockSpec((sq, sq, block_q, 1), lambda b, h, i, j, idx, cnt: (b, h, i, 0))
  out, lse = pl.pallas_call(
      functools.partial(_forward_kernel, sm_scale=sm_scale, block_kv=block_kv, seq_len=seq_len, mask_row=row),
      grid_spec=pltpu.PrefetchScalarGridSpec(
          num_scalar_prefetch=2,
          grid=(batch, num_heads, num_q_blocks, num_kv_blocks),
          in_specs=[q_spec, kv_spec, kv_spec],
          out_specs=[q_spec, stats_spec],
          scratch_shapes=[pltpu.VMEM((block_q, 1), jnp.float32), pltpu.VMEM((block_q, 1), jnp.float32),
                          pltpu.VMEM((block_q, head_dim), jnp.float32)]),
      out_shape=[jax.ShapeDtypeStruct((batch, num_heads, q_len, head_dim), q.dtype),
                 jax.ShapeDtypeStruct((batch, num_heads, q_len, 1), jnp.float32)],
      name="block_sparse_attention_forward_tpu",
      **_launch_options(interpret),
  )(info.kv_indices, info.kv_counts, _heads_major(q), _heads_major(k), _heads_major(v))
  return _heads_major(out), lse[..., 0]


def backward(q, k, v, do, lse, delta, info: mask_info_lib.MaskInfo, *, block_q: int, block_kv: int,
             sm_scale: float, seq_len: int, block_sizes: tuning.BlockSizes,
             interpret: bool | pltpu.InterpretParams = False):
  """Returns (dq, dk, dv) `[batch, seq, heads, head_dim]`; lse and delta `[batch, heads, q_len]`."""
  del block_sizes
  batch, q_len, num_heads, head_dim = q.shape
  mask_batch, _, num_q_blocks, num_kv_blocks = info.kv_indices.shape
  row = _mask_row(mask_batch)
  sq = pl.squeezed
  q, k, v, do = map(_heads_major, (q, k, v, do))
  lse, delta = lse[..., None], delta[..., None]
  options = _launch_options(interpret)

  own_q = pl.BlockSpec((sq, sq, block_q, head_dim), lambda b, h, i, j, idx, cnt: (b, h, i, 0))
  own_q_stats = pl.BlockSpec((sq, sq, block_q, 1), lambda b, h, i, j, idx, cnt: (b, h, i, 0))
  listed_kv = pl.BlockSpec((sq, sq, block_kv, head_dim),
                           lambda b, h, i, j, idx, cnt: (b, h, idx[row(b), h, i, j], 0))
  dq = pl.pallas_call(
      functools.partial(_dq_kernel, sm_scale=sm_scale, block_kv=block_kv, seq_len=seq_len, mask_row=row),
      grid_spec=pltpu.PrefetchScalarGridSpec(
          num_scalar_prefetch=2,
          grid=(batch, num_heads, num_q_blocks, num_kv_blocks),
          in_specs=[own_q, listed_kv, listed_kv, own_q, own_q_stats, own_q_stats],
          out_specs=own_q,
          scratch_shapes=[pltpu.VMEM((block_q, head_dim), jnp.float32)]),
      out_shape=jax.ShapeDtypeStruct(q.shape, q.dtype),
      name="block_sparse_attention_dq_tpu",
      **options,
  )(info.kv_indices, info.kv_counts, q, k, v, do, lse, delta)

  own_kv = pl.BlockSpec((sq, sq, block_kv, head_dim), lambda b, h, kj, j, idx, cnt: (b, h, kj, 0))
  listed_q = pl.BlockSpec((sq, sq, block_q, head_dim),
                          lambda b, h, kj, j, idx, cnt: (b, h, idx[row(b), h, kj, j], 0))
  listed_q_stats = pl.BlockSpec((sq, sq, block_q, 1),
                                lambda b, h, kj, j, idx, cnt: (b, h, idx[row(b), h, kj, j], 0))
  dk, dv = pl.pallas_call(
      functools.partial(_dkv_kernel, sm_scale=sm_scale, seq_len=seq_len, mask_row=row),
      grid_spec=pltpu.PrefetchScalarGridSpec(
          num_scalar_prefetch=2,
          grid=(batch, num_heads, num_kv_blocks, num_q_blocks),
          in_specs=[listed_q, own_kv, own_kv, listed_q, listed_q_stats, listed_q_stats],
          out_specs=[own_kv, own_kv],
          scratch_shapes=[pltpu.VMEM((block_kv, head_dim), jnp.float32),
                          pltpu.VMEM((block_kv, head_dim), jnp.float32)]),
      out_shape=[jax.ShapeDtypeStruct(k.shape, k.dtype), jax.ShapeDtypeStruct(v.shape, v.dtype)],
      name="block_sparse_attention_dkv_tpu",
      **options,
  )(info.q_indices, info.q_counts, q, k, v, do, lse, delta)
  return _heads_major(dq), _heads_major(dk), _heads_major(dv)
