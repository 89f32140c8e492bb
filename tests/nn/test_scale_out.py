"""Scale-out of the shared layers on 4 forced host devices, against one device:
  - the "ulysses" sequence-parallel attention backend (`jaxgen.nn.sequence_parallel`) equals its inner backend for
    dense attention and for SVG (interpret-mode kernel, per-head profiling and layout inside), with text tokens
    before or after the video and for cross-attention to captions; bad head counts and a missing mesh are clear
    errors;
  - FSDP training of a tiny DiT equals one device: parameters split over `fsdp` by the logical-axis rules
    (`jaxgen.core.sharding.variable_shardings`, what the trainer calls), blocks rematerialised as the FSDP presets
    may, the batch split as the trainer splits it, three SGD steps (`tests/core/test_processes.py` runs the whole
    trainer on such meshes with an MLP; this is about the DiT's own annotations);
  - the FSDP recipes parse at full size on 8 devices and on 4, the sequence-parallel video recipes on 8.
Both 4-device checks run in one subprocess (XLA's host device count is fixed when jax starts, DESIGN.md), so jax is
imported once. To fit the suite's time budget on 2 cores they compile nothing they do not test: inputs and DiT
parameters come from numpy (a jitted random init of even a tiny scanned DiT costs seconds of XLA compilation), the
DiT loss is a regression on fixed noisy inputs (the diffusion task's sampled noise would compile threefry), and the
references run uncompiled where they can."""

from __future__ import annotations

import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

from jaxgen.nn.attention import attention
from support.launch import REPO, forced_devices

ULYSSES = """
import jax, jax.numpy as jnp, numpy as np, optax
from jaxgen.core import mesh as mesh_lib, sharding as sharding_lib
from jaxgen.nn.attention import AttentionContext, attention
from jaxgen.nn.dit import DiT
from jaxgen.projects.svg import VideoLayout

assert jax.device_count() == 4
mesh = mesh_lib.make_mesh(mesh_lib.MeshConfig(data=1, fsdp=4, tensor=1))


def qkv(seq, heads, seed=0):
    return list(np.random.default_rng(seed).normal(size=(3, 2, seq, heads, 8)).astype(np.float32))


def both(q, k, v, context, backend, **options):
    single = attention(q, k, v, backend=backend, context=context, **options)
    with jax.set_mesh(mesh):
        parallel = jax.jit(lambda q, k, v: attention(q, k, v, backend="ulysses", axis="fsdp", inner=backend,
                                                     context=context, **options))(q, k, v)
    return single, parallel


# dense, video only, then with 3 text tokens first (35 tokens: only the 32 video tokens are split)
for text in (0, 3):
    layout = VideoLayout(num_frames=4, frame_tokens=8, text_tokens=text, text_first=True)
    (out, _), (sp_out, _) = both(*qkv(layout.seq_len, 4), AttentionContext(video_layout=layout), "dense")
    np.testing.assert_allclose(sp_out, out, rtol=1e-5, atol=1e-6, err_msg=f"dense, text {text}")

# cross-attention (Wan's captions: 5 keys every device holds whole): no exchange, queries stay split
q, _, _ = qkv(32, 4)
_, k, v = qkv(5, 4, seed=2)
(out, _), (sp_out, _) = both(q, k, v, AttentionContext(), "dense")
np.testing.assert_allclose(sp_out, out, rtol=1e-5, atol=1e-6, err_msg="cross-attention")

# SVG with 5 text tokens last (HunyuanVideo's place), 8 heads: 2 per device; diagnostics come back whole
layout = VideoLayout(num_frames=4, frame_tokens=8, text_tokens=5, text_first=False)
context = AttentionContext(video_layout=layout, rng=jax.random.key(3))
(out, aux), (sp_out, sp_aux) = both(*qkv(layout.seq_len, 8, seed=1), context, "svg", density=0.5,
                                    num_sampled_rows=8, block_q=8, block_kv=8, implementation="interpret")
np.testing.assert_allclose(sp_out, out, rtol=1e-5, atol=1e-6, err_msg="svg")
assert sp_aux["head_is_temporal"].shape == (2, 8)
for name in ("head_is_temporal", "recall", "density"):
    np.testing.assert_allclose(sp_aux[name], aux[name], rtol=1e-6, err_msg=name)
assert float(aux["density"]) < 1.0  # the sparse path ran

try:
    with jax.set_mesh(mesh):
        attention(*qkv(32, 6), backend="ulysses", axis="fsdp")
    raise AssertionError("6 heads on 4 devices should fail")
except ValueError as error:
    assert "6 heads, not a multiple of 4" in str(error), error
print("ulysses ok")
"""

FSDP = """
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
print("fsdp ok")
"""


def test_on_four_devices_ulysses_attention_and_fsdp_training_equal_one_device():
    done = subprocess.run([sys.executable, "-c", ULYSSES + FSDP], cwd=REPO, capture_output=True, text=True,
                          timeout=280, env=forced_devices(4))
    assert done.returncode == 0 and done.stdout.split() == ["ulysses", "ok", "fsdp", "ok"], done.stderr[-3000:]


def test_ulysses_without_a_mesh_axis_is_a_clear_error():
    q = jnp.zeros((1, 8, 2, 4))
    with pytest.raises(ValueError, match="needs the option `axis`"):
        attention(q, q, q, backend="ulysses")
    with pytest.raises(ValueError, match="no mesh is set"):
        attention(q, q, q, backend="ulysses", axis="fsdp")
    with jax.set_mesh(jax.make_mesh((1,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))):
        with pytest.raises(ValueError, match=r"has axes \('data',\)"):
            attention(q, q, q, backend="ulysses", axis="fsdp")


@pytest.mark.parametrize("recipe, model, remat", [("dit_xl2_fsdp_shape_classes32", "dit.DiT", False),
                                                  ("uvit_h2_fsdp_shape_classes32", "uvit.UViT", True)])
def test_fsdp_recipes_parse_at_full_size_on_8_or_4_devices(recipe, model, remat):
    import gin

    from jaxgen.config import parse

    parse([f"configs/diffusion/{recipe}.gin"])
    assert gin.query_parameter(f"{model}.remat") is remat
    assert gin.query_parameter("mesh.MeshConfig.fsdp") == 8
    assert gin.query_parameter("%BATCH_SIZE") == 256
    parse([f"configs/diffusion/{recipe}.gin", "configs/common/mesh_4.gin"])
    assert (gin.query_parameter("mesh.MeshConfig.fsdp"), gin.query_parameter("mesh.MeshConfig.num_devices")) == (4, 4)
    gin.clear_config()


@pytest.mark.parametrize("recipe", ["wan_14b_720p_sp", "hunyuan_720p_sp"])
def test_sequence_parallel_video_recipes_parse(recipe):
    import gin

    from jaxgen.config import parse

    parse([f"configs/svg/{recipe}.gin"], ["MODEL_DIR='model'", "EMBEDDINGS='prompt.npz'"])
    assert gin.query_parameter("generate.run.sequence_axis") == "fsdp"
    assert gin.query_parameter("mesh.MeshConfig.fsdp") == 8
    gin.clear_config()
