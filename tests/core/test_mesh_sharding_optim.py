"""Unit tests of the small pieces: mesh sizes, logical-axis mapping, optimizer registries and schedules."""

from __future__ import annotations

import types

import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec

from jaxgen.core import rng
from jaxgen.core.mesh import MeshConfig, make_mesh
from jaxgen.core.optim import OptimizerConfig
from jaxgen.core.sharding import logical_to_spec

FAKE_MESH = types.SimpleNamespace(shape={"data": 2, "fsdp": 4, "tensor": 2})


@pytest.mark.parametrize("config, devices, sizes", [
    (MeshConfig(), 8, (8, 1, 1)),
    (MeshConfig(data=2, fsdp=-1), 8, (2, 4, 1)),
    (MeshConfig(data=1, fsdp=2, tensor=-1), 8, (1, 2, 4)),
    (MeshConfig(data=2, fsdp=2, tensor=2), 8, (2, 2, 2)),
])
def test_axis_sizes(config, devices, sizes):
    assert config.axis_sizes(devices) == sizes


@pytest.mark.parametrize("config, match", [
    (MeshConfig(data=-1, fsdp=-1), "At most one"),
    (MeshConfig(data=3), "needs 3 devices but 8"),
    (MeshConfig(data=-1, fsdp=3), "not a multiple of 3"),
    (MeshConfig(data=0), "positive or -1"),
])
def test_bad_mesh_configs_name_the_problem(config, match):
    with pytest.raises(ValueError, match=match):
        config.axis_sizes(8)


def test_make_mesh_on_this_host():
    mesh = make_mesh(MeshConfig())
    assert mesh.axis_names == ("data", "fsdp", "tensor")
    with pytest.raises(ValueError, match="num_devices=99"):
        make_mesh(MeshConfig(num_devices=99))


def test_logical_axes_map_to_mesh_axes_once_and_only_where_they_divide():
    assert logical_to_spec(("embed", "mlp"), (64, 128), FAKE_MESH) == PartitionSpec("fsdp", "tensor")
    assert logical_to_spec(("batch", None), (16, 3), FAKE_MESH) == PartitionSpec(("data", "fsdp"), None)
    assert logical_to_spec(("embed", "embed"), (64, 64), FAKE_MESH) == PartitionSpec("fsdp", None)
    assert logical_to_spec(("embed", "heads"), (6, 3), FAKE_MESH) == PartitionSpec(None, None)
    with pytest.raises(ValueError, match="'hidden' has no rule"):
        logical_to_spec(("hidden",), (8,), FAKE_MESH)
    with pytest.raises(ValueError, match=r"do not match a parameter of shape \(8,\)"):
        logical_to_spec(("embed", "mlp"), (8,), FAKE_MESH)


def test_schedules_and_registry_errors():
    warm = OptimizerConfig(learning_rate=1.0, schedule="warmup_cosine", warmup_steps=10).schedule_fn(110)
    assert float(warm(0)) == 0.0 and float(warm(10)) == pytest.approx(1.0) and float(warm(110)) == pytest.approx(0.0)
    linear = OptimizerConfig(learning_rate=2.0, schedule="warmup_linear", warmup_steps=0).schedule_fn(10)
    assert float(linear(5)) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="Unknown optimizer 'adamm'.*Did you mean 'adam'"):
        OptimizerConfig(name="adamm").build(10)
    with pytest.raises(ValueError, match="Unknown schedule 'cosine'.*Did you mean"):
        OptimizerConfig(schedule="cosine").build(10)


def test_optimizer_clips_the_global_norm():
    tx = OptimizerConfig(name="sgd", learning_rate=1.0, schedule="constant", clip_grad_norm=1.0).build(10)
    params = {"w": jnp.zeros(4)}
    updates, _ = tx.update({"w": jnp.full(4, 10.0)}, tx.init(params), params)
    np.testing.assert_allclose(np.linalg.norm(updates["w"]), 1.0, rtol=1e-6)


def test_streams_are_distinct_and_steps_fold_in():
    import jax

    keys = [jax.random.key_data(rng.stream(0, s)) for s in rng.STREAMS]
    assert len({tuple(np.asarray(k).ravel()) for k in keys}) == 3
    a, b = rng.step_key(rng.stream(0, "train"), 1), rng.step_key(rng.stream(0, "train"), 2)
    assert not np.array_equal(jax.random.key_data(a), jax.random.key_data(b))
    with pytest.raises(ValueError, match="Unknown random stream 'dropout'"):
        rng.stream(0, "dropout")
