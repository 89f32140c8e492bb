"""HR@k, NDCG@k and MRR@k against values worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest

from jaxgen.metrics import ranking

# Row 0: target item 2 scores 0.7, beaten by item 0 (0.9) only -> rank 1.
# Row 1: target item 0 scores 0.1, beaten by items 1, 2, 3 -> rank 3.
# Row 2: target item 3 ties with item 1 at 0.5 and is beaten by nothing else -> rank 1 (ties are pessimistic).
SCORES = np.array([[0.9, 0.2, 0.7, 0.1], [0.1, 0.4, 0.3, 0.2], [0.0, 0.5, 0.2, 0.5]], np.float32)
TARGETS = np.array([2, 0, 3])


def test_rank_hit_rate_ndcg_and_mrr_by_hand():
    np.testing.assert_array_equal(ranking.target_rank(SCORES, TARGETS), [1, 3, 1])
    np.testing.assert_array_equal(ranking.hit_rate(SCORES, TARGETS, 1), [0, 0, 0])
    np.testing.assert_array_equal(ranking.hit_rate(SCORES, TARGETS, 2), [1, 0, 1])
    np.testing.assert_allclose(ranking.ndcg(SCORES, TARGETS, 2), [1 / np.log2(3), 0, 1 / np.log2(3)], rtol=1e-6)
    np.testing.assert_allclose(ranking.ndcg(SCORES, TARGETS, 4), [1 / np.log2(3), 1 / np.log2(5), 1 / np.log2(3)],
                               rtol=1e-6)
    np.testing.assert_allclose(ranking.mrr(SCORES, TARGETS, 4), [1 / 2, 1 / 4, 1 / 2], rtol=1e-6)
    np.testing.assert_allclose(ranking.mrr(SCORES, TARGETS, 2), [1 / 2, 0, 1 / 2], rtol=1e-6)  # rank 3 is cut off
    np.testing.assert_allclose(ranking.mrr(SCORES, TARGETS, None), [1 / 2, 1 / 4, 1 / 2], rtol=1e-6)


def test_metrics_at_every_cut_off_from_one_rank():
    rank = ranking.target_rank(SCORES, TARGETS)
    table = ranking.metrics_at(rank, ks=(1, 2))
    assert sorted(table) == ["hr@1", "hr@2", "mrr@1", "mrr@2", "ndcg@1", "ndcg@2"]
    np.testing.assert_array_equal(table["hr@2"], [1, 0, 1])
    np.testing.assert_array_equal(table["mrr@1"], [0, 0, 0])
    np.testing.assert_allclose(table["ndcg@2"], ranking.ndcg(SCORES, TARGETS, 2))


def test_excluded_items_leave_the_ranking_and_constant_or_nan_scores_rank_last():
    exclude = np.zeros_like(SCORES, bool)
    exclude[0, 0] = exclude[1, 1] = True
    exclude[1, 0] = True  # the target itself: never excluded
    np.testing.assert_array_equal(ranking.target_rank(SCORES, TARGETS, exclude), [0, 2, 1])
    np.testing.assert_array_equal(ranking.target_rank(np.ones((2, 5)), np.array([0, 4])), [4, 4])
    nan_target = SCORES.copy()
    nan_target[0, 2] = np.nan
    np.testing.assert_array_equal(ranking.target_rank(nan_target, TARGETS), [3, 3, 1])


def test_seen_items_marks_the_history_but_not_padding():
    history = np.array([[0, 0, 3, 1], [2, 2, 4, 3]])
    seen = ranking.seen_items(history, 6)
    assert seen.tolist() == [[False, True, False, True, False, False], [False, False, True, True, True, False]]
    # the user's history out of the ranking: row 0's target 1 was seen, but the target is never excluded
    scores = np.array([[0.0, 0.2, 0.1, 0.9, 0.8, 0.0], [0.0, 0.1, 0.9, 0.8, 0.7, 0.2]])
    np.testing.assert_array_equal(ranking.target_rank(scores, np.array([1, 5]), seen), [1, 0])
    np.testing.assert_array_equal(ranking.target_rank(scores, np.array([1, 5])), [2, 3])


def test_shape_errors_name_the_shapes():
    with pytest.raises(ValueError, match=r"\(3, 4\) and \(2,\)"):
        ranking.target_rank(SCORES, TARGETS[:2])
    with pytest.raises(ValueError, match=r"exclude has shape \(3, 3\)"):
        ranking.target_rank(SCORES, TARGETS, np.zeros((3, 3), bool))
