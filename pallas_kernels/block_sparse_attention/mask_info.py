"""Block mask -> per-row and per-column active-block lists, as runtime data.

The kernels never look at the boolean mask. They loop over short index lists instead, so a skipped block costs
nothing, not even a branch. Splash attention separates mask and mask-info the same way; here the info is computed
with jnp inside the caller's jit, which is why a new mask of the same shape reuses the compiled kernels.

Lists are sorted ascending. Two kernels rely on that order: the Mosaic GPU forward masks keys past the sequence end
only in the last key block, which ascending order places last in every row list; and the TPU kernel, whose grid
walks a fixed number of steps, repeats the last active index in the unused tail so those steps fetch nothing new.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp


class MaskInfo(NamedTuple):
  """Active-block lists of a block mask `[mask_batch, heads, num_q_blocks, num_kv_blocks]`.

  kv_indices: int32 `[mask_batch, heads, num_q_blocks, num_kv_blocks]`: for each query-block row, the active key
    blocks in ascending order, then the last active one repeated (0 for an empty row).
  kv_counts: int32 `[mask_batch, heads, num_q_blocks]`: active key blocks per row.
  q_indices: int32 `[mask_batch, heads, num_kv_blocks, num_q_blocks]`: the same per key-block column (backward).
  q_counts: int32 `[mask_batch, heads, num_kv_blocks]`.
  """

  kv_indices: jax.Array
  kv_counts: jax.Array
  q_indices: jax.Array
  q_counts: jax.Array


def _active_lists(mask: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Per row of the last axis: ascending positions of True entries, padded with the last one, and the count.

  A running count gives each active entry its slot in the list; one scatter writes them (inactive entries aim past
  the end and are dropped). On an H100 this is cheaper than sorting each row.
  """
  width = mask.shape[-1]
  rows = mask.reshape(-1, width)
  positions = jnp.arange(width, dtype=jnp.int32)
  slots = jnp.where(rows, jnp.cumsum(rows, axis=-1, dtype=jnp.int32) - 1, width)
  row_ids = jnp.arange(rows.shape[0], dtype=jnp.int32)[:, None]
  ordered = jnp.zeros(rows.shape, jnp.int32).at[row_ids, slots].set(
      jnp.broadcast_to(positions, rows.shape), mode="drop")
  counts = jnp.sum(rows, axis=-1, dtype=jnp.int32)
  last_active = jnp.take_along_axis(ordered, jnp.maximum(counts - 1, 0)[:, None], axis=-1)
  indices = jnp.where(positions < counts[:, None], ordered, last_active)
  return indices.reshape(mask.shape), counts.reshape(mask.shape[:-1])


def make_mask_info(block_mask: jax.Array) -> MaskInfo:
  """Builds the row lists (forward, dq) and column lists (dk, dv) of a bool block mask; jit-friendly."""
  block_mask = block_mask.astype(jnp.bool_)
  kv_indices, kv_counts = _active_lists(block_mask)
  q_indices, q_counts = _active_lists(jnp.swapaxes(block_mask, -1, -2))
  return MaskInfo(kv_indices, kv_counts, q_indices, q_counts)
