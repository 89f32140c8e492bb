"""SVDQuant's quantized linear layer on synthetic weights and activations with planted outlier channels: the output
error is ordered svdquant < smoothquant < naive, smoothing is an exact identity before quantization, the low-rank
refinement never keeps a worse branch, the shifted unsigned path is exact in its bias, and bad input is refused."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgen.projects.svdquant import linear

K, N, TOKENS, RANK = 128, 128, 192, 16


def _outlier_data(seed=0):
    """Activations with 4 outlier channels (x30, as in diffusion transformers), weights with 2 outlier input rows,
    a calibration set and a held-out set from the same distribution."""
    rng = np.random.default_rng(seed)
    channels = rng.choice(K, 4, replace=False)
    w = (0.05 * rng.normal(size=(K, N))).astype(np.float32)
    w[rng.choice(K, 2, replace=False)] *= 10

    def inputs():
        x = rng.normal(size=(TOKENS, K)).astype(np.float32)
        x[:, channels] *= 30
        return x

    return w, inputs(), inputs()


@pytest.fixture(scope="module")
def layers():
    w, x_calib, x_test = _outlier_data()
    bias = np.linspace(-1, 1, N).astype(np.float32)
    made = {method: linear.quantize_linear(w, x_calib, method=method, rank=RANK, bias=bias, lowrank_iters=10,
                                           candidate_batch=39,  # all candidates in one vmapped call: one compile
                                           return_calibration=True)
            for method in ("naive", "smoothquant", "svdquant")}
    return w, bias, x_test, made


def _mse(layer, w, bias, x):
    return float(np.mean((np.asarray(layer(jnp.asarray(x))) - (x @ w + bias)) ** 2))


def test_output_error_is_ordered_svdquant_smoothquant_naive(layers):
    w, bias, x_test, made = layers
    errors = {method: _mse(layer, w, bias, x_test) for method, (layer, _) in made.items()}
    assert errors["svdquant"] < 0.5 * errors["smoothquant"] < 0.5 * errors["naive"], errors
    # The official grid: 39 candidates, the first (0, 0) being no smoothing, which the search can only improve on.
    smooth_errors = made["smoothquant"][1].candidate_errors
    assert smooth_errors.shape == (39,) and smooth_errors.min() <= smooth_errors[0]


def test_smoothing_is_an_identity_before_quantization(layers):
    w, x, _ = _outlier_data(1)
    s = linear.smooth_scale(jnp.max(jnp.abs(x), 0), jnp.max(jnp.abs(w), 1), 0.5, 0.5)
    assert float(jnp.max(s) / jnp.min(s)) > 5  # the outlier channels are really rescaled
    np.testing.assert_allclose(np.asarray((x / s) @ (w * s[:, None])), x @ w, rtol=1e-4, atol=1e-4)
    # And the layer's float weight is w again up to 4-bit rounding of the (much smaller) residual.
    w, _, _, made = layers
    residual = np.abs(np.asarray(linear.dequantized_weight(made["svdquant"][0])) - w)
    assert residual.max() < 0.1 * np.abs(w).max()


def test_lowrank_refinement_never_keeps_a_worse_branch(layers):
    _, _, _, made = layers
    errors = made["svdquant"][1].lowrank_errors
    ran = errors[~np.isnan(errors)]
    assert ran.size >= 2
    assert np.all(ran[:-1][1:] < ran[:-2] + 1e-12) or ran.size == 2  # each accepted iterate improved on the last
    assert ran[:-1].min() <= ran[0]  # the stopping iterate is the first that did not improve (or the cap)


def test_randomized_svd_recovers_a_low_rank_matrix():
    rng = np.random.default_rng(3)
    m = (rng.normal(size=(48, 6)) @ rng.normal(size=(6, 40))).astype(np.float32)
    down, up = jax.jit(linear.lowrank, static_argnums=(1, 2))(jnp.asarray(m), 6, "randomized")
    np.testing.assert_allclose(np.asarray(down @ up), m, atol=1e-3)


def test_shifted_unsigned_inputs_keep_the_linear_map():
    """Post-GELU inputs shifted by 0.171875 and quantized unsigned: the bias compensates the shift exactly, and the
    unsigned codes (16 levels) beat signed ones (8 levels on non-negative data) for the naive method."""
    rng = np.random.default_rng(4)
    pre = rng.normal(size=(TOKENS, K)).astype(np.float32)
    x = np.asarray(jnp.asarray(pre) * 0.5 * (1 + np.tanh(0.7978845608 * (pre + 0.044715 * pre ** 3))))
    w = (0.05 * rng.normal(size=(K, N))).astype(np.float32)
    signed = linear.quantize_linear(w, x, method="naive")
    unsigned = linear.quantize_linear(w, x, method="naive", shift=linear.GELU_SHIFT)
    assert unsigned.activations == "uint4" and unsigned.shift == linear.GELU_SHIFT
    np.testing.assert_allclose(np.asarray(unsigned.bias), -linear.GELU_SHIFT * w.sum(0), rtol=1e-5, atol=1e-6)
    assert _mse(unsigned, w, 0.0, x) < 0.7 * _mse(signed, w, 0.0, x)


@pytest.mark.parametrize("kwargs, message", [
    (dict(method="int3"), "unknown method 'int3'"),
    (dict(group_size=48), "group_size must be a power of two"),
    (dict(group_size=256), "multiple of group_size=256"),
    (dict(rank=0), "rank must be in"),
    (dict(svd="lanczos"), "unknown svd"),
    (dict(shift=-1.0), "shift must be >= 0"),
    (dict(bias=np.zeros(3)), "bias must be"),
])
def test_bad_arguments_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        linear.quantize_linear(np.zeros((K, N)), np.ones((4, K)), **kwargs)


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match=r"x_calib must be \[tokens, K=128\]"):
        linear.quantize_linear(np.zeros((K, N)), np.ones((4, 64)))
    with pytest.raises(ValueError, match=r"w must be a \[K, N\] matrix"):
        linear.quantize_linear(np.zeros((K,)), np.ones((4, K)))
    with pytest.raises(ValueError, match="keep such a layer in 16 bit"):
        linear.quantize_linear(np.zeros((K, 12)), np.ones((4, K)))
    layer = linear.quantize_linear(np.ones((K, N)), np.ones((4, K)), method="w4a16")
    with pytest.raises(ValueError, match=r"QuantizedLinear \[128, 128\] got x"):
        layer(jnp.ones((2, 64)))
