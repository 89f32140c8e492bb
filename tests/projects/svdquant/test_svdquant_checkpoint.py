"""Quantized models round-trip exactly through orbax and through one safetensors file whose metadata carries the
quantization config; a file without it is refused."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from safetensors.numpy import save_file

from jaxgen.projects.svdquant import checkpoint, linear
from pallas_kernels.int4_matmul import reference as int4_ref


def _variables():
    """A model tree with a stacked SVDQuant layer (shifted, unsigned), a W4A16 layer and 16-bit parameters."""
    rng = np.random.default_rng(0)
    w_packed, w_scales = int4_ref.quantize_int4(rng.normal(size=(2, 64, 64)).astype(np.float32), axis=-2)
    svd = linear.QuantizedLinear(
        w_packed=w_packed, w_scales=w_scales, bias=rng.normal(size=(2, 64)).astype(np.float32),
        smooth=rng.uniform(1, 2, size=(2, 64)).astype(np.float32),
        lowrank_down=rng.normal(size=(2, 64, 8)).astype(np.float32),
        lowrank_up=rng.normal(size=(2, 8, 64)).astype(np.float32), activations="uint4", shift=linear.GELU_SHIFT)
    w4a16 = linear.QuantizedLinear(w_packed=w_packed[0], w_scales=w_scales[0], activations="float", method="w4a16")
    return {"params": {"blocks": {"Dense_1": {"svdquant": svd}}, "final": {"svdquant": w4a16},
                       "embed": {"kernel": rng.normal(size=(12, 64)).astype(np.float32)}}}


def _assert_identical(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)  # static fields included (they are treedef data)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        assert np.asarray(x).dtype == np.asarray(y).dtype
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_orbax_round_trip_is_exact(tmp_path):
    variables = _variables()
    checkpoint.save_orbax(tmp_path / "quantized", variables)
    _assert_identical(checkpoint.load_orbax(tmp_path / "quantized"), variables)


def test_safetensors_round_trip_is_exact(tmp_path):
    variables = _variables()
    checkpoint.export_safetensors(tmp_path / "model.safetensors", variables)
    _assert_identical(checkpoint.import_safetensors(tmp_path / "model.safetensors"), variables)
    from safetensors import safe_open

    with safe_open(str(tmp_path / "model.safetensors"), framework="numpy") as f:
        assert '"activations": "uint4"' in f.metadata()[checkpoint.CONFIG_KEY]
        assert "params/blocks/Dense_1/svdquant/lowrank_down" in f.keys()


def test_a_plain_safetensors_file_is_refused(tmp_path):
    save_file({"weight": np.zeros(2, np.float32)}, str(tmp_path / "plain.safetensors"))
    with pytest.raises(ValueError, match="no 'quantization_config' metadata entry"):
        checkpoint.import_safetensors(tmp_path / "plain.safetensors")
