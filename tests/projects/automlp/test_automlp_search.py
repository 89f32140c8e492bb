"""The first-order bilevel step: the weights and alpha take turns, the weights follow the training batch and alpha
the validation batch, and the state remembers both losses."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxgen.projects.automlp.search import SearchState, search_optimizer, search_update

from .conftest import histories


def _split(params):
    weights = {k: v for k, v in params.items() if k != "arch_alpha"}
    return weights, params["arch_alpha"]


def _same(a, b):
    return all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_weights_follow_the_train_batch_and_alpha_the_valid_batch_on_their_turns(model_and_params):
    model, params = model_and_params
    optimizer = search_optimizer(optax.sgd(0.1), optax.sgd(0.1))  # sgd: a different gradient moves alpha differently
    step = jax.jit(search_update(model, optimizer))
    batch = {"history": histories(), "target": jnp.array([1, 2, 3])}
    other = {"history": histories()[::-1], "target": jnp.array([4, 5, 6])}
    key = jax.random.key(0)

    s0 = SearchState.create(params, optimizer)
    s1, m1 = step(s0, {"train": batch, "valid": other}, key)  # the weights' turn
    assert np.array_equal(_split(s1.params)[1], params["arch_alpha"]) and not _same(_split(s1.params)[0],
                                                                                     _split(params)[0])
    assert np.isfinite(m1["train_loss"]) and np.isnan(m1["valid_loss"]) and m1["loss"] == m1["train_loss"]

    s2, m2 = step(s1, {"train": batch, "valid": other}, key)  # alpha's turn
    assert _same(_split(s2.params)[0], _split(s1.params)[0]) and not np.array_equal(s2.params["arch_alpha"],
                                                                                     s1.params["arch_alpha"])
    assert m2["train_loss"] == m1["train_loss"] and m2["valid_loss"] == m2["loss"]
    np.testing.assert_allclose(sum(m2[f"alpha/{k}"] for k in model.windows), 1.0, rtol=1e-6)
    np.testing.assert_allclose(m2["alpha/2"], jax.nn.softmax(s2.params["arch_alpha"])[1], rtol=1e-6)
    assert np.array_equal(step(s1, {"train": other, "valid": other}, key)[0].params["arch_alpha"],
                          s2.params["arch_alpha"])  # the train batch has no say
    assert not np.array_equal(step(s1, {"train": batch, "valid": batch}, key)[0].params["arch_alpha"],
                              s2.params["arch_alpha"])


def test_a_schedule_must_give_both_groups_turns():
    with pytest.raises(ValueError, match="each at least once"):
        search_optimizer(optax.sgd(0.1), optax.sgd(0.1), schedule=("weights",))
