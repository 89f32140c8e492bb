"""Numbers behind the SSL comparisons: final error over seeds, and pseudo-label quantity against quality.

Comparing the accuracy of accepted pseudo-labels between two algorithms means little without the quantity: a
stricter threshold accepts fewer, easier examples and looks more accurate for free. `quality_at_mask_rate` bins a
run's training records by mask rate (its quantity-quality trajectory); `late_mean` gives both at the end of training.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

ERROR_KEY = "eval/classification/error"


def final_error(records: Sequence[Mapping[str, Any]]) -> float:
    """The error of the last evaluation in a run's records; a run that never evaluated raises ValueError."""
    errors = [r[ERROR_KEY] for r in records if ERROR_KEY in r]
    if not errors:
        raise ValueError("no evaluation record with the classification error in this run")
    return float(errors[-1])


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof = 1, the spread of seeds drawn from many possible ones); the std of a
    single value is reported as 0."""
    values = np.asarray(values, np.float64)
    return float(values.mean()), float(values.std(ddof=1)) if values.size > 1 else 0.0


def quality_at_mask_rate(records: Sequence[Mapping[str, Any]], bins: np.ndarray, *,
                         after_step: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(mean pl_accuracy, number of records) per mask-rate bin, over training records after `after_step`.

    Records without `pl_accuracy` (nothing accepted) are skipped. A bin with no records has NaN quality.
    """
    points = np.array([(r["mask_rate"], r["pl_accuracy"]) for r in records
                       if r.get("step", 0) > after_step and isinstance(r.get("pl_accuracy"), (int, float))
                       and isinstance(r.get("mask_rate"), (int, float))], np.float64).reshape(-1, 2)
    index = np.clip(np.digitize(points[:, 0], bins) - 1, 0, len(bins) - 2)
    counts = np.bincount(index, minlength=len(bins) - 1)
    sums = np.bincount(index, weights=points[:, 1], minlength=len(bins) - 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan), counts


def late_mean(records: Sequence[Mapping[str, Any]], key: str, from_step: int) -> float:
    """Mean of `key` over the training records after `from_step` (NaN when none has it): the end-of-training level
    of a noisy per-batch metric."""
    values = [r[key] for r in records if r.get("step", 0) > from_step and "loss" in r
              and isinstance(r.get(key), (int, float))]
    return float(np.mean(values)) if values else float("nan")


def selection_accuracy(confidence: np.ndarray, thresholds: np.ndarray, correct: np.ndarray,
                       rates: Sequence[float]) -> dict[float, tuple[float, float]]:
    """{rate: (accuracy of the top `rate` share ranked by `confidence − threshold`, ranked by `confidence`)}.

    One model, two selection rules at exactly the same quantity: the algorithm's own (instance- or class-dependent
    thresholds: accept the examples furthest above their threshold first) against a fixed cut-off (FixMatch: any
    constant threshold accepts the most confident first). With constant thresholds the two coincide.
    """
    confidence, thresholds = np.asarray(confidence, np.float64), np.asarray(thresholds, np.float64)
    correct = np.asarray(correct, bool)
    if not (confidence.shape == thresholds.shape == correct.shape) or confidence.ndim != 1 or not len(confidence):
        raise ValueError(f"need three equal non-empty 1-d arrays; got {confidence.shape}, {thresholds.shape}, "
                         f"{correct.shape}")
    by_margin = correct[np.argsort(-(confidence - thresholds), kind="stable")]
    by_confidence = correct[np.argsort(-confidence, kind="stable")]
    result = {}
    for rate in rates:
        if not 0.0 < rate <= 1.0:
            raise ValueError(f"rates must be in (0, 1]; got {rate}")
        count = max(1, int(round(rate * len(correct))))
        result[rate] = (float(by_margin[:count].mean()), float(by_confidence[:count].mean()))
    return result


def seed_mean_curve(runs: Sequence[Sequence[Mapping[str, Any]]], key: str, window: int = 1) -> list[dict]:
    """Records `{step, key}` averaged over runs at the steps every run logged, then a trailing running mean over
    `window` points (training records are per batch and noisy)."""
    per_run = [{r["step"]: r[key] for r in run if isinstance(r.get(key), (int, float)) and "loss" in r}
               for run in runs]
    steps = sorted(set.intersection(*(set(p) for p in per_run))) if per_run else []
    values = np.array([np.mean([p[s] for p in per_run]) for s in steps])
    if len(values) and window > 1:
        kernel = np.ones(window)
        values = np.convolve(values, kernel, "full")[:len(values)] / np.convolve(np.ones(len(values)), kernel,
                                                                                   "full")[:len(values)]
    return [{"step": s, key: float(v)} for s, v in zip(steps, values)]
