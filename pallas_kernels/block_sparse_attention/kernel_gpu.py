"""Portable Pallas kernels: the Triton backend on GPUs and interpret mode on CPU run these same bodies.

One program per (batch, head, query block) for the forward and dq, per (batch, head, key block) for dk/dv. Each
program loops over its own active-block list (mask_info), so inactive blocks cost nothing. Inputs arrive padded to
whole blocks (ops.py does it); keys at or past `seq_len` are masked inside the loop.

Shapes follow the op: q/k/v `[batch, seq, heads, head_dim]`; lse and delta `[batch, heads, seq]`, in natural log.
"""

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pl_triton

from pallas_kernels.block_sparse_attention import mask_info as mask_info_lib
from pallas_kernels.block_sparse_attention import tuning


def _dot(a, b, contract_a: int = 1, contract_b: int = 0):
  """2-D matmul with f32 accumulation; contract_* pick the summed axis so transposes stay inside the dot."""
  return lax.dot_general(a, b, (((contract_a,), (contract_b,)), ((), ())), preferred_element_type=jnp.float32)


def _mask_row(mask_batch: int):
  """Index of the mask's batch row for a data batch index (the mask may broadcast over batch)."""
  return (lambda b: b) if mask_batch > 1 else (lambda b: 0)


def _forward_kernel(indices_ref, counts_ref, q_ref, k_ref, v_ref, out_ref, lse_ref, *, sm_scale, block_kv,
                    seq_len):
  block_q, head_dim = q_ref.shape
  q = q_ref[...]

  def step(j, carry):
    acc, row_max, row_sum = carry
    start = pl.multiple_of(indices_ref[j] * block_kv, block_kv)
    k = k_ref[pl.ds(start, block_kv), :]
    v = v_ref[pl.ds(start, block_kv), :]
    logits = _dot(q, k, 1, 1) * sm_scale
    key_position = start + lax.broadcasted_iota(jnp.int32, (block_q, block_kv), 1)
    logits = jnp.where(key_position < seq_len, logits, -jnp.inf)
    new_max = jnp.maximum(row_max, jnp.max(logits, axis=1))
    correction = jnp.exp(row_max - new_max)
    weights = jnp.exp(logits - new_max[:, None])
    row_sum = row_sum * correction + jnp.sum(weights, axis=1)
    acc = acc * correction[:, None] + _dot(weights.astype(v.dtype), v)
    return acc, new_max, row_sum

  init = (jnp.zeros((block_q, head_dim), jnp.float32), jnp.full((block_q,), -jnp.inf, jnp.float32),
          jnp.zeros((block_q,), jnp.float32))
  acc, row_max, row_sum = lax.fori_loop(0, counts_ref[0], step, init)
  # A row with no active block keeps row_sum == 0: it returns zeros and lse = -inf.
  safe_sum = jnp.where(row_sum == 0.0, 1.0, row_sum)
  out_ref[...] = (acc / safe_sum[:, None]).astype(out_ref.dtype)
  lse_ref[...] = row_max + jnp.log(safe_sum)


def _dq_kernel(indices_ref, counts_ref, q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, dq_ref, *, sm_scale,
               block_kv, seq_len):
  block_q, head_dim = q_ref.shape
  q, do = q_ref[...], do_ref[...]
  lse, delta = lse_ref[...], delta_ref[...]

  def step(j, dq):
    start = pl.multiple_of(indices_ref[j] * block_kv, block_kv)
    k = k_ref[pl.ds(start, block_kv), :]
    v = v_ref[pl.ds(start, block_kv), :]
    logits = _dot(q, k, 1, 1) * sm_scale
    key_position = start + lax.broadcasted_iota(jnp.int32, (block_q, block_kv), 1)
    probs = jnp.where(key_position < seq_len, jnp.exp(logits - lse[:, None]), 0.0)
    dprobs = _dot(do, v, 1, 1)
    dlogits = probs * (dprobs - delta[:, None])
    return dq + _dot(dlogits.astype(k.dtype), k)

  dq = lax.fori_loop(0, counts_ref[0], step, jnp.zeros((block_q, head_dim), jnp.float32))
  dq_ref[...] = (dq * sm_scale).astype(dq_ref.dtype)


def _dkv_kernel(indices_ref, counts_ref, q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, dk_ref, dv_ref, *,
                sm_scale, block_q, seq_len):
  block_kv, head_dim = k_ref.shape
  k, v = k_ref[...], v_ref[...]
  key_start = pl.program_id(2) * block_kv
  key_valid = key_start + lax.broadcasted_iota(jnp.int32, (block_q, block_kv), 1) < seq_len

  def step(j, carry):
    dk, dv = carry
    start = pl.multiple_of(indices_ref[j] * block_q, block_q)
    q = q_ref[pl.ds(start, block_q), :]
    do = do_ref[pl.ds(start, block_q), :]
    lse = lse_ref[pl.ds(start, block_q)]
    delta = delta_ref[pl.ds(start, block_q)]
    logits = _dot(q, k, 1, 1) * sm_scale
    probs = jnp.where(key_valid, jnp.exp(logits - lse[:, None]), 0.0)
    dv = dv + _dot(probs.astype(do.dtype), do, 0, 0)
    dprobs = _dot(do, v, 1, 1)
    dlogits = probs * (dprobs - delta[:, None])
    dk = dk + _dot(dlogits.astype(q.dtype), q, 0, 0)
    return dk, dv

  zeros = jnp.zeros((block_kv, head_dim), jnp.float32)
  dk, dv = lax.fori_loop(0, counts_ref[0], step, (zeros, zeros))
  dk_ref[...] = (dk * sm_scale).astype(dk_ref.dtype)
  dv_ref[...] = dv.astype(dv_ref.dtype)


