"""Stopping and dying (jaxgen.core.preemption), in subprocesses: kill -9, Ctrl-C and SIGTERM to a single process and
SIGTERM to both processes of a 2-process run each leave a checkpoint that the same command resumes from, matching an
uninterrupted run bit for bit; after kill -9 of one of two processes the other says so in one message and exits."""

from __future__ import annotations

import re
import signal
import subprocess
import time
from pathlib import Path

from support.launch import REPO, env, free_port, jaxgen, records, slow_config

STOPPED = re.compile(r"stopped by (SIG\w+) at step (\d+); checkpoint (\S+) saved; resume with: jaxgen run ")


def start(config: Path, workdir: Path, processes: int = 1) -> list[subprocess.Popen]:
    flags = [[]] if processes == 1 else [
        ["--coordinator", f"localhost:{port}", "--num-processes", processes, "--process-id", i]
        for port in [free_port()] for i in range(processes)]
    return [subprocess.Popen(jaxgen("run", config, "--workdir", workdir, "--no-progress", *f), cwd=REPO,
                             env=env(JAX_PLATFORMS="cpu"), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             # a shell's background job ignores SIGINT, and so would its children: undo that here
                             preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
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


def test_sigterm_to_both_processes_saves_one_agreed_step_and_the_rerun_matches(tmp_path):
    config = slow_config(tmp_path, train_steps=60, checkpoint_every=10, seconds=0.1)
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    assert [rc for rc, _ in finish(start(config, straight, processes=2))] == [0, 0]

    results, seconds = signal_and_finish(start(config, stopped, processes=2), signal.SIGTERM, stopped)
    assert seconds < 60
    for rc, output in results:
        assert rc == 143, output[-3000:]
    stops = {STOPPED.search(output).groups() for _, output in results}
    assert len(stops) == 1, stops  # the same step on both
    (name, step, checkpoint), = stops
    assert name == "SIGTERM" and 10 < int(step) < 60
    assert Path(checkpoint) == stopped / "checkpoints" / step and (Path(checkpoint) / "jaxgen_manifest.json").exists()
    assert max(r["step"] for r in records(stopped)) == int(step)

    assert [rc for rc, _ in finish(start(config, stopped, processes=2))] == [0, 0]
    assert records(stopped) == records(straight)


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


def test_a_lost_process_is_named_in_one_message_by_the_survivor(tmp_path):
    config = slow_config(tmp_path, train_steps=400, checkpoint_every=10, seconds=0.05)
    workdir = tmp_path / "lost"
    survivor, lost = start(config, workdir, processes=2)
    wait_for_checkpoint(workdir, 10, [survivor, lost])
    killed = time.time()
    lost.kill()
    lost.wait()
    [(rc, output)] = finish([survivor], timeout=60)
    assert time.time() - killed < 60
    assert rc == 75, output[-3000:]
    message = [line for line in output.splitlines() if line.startswith("jaxgen:")]
    assert len(message) == 1 and "process 1 of 2 was lost" in message[0], output[-3000:]
    last = re.search(r"Last intact checkpoint: (\S+);", message[0]).group(1)
    assert Path(last).parent == workdir / "checkpoints" and int(Path(last).name) >= 10
    assert "resume with: jaxgen run" in message[0]
    assert "Traceback" not in output and "stack trace" not in output
