"""What needs separate processes: a 4-device CPU mesh (data, fsdp, tensor) against 1 device, and a 2-process
jax.distributed run on localhost that checkpoints and resumes (kill -9, SIGTERM and Ctrl-C: test_preemption.py).

Each case runs in a subprocess: forced CPU devices and collectives can abort a whole process (DESIGN.md)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from support.launch import REPO, env, free_port, jaxgen, records


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
    flags = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={devices}"
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
