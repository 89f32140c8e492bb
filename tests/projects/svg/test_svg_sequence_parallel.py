"""The `jaxgen run` entry of the SVG recipes (`generate.run`) on a 2-device mesh with the sequence split (the
`*_sp.gin` recipes' path: weights sharded by the logical-axis rules, "ulysses" around dense attention and around
SVG) gives the latents of one device, for the tiny Wan saved by diffusers. A subprocess with 2 forced host devices."""

from __future__ import annotations

import subprocess
import sys

import pytest

from support.launch import REPO, env

SCRIPT = """
import json, sys
import jax, numpy as np
from jaxgen.core.mesh import MeshConfig
from jaxgen.projects.svg import DenseGate, generate
from jaxgen.projects.svg.sampling import FlowSchedule
from tests.projects.svg.wan_vs_reference_test import reference_model
from tests.support.numerics import rel_err

assert jax.device_count() == 2
root = sys.argv[1]
reference_model().save_pretrained(f"{root}/model")
rng = np.random.default_rng(0)
np.savez(f"{root}/prompt.npz", prompt_embeds=rng.normal(size=(1, 3, 16)).astype(np.float32),
         negative_prompt_embeds=rng.normal(size=(1, 3, 16)).astype(np.float32))
options = dict(model_dir=f"{root}/model", embeddings=f"{root}/prompt.npz", latent_shape=(2, 4, 6),
               schedule=FlowSchedule(num_steps=2, shift=3.0, guidance_scale=4.0), densities=(0.3,),
               svg_options={"block_q": 8, "block_kv": 8, "implementation": "interpret",
                            "gate": DenseGate(dense_step_fraction=0.5)}, dense_backend="dense", dtype="float32", seed=5)
generate.run(workdir=f"{root}/one", **options)
split = generate.run(workdir=f"{root}/two", mesh=MeshConfig(data=1, fsdp=2), sequence_axis="fsdp", **options)
for name in ("latents_dense.npy", "latents_svg_d0.3.npy"):
    error = rel_err(np.load(f"{root}/two/{name}"), np.load(f"{root}/one/{name}"))
    assert error < 1e-5, (name, error)
metrics = json.load(open(f"{root}/two/metrics.json"))
assert metrics["mesh"]["axes"]["fsdp"] == 2 and metrics["sequence_axis"] == "fsdp", metrics
print("ok", split.eval_results["generate"]["relative_l2_to_dense_d0.3"])
"""


@pytest.mark.slow  # torch + diffusers and two sampling runs in a subprocess: about a minute on 2 cores
def test_generate_with_the_sequence_split_over_two_devices_equals_one_device(tmp_path):
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path)], cwd=REPO, capture_output=True, text=True,
                          timeout=600, env=env(XLA_FLAGS="--xla_force_host_platform_device_count=2",
                                               JAX_PLATFORMS="cpu", PYTHONPATH=f"{REPO}{':'}{REPO / 'tests'}"))
    assert done.returncode == 0 and "ok" in done.stdout, done.stderr[-3000:]
