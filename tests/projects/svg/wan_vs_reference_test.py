"""The Flax port of Wan2.1 (`jaxgen.projects.svg.wan`) against diffusers' `WanTransformer3DModel` on random weights,
through `from_diffusers` (float32, CPU); the named configs' sizes from shapes alone."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from tests.support.numerics import rel_err
from tests.support.parity import require

torch = require("torch")
diffusers = require("diffusers")

from jaxgen.core import mesh as mesh_lib  # noqa: E402
from jaxgen.projects.svg import from_diffusers, ports, wan  # noqa: E402


REPO = Path(__file__).resolve().parents[3]


def reference_model(seed: int = 0):
    """A tiny diffusers Wan with every tensor random (norm weights and tables included), so a mapping that swapped
    or dropped one could not pass by their default values."""
    torch.manual_seed(seed)
    model = diffusers.WanTransformer3DModel(patch_size=(1, 2, 2), **wan.CONFIGS["tiny"]).eval()
    with torch.no_grad():
        for param in model.parameters():
            param.copy_(torch.randn_like(param) * 0.3)
    return model


def test_matches_diffusers_through_a_sharded_checkpoint(tmp_path):
    model = reference_model()
    model.save_pretrained(tmp_path, max_shard_size="20KB")
    assert (tmp_path / "diffusion_pytorch_model.safetensors.index.json").is_file()
    module, params = from_diffusers(tmp_path)
    assert isinstance(module, wan.WanTransformer)

    rng = np.random.default_rng(0)
    latents = rng.normal(size=(2, 3, 6, 8, 4)).astype(np.float32)  # [batch, frames, height, width, channels]
    text = rng.normal(size=(2, 5, 16)).astype(np.float32)
    timestep = np.array([999.0, 137.5], np.float32)
    with torch.no_grad():
        expected = model(torch.from_numpy(latents.transpose(0, 4, 1, 2, 3)), torch.from_numpy(timestep),
                         torch.from_numpy(text)).sample.numpy().transpose(0, 2, 3, 4, 1)
    out = jax.jit(module.apply)(params, jnp.asarray(latents), jnp.asarray(timestep), jnp.asarray(text))
    assert out.shape == latents.shape == expected.shape
    assert rel_err(out, expected) <= 1e-5, rel_err(out, expected)  # the bar is 1e-4; measured 2.9e-7

    # The same shards straight into bfloat16 on a mesh (one CPU device here: the code path, not the split).
    mesh = mesh_lib.make_mesh(mesh_lib.MeshConfig(data=1, fsdp=-1))
    module16, params16 = from_diffusers(tmp_path, dtype=jnp.bfloat16, mesh=mesh)
    assert module16.dtype == jnp.bfloat16
    for leaf, leaf16 in zip(jax.tree.leaves(params), jax.tree.leaves(params16)):
        assert leaf16.dtype == jnp.bfloat16 and leaf16.sharding.mesh.shape == mesh.shape
        np.testing.assert_array_equal(np.asarray(leaf16), np.asarray(leaf).astype(leaf16.dtype))


FOUR_DEVICE_LOAD = """
import sys
import jax, numpy as np
from jaxgen.core import mesh as mesh_lib
from jaxgen.projects.svg import from_diffusers
assert jax.device_count() == 4
mesh = mesh_lib.make_mesh(mesh_lib.MeshConfig(data=1, fsdp=4))
_, whole = from_diffusers(sys.argv[1])
_, sharded = from_diffusers(sys.argv[1], mesh=mesh)
split = 0
for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(whole), jax.tree.leaves(sharded)):
    assert len(b.sharding.device_set) == 4, path
    np.testing.assert_array_equal(np.asarray(b), np.asarray(a), err_msg=str(path))
    split += len({shard.index for shard in b.addressable_shards}) == 4
assert split >= 10, split  # the embed axis (24 = 4 x 6) is split over fsdp, not just replicated
"""


def test_a_sharded_load_on_four_devices_equals_the_unsharded_one(tmp_path):
    """In a subprocess: XLA's host device count is fixed when jax starts."""
    reference_model(seed=1).save_pretrained(tmp_path)
    environment = {**os.environ, "XLA_FLAGS": f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=4", "JAX_PLATFORMS": "cpu",
                   "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", FOUR_DEVICE_LOAD, str(tmp_path)], cwd=REPO, env=environment,
                          capture_output=True, text=True, timeout=280)
    assert done.returncode == 0, done.stderr[-3000:]


def test_named_configs_have_the_released_sizes():
    """Wan2.1-T2V-1.3B and -14B, counted from shapes with jax.eval_shape (nothing allocated)."""
    assert ports.num_params(wan.named("1.3B"), wan.PORT) == 1_418_996_800
    assert ports.num_params(wan.named("14B"), wan.PORT) == 14_288_491_584


def test_generate_samples_dense_and_svg_from_a_saved_model(tmp_path):
    """The `jaxgen run` entry of the wan_* recipes on the tiny model. Dense: two guided Euler steps at the shifted
    times, checked against direct model calls. SVG, from the same noise, with the official warm-up (the first of the
    two steps dense): files and diagnostics in metrics.json."""
    from jaxgen.projects.svg import DenseGate, generate
    from jaxgen.projects.svg.sampling import FlowSchedule

    reference_model().save_pretrained(tmp_path / "model")
    rng = np.random.default_rng(0)
    text, negative = (rng.normal(size=(1, 3, 16)).astype(np.float32) for _ in range(2))
    np.savez(tmp_path / "prompt.npz", prompt_embeds=text, negative_prompt_embeds=negative)
    result = generate.run(workdir=tmp_path / "run", model_dir=str(tmp_path / "model"),
                          embeddings=str(tmp_path / "prompt.npz"), latent_shape=(2, 4, 6),
                          schedule=FlowSchedule(num_steps=2, shift=3.0, guidance_scale=4.0), densities=(0.3,),
                          svg_options={"block_q": 8, "block_kv": 8, "implementation": "reference",
                                       "gate": DenseGate(dense_step_fraction=0.5)},
                          dense_backend="dense", dtype="float32", seed=5)

    module, params = from_diffusers(tmp_path / "model")
    velocity = jax.jit(module.apply)
    by_hand = jax.random.normal(jax.random.key(5), (1, 2, 4, 6, 4))  # the driver's noise for seed 5
    for t, t_next in [(1.0, 0.75), (0.75, 0.0)]:  # shift 3: t = 3 s / (1 + 2 s) at s = 1, 0.5, 0
        cond, uncond = (velocity(params, by_hand, jnp.array([1000.0 * t]), c) for c in (text, negative))
        by_hand = by_hand + (t_next - t) * (uncond + 4.0 * (cond - uncond))
    assert rel_err(np.load(tmp_path / "run" / "latents_dense.npy"), by_hand) < 1e-5

    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())["d0.3"]
    assert metrics["sparse_call_fraction"] == 0.5  # step 0 of 2 dense, in both layers
    assert metrics["computed_density_sparse_calls"] < 1.0 and 0.0 < metrics["recall"] < 1.0
    assert len(metrics["recall_by_layer"]) == 2
    assert 0.0 < result.eval_results["generate"]["relative_l2_to_dense_d0.3"] < 1.0
    latents = np.load(tmp_path / "run" / "latents_svg_d0.3.npy")
    assert latents.shape == (1, 2, 4, 6, 4) and np.isfinite(latents).all()
