"""One small AutoMLP and its parameters for the model and search tests: initialising compiles, seconds on a shared
CPU, so it is done once."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgen.projects.automlp.model import AutoMLP

NUM_ITEMS = 30


def histories():
    history = np.array([[0, 0, 0, 0, 0, 3, 7, 9], [4, 5, 6, 7, 8, 9, 10, 11], [0, 0, 0, 0, 0, 0, 0, 2]], np.int32)
    return jnp.asarray(history)


@pytest.fixture(scope="package")
def model_and_params():
    model = AutoMLP(NUM_ITEMS, features=16, depth=1, windows=(1, 2, 4))

    @jax.jit  # eager init dispatches hundreds of small ops
    def init(history):
        params = model.init(jax.random.key(0), history)["params"]
        # alpha starts uniform and LayerNorm biases at zero; random values make the checks non-trivial
        leaves, tree = jax.tree.flatten(params)
        keys = jax.random.split(jax.random.key(1), len(leaves))
        return tree.unflatten([p + 0.3 * jax.random.normal(k, p.shape) for p, k in zip(leaves, keys)])

    return model, init(histories())