def _launch_options(interpret: bool, block_sizes: tuning.BlockSizes) -> dict:
  if interpret:
    return dict(interpret=True)
  return dict(compiler_params=pl_triton.CompilerParams(num_warps=block_sizes.triton_warps,
                                                       num_stages=block_sizes.triton_stages))


def forward(q, k, v, info: mask_info_lib.MaskInfo, *, block_q: int, block_kv: int, sm_scale: float, seq_len: int,
            block_sizes: tuning.BlockSizes, interpret: bool):
  """Returns (out `[batch, q_len, heads, head_dim]`, lse f32 `[batch, heads, q_len]`); inputs padded to blocks."""
  batch, q_len, num_heads, head_dim = q.shape
  kv_len = k.shape[1]
  mask_batch, _, num_q_blocks, num_kv_blocks = info.kv_indices.shape
  row = _mask_row(mask_batch)
  sq = pl.squeezed
  kernel = functools.partial(_forward_kernel, sm_scale=sm_scale, block_kv=block_kv, seq_len=seq_len)
  return pl.pallas_call(
      kernel,
      grid=(batch, num_heads, num_q_blocks),
      in_specs=[
          pl.BlockSpec((sq, sq, sq, num_kv_blocks), lambda b, h, i: (row(b), h, i, 0)),
          pl.BlockSpec((sq, sq, sq, 1), lambda b, h, i: (row(b), h, i, 0)),
          pl.BlockSpec((sq, block_q, sq, head_dim), lambda b, h, i: (b, i, h, 0)),
          pl.BlockSpec((sq, kv_len, sq, head_dim), lambda b, h, i: (b, 0, h, 0)),
          pl.BlockSpec((sq, kv_len, sq, head_dim), lambda b, h, i: (b, 0, h, 0)),
      ],
      out_specs=[
          pl.BlockSpec((sq, block_q, sq, head_dim), lambda b, h, i: (b, i, h, 0)),
          pl.BlockSpec((sq, sq, block_q), lambda b, h, i: (b, h, i)),
      ],
      out_shape=[jax.ShapeDtypeStruct(q.shape, q.dtype),
                 jax.ShapeDtypeStruct((batch, num_heads, q_len), jnp.float32)],
      name="block_sparse_attention_forward",
      **_launch_options(interpret, block_sizes),
  )(info.kv_indices, info.kv_counts[..., None], q, k, v)


def backward(q, k, v, do, lse, delta, info: mask_info_lib.MaskInfo, *, block_q: int, block_kv: int,
             sm_scale: float, seq_len: int, block_sizes: tuning.BlockSizes, interpret: bool):
  """Returns (dq, dk, dv) in the inputs' dtype; lse and delta f32 `[batch, heads, q_len]`."""
  batch, q_len, num_heads, head_dim = q.shape
  kv_len = k.shape[1]
  mask_batch, _, num_q_blocks, num_kv_blocks = info.kv_indices.shape
  row = _mask_row(mask_batch)
  sq = pl.squeezed
  options = _launch_options(interpret, block_sizes)
  whole_q = pl.BlockSpec((sq, q_len, sq, head_dim), lambda b, h, i: (b, 0, h, 0))
  whole_kv = pl.BlockSpec((sq, kv_len, sq, head_dim), lambda b, h, i: (b, 0, h, 0))
  q_block = pl.BlockSpec((sq, block_q, sq, head_dim), lambda b, h, i: (b, i, h, 0))
  kv_block = pl.BlockSpec((sq, block_kv, sq, head_dim), lambda b, h, i: (b, i, h, 0))
  stats_block = pl.BlockSpec((sq, sq, block_q), lambda b, h, i: (b, h, i))
  whole_stats = pl.BlockSpec((sq, sq, q_len), lambda b, h, i: (b, h, 0))

  dq = pl.pallas_call(
      functools.partial(_dq_kernel, sm_scale=sm_scale, block_kv=block_kv, seq_len=seq_len),
      grid=(batch, num_heads, num_q_blocks),
      in_specs=[
          pl.BlockSpec((sq, sq, sq, num_kv_blocks), lambda b, h, i: (row(b), h, i, 0)),
          pl.BlockSpec((sq, sq, sq, 1), lambda b, h, i: (row(b), h, i, 0)),
          q_block, whole_kv, whole_kv, q_block, stats_block, stats_block,
      ],
      out_specs=q_block,
      out_shape=jax.ShapeDtypeStruct(q.shape, q.dtype),
      name="block_sparse_attention_dq",
      **options,
  )(info.kv_indices, info.kv_counts[..., None], q, k, v, do, lse, delta)

  dk, dv = pl.pallas_call(
      functools.partial(_dkv_kernel, sm_scale=sm_scale, block_q=block_q, seq_len=seq_len),
      grid=(batch, num_heads, num_kv_blocks),
      in_specs=[
          pl.BlockSpec((sq, sq, sq, num_q_blocks), lambda b, h, i: (row(b), h, i, 0)),
          pl.BlockSpec((sq, sq, sq, 1), lambda b, h, i: (row(b), h, i, 0)),
          whole_q, kv_block, kv_block, whole_q, whole_stats, whole_stats,
      ],
      out_specs=[kv_block, kv_block],
      out_shape=[jax.ShapeDtypeStruct(k.shape, k.dtype), jax.ShapeDtypeStruct(v.shape, v.dtype)],
      name="block_sparse_attention_dkv",
      **options,
  )(info.q_indices, info.q_counts[..., None], q, k, v, do, lse, delta)
  return dq, dk, dv
