"""What a run shows the user while it trains: a progress bar on a terminal, plain lines everywhere else.

A tqdm bar redraws itself with carriage returns; in a log file (`jaxgen run ... > log 2>&1`, `nohup` on a TPU pod,
a scheduler's output file) that is one endless line of redraws. So the bar is drawn only when stderr is a terminal;
otherwise training records (written every `log_every` steps, the same records as metrics.jsonl) are echoed as plain
lines, `step 300/1500  loss 0.0794  12.3 steps/s`: the first, the last, and at most one per
`MIN_SECONDS_BETWEEN_LINES` between them (a fast CPU run writes a record every few milliseconds). `progress=False`
(`--no-progress`) shows neither. Plain tqdm, not `tqdm.auto`: a notebook is not a terminal, so it gets the lines
(and no widget warning).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any, TextIO

from tqdm import tqdm

MIN_SECONDS_BETWEEN_LINES = 5.0


def is_terminal(stream: TextIO) -> bool:
    return bool(getattr(stream, "isatty", None) and stream.isatty())


class EchoingWriter:
    """A metrics writer that also prints records it writes as lines (the training loop's view of progress when no
    bar can be drawn): the first, the last, and at most one per `min_seconds` between. Everything else is the
    wrapped writer's."""

    def __init__(self, writer, total: int, keys: Sequence[str], stream: TextIO,
                 min_seconds: float = MIN_SECONDS_BETWEEN_LINES):
        self._writer, self._total, self._keys, self._stream = writer, total, tuple(keys), stream
        self._min_seconds, self._last_line = min_seconds, None

    def write(self, step: int, values: Mapping[str, Any]) -> None:
        self._writer.write(step, values)
        now = time.monotonic()
        if step != self._total and self._last_line is not None and now - self._last_line < self._min_seconds:
            return
        self._last_line = now
        shown = [f"{k} {values[k]:.4g}" for k in self._keys if isinstance(values.get(k), (int, float))]
        if "steps_per_sec" in values:
            shown.append(f"{values['steps_per_sec']:.1f} steps/s")
        print(f"step {step}/{self._total}  " + "  ".join(shown), file=self._stream, flush=True)

    def __getattr__(self, name):
        return getattr(self._writer, name)


def training_display(writer, *, total: int, initial: int, desc: str, enabled: bool, keys: Sequence[str] = ("loss",),
                     stream: TextIO | None = None):
    """(progress bar, writer for the step monitor): a live bar on a terminal, or a disabled bar and a writer that
    echoes training records as lines; with `enabled=False` (no progress wanted, or not process 0), neither."""
    stream = stream or sys.stderr
    terminal = enabled and is_terminal(stream)
    bar = tqdm(total=total, initial=initial, disable=not terminal, unit="step", dynamic_ncols=True, desc=desc,
               file=stream)
    if enabled and not terminal:
        writer = EchoingWriter(writer, total, keys, stream)
    return bar, writer


def announce_start(start_step: int, origin: str, *, stream: TextIO | None = None) -> None:
    """The first line a resumed (or warm-started) run prints: where it continues from. Nothing for a fresh run."""
    if origin == "scratch":
        return
    if start_step:
        print(f"resuming from step {start_step} (from {origin})", file=stream or sys.stderr, flush=True)
    else:
        print(f"starting from step 0 with {origin}", file=stream or sys.stderr, flush=True)


class CountProgress:
    """Progress through a counted piece of work outside the training loop (sampling images for an evaluator): a tqdm
    bar on a terminal; elsewhere plain lines, `sampling 400/1200 img  97.6 img/s`, at most one per `min_seconds`
    and always one when done. Disabled (`enabled=False`: `--no-progress`, or not process 0), it prints nothing."""

    def __init__(self, total: int, *, desc: str, unit: str, enabled: bool = True, stream: TextIO | None = None,
                 min_seconds: float = MIN_SECONDS_BETWEEN_LINES):
        self._stream = stream or sys.stderr
        self._total, self._desc, self._unit, self._min_seconds = total, desc, unit, min_seconds
        self._lines = enabled and not is_terminal(self._stream)
        self._bar = tqdm(total=total, desc=desc, unit=unit, dynamic_ncols=True, file=self._stream,
                         disable=not enabled or self._lines)
        self._done, self._start = 0, time.monotonic()
        self._last_line = self._start

    def update(self, count: int) -> None:
        self._bar.update(count)
        self._done += count
        now = time.monotonic()
        if self._lines and (self._done >= self._total or now - self._last_line >= self._min_seconds):
            self._last_line = now
            rate = self._done / max(now - self._start, 1e-9)
            print(f"{self._desc} {self._done}/{self._total} {self._unit}  {rate:.1f} {self._unit}/s",
                  file=self._stream, flush=True)

    def close(self) -> None:
        self._bar.close()

    def __enter__(self) -> "CountProgress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
