"""The SSL comparison numbers on hand-computed records."""

from __future__ import annotations

import math

import numpy as np
import pytest

from jaxgen.projects.instant import analysis

BINS = np.array([0.0, 0.5, 1.0])


def test_final_error_takes_the_last_evaluation():
    records = [{"step": 1, "loss": 2.0}, {"step": 5, analysis.ERROR_KEY: 0.4}, {"step": 9, analysis.ERROR_KEY: 0.25}]
    assert analysis.final_error(records) == 0.25
    with pytest.raises(ValueError, match="no evaluation"):
        analysis.final_error([{"step": 1, "loss": 2.0}])


def test_mean_std_is_the_sample_std():
    assert analysis.mean_std([1.0, 3.0]) == (2.0, math.sqrt(2.0))
    assert analysis.mean_std([4.0]) == (4.0, 0.0)


def test_quality_at_mask_rate_bins_by_quantity_and_skips_empty_batches():
    records = [
        {"step": 1, "mask_rate": 0.9, "pl_accuracy": 0.0},    # before after_step: ignored
        {"step": 10, "mask_rate": 0.2, "pl_accuracy": 0.6},
        {"step": 20, "mask_rate": 0.4, "pl_accuracy": 0.8},
        {"step": 30, "mask_rate": 0.7, "pl_accuracy": 0.9},
        {"step": 40, "mask_rate": 1.0, "pl_accuracy": 0.5},  # the right edge belongs to the last bin
        {"step": 50, "mask_rate": 0.0},                      # nothing accepted: no quality
    ]
    quality, counts = analysis.quality_at_mask_rate(records, BINS, after_step=5)
    np.testing.assert_allclose(quality, [0.7, 0.7])
    assert counts.tolist() == [2, 2]
    quality, counts = analysis.quality_at_mask_rate(records[1:3], BINS)
    assert counts.tolist() == [2, 0] and math.isnan(quality[1])


def test_late_mean_averages_training_records_after_the_step():
    records = [{"step": 10, "loss": 1, "mask_rate": 0.1}, {"step": 20, "loss": 1, "mask_rate": 0.4},
               {"step": 30, "loss": 1, "mask_rate": 0.6}, {"step": 30, "eval/pseudo_labels/mask_rate": 0.9}]
    assert analysis.late_mean(records, "mask_rate", from_step=10) == pytest.approx(0.5)
    assert math.isnan(analysis.late_mean(records, "pl_accuracy", from_step=0))


def test_seed_mean_curve_averages_shared_steps_then_smooths():
    run_a = [{"step": 10, "loss": 1, "mask_rate": 0.2}, {"step": 20, "loss": 1, "mask_rate": 0.4},
             {"step": 30, "loss": 1, "mask_rate": 0.6}, {"step": 30, analysis.ERROR_KEY: 0.1}]
    run_b = [{"step": 10, "loss": 1, "mask_rate": 0.4}, {"step": 20, "loss": 1, "mask_rate": 0.6}]
    curve = analysis.seed_mean_curve([run_a, run_b], "mask_rate")
    assert curve == [{"step": 10, "mask_rate": pytest.approx(0.3)}, {"step": 20, "mask_rate": pytest.approx(0.5)}]
    smooth = analysis.seed_mean_curve([run_a, run_b], "mask_rate", window=2)
    assert [p["mask_rate"] for p in smooth] == [pytest.approx(0.3), pytest.approx(0.4)]


def test_selection_accuracy_compares_rankings_at_equal_quantity():
    confidence = np.array([0.9, 0.8, 0.7, 0.6])
    correct = np.array([False, True, True, False])
    # thresholds lift the first example's bar: the margin ranking is 0.8-0.5, 0.7-0.5, 0.6-0.5, 0.9-0.85 -> 1, 2, 3, 0
    thresholds = np.array([0.85, 0.5, 0.5, 0.5])
    result = analysis.selection_accuracy(confidence, thresholds, correct, [0.5, 1.0])
    assert result[0.5] == (1.0, 0.5)
    assert result[1.0] == (0.5, 0.5)
    constant = analysis.selection_accuracy(confidence, np.full(4, 0.95), correct, [0.25, 0.5, 0.75])
    assert all(margin == conf for margin, conf in constant.values())
    with pytest.raises(ValueError, match="rates"):
        analysis.selection_accuracy(confidence, thresholds, correct, [0.0])
    with pytest.raises(ValueError, match="equal"):
        analysis.selection_accuracy(confidence, thresholds[:3], correct, [0.5])
