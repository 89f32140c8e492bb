"""Sequence-parallel video sampling on forced host devices, in subprocesses (DESIGN.md):
  - the `jaxgen run` entry of the SVG recipes (`generate.run`) on a 2-device mesh with the sequence split (the
    `*_sp.gin` recipes' path: weights sharded by the logical-axis rules, "ulysses" around dense attention and around
    SVG) gives the latents of one device, for the tiny Wan saved by diffusers;
  - HunyuanVideo's blocks keep the video tokens split on 4 devices, with the weights split over the same axis as the
    recipe splits them and padded text: in the compiled program the only collectives in the blocks that carry video
    tokens are Ulysses' four all-to-alls per block (no gather of the sequence, which the single-stream blocks did
    over the joint video + text sequence), and the output is one device's."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from support.launch import REPO, env, forced_devices

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


HUNYUAN = """
import re
import flax.linen as nn, jax, numpy as np
from jaxgen.core import mesh as mesh_lib, sharding as sharding_lib
from jaxgen.projects.svg import hunyuan
from tests.support.numerics import rel_err

mesh = mesh_lib.make_mesh(mesh_lib.MeshConfig(data=1, fsdp=4, tensor=1))
module = hunyuan.named("tiny", num_heads=4)  # 4 heads: one per device
rng = np.random.default_rng(0)
latents = rng.normal(size=(1, 2, 8, 8, 4)).astype(np.float32)  # 32 video tokens, 8 a device
inputs = (latents, np.array([500.0], np.float32), rng.normal(size=(1, 5, 12)).astype(np.float32))
kwargs = dict(pooled_projections=rng.normal(size=(1, 8)).astype(np.float32), guidance=np.array([3500.0], np.float32),
              encoder_attention_mask=np.array([[1, 1, 1, 0, 0]]), text_padding=2)
boxed = jax.eval_shape(lambda *a: module.init(jax.random.key(0), *a, **kwargs), *inputs)
params = jax.tree.map(lambda s: rng.normal(0, 0.3, s.shape).astype(np.float32), nn.meta.unbox(boxed))
one = jax.jit(lambda p, *a: module.apply(p, *a, **kwargs))(params, *inputs)
split = module.clone(attention_backend="ulysses", attention_options={"axis": "fsdp", "inner": "dense"})
with jax.set_mesh(mesh):
    params = jax.device_put(params, sharding_lib.variable_shardings(boxed, mesh))
    compiled = jax.jit(lambda p, *a: split.apply(p, *a, **kwargs)).lower(params, *inputs).compile()
    out = compiled(params, *inputs)
assert rel_err(out, one) < 1e-5, rel_err(out, one)
print(compiled.as_text())
"""
COLLECTIVE = re.compile(r"= (.+?) (all-to-all|all-gather|all-reduce|reduce-scatter|collective-permute)(?:-start)?\(")


def test_hunyuan_blocks_keep_the_video_split_on_four_devices():
    done = subprocess.run([sys.executable, "-c", HUNYUAN], cwd=REPO, capture_output=True, text=True, timeout=280,
                          env=forced_devices(4))
    assert done.returncode == 0, done.stderr[-3000:]
    ulysses, resharding, moves_video = 0, [], []
    for line in done.stdout.splitlines():
        match = COLLECTIVE.search(line)
        if not match or "_blocks/" not in line:
            continue
        if match.group(2) == "all-to-all":  # Ulysses' own, or one XLA added to reshard
            ulysses += "shard_map/all_to_all" in line
            resharding += [] if "shard_map/all_to_all" in line else [line[:200]]
            continue
        # [batch, tokens, ...] results with more tokens than a device's 8 video tokens: the sequence gathered or summed
        shapes = [[int(d) for d in dims.split(",") if d] for dims in re.findall(r"\w+\[([\d,]*)\]", match.group(1))]
        moves_video += [line[:200] for dims in shapes if len(dims) >= 3 and dims[0] == 1 and dims[1] > 8]
    assert moves_video == [], moves_video
    assert resharding == [], resharding
    assert ulysses == 8, ulysses  # q, k, v in and the output back, in each kind of block
