"""`porting.load_variables`, the walk under every `from_diffusers`: rule-based names over two collections, layouts,
the tensors it may leave unused, and its errors."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import save_file

from jaxgen.nn import porting, safetensors_io


class Tiny(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.Conv(4, (3, 3), name="conv")(x)
        x = nn.BatchNorm(use_running_average=True, name="norm")(x)
        return nn.Dense(2, name="proj")(x)


_LEAVES = {"kernel": "weight", "bias": "bias", "scale": "weight", "mean": "running_mean", "var": "running_var"}


def _lookup(reader):
    def lookup(path, leaf):
        _, module, leaf_name = path.split("/")
        value = reader.get(f"{module}.{_LEAVES[leaf_name]}")
        return porting.conv(value) if value.ndim == 4 else porting.linear(value) if value.ndim == 2 else value
    return lookup


def _torch_tensors():
    rng = np.random.default_rng(0)
    return {"conv.weight": rng.normal(size=(4, 3, 3, 3)).astype(np.float32),
            "conv.bias": np.arange(4, dtype=np.float32),
            "norm.weight": np.ones(4, np.float32), "norm.bias": np.zeros(4, np.float32),
            "norm.running_mean": np.full(4, 0.5, np.float32), "norm.running_var": np.full(4, 2.0, np.float32),
            "norm.num_batches_tracked": np.array(7, np.int64),
            "proj.weight": rng.normal(size=(2, 4)).astype(np.float32), "proj.bias": np.ones(2, np.float32)}


def _load(tmp_path, tensors, **kwargs):
    save_file(tensors, str(tmp_path / "m.safetensors"))
    reader = safetensors_io.open_checkpoint(tmp_path, "m")
    boxed = jax.eval_shape(Tiny().init, jax.random.key(0), jnp.zeros((1, 4, 4, 3)))
    return porting.load_variables(reader, boxed, _lookup(reader), dtype=jnp.bfloat16, source="m", **kwargs)


def test_loads_every_collection_in_flax_layout_and_dtype(tmp_path):
    tensors = _torch_tensors()
    variables = _load(tmp_path, tensors, unused_suffixes=("num_batches_tracked",))
    assert set(variables) == {"params", "batch_stats"}
    kernel = variables["params"]["conv"]["kernel"]
    assert kernel.dtype == jnp.bfloat16 and kernel.shape == (3, 3, 3, 4)
    np.testing.assert_allclose(np.float32(kernel[1, 2, 0, 3]), tensors["conv.weight"][3, 0, 1, 2], rtol=1e-2)
    np.testing.assert_array_equal(np.float32(variables["params"]["proj"]["kernel"]),
                                  tensors["proj.weight"].T.astype(jnp.bfloat16).astype(np.float32))
    np.testing.assert_array_equal(np.float32(variables["batch_stats"]["norm"]["var"]), 2.0)


def test_unused_and_misshapen_tensors_are_errors_naming_them(tmp_path):
    with pytest.raises(ValueError, match=r"1 tensors in m map to nothing: \['norm.num_batches_tracked'\]"):
        _load(tmp_path, _torch_tensors())
    tensors = {**_torch_tensors(), "proj.weight": np.zeros((3, 4), np.float32)}
    with pytest.raises(ValueError, match=r"params/proj/kernel converts to \(4, 3\), the module expects \(4, 2\)"):
        _load(tmp_path, tensors, unused_suffixes=("num_batches_tracked",))
