"""SASRec and GRU4Rec on AutoMLP's pipeline: scores over every item, PAD never predicted, and the left padding
invisible (garbage at padded positions, or more of them, changes nothing)."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgen.projects.automlp.baselines import GRU4Rec, SASRec

from .conftest import NUM_ITEMS, histories

MODELS = {"sasrec": SASRec(NUM_ITEMS, max_len=10, features=16, heads=2, dropout_rate=0.0),
          "gru4rec": GRU4Rec(NUM_ITEMS, features=16, hidden=8, dropout_rate=0.0)}


@pytest.fixture(scope="module", params=sorted(MODELS))
def model_and_params(request):
    model = MODELS[request.param]
    return model, jax.jit(lambda h: model.init(jax.random.key(0), h))(histories())["params"]


def test_scores_cover_every_item_and_padding_is_invisible(model_and_params):
    model, params = model_and_params
    history = histories()
    mask = history != 0
    scores = model.apply({"params": params}, history)
    assert scores.shape == (3, NUM_ITEMS + 1)
    assert jnp.all(scores[:, 0] == -jnp.inf) and jnp.all(jnp.isfinite(scores[:, 1:]))
    garbage = jnp.where(mask, history, jax.random.randint(jax.random.key(1), history.shape, 1, NUM_ITEMS + 1))
    np.testing.assert_allclose(model.apply({"params": params}, garbage, mask), scores, rtol=1e-5, atol=1e-5)
    shorter = history[:, 2:]  # two fewer padding positions in the rows that had them; row 1 loses real items
    np.testing.assert_allclose(model.apply({"params": params}, shorter)[::2], scores[::2], rtol=1e-5, atol=1e-5)
    assert not np.allclose(model.apply({"params": params}, shorter)[1], scores[1], atol=1e-3)
    assert not np.allclose(model.apply({"params": params}, history.at[:, -2].set(5))[1:], scores[1:], atol=1e-3)


def test_gru4rec_is_a_gru_over_the_real_items_alone():
    model = MODELS["gru4rec"]
    history = histories()
    params = model.init(jax.random.key(0), history)["params"]
    embeddings = params["item_embedding"]["embedding"]
    cell = nn.GRUCell(8)
    for row, expected in zip(np.asarray(history), model.apply({"params": params}, history)):
        state = jnp.zeros((1, 8))
        for item in row[row != 0]:
            state, _ = cell.apply({"params": params["gru"]["cell"]}, state, embeddings[item][None])
        user = state @ params["out"]["kernel"] + params["out"]["bias"]
        np.testing.assert_allclose(expected[1:], (user @ embeddings.T)[0, 1:], rtol=1e-5, atol=1e-5)


def test_sasrec_refuses_histories_longer_than_its_position_table():
    with pytest.raises(ValueError, match="exceeds SASRec's position table"):
        SASRec(NUM_ITEMS, max_len=4).init(jax.random.key(0), histories())
