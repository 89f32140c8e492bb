"""FSDP training of a tiny DiT on 4 forced host devices equals one device: the parameters sharded over `fsdp` by the
logical-axis rules (`jaxgen.core.sharding.variable_shardings`, what the trainer calls), the blocks rematerialised as
the FSDP presets do (configs/diffusion/*_fsdp*.gin), the batch split as the trainer splits it, three SGD steps.

`tests/core/test_processes.py` runs the whole trainer on such meshes (an MLP); this one is about the DiT's own
annotations. To fit the test budget on 2 cores it compiles nothing it does not test: parameters come from numpy
(shapes from `eval_shape`; a jitted random init of even this DiT costs seconds of XLA compilation) and the loss is a
regression on fixed noisy inputs, timesteps and targets (the diffusion task's sampled noise would compile threefry).
A subprocess, because XLA's host device count is fixed when jax starts."""

from __future__ import annotations

import subprocess
import sys

import pytest

from support.launch import REPO, env

FSDP_DIT = """
import jax, jax.numpy as jnp, numpy as np, optax
from jaxgen.core import mesh as mesh_lib, sharding as sharding_lib
from jaxgen.nn.dit import DiT

assert jax.device_count() == 4
rng = np.random.default_rng(0)
batch = {"x": rng.normal(size=(8, 8, 8, 1)).astype(np.float32), "t": rng.integers(0, 1000, 8),
         "y": rng.integers(0, 10, 8), "target": rng.normal(size=(8, 8, 8, 1)).astype(np.float32)}
tx = optax.sgd(0.1)


def train(remat, mesh_config):
    model = DiT(num_classes=10, width=32, depth=2, num_heads=4, patch_size=4, in_channels=1, sample_size=8,
                remat=remat)
    mesh = mesh_lib.make_mesh(mesh_config)
    boxed = jax.eval_shape(model.init, jax.random.key(0), batch["x"], batch["t"], batch["y"])["params"]
    shardings = sharding_lib.variable_shardings(boxed, mesh)
    values = np.random.default_rng(1)
    params = jax.tree.map(lambda leaf, s: jax.device_put(values.normal(0, 0.1, leaf.shape).astype(np.float32), s),
                          jax.tree.map(lambda b: b.unbox() if hasattr(b, "unbox") else b, boxed,
                                       is_leaf=lambda b: hasattr(b, "unbox")), shardings)

    @jax.jit
    def step(params, opt_state, batch):
        def loss_fn(params):
            return jnp.mean((model.apply({"params": params}, batch["x"], batch["t"], batch["y"]) - batch["target"]) ** 2)

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        # the trainer's out_shardings: the next step's inputs keep their layout (no second compile)
        return jax.lax.with_sharding_constraint(optax.apply_updates(params, updates), shardings), opt_state, loss

    opt_state, losses = tx.init(params), []
    data = jax.device_put(batch, sharding_lib.batch_sharding(mesh))
    for _ in range(3):
        params, opt_state, loss = step(params, opt_state, data)
        losses.append(float(loss))
    return jax.device_get(params), losses, params


one, one_losses, _ = train(False, mesh_lib.MeshConfig(data=1, num_devices=1))
fsdp, fsdp_losses, sharded = train(True, mesh_lib.MeshConfig(data=1, fsdp=4))
np.testing.assert_allclose(fsdp_losses, one_losses, rtol=1e-5)
assert fsdp_losses[-1] < fsdp_losses[0]
jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), fsdp, one)
kernel = sharded["blocks"]["Dense_0"]["kernel"]  # [layers, embed, mlp]: "embed" -> fsdp
assert kernel.sharding.shard_shape(kernel.shape) == (2, 8, 128), kernel.sharding
print("ok")
"""


def test_fsdp_training_of_a_tiny_dit_on_four_devices_equals_one_device():
    done = subprocess.run([sys.executable, "-c", FSDP_DIT], cwd=REPO, capture_output=True, text=True, timeout=280,
                          env=env(XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu"))
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-3000:]


@pytest.mark.parametrize("recipe, model, remat", [("dit_xl2_fsdp_shape_classes32", "dit.DiT", False),
                                                  ("uvit_h2_fsdp_shape_classes32", "uvit.UViT", True)])
def test_fsdp_presets_parse_at_full_size_on_8_or_4_devices(recipe, model, remat):
    import gin

    from jaxgen.config import parse

    parse([f"configs/diffusion/{recipe}.gin"])
    assert gin.query_parameter(f"{model}.remat") is remat
    assert gin.query_parameter("mesh.MeshConfig.fsdp") == 8
    assert gin.query_parameter("%BATCH_SIZE") == 256
    parse([f"configs/diffusion/{recipe}.gin", "configs/common/mesh_4.gin"])
    assert (gin.query_parameter("mesh.MeshConfig.fsdp"), gin.query_parameter("mesh.MeshConfig.num_devices")) == (4, 4)
    gin.clear_config()
