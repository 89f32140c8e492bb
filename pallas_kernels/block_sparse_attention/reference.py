"""Block-sparse attention in plain jnp: the specification, the test oracle and the fallback.

Each query attends, with softmax, to exactly the keys inside its active blocks; keys past the sequence end never
count; a query row with no active block returns zeros. The computation runs one chunk of query rows at a time
(`lax.map`), so the f32 logits of one chunk, not the whole `seq x seq` map, bound the memory: at 119k tokens and 24
heads the default chunk keeps them near 1 GiB. Autodiff through it gives the reference gradients.
"""

import functools
import math

import jax
import jax.numpy as jnp
from jax import lax

# f32 logits per chunk (elements): 2**28 is 1 GiB.
_LOGITS_BUDGET = 1 << 28


def default_query_chunk(batch: int, seq_len: int, num_heads: int, block_q: int) -> int:
  """Largest multiple of block_q whose f32 logits `[batch, heads, chunk, seq]` fit the budget."""
  rows = _LOGITS_BUDGET // max(1, batch * num_heads * seq_len)
  blocks = max(1, rows // block_q)
  return min(blocks, math.ceil(seq_len / block_q)) * block_q


@functools.partial(jax.jit, static_argnames=("block_q", "block_kv", "sm_scale", "query_chunk"))
def block_sparse_attention_reference(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    block_mask: jax.Array,
    *,
    block_q: int = 128,
    block_kv: int = 128,
    sm_scale: float | None = None,
    query_chunk: int | None = None,
) -> jax.Array:
  """Masked attention on `[batch, seq, heads, head_dim]` inputs, computed in f32, returned in q's dtype.

  `block_mask` is bool `[batch or 1, heads, ceil(seq / block_q), ceil(seq / block_kv)]`. `query_chunk` (a multiple
  of block_q) trades memory for fewer sequential steps; by default it fills the logits budget.
  """
  batch, seq_len, num_heads, head_dim = q.shape
  scale = 1.0 / math.sqrt(head_dim) if sm_scale is None else sm_scale
  chunk = query_chunk or default_query_chunk(batch, seq_len, num_heads, block_q)
  num_chunks = math.ceil(seq_len / chunk)
  num_q_blocks = block_mask.shape[2]

  q_padded = jnp.pad(q, ((0, 0), (0, num_chunks * chunk - seq_len), (0, 0), (0, 0))).astype(jnp.float32)
  keys = k.astype(jnp.float32)
  values = v.astype(jnp.float32)
  mask = jnp.broadcast_to(block_mask.astype(jnp.bool_), (batch, num_heads, *block_mask.shape[2:]))
  key_block = jnp.arange(seq_len) // block_kv

  def one_chunk(chunk_index):
    start = chunk_index * chunk
    q_chunk = lax.dynamic_slice_in_dim(q_padded, start, chunk, axis=1)
    rows = jnp.minimum((start + jnp.arange(chunk)) // block_q, num_q_blocks - 1)
    token_mask = mask[:, :, rows, :][..., key_block]  # [batch, heads, chunk, seq]
    logits = jnp.einsum("bqhd,bkhd->bhqk", q_chunk, keys, precision=lax.Precision.HIGHEST) * scale
    logits = jnp.where(token_mask, logits, jnp.finfo(jnp.float32).min)
    row_max = jnp.max(logits, axis=-1, keepdims=True)
    weights = jnp.where(token_mask, jnp.exp(logits - row_max), 0.0)
    total = jnp.sum(weights, axis=-1)
    out = jnp.einsum("bhqk,bkhd->bqhd", weights, values, precision=lax.Precision.HIGHEST)
    return out / jnp.where(total > 0, total, 1.0).transpose(0, 2, 1)[..., None]

  out = lax.map(one_chunk, jnp.arange(num_chunks))  # [chunks, batch, chunk, heads, head_dim]
  out = out.transpose(1, 0, 2, 3, 4).reshape(batch, num_chunks * chunk, num_heads, head_dim)
  return out[:, :seq_len].astype(q.dtype)
