"""Condition-aware layers: they start as their static Flax twins, the batched per-sample path equals a loop over the
batch with hand-built kernels (dense, conv, grouped, depthwise, strided), gradients reach the generators, and bad
settings are refused."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgen.projects.can import AKS, CAN, ConditionAwareConv, ConditionAwareDense

GENERATORS = [CAN(), CAN(rank=3), AKS(num_kernels=3)]
COND_DIM = 5


def _cond(batch=3):
    return jax.random.normal(jax.random.key(7), (batch, COND_DIM))


def _randomize_generator(params, key):
    """Nonzero generator parameters (they start at zero), so each sample gets its own kernel."""
    return {name: (0.3 * jax.random.normal(jax.random.fold_in(key, i), value.shape)
                   if name.startswith(("can_", "aks_")) else value)
            for i, (name, value) in enumerate(params.items())}


def _hand_kernels(weights, params, cond):
    """Per-sample kernels from the papers' formulas in numpy, one sample at a time."""
    kernel, cond = np.asarray(params["kernel"], np.float64), np.asarray(cond, np.float64)
    out = []
    for c in cond:
        if isinstance(weights, CAN):
            h = c if weights.rank is None else c @ np.asarray(params["can_project"], np.float64)
            out.append(kernel + (h @ np.asarray(params["can_generator"], np.float64)).reshape(kernel.shape))
        else:
            logits = c @ np.asarray(params["aks_router"], np.float64)
            mix = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
            out.append(kernel + np.tensordot(mix, np.asarray(params["aks_bank"], np.float64), axes=1))
    return out


@pytest.mark.parametrize("weights", GENERATORS, ids=str)
def test_dense_starts_as_its_static_twin_and_per_sample_equals_a_loop(weights):
    x = jax.random.normal(jax.random.key(1), (3, 4, 6))
    layer = ConditionAwareDense(8, weights=weights)
    params = layer.init(jax.random.key(0), x, _cond())["params"]
    assert float(jnp.abs(params.get("can_generator", params.get("aks_bank"))).max()) == 0.0
    static = nn.Dense(8).apply({"params": {"kernel": params["kernel"], "bias": params["bias"]}}, x)
    np.testing.assert_allclose(layer.apply({"params": params}, x, _cond()), static, rtol=0, atol=1e-6)

    params = _randomize_generator(params, jax.random.key(2))
    batched = layer.apply({"params": params}, x, _cond())
    for b, kernel in enumerate(_hand_kernels(weights, params, _cond())):
        one = nn.Dense(8).apply({"params": {"kernel": kernel.astype(np.float32), "bias": params["bias"]}}, x[b])
        np.testing.assert_allclose(batched[b], one, rtol=1e-5, atol=1e-5)
    assert float(jnp.abs(batched - static).max()) > 1e-2, "a nonzero generator must change the output"


CONVS = {"plain 3x3": dict(features=6, kernel_size=(3, 3)),
         "grouped": dict(features=6, kernel_size=(3, 3), feature_group_count=2),
         "depthwise": dict(features=4, kernel_size=(3, 3), feature_group_count=4),
         "strided patch": dict(features=6, kernel_size=(2, 2), strides=2, padding="VALID")}


@pytest.mark.parametrize("weights", GENERATORS, ids=str)
@pytest.mark.parametrize("conv", list(CONVS), ids=str)
def test_conv_starts_as_its_static_twin_and_per_sample_equals_a_loop(conv, weights):
    fields = CONVS[conv]
    x = jax.random.normal(jax.random.key(1), (3, 6, 6, 4))
    layer = ConditionAwareConv(**fields, weights=weights)
    params = layer.init(jax.random.key(0), x, _cond())["params"]
    twin = nn.Conv(**fields)
    static = twin.apply({"params": {"kernel": params["kernel"], "bias": params["bias"]}}, x)
    np.testing.assert_allclose(layer.apply({"params": params}, x, _cond()), static, rtol=0, atol=1e-6)

    params = _randomize_generator(params, jax.random.key(2))
    batched = layer.apply({"params": params}, x, _cond())
    for b, kernel in enumerate(_hand_kernels(weights, params, _cond())):
        one = twin.apply({"params": {"kernel": kernel.astype(np.float32), "bias": params["bias"]}}, x[b:b + 1])
        np.testing.assert_allclose(batched[b:b + 1], one, rtol=1e-5, atol=1e-5)
    assert float(jnp.abs(batched - static).max()) > 1e-2


@pytest.mark.parametrize("weights", GENERATORS, ids=str)
def test_gradients_reach_the_generator(weights):
    x = jax.random.normal(jax.random.key(1), (3, 6, 6, 4))
    layer = ConditionAwareConv(4, (3, 3), feature_group_count=4, weights=weights)
    params = layer.init(jax.random.key(0), x, _cond())["params"]
    target = jax.random.normal(jax.random.key(3), (3, 6, 6, 4))
    grads = jax.grad(lambda p: jnp.mean((layer.apply({"params": p}, x, _cond()) - target) ** 2))(params)
    generator = "can_generator" if isinstance(weights, CAN) else "aks_bank"
    assert float(jnp.abs(grads[generator]).max()) > 1e-4


def test_bad_settings_are_refused_with_the_reason():
    x = jnp.ones((2, 4, 4, 3))
    with pytest.raises(ValueError, match="rank must be a positive int"):
        CAN(rank=0)
    with pytest.raises(ValueError, match="at least 2 kernels"):
        AKS(num_kernels=1)
    with pytest.raises(ValueError, match=r"must be \[batch, cond_dim\]"):
        ConditionAwareDense(3).init(jax.random.key(0), x, jnp.ones((2, 1, 5)))
    with pytest.raises(ValueError, match="padding 'CIRCULAR' is not supported"):
        ConditionAwareConv(3, (3, 3), padding="CIRCULAR").init(jax.random.key(0), x, jnp.ones((2, 5)))
    with pytest.raises(ValueError, match="channels divisible by the groups"):
        ConditionAwareConv(4, (3, 3), feature_group_count=2).init(jax.random.key(0), x, jnp.ones((2, 5)))
