"""Whole-model SVDQuant on a tiny DiT (jaxgen.nn.dit): calibration sees every Dense/DenseGeneral input (scanned
blocks stacked over layers), rules pick schemes in order, the quantized model runs the int4 ops close to 16 bit,
16-bit layers are untouched, bytes are counted by hand, and bad rules are refused with the layer list."""

from __future__ import annotations

import flax.linen as nn
import jax
import numpy as np
import pytest

from jaxgen.nn import dit
from jaxgen.projects.svdquant import driver, model as sq_model

RULES = (
    (r"patch_embed|t_embed/.*|unpatchify|final_adaln|blocks/Dense_0", "float"),
    (r"blocks/adaln", "w4a16"),
    (r"blocks/attn/out", "smoothquant"),  # svdquant's own compile is tests/.../test_svdquant_linear.py's
    (r"blocks/Dense_1", "w4a4_gelu"),
    (r"blocks/.*", "w4a4"),
)


def tiny_dit():
    """A 2-block DiT of width 64 with random weights everywhere (adaLN-Zero layers start at zero otherwise), drawn from
    shapes alone (nothing compiled)."""
    module = dit.DiT(num_classes=4, width=64, depth=2, num_heads=4, patch_size=2, in_channels=3, sample_size=8)
    return module, driver.random_variables(module, (8, 8, 3), seed=1, scale=0.05)


def calib_batches(seed, timesteps=(50, 500, 950)):
    """One batch per diffusion timestep (noise images, labels cycling through the classes)."""
    rng = np.random.default_rng(seed)
    for t in timesteps:
        yield (rng.normal(size=(4, 8, 8, 3)).astype(np.float32), np.full((4,), t, np.int32), np.arange(4) % 5), {}


@pytest.fixture(scope="module")
def quantized():
    module, variables = tiny_dit()
    inputs = sq_model.collect_inputs(module, variables, calib_batches(0), tokens_per_call=32)
    q = sq_model.quantize_model(module, variables, None, RULES, inputs=inputs)
    return jax.jit(module.apply), variables, inputs, q


def test_calibration_collects_every_layer_input(quantized):
    _, _, inputs, _ = quantized
    assert set(inputs) == {"patch_embed", "t_embed/linear_1", "t_embed/linear_2", "blocks/adaln", "blocks/attn/qkv",
                           "blocks/attn/out", "blocks/Dense_0", "blocks/Dense_1", "final_adaln", "unpatchify"}
    # Scanned layers come stacked over the 2 blocks; 32 strided tokens per call, 3 calls.
    assert inputs["blocks/attn/out"].samples.shape == (2, 96, 64)
    assert inputs["blocks/Dense_1"].info.k == 256 and inputs["blocks/attn/qkv"].info.features == (3, 4, 16)
    # The patch embedding reads the patchified images: its channel maxima are those of every token, by hand.
    patches = np.concatenate([dit.patchify(args[0], 2).reshape(-1, 12) for args, _ in calib_batches(0)])
    np.testing.assert_allclose(inputs["patch_embed"].absmax, np.abs(patches).max(0), rtol=1e-6)


def test_quantized_dit_runs_close_to_16_bit(quantized):
    apply_16bit, variables, _, q = quantized
    assert q.schemes["blocks/attn/out"] == sq_model.SCHEMES["smoothquant"]
    assert q.schemes["t_embed/linear_1"].method is None and q.schemes["blocks/Dense_0"].method is None
    layer = q.params["params"]["blocks"]["attn"]["out"]["svdquant"]
    assert layer.w_packed.shape == (2, 32, 64) and layer.rank == 0 and layer.smooth.shape == (2, 64)
    assert q.params["params"]["blocks"]["Dense_1"]["svdquant"].activations == "uint4"
    (x, t, y), _ = next(calib_batches(1))
    reference = apply_16bit(variables, x, t, y)
    out = jax.jit(q.apply)(q.params, x, t, y)
    relative = float(np.mean((out - reference) ** 2) / np.mean(reference ** 2))
    assert 0 < relative < 0.01, relative


def test_16_bit_layers_are_untouched(quantized):
    """16-bit layers keep their parameters, and the interceptor leaves layers without a quantized one alone."""
    _, variables, _, q = quantized
    np.testing.assert_array_equal(q.params["params"]["patch_embed"]["kernel"],
                                  variables["params"]["patch_embed"]["kernel"])
    dense = nn.Dense(8)
    dense_variables = {"params": {"kernel": np.arange(32.0).reshape(4, 8), "bias": np.ones(8)}}
    x = np.linspace(-1, 1, 12).reshape(3, 4)
    np.testing.assert_array_equal(sq_model.apply_quantized(dense, dense_variables, x), dense.apply(dense_variables, x))


def test_model_bytes(quantized):
    _, variables, _, q = quantized
    # 2 stacked W4A16 layers [K, N] = [64, 384] with bias: packed codes K N / 2, a 16-bit scale per 64 rows and
    # column, the bias.
    adaln = {"params": q.params["params"]["blocks"]["adaln"]}
    assert sq_model.model_bytes(adaln) == 2 * (64 * 384 // 2 + 384 * 2 + 384 * 2)
    assert sq_model.model_bytes(q.params) < 0.6 * sq_model.model_bytes(variables)


@pytest.mark.parametrize("rules, message", [
    (((r"blocks/mlp", "svdquant"),), r"match no layer .* the model's Dense/DenseGeneral layers are \['blocks/Dense_0'"),
    (((r"blocks/.*", "int2"),), "unknown scheme 'int2'"),
    (((r"patch_embed", "svdquant"),), r"layer patch_embed \(\[K, N\] = \[12, 64\]\) .*keep such a layer in 16 bit"),
    ("blocks/.*", r"rules must be a sequence of \(regex, scheme\) pairs"),
    (((r"blocks/(", "w4a4"),), "not a valid regular expression"),
])
def test_bad_rules_are_refused(quantized, rules, message):
    _, variables, inputs, q = quantized
    with pytest.raises(ValueError, match=message):
        sq_model.quantize_model(q.module, variables, None, rules, inputs=inputs)
