"""The AutoMLP model: score shapes and the loss, padding that cannot change the output, and alpha as its own
parameter group (`model_and_params`: conftest.py)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgen.core.optim import group_labels
from jaxgen.projects.automlp.model import ARCH_PATTERN, AutoMLP, cross_entropy

from .conftest import NUM_ITEMS, histories


def test_scores_cover_every_item_and_pad_is_never_predicted(model_and_params):
    history = histories()
    model, params = model_and_params
    scores = model.apply({"params": params}, history)
    assert scores.shape == (3, NUM_ITEMS + 1)
    assert jnp.all(scores[:, 0] == -jnp.inf) and jnp.all(jnp.isfinite(scores[:, 1:]))
    assert jnp.isfinite(cross_entropy(scores, jnp.arange(1, 4)))  # gradients: test_automlp_search


def test_padding_positions_do_not_change_the_output(model_and_params):
    history = histories()
    model, params = model_and_params
    mask = history != 0
    reference = model.apply({"params": params}, history, mask)
    garbage = jnp.where(mask, history, jax.random.randint(jax.random.key(1), history.shape, 1, NUM_ITEMS + 1))
    np.testing.assert_allclose(model.apply({"params": params}, garbage, mask), reference, rtol=1e-5, atol=1e-5)
    # but the real items do matter
    assert not np.allclose(model.apply({"params": params}, history.at[:, -1].set(5)), reference, atol=1e-3)


def test_alpha_is_a_parameter_group_of_its_own(model_and_params):
    model, params = model_and_params
    labels = group_labels(params, {"architecture": [ARCH_PATTERN]}, default="weights")
    assert labels["arch_alpha"] == "architecture"
    assert set(jax.tree.leaves(labels)) == {"architecture", "weights"}
    assert jax.tree.leaves(labels).count("architecture") == 1
    weights = model.apply({"params": params}, method=AutoMLP.architecture_weights)
    np.testing.assert_allclose(weights, jax.nn.softmax(params["arch_alpha"]), rtol=1e-6)


def test_windows_longer_than_the_history_are_refused():
    with pytest.raises(ValueError, match="exceed the history length"):
        AutoMLP(NUM_ITEMS, windows=(2, 16)).init(jax.random.key(0), histories())
