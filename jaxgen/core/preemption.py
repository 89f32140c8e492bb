"""Stopping a run on purpose (SIGTERM, Ctrl-C) and after losing a process, always at a checkpoint one can resume from.

Schedulers and preemptible TPU VMs send SIGTERM some time before they kill; a user presses Ctrl-C. Either way
`run_steps` (jaxgen.core.monitor) asks `StopRequests.requested(step)` after every step. When it says yes, the loop
drains the steps in flight (the NaN guard still checks each one: nothing past a bad step is saved), writes a
checkpoint at that step, waits for it, and raises `Stopped`; `jaxgen run` prints one line naming the checkpoint and
the command that resumes from it, and exits with 143 (SIGTERM) or 130 (Ctrl-C). The rerun continues bit for bit.

In a multi-process run every process must save the same step. `jax.distributed.initialize` installs jax's
preemption notifier, which catches SIGTERM on any process and tells the others through the coordination service;
`jax.experimental.multihost_utils.reached_preemption_sync_point` then agrees on the first step no process has passed
yet, counting steps from the run's start (orbax's CheckpointManager would also call it, with absolute steps and
from its finalize thread; `jaxgen.core.checkpoint` turns that off). Ctrl-C there is turned into a SIGTERM to the
process itself, so it takes the same path. A single process
without jax.distributed catches both signals with a Python handler. A second Ctrl-C stops at once, without saving.
Before the loop starts a signal has its usual effect (nothing new to save yet); one during the last step lets the
run finish normally.

A process that dies (kill -9, a lost host) makes the survivors' next collective fail. Before anything waits on the
dead process (orbax's barriers would hang until jax's heartbeat timeout aborts the process with a C++ stack),
`exit_if_process_lost` asks `jaxgen.core.distributed` which processes stopped beating, prints one message (which
process, the last intact checkpoint, the command that resumes) and exits with `EXIT_PROCESS_LOST` (75). A survivor
that is blocked instead of failing gets the same message from `watch_for_lost_processes`. What jax still aborts
from C++ (process 0 lost; a loss outside the loop) is listed in `jaxgen.core.distributed`.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from pathlib import Path

import jax
from jax.experimental import multihost_utils

from jaxgen.core import distributed
from jaxgen.core.checkpoint import MANIFEST_NAME, write_manifest

EXIT_PROCESS_LOST = 75  # EX_TEMPFAIL: a temporary failure; rerunning the same command resumes

_resume_command: str | None = None


def set_resume_command(command: str) -> None:
    """The command the messages tell the user to run to resume (`jaxgen run` sets its own command line)."""
    global _resume_command
    _resume_command = command


def resume_advice() -> str:
    if _resume_command is None:
        return "rerun the same command" + (" on every process" if jax.process_count() > 1 else "") + " to resume"
    return f"resume with: {_resume_command}" + (" (every process reruns its own command)"
                                                if jax.process_count() > 1 else "")


def last_checkpoint(directory: str | Path) -> Path | None:
    """The latest complete `<directory>/<step>/`: orbax writes into a temporary folder and gives it the step's name
    only once every process has finished writing (the manifest may still be missing if the run died just then)."""
    directory = Path(directory)
    if not directory.is_dir():
        return None
    steps = [int(p.name) for p in directory.iterdir() if p.name.isdigit()]
    return directory / str(max(steps)) if steps else None


class Stopped(Exception):
    """The run stopped on a signal after writing (and waiting for) a checkpoint at `step`."""

    def __init__(self, step: int, checkpoint: Path, signal_number: int):
        self.step, self.checkpoint, self.signal_number = step, Path(checkpoint), signal_number
        # An attribute, not only str(self): gin appends "In call to configurable ..." to the message of errors
        # raised inside configurables.
        self.message = (f"stopped by {signal.Signals(signal_number).name} at step {step}; checkpoint {checkpoint} "
                        f"saved; {resume_advice()}")
        super().__init__(self.message)

    @property
    def exit_code(self) -> int:
        return 128 + self.signal_number  # the shell's convention: 143 for SIGTERM, 130 for Ctrl-C


class StopRequests:
    """Signal handling for the training loop; use as a context manager around it and ask `requested(step)` after
    every step (in a multi-process run every process must ask at every step, starting from the same step)."""

    def __init__(self, start_step: int):
        self.start_step = start_step
        self.signal_number: int | None = None
        self._synced = False
        self._previous: dict[int, object] = {}

    def __enter__(self) -> StopRequests:
        if jax.process_count() > 1:
            try:  # also registers this process with the sync protocol before its first step
                multihost_utils.reached_preemption_sync_point(0)
                self._synced = True
            except RuntimeError as e:  # jax_enable_preemption_service is off
                print(f"jaxgen: SIGTERM will not save a checkpoint: {e}", file=sys.stderr)
            self._install(signal.SIGINT, self._forward_ctrl_c)
        else:
            self._install(signal.SIGINT, self._note)
            self._install(signal.SIGTERM, self._note)
        return self

    def __exit__(self, *exc) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)
        self._previous.clear()

    def requested(self, step: int) -> bool:
        if self._synced:
            # The protocol counts calls from the first one above; counting from the run's start keeps that count
            # the same on every process and meaningful even when the notice came before the first step.
            if multihost_utils.reached_preemption_sync_point(step - self.start_step):
                self.signal_number = self.signal_number or signal.SIGTERM
                return True
            return False
        return self.signal_number is not None

    def _install(self, number: int, handler) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # Python signal handlers belong to the main thread; a run in another keeps the defaults
        if signal.getsignal(number) is signal.SIG_IGN:
            return  # ignored on purpose (e.g. SIGINT in a shell's background job): leave it so
        self._previous[number] = signal.signal(number, handler)

    def _note(self, number, frame) -> None:
        self.signal_number = number
        signal.signal(signal.SIGINT, signal.default_int_handler)  # a second Ctrl-C stops at once
        again = " (Ctrl-C again: stop without saving)" if number == signal.SIGINT else ""
        print(f"\njaxgen: {signal.Signals(number).name} received: saving a checkpoint at the next step, then "
              f"stopping{again}", file=sys.stderr, flush=True)

    def _forward_ctrl_c(self, number, frame) -> None:
        self._note(number, frame)
        os.kill(os.getpid(), signal.SIGTERM)  # jax's preemption notifier tells every process


def exit_if_process_lost(checkpoint_dir: str | Path, error: BaseException) -> None:
    """In a multi-process run, if another process has died, says so in one message and exits the process at once
    (waiting on the dead process would end in jax's heartbeat-timeout abort). Returns when all processes live."""
    lost = distributed.lost_processes()
    if lost:
        message = str(error).splitlines()[0][:200] if str(error) else "no message"
        _exit_lost(lost, f"{type(error).__name__}: {message}", checkpoint_dir)


def watch_for_lost_processes(checkpoint_dir: str | Path | None) -> None:
    """While the loop runs (None: no longer), a process that stops beating is reported and this one exits, even when
    nothing here fails (a hung host; a collective that never times out)."""
    distributed.watch_for_lost_processes(None if checkpoint_dir is None else lambda lost, seconds: _exit_lost(
        lost, f"no sign of life for {seconds:.0f} s", checkpoint_dir))


_exiting = threading.Lock()


def _exit_lost(lost: list[int], why: str, checkpoint_dir: str | Path) -> None:
    if not _exiting.acquire(blocking=False):
        threading.Event().wait()  # the beacon's watch and a failed collective found it together: one message
    checkpoint = last_checkpoint(checkpoint_dir)
    if checkpoint is not None and jax.process_index() == 0 and not (checkpoint / MANIFEST_NAME).exists():
        try:  # finalised but not yet listed (the post-finalisation callback dies with this process): list it now
            write_manifest(checkpoint)
        except OSError:
            pass  # the next run restores it unverified, with a warning
    print(f"jaxgen: process {', '.join(map(str, lost))} of {jax.process_count()} was lost ({why}). "
          + (f"Last intact checkpoint: {checkpoint}; " if checkpoint else "No checkpoint was saved yet; ")
          + resume_advice() + ".", file=sys.stderr, flush=True)
    sys.stdout.flush()
    os._exit(EXIT_PROCESS_LOST)
