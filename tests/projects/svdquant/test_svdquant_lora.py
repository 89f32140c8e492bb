"""LoRA merged into a quantized layer's low-rank branch equals the quantized layer plus the LoRA (float tolerance),
shift and stacking included, without touching the 4-bit weights; LoRA files in the diffusers and kohya layouts are
read by name."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from safetensors.numpy import save_file

from jaxgen.projects.svdquant import linear, lora
from pallas_kernels.int4_matmul import reference as int4_ref

K, N, RANK = 64, 128, 8
_run = jax.jit(lambda layer, x: layer(x))  # one compile per layer structure, not one per op


def _layer(rng, stack=(), shift=linear.GELU_SHIFT):
    """A W4A4 layer with smoothing, a rank-8 branch and the GELU shift, built from random tensors."""
    w_packed, w_scales = int4_ref.quantize_int4(rng.normal(size=(*stack, K, N)).astype(np.float32), axis=-2)
    return linear.QuantizedLinear(
        w_packed=w_packed, w_scales=w_scales, bias=rng.normal(size=(*stack, N)).astype(np.float32),
        smooth=rng.uniform(0.5, 4, size=(*stack, K)).astype(np.float32),
        lowrank_down=rng.normal(size=(*stack, K, RANK)).astype(np.float32),
        lowrank_up=rng.normal(size=(*stack, RANK, N)).astype(np.float32), activations="uint4", shift=shift)


def test_merged_layer_equals_layer_plus_lora():
    rng = np.random.default_rng(0)
    layer = _layer(rng)
    down, up = rng.normal(size=(K, 4)).astype(np.float32), rng.normal(size=(4, N)).astype(np.float32)
    x = np.abs(rng.normal(size=(2, 16, K))).astype(np.float32)
    merged = lora.merge_into_layer(layer, 0.7 * down, up)
    assert merged.rank == RANK + 4 and merged.w_packed is layer.w_packed  # no re-quantization
    expected = np.asarray(_run(layer, x)) + 0.7 * x @ down @ up
    np.testing.assert_allclose(np.asarray(_run(merged, x)), expected, rtol=1e-4, atol=1e-3)


def test_w4a16_layers_refuse_a_lora():
    layer = _layer(np.random.default_rng(1)).replace(activations="float", lowrank_down=None, lowrank_up=None)
    with pytest.raises(ValueError, match="W4A16 layer"):
        lora.merge_into_layer(layer, np.zeros((K, 2)), np.zeros((2, N)))


def _write(path, tensors):
    save_file({name: np.ascontiguousarray(value, np.float32) for name, value in tensors.items()}, str(path))


def test_read_diffusers_and_kohya_files_and_merge_by_name(tmp_path):
    rng = np.random.default_rng(2)
    width, depth = 64, 2
    a, b = rng.normal(size=(4, width)), rng.normal(size=(width, 4))  # torch layout: down [r, in], up [out, r]
    _write(tmp_path / "diffusers.safetensors", {"transformer_blocks.1.attn1.to_k.lora_A.weight": a,
                                                "transformer_blocks.1.attn1.to_k.lora_B.weight": b})
    _write(tmp_path / "kohya.safetensors", {"transformer_blocks.1.attn1.to_k.lora_down.weight": a,
                                            "transformer_blocks.1.attn1.to_k.lora_up.weight": b,
                                            "transformer_blocks.1.attn1.to_k.alpha": np.array(2.0)})
    diffusers_lora = lora.read_lora_safetensors(tmp_path / "diffusers.safetensors")
    kohya_lora = lora.read_lora_safetensors(tmp_path / "kohya.safetensors")
    name = "transformer_blocks.1.attn1.to_k"
    np.testing.assert_array_equal(diffusers_lora[name].down, a.T.astype(np.float32))
    assert diffusers_lora[name].scale == 1.0 and kohya_lora[name].scale == 0.5

    # A stacked qkv layer [2 blocks, K=64, N=192]: the k LoRA lands in block 1, columns 64..128 only.
    rng_layer = np.random.default_rng(3)
    w_packed, w_scales = int4_ref.quantize_int4(rng_layer.normal(size=(depth, width, 3 * width)).astype(np.float32),
                                                axis=-2)
    qkv = linear.QuantizedLinear(w_packed=w_packed, w_scales=w_scales, bias=np.zeros((depth, 3 * width), np.float32))
    variables = {"params": {"blocks": {"attn": {"qkv": {"svdquant": qkv}}}}}
    targets = lora.dit_lora_targets(depth, width)
    merged = lora.merge_loras(variables, [(diffusers_lora, 1.0), (kohya_lora, 0.5)], targets)
    merged_qkv = merged["params"]["blocks"]["attn"]["qkv"]["svdquant"]
    x = rng.normal(size=(5, width)).astype(np.float32)
    for block in range(depth):
        one = jax.tree.map(lambda v: v[block], merged_qkv)
        base = jax.tree.map(lambda v: v[block], qkv)
        delta = np.zeros((5, 3 * width), np.float32)
        if block == 1:
            delta[:, width:2 * width] = (1.0 + 0.5 * 0.5) * x @ a.T @ b.T
        np.testing.assert_allclose(np.asarray(_run(one, x)), np.asarray(_run(base, x)) + delta, rtol=1e-4, atol=1e-3)

    with pytest.raises(ValueError, match="have no target layer"):
        lora.merge_loras(variables, [({"unet.mid.proj": diffusers_lora[name]}, 1.0)], targets)
    with pytest.raises(ValueError, match="no LoRA factors found"):
        _write(tmp_path / "empty.safetensors", {"weight": np.zeros(2)})
        lora.read_lora_safetensors(tmp_path / "empty.safetensors")
