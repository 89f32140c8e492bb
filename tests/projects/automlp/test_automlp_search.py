"""The first-order bilevel step: the weights and alpha take turns, the weights follow the training batch and alpha
the validation batch."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxgen.projects.automlp.search import search_optimizer, search_step

from .conftest import histories


def _split(params):
    weights = {k: v for k, v in params.items() if k != "arch_alpha"}
    return weights, params["arch_alpha"]


def _same(a, b):
    return all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_weights_follow_the_train_batch_and_alpha_the_valid_batch_on_their_turns(model_and_params):
    model, params = model_and_params
    optimizer = search_optimizer(optax.sgd(0.1), optax.sgd(0.1))  # sgd: a different gradient moves alpha differently
    step = search_step(model, optimizer)
    batch = {"history": histories(), "target": jnp.array([1, 2, 3])}
    other = {"history": histories()[::-1], "target": jnp.array([4, 5, 6])}

    p1, s1, train_loss, valid_loss = step(params, optimizer.init(params), batch, other)  # the weights' turn
    assert np.isfinite(train_loss) and np.isfinite(valid_loss)
    assert np.array_equal(_split(p1)[1], params["arch_alpha"]) and not _same(_split(p1)[0], _split(params)[0])

    p2 = step(p1, s1, batch, other)[0]  # alpha's turn
    assert _same(_split(p2)[0], _split(p1)[0]) and not np.array_equal(p2["arch_alpha"], p1["arch_alpha"])
    assert np.array_equal(step(p1, s1, other, other)[0]["arch_alpha"], p2["arch_alpha"])  # the train batch: no say
    assert not np.array_equal(step(p1, s1, batch, batch)[0]["arch_alpha"], p2["arch_alpha"])
