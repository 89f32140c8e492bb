"""Stopping and dying (jaxgen.core.preemption). In-process, with a fake step: a signal saves the step it came in,
never past a non-finite one. In subprocesses: kill -9, Ctrl-C and SIGTERM to a single process and SIGTERM to both
processes of a 2-process run each leave a checkpoint that the same command resumes from, matching an uninterrupted
run bit for bit; when one of two processes is killed or frozen, the other names it in one message and exits."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from jaxgen.core import metrics as metrics_lib
from jaxgen.core.monitor import NonFiniteLossError, StepMonitor, run_steps
from jaxgen.core.preemption import Stopped
from support.launch import REPO, env, free_port, records, slow_config

# `jaxgen` with Ctrl-C restored: a shell's background job (so maybe this test run) ignores SIGINT, and an ignored
# signal stays ignored in every child.
JAXGEN_CTRL_C = [sys.executable, "-c", "import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
                 "from jaxgen.cli import main; sys.exit(main())"]
STOPPED = re.compile(r"stopped by (SIG\w+) at step (\d+); checkpoint (\S+) saved; resume with: jaxgen run ")


class FakeCheckpointer:
    directory = Path("/nowhere")

    def __init__(self):
        self.saved = []

    def save(self, step, state, data_state):
        self.saved.append(step)

    def step_dir(self, step):
        return self.directory / str(step)

    def wait(self):
        pass

    def latest_step(self):
        return self.saved[-1] if self.saved else None


def loop_signalled_at(step: int, number: int, loss_at_signal: float = 1.0, train_steps: int = 10):
    """run_steps over a host-only fake step that sends this process `number` during step `step`."""
    def fake_step(state, batch):
        state += 1
        if state == step:
            os.kill(os.getpid(), number)
        return state, {"loss": np.float32(loss_at_signal if state == step else 1.0), "grad_norm": np.float32(1.0)}

    checkpointer = FakeCheckpointer()
    monitor = StepMonitor(metrics_lib.MetricWriter("/nowhere", enabled=False), checkpointer, log_every=1,
                          last_step=train_steps, max_in_flight=4)
    run = lambda: run_steps(fake_step, 0, iter(range(train_steps)), start_step=0, train_steps=train_steps,
                            checkpoint_every=4, eval_every=0, monitor=monitor, checkpointer=checkpointer,
                            data_state=lambda s: {}, evaluate=lambda state, s: {})
    return run, checkpointer


@pytest.fixture
def ctrl_c_enabled():
    """Ctrl-C as in a terminal, even when this test run was started with SIGINT ignored (see JAXGEN_CTRL_C)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


