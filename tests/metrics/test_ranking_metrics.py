"""HR@k, NDCG@k and MRR against values worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest

from jaxgen.metrics import ranking

# Row 0: target item 2 scores 0.7, beaten by item 0 (0.9) only -> rank 1.
# Row 1: target item 0 scores 0.1, beaten by items 1, 2, 3 -> rank 3.
# Row 2: target item 3 ties with item 1 at 0.5 and is beaten by nothing else -> rank 1 (ties are pessimistic).
SCORES = np.array([[0.9, 0.2, 0.7, 0.1], [0.1, 0.4, 0.3, 0.2], [0.0, 0.5, 0.2, 0.5]], np.float32)
TARGET = np.array([2, 0, 3])


def test_rank_hit_rate_ndcg_and_mrr_by_hand():
    np.testing.assert_array_equal(ranking.target_rank(SCORES, TARGET), [1, 3, 1])
    np.testing.assert_array_equal(ranking.hit_rate_at_k(SCORES, TARGET, 1), [0, 0, 0])
    np.testing.assert_array_equal(ranking.hit_rate_at_k(SCORES, TARGET, 2), [1, 0, 1])
    np.testing.assert_allclose(ranking.ndcg_at_k(SCORES, TARGET, 2), [1 / np.log2(3), 0, 1 / np.log2(3)], rtol=1e-6)
    np.testing.assert_allclose(ranking.ndcg_at_k(SCORES, TARGET, 4), [1 / np.log2(3), 1 / np.log2(5), 1 / np.log2(3)],
                               rtol=1e-6)
    np.testing.assert_allclose(ranking.mrr(SCORES, TARGET), [1 / 2, 1 / 4, 1 / 2], rtol=1e-6)


def test_excluded_items_leave_the_ranking_and_constant_scores_rank_last():
    exclude = np.zeros_like(SCORES, bool)
    exclude[0, 0] = exclude[1, 1] = True
    exclude[1, 0] = True  # the target itself: never excluded
    np.testing.assert_array_equal(ranking.target_rank(SCORES, TARGET, exclude), [0, 2, 1])
    np.testing.assert_array_equal(ranking.target_rank(np.ones((2, 5)), np.array([0, 4])), [4, 4])


def test_shape_errors_name_the_shapes():
    with pytest.raises(ValueError, match=r"\(3, 4\) and \(2,\)"):
        ranking.target_rank(SCORES, TARGET[:2])
    with pytest.raises(ValueError, match=r"exclude has shape \(3, 3\)"):
        ranking.target_rank(SCORES, TARGET, np.zeros((3, 3), bool))
