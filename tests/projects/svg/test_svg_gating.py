"""Dense gating by step and layer index."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgen.projects.svg import DenseGate


def _dense_steps(gate, num_steps, layer=10, num_layers=10):
    return [s for s in range(num_steps) if gate.is_dense(step=s, num_steps=num_steps, layer=layer,
                                                         num_layers=num_layers)]


def test_first_fraction_of_steps_is_dense():
    assert _dense_steps(DenseGate(dense_step_fraction=0.1), 50) == [0, 1, 2, 3, 4]
    assert _dense_steps(DenseGate(dense_step_fraction=0.25), 10) == [0, 1, 2]
    assert _dense_steps(DenseGate(), 50) == []
    assert _dense_steps(DenseGate(dense_step_fraction=1.0), 4) == [0, 1, 2, 3]


def test_first_fraction_of_layers_is_dense_at_every_step():
    gate = DenseGate(dense_layer_fraction=0.03)
    dense = [layer for layer in range(60) if gate.is_dense(step=30, num_steps=50, layer=layer, num_layers=60)]
    assert dense == [0, 1]


def test_traced_step_and_layer():
    gate = DenseGate(dense_step_fraction=0.2, dense_layer_fraction=0.5)
    grid = jax.jit(jax.vmap(jax.vmap(lambda s, l: gate.is_dense(step=s, num_steps=10, layer=l, num_layers=4),
                                     (None, 0)), (0, None)))(jnp.arange(10), jnp.arange(4))
    expected = (np.arange(10)[:, None] < 2) | (np.arange(4)[None, :] < 2)
    np.testing.assert_array_equal(grid, expected)


def test_bad_fractions_raise():
    with pytest.raises(ValueError, match="dense_step_fraction"):
        DenseGate(dense_step_fraction=1.5)
    with pytest.raises(ValueError, match="num_steps"):
        DenseGate(0.1).is_dense(step=0, num_steps=0, layer=0, num_layers=1)
