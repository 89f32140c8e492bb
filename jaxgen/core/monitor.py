"""The training loop's view of finished steps: a bounded number in flight, each checked, some recorded.

Dispatching steps without waiting keeps the accelerator busy, but unbounded it starves XLA's collectives on many
forced CPU devices (DESIGN.md) and delays the NaN check. So a loop hands each step's metrics to `StepMonitor.push`,
which waits only for the oldest step beyond `max_in_flight`, checks it for NaN/inf, and writes a record every
`log_every` steps. Before a checkpoint or an evaluation the loop calls `drain()`: nothing is saved past a bad step.
`run_steps` is that loop, shared by the trainer and the forked SSL trainer (they differ in the step, not the loop);
it also stops cleanly on SIGTERM / Ctrl-C and reports a lost process (see `jaxgen.core.preemption`).
"""

from __future__ import annotations

import collections
import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import jax

from jaxgen.core import metrics as metrics_lib
from jaxgen.core import preemption


class NonFiniteLossError(FloatingPointError):
    """The loss (or gradient norm) became NaN or infinite; the message names the step and the last good checkpoint."""


class StepMonitor:
    """`guarded` metrics must be finite; other metrics that are NaN are undefined at that step (e.g. the accuracy of
    zero accepted pseudo-labels) and are left out of its record."""

    def __init__(self, writer: metrics_lib.MetricWriter, checkpointer, *, log_every: int, last_step: int,
                 max_in_flight: int, progress_bar=None, guarded: Sequence[str] = ("loss", "grad_norm"),
                 postfix_keys: Sequence[str] = ("loss",)):
        self.writer, self.checkpointer = writer, checkpointer
        self.log_every, self.last_step, self.max_in_flight = log_every, last_step, max_in_flight
        self.progress_bar, self.guarded, self.postfix_keys = progress_bar, tuple(guarded), tuple(postfix_keys)
        self.last_record: dict | None = None
        self._pending: collections.deque = collections.deque()
        self._interval_start, self._interval_steps = time.perf_counter(), 0

    def push(self, step: int, device_metrics: Mapping[str, Any]) -> None:
        self._pending.append((step, device_metrics))
        self.drain(keep=self.max_in_flight)

    def drain(self, keep: int = 0) -> None:
        """Waits for all but `keep` in-flight steps, oldest first."""
        while len(self._pending) > keep:
            step, device_metrics = self._pending.popleft()
            values = {k: metrics_lib.to_python(v) for k, v in jax.device_get(device_metrics).items()}
            self._check(step, values)
            self._interval_steps += 1
            if step % self.log_every == 0 or step == self.last_step:
                self._record(step, {k: v for k, v in values.items()
                                    if k in self.guarded or not (isinstance(v, float) and math.isnan(v))})

    def _check(self, step: int, values: dict) -> None:
        bad = [k for k in self.guarded if not math.isfinite(values[k])]
        if not bad:
            return
        self.checkpointer.wait()
        latest = self.checkpointer.latest_step()
        where = self.checkpointer.step_dir(latest) if latest is not None else "none was saved"
        raise NonFiniteLossError(
            f"Non-finite {' and '.join(bad)} ({', '.join(f'{k}={values[k]}' for k in bad)}) at step {step}; "
            f"the run stopped before saving anything from that step. Last good checkpoint: {where}."
        )

    def _record(self, step: int, values: dict) -> None:
        now = time.perf_counter()
        values["steps_per_sec"] = self._interval_steps / max(now - self._interval_start, 1e-9)
        self._interval_start, self._interval_steps = now, 0
        self.writer.write(step, values)
        self.last_record = {"step": step, **values}
        if self.progress_bar is not None:
            self.progress_bar.set_postfix({k: f"{values[k]:.4g}" for k in self.postfix_keys if k in values},
                                          refresh=False)


def run_steps(jitted_step: Callable, state, batches: Iterator, *, start_step: int, train_steps: int,
              checkpoint_every: int, eval_every: int, monitor: StepMonitor, checkpointer,
              data_state: Callable[[int], Any], evaluate: Callable[[Any, int], dict]) -> tuple[Any, dict]:
    """Steps `start_step + 1 … train_steps`: each one's metrics go to `monitor` (and its progress bar advances); a
    checkpoint (train state + `data_state(step)`) every `checkpoint_every` steps and an evaluation every `eval_every`
    (0: only at the end) follow a `drain()`, and both happen at the last step. Returns (final state, the last
    evaluation's results, empty when none ran).

    SIGTERM or Ctrl-C (`jaxgen.core.preemption`): the step every process agrees on is drained and checkpointed, then
    `preemption.Stopped` is raised (the caller's clean-up waits for that checkpoint). A failure while another process
    has died ends the process with one message instead (`preemption.exit_if_process_lost`)."""
    eval_results: dict = {}
    with preemption.StopRequests(start_step) as stops:
        preemption.watch_for_lost_processes(checkpointer.directory)
        try:
            for step in range(start_step + 1, train_steps + 1):
                state, device_metrics = jitted_step(state, next(batches))
                monitor.push(step, device_metrics)
                if monitor.progress_bar is not None:
                    monitor.progress_bar.update(1)
                stop = stops.requested(step) and step < train_steps  # the last step finishes the run anyway
                if step % checkpoint_every == 0 or step == train_steps or stop:
                    monitor.drain()
                    checkpointer.save(step, state, data_state(step))
                if stop:
                    raise preemption.Stopped(step, checkpointer.step_dir(step), stops.signal_number)
                if (eval_every and step % eval_every == 0) or step == train_steps:
                    monitor.drain()
                    eval_results = evaluate(state, step)
            monitor.drain()
        except (preemption.Stopped, NonFiniteLossError):
            raise
        except Exception as e:
            preemption.exit_if_process_lost(checkpointer.directory, e)
            raise
        finally:
            preemption.watch_for_lost_processes(None)
    return state, eval_results
