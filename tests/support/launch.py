"""Starting `jaxgen` in subprocesses: the environment, the command, free ports, a run slowed down enough to be
signalled or killed part-way, and its metric records without the timing keys."""

from __future__ import annotations

import json
import os
import socket
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TIMING_KEYS = {"steps_per_sec"}


def env(**extra):
    environment = dict(os.environ)
    environment["PYTHONPATH"] = os.pathsep.join([str(REPO / "tests"), environment.get("PYTHONPATH", "")])
    environment.update(extra)
    return environment


def forced_devices(count: int, **extra):
    """`env()` for a subprocess on `count` forced host (CPU) devices, with XLA's CPU code optimisation turned down:
    the tiny programs of the multi-device tests run for milliseconds but compile for seconds, and these flags cut
    their CPU time by about a third (measured on the sequence-parallel and FSDP tests)."""
    flags = (f"--xla_force_host_platform_device_count={count} --xla_backend_optimization_level=0 "
             "--xla_llvm_disable_expensive_passes=true")
    return env(XLA_FLAGS=flags, JAX_PLATFORMS="cpu", **extra)


def records(workdir: Path) -> list[dict]:
    lines = (workdir / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING_KEYS} for line in lines]


def jaxgen(*args):
    return [sys.executable, "-m", "jaxgen.cli", *map(str, args)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def slow_config(tmp_path: Path, train_steps: int = 60, checkpoint_every: int = 10, seconds: float = 0.05) -> Path:
    """quickstart_smoke with every batch delayed by `seconds` (support.slow), a record every step, eval at the end."""
    path = tmp_path / "slow.gin"
    path.write_text(
        "from __gin__ import dynamic_registration\nfrom jaxgen import data\nfrom support import slow\n"
        f"include '{REPO}/configs/quickstart_smoke.gin'\n"
        f"TRAIN_STEPS = {train_steps}\nCHECKPOINT_EVERY = {checkpoint_every}\nEVAL_EVERY = 0\nLOG_EVERY = 1\n"
        "train/data.Loader.transform = @slow.slow_down\n"
        f"slow.slow_down.seconds = {seconds}\n"
    )
    return path
