"""Metric records: one JSON object per line in `metrics.jsonl`, mirrored to TensorBoard, plotted on demand.

Training records carry `step` and `loss` (plus the task's metrics, `learning_rate`, `steps_per_sec`); evaluation
records carry `step` and keys prefixed `eval/<evaluator>/`. A re-evaluation of a saved checkpoint (`jaxgen eval`)
adds a record marked `"source": "eval"`: it never replaces or passes for the one written during training, and
re-evaluations with different overrides (`jaxgen eval --gin.X=...`) are all kept, in the order they ran. Only
process 0 writes.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

METRICS_FILE = "metrics.jsonl"


def to_python(value: Any) -> Any:
    """Scalars from numpy/jax become Python numbers; non-finite floats stay representable as JSON (NaN, Infinity)."""
    if isinstance(value, (np.ndarray, np.generic)) or hasattr(value, "__array__"):
        array = np.asarray(value)
        if array.ndim == 0:
            return array.item()
        return array.tolist()
    return value


def read_records(workdir: str | Path) -> list[dict]:
    """All complete records of a run (a line cut short by a crash is skipped)."""
    path = Path(workdir) / METRICS_FILE
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def truncate_after(workdir: str | Path, step: int) -> None:
    """Moves records past `step` (from a run that died before its next checkpoint, or that was rewound with
    `--restore-step`) to `metrics.superseded.jsonl`; the resumed run writes them again."""
    records = read_records(workdir)
    dropped = [r for r in records if r.get("step", 0) > step]
    if dropped:
        with (Path(workdir) / "metrics.superseded.jsonl").open("a") as f:
            f.write("".join(json.dumps(r) + "\n" for r in dropped))
    _rewrite(workdir, [r for r in records if r.get("step", 0) <= step])


def _rewrite(workdir: str | Path, records: list[dict]) -> None:
    """metrics.jsonl holding exactly `records`; left untouched when it already does (an unfinished last line, cut
    short by a crash, counts as a difference)."""
    path = Path(workdir) / METRICS_FILE
    text = "".join(json.dumps(r) + "\n" for r in records)
    if not path.exists() or path.read_text() == text:
        return
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.replace(path)


class MetricWriter:
    """Appends records to metrics.jsonl (and TensorBoard); `source` marks every record (`"source": "eval"`).

    Files are opened at the first record, so a run with nothing left to do (a finished run started again) leaves
    its workdir exactly as it was.
    """

    def __init__(self, workdir: str | Path, *, enabled: bool = True, tensorboard: bool = True,
                 source: str | None = None):
        self.workdir = Path(workdir)
        self.enabled = enabled
        self.source = source
        self._tensorboard = tensorboard
        self._file = None
        self._tb = None

    def _open(self) -> None:
        self._file = (self.workdir / METRICS_FILE).open("a")
        if self._tensorboard:
            try:
                from tensorboardX import SummaryWriter
            except ImportError:
                logging.warning("tensorboardX is not installed: no TensorBoard event files for %s", self.workdir)
            else:
                self._tb = SummaryWriter(str(self.workdir / "tensorboard"))

    def write(self, step: int, values: Mapping[str, Any]) -> None:
        if not self.enabled:
            return
        if self._file is None:
            self._open()
        record = {"step": int(step), **{k: to_python(v) for k, v in values.items()}}
        if self.source is not None:
            record["source"] = self.source
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        if self._tb is not None:
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
                    self._tb.add_scalar(key, value, step)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        if self._tb is not None:
            self._tb.close()


def plot_curves(records: Iterable[Mapping[str, Any]], path: str | Path, keys: Iterable[str] | None = None) -> Path:
    """One panel per metric (loss first), training and eval curves against step; saved as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = list(records)
    numeric = sorted({k for r in records for k, v in r.items()
                      if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)})
    varying = {k for k in numeric if len({r[k] for r in records if k in r}) > 1}  # constant series are not curves
    wanted = [k for k in (keys or numeric) if k in varying and k != "steps_per_sec"]
    wanted.sort(key=lambda k: (k != "loss", k))
    cols = min(3, max(1, len(wanted)))
    rows = max(1, math.ceil(len(wanted) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(4.5 * cols, 3.2 * rows), squeeze=False)
    for ax, key in zip(axes.flat, wanted):
        points = [(r["step"], r[key]) for r in records if key in r]
        ax.plot(*zip(*points), marker="o" if len(points) < 30 else None, markersize=3)
        ax.set_title(key)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(wanted):]:
        ax.axis("off")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
