"""Pictures of pseudo-labelling: quantity and quality through training, and the distribution of thresholds."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

CURVES = (("mask_rate", "mask rate (quantity)"), ("pl_accuracy", "accuracy of accepted pseudo-labels (quality)"),
          ("threshold_mean", "mean threshold"))


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def pseudo_label_curves(records: Iterable[Mapping[str, Any]] | Mapping[str, Iterable[Mapping[str, Any]]],
                        path: str | Path) -> Path:
    """Mask rate, accepted-label accuracy and mean threshold against step, one line per run.

    `records` is one run's metrics records, or `{run name: records}` to compare algorithms on shared axes.
    """
    runs = dict(records) if isinstance(records, Mapping) else {"": list(records)}
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(CURVES), figsize=(4.5 * len(CURVES), 3.2), squeeze=False)
    for ax, (key, title) in zip(axes[0], CURVES):
        for name, run in runs.items():
            points = [(r["step"], r[key]) for r in run if isinstance(r.get(key), (int, float))]
            if points:
                ax.plot(*zip(*points), label=name or None)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    if len(runs) > 1:
        axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def threshold_histogram(thresholds: Sequence[float], correct: Sequence[bool], path: str | Path) -> Path:
    """Histogram of per-example thresholds, split by whether the pseudo-label is right."""
    thresholds, correct = np.asarray(thresholds), np.asarray(correct, bool)
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(4.5, 3.2))
    bins = np.linspace(0.0, 1.0, 41)
    ax.hist([thresholds[correct], thresholds[~correct]], bins=bins, stacked=True, label=["right", "wrong"],
            color=["tab:green", "tab:red"])
    ax.set_xlabel("threshold τ(x)")
    ax.set_ylabel("examples")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