@pytest.mark.parametrize("number", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_saves_the_step_it_arrived_in_and_stops(number, ctrl_c_enabled):
    run, checkpointer = loop_signalled_at(6, number)
    with pytest.raises(Stopped) as stopped:
        run()
    assert (stopped.value.step, stopped.value.exit_code) == (6, 128 + number)
    assert checkpointer.saved == [4, 6]
    assert signal.getsignal(number) in (signal.SIG_DFL, signal.default_int_handler)  # handlers restored


def test_a_signal_at_a_non_finite_step_saves_nothing_from_it():
    run, checkpointer = loop_signalled_at(6, signal.SIGTERM, loss_at_signal=float("nan"))
    with pytest.raises(NonFiniteLossError, match="at step 6"):
        run()
    assert checkpointer.saved == [4]


def test_the_resume_command_is_the_command_line_without_restore_step():
    from jaxgen.cli import _resume_command

    argv = ["run", "a b.gin", "--workdir", "w", "--restore-step", "20", "--gin.SEED=1", "--restore-step=30"]
    assert _resume_command(argv) == "jaxgen run 'a b.gin' --workdir w --gin.SEED=1"


def start(config: Path, workdir: Path, processes: int = 1, *extra) -> list[subprocess.Popen]:
    flags = [[]] if processes == 1 else [
        ["--coordinator", f"localhost:{port}", "--num-processes", processes, "--process-id", i]
        for port in [free_port()] for i in range(processes)]
    return [subprocess.Popen([*JAXGEN_CTRL_C, *map(str, ["run", config, "--workdir", workdir, "--no-progress", *f,
                                                          *extra])],
                             cwd=REPO, env=env(JAX_PLATFORMS="cpu"), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True)
            for f in flags]


def finish(processes: list[subprocess.Popen], timeout: float = 240) -> list[tuple[int, str]]:
    outputs = [p.communicate(timeout=timeout)[0] for p in processes]
    return [(p.returncode, out) for p, out in zip(processes, outputs)]


def wait_for_checkpoint(workdir: Path, step: int, processes: list[subprocess.Popen]) -> None:
    deadline = time.time() + 180
    while not (workdir / "checkpoints" / str(step) / "jaxgen_manifest.json").exists():
        assert all(p.poll() is None for p in processes), "the run ended before it could be signalled"
        assert time.time() < deadline, f"no checkpoint at step {step} within 180 s"
        time.sleep(0.05)


def signal_and_finish(processes, number: int, workdir: Path, after: int = 10) -> tuple[list[tuple[int, str]], float]:
    """Sends `number` to every process once the checkpoint of step `after` exists (the loop is running)."""
    wait_for_checkpoint(workdir, after, processes)
    sent = time.time()
    for p in processes:
        p.send_signal(number)
    return finish(processes, timeout=60), time.time() - sent


@pytest.mark.slow  # about a minute each on 2 cores: python -m pytest -m slow
def test_sigterm_to_both_processes_saves_one_agreed_step_and_the_rerun_matches(tmp_path):
    # The notice takes 1-2 s to go round (jax's notifier polls once a second): at 0.05 s a step the stop lands near
    # step 40, and a notice twice as slow still stops well before the end.
    config = slow_config(tmp_path, train_steps=100, checkpoint_every=10, seconds=0.05)
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    assert [rc for rc, _ in finish(start(config, straight, processes=2))] == [0, 0]

    results, seconds = signal_and_finish(start(config, stopped, processes=2), signal.SIGTERM, stopped)
    assert seconds < 60
    for rc, output in results:
        assert rc == 143, output[-3000:]
    stops = {STOPPED.search(output).groups() for _, output in results}
    assert len(stops) == 1, stops  # the same step on both
    (name, step, checkpoint), = stops
    assert name == "SIGTERM" and 10 < int(step) < 100, step
    assert Path(checkpoint) == stopped / "checkpoints" / step and (Path(checkpoint) / "jaxgen_manifest.json").exists()
    assert max(r["step"] for r in records(stopped)) == int(step)

    assert [rc for rc, _ in finish(start(config, stopped, processes=2))] == [0, 0]
    assert records(stopped) == records(straight)
    assert not (stopped / "metrics.superseded.jsonl").exists()  # it resumed from the stop step: no step was redone


@pytest.mark.slow  # about a minute each on 2 cores: python -m pytest -m slow
def test_kill_9_ctrl_c_and_sigterm_then_the_same_command_resumes_bit_for_bit(tmp_path):
    config = slow_config(tmp_path, train_steps=80, checkpoint_every=10, seconds=0.05)
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    assert [rc for rc, _ in finish(start(config, straight))] == [0]

    [killed] = start(config, stopped)
    wait_for_checkpoint(stopped, 10, [killed])
    killed.kill()
    killed.communicate()
    last = max(r["step"] for r in records(stopped))  # records are flushed as written: up to the step it died at

    for number, code in ((signal.SIGINT, 130), (signal.SIGTERM, 143)):
        periodic = (last // 10 + 1) * 10  # a checkpoint this run writes itself: its loop is running
        [(rc, output)], seconds = signal_and_finish(start(config, stopped), number, stopped, after=periodic)
        assert rc == code and seconds < 60, output[-3000:]
        name, step, checkpoint = STOPPED.search(output).groups()
        assert name == number.name and Path(checkpoint) == stopped / "checkpoints" / step
        assert (Path(checkpoint) / "jaxgen_manifest.json").exists() and "Traceback" not in output
        assert periodic <= int(step) < 80 and max(r["step"] for r in records(stopped)) == int(step)
        last = int(step)

    assert [rc for rc, _ in finish(start(config, stopped))] == [0]
    assert records(stopped) == records(straight)


@pytest.mark.parametrize("how", ["killed", "frozen"])
def test_a_lost_process_is_named_in_one_message_by_the_survivor(tmp_path, how):
    """Killed: the survivor's next collective fails at once. Frozen (SIGSTOP, like a hung host): nothing fails, the
    survivor's beacon sees process 1 stand still for half the heartbeat timeout."""
    config = slow_config(tmp_path, train_steps=400, checkpoint_every=10, seconds=0.05)
    workdir = tmp_path / how
    survivor, lost = start(config, workdir, 2, "--heartbeat-timeout", 10)
    try:
        wait_for_checkpoint(workdir, 10, [survivor, lost])
        signalled = time.time()
        lost.send_signal(signal.SIGKILL if how == "killed" else signal.SIGSTOP)
        [(rc, output)] = finish([survivor], timeout=60)
    finally:
        lost.kill()
        lost.communicate()
    assert time.time() - signalled < 60
    assert rc == 75, output[-3000:]
    message = [line for line in output.splitlines() if line.startswith("jaxgen:")]
    assert len(message) == 1 and "process 1 of 2 was lost" in message[0], output[-3000:]
    last = re.search(r"Last intact checkpoint: (\S+);", message[0]).group(1)
    assert Path(last).parent == workdir / "checkpoints" and int(Path(last).name) >= 10
    assert (Path(last) / "jaxgen_manifest.json").exists()
    assert "resume with: jaxgen run" in message[0]
    assert "Traceback" not in output and "stack trace" not in output
