"""mask -> active-block lists: order, padding, counts, and that it traces once per mask shape."""

import jax
import jax.numpy as jnp
import numpy as np

from pallas_kernels.block_sparse_attention import make_mask_info


def _expected_lists(mask_rows):
  indices, counts = [], []
  for row in mask_rows:
    active = np.flatnonzero(row)
    counts.append(len(active))
    pad = active[-1] if len(active) else 0
    indices.append(np.concatenate([active, np.full(len(row) - len(active), pad)]))
  return np.array(indices), np.array(counts)


def test_row_and_column_lists_match_numpy():
  mask = np.random.default_rng(0).random((2, 3, 5, 7)) < 0.4
  mask[0, 0, 2] = False  # an empty row
  mask[1, 2, :, 4] = False  # an empty column
  info = make_mask_info(jnp.asarray(mask))
  rows, row_counts = _expected_lists(mask.reshape(-1, 7))
  cols, col_counts = _expected_lists(np.swapaxes(mask, -1, -2).reshape(-1, 5))
  np.testing.assert_array_equal(np.asarray(info.kv_indices).reshape(-1, 7), rows)
  np.testing.assert_array_equal(np.asarray(info.kv_counts).reshape(-1), row_counts)
  np.testing.assert_array_equal(np.asarray(info.q_indices).reshape(-1, 5), cols)
  np.testing.assert_array_equal(np.asarray(info.q_counts).reshape(-1), col_counts)
  assert info.kv_indices.dtype == jnp.int32 and info.q_counts.dtype == jnp.int32


def test_full_and_empty_masks():
  full = make_mask_info(jnp.ones((1, 1, 3, 4), bool))
  np.testing.assert_array_equal(full.kv_indices[0, 0], np.tile(np.arange(4), (3, 1)))
  np.testing.assert_array_equal(full.q_counts[0, 0], [3, 3, 3, 3])
  empty = make_mask_info(jnp.zeros((1, 1, 3, 4), bool))
  np.testing.assert_array_equal(empty.kv_counts, 0)
  np.testing.assert_array_equal(empty.kv_indices, 0)


def test_new_mask_of_same_shape_does_not_retrace():
  traces = []

  @jax.jit
  def info_of(mask):
    traces.append(1)
    return make_mask_info(mask)

  rng = np.random.default_rng(1)
  first = info_of(jnp.asarray(rng.random((1, 2, 4, 4)) < 0.5))
  second = info_of(jnp.asarray(rng.random((1, 2, 4, 4)) < 0.5))
  assert len(traces) == 1
  assert not np.array_equal(first.kv_counts, second.kv_counts) or not np.array_equal(first.kv_indices,
                                                                                      second.kv_indices)
