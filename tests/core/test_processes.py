"""What needs separate processes: kill -9 and resume with the same command, a 4-device CPU mesh (data, fsdp,
tensor) against 1 device, and a 2-process jax.distributed run on localhost that checkpoints and resumes.

Each case runs in a subprocess: forced CPU devices and collectives can abort a whole process (DESIGN.md)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
TIMING_KEYS = {"steps_per_sec"}


def env(**extra):
    environment = dict(os.environ)
    environment["PYTHONPATH"] = os.pathsep.join([str(REPO / "tests"), environment.get("PYTHONPATH", "")])
    environment.update(extra)
    return environment


def records(workdir: Path) -> list[dict]:
    lines = (workdir / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING_KEYS} for line in lines]


def jaxgen(*args, **kwargs):
    return [sys.executable, "-m", "jaxgen.cli", *map(str, args)]


def slow_config(tmp_path: Path) -> Path:
    path = tmp_path / "slow.gin"
    path.write_text(
        "from __gin__ import dynamic_registration\nfrom jaxgen import data\nfrom support import slow\n"
        f"include '{REPO}/configs/quickstart_smoke.gin'\n"
        "TRAIN_STEPS = 60\nCHECKPOINT_EVERY = 10\nEVAL_EVERY = 0\nLOG_EVERY = 1\n"
        "train/data.Loader.transform = @slow.slow_down\n"
    )
    return path


def test_kill_dash_9_then_the_same_command_resumes_bit_for_bit(tmp_path):
    config = slow_config(tmp_path)
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    subprocess.run(jaxgen("run", config, "--workdir", straight, "--no-progress"), env=env(), check=True,
                   capture_output=True, cwd=REPO)

    command = jaxgen("run", config, "--workdir", killed, "--no-progress")
    process = subprocess.Popen(command, env=env(), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (killed / "checkpoints" / "20" / "jaxgen_manifest.json").exists():
        assert process.poll() is None, "the run ended before it could be killed"
        assert time.time() < deadline, "no checkpoint at step 20 within 120 s"
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    died_at = max(r["step"] for r in records(killed))
    assert 20 <= died_at < 60

    subprocess.run(command, env=env(), check=True, capture_output=True, cwd=REPO)
    assert records(killed) == records(straight)


MESH_SCRIPT = """
import json, sys
import jax
from jaxgen import train
from jaxgen.core.mesh import MeshConfig
from jaxgen.core.optim import OptimizerConfig
from jaxgen.data import Loader
from jaxgen.projects.quickstart.model import MLPClassifier
from jaxgen.projects.quickstart.task import ClassifierTask

out = {}
for name, mesh in json.loads(sys.argv[2]).items():
    result = train.run(task=ClassifierTask(MLPClassifier(hidden=(32, 32))), workdir=f"{sys.argv[1]}/{name}",
                       train_data=Loader("digits", batch_size=16, seed=1), train_steps=10, log_every=1,
                       eval_data=Loader("digits", batch_size=40, split="test", shuffle=False),
                       eval_every=0, checkpoint_every=10, optimizer=OptimizerConfig(learning_rate=1e-2),
                       mesh=MeshConfig(**mesh), progress=False, async_checkpointing=False)
    kernel = result.state.params["Dense_0"]["kernel"]
    out[name] = {"spec": list(kernel.sharding.spec), "devices": jax.device_count()}
print(json.dumps(out))
"""


def run_meshes(workdir: Path, meshes: dict, devices: int) -> dict:
    flags = f"--xla_force_host_platform_device_count={devices}"
    done = subprocess.run([sys.executable, "-c", MESH_SCRIPT, str(workdir), json.dumps(meshes)], cwd=REPO,
                          env=env(XLA_FLAGS=flags, JAX_PLATFORMS="cpu"), capture_output=True, text=True, timeout=280)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_four_device_meshes_match_one_device(tmp_path):
    run_meshes(tmp_path, {"single": {"data": 1}}, devices=1)
    meshes = {"dp": {"data": 4}, "fsdp": {"data": 2, "fsdp": 2}, "tensor": {"data": 1, "fsdp": 2, "tensor": 2}}
    layouts = run_meshes(tmp_path, meshes, devices=4)
    assert layouts["fsdp"]["spec"] == ["fsdp", None]
    assert layouts["tensor"]["spec"] == ["fsdp", "tensor"]
    assert layouts["dp"]["spec"] == [None, None]
    reference = [r for r in records(tmp_path / "single") if "loss" in r]
    for name in meshes:
        sharded = [r for r in records(tmp_path / name) if "loss" in r]
        assert [r["step"] for r in sharded] == [r["step"] for r in reference]
        for key in ("loss", "grad_norm", "accuracy"):
            np.testing.assert_allclose([r[key] for r in sharded], [r[key] for r in reference], rtol=2e-5,
                                       atol=1e-6, err_msg=f"{name}: {key}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def run_two_processes(config: Path, workdir: Path, *bindings: str) -> None:
    port = free_port()
    processes = [
        subprocess.Popen(jaxgen("run", config, "--workdir", workdir, "--no-progress", "--coordinator",
                                f"localhost:{port}", "--num-processes", 2, "--process-id", i, *bindings),
                         cwd=REPO, env=env(JAX_PLATFORMS="cpu"), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         text=True)
        for i in range(2)
    ]
    outputs = [p.communicate(timeout=240)[0] for p in processes]
    for p, output in zip(processes, outputs):
        assert p.returncode == 0, output[-3000:]


def test_two_processes_train_checkpoint_and_resume(tmp_path):
    config = REPO / "configs" / "quickstart_smoke.gin"
    workdir = tmp_path / "two"
    run_two_processes(config, workdir, "--gin.TRAIN_STEPS=4", "--gin.EVAL_EVERY=0", "--gin.CHECKPOINT_EVERY=2")
    assert sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()) == [2, 4]
    run_two_processes(config, workdir, "--gin.TRAIN_STEPS=8", "--gin.EVAL_EVERY=0", "--gin.CHECKPOINT_EVERY=2",
                      "--allow-config-change")  # training on to step 8 is a change of config
    assert (workdir / "checkpoints" / "8" / "jaxgen_manifest.json").exists()
    info = json.loads((workdir / "run_info.json").read_text())
    assert info["mesh"]["processes"] == 2 and info["devices"]["count"] == 2

    single = tmp_path / "one"
    subprocess.run(jaxgen("run", config, "--workdir", single, "--no-progress", "--gin.TRAIN_STEPS=8",
                          "--gin.EVAL_EVERY=0", "--gin.CHECKPOINT_EVERY=2"), cwd=REPO, env=env(), check=True,
                   capture_output=True)
    two, one = ([r for r in records(w) if "loss" in r] for w in (workdir, single))
    assert [r["step"] for r in two] == [r["step"] for r in one] == list(range(1, 9))
    np.testing.assert_allclose([r["loss"] for r in two], [r["loss"] for r in one], rtol=1e-5)
