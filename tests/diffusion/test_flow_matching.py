"""The straight noise path, its velocity and the shifted time schedule, against hand-computed values."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgen import diffusion


def test_interpolate_endpoints_and_midpoint():
    x0 = jnp.arange(6.0).reshape(3, 2)
    noise = -jnp.ones((3, 2))
    t = jnp.array([0.0, 1.0, 0.25])
    xt = diffusion.interpolate(x0, noise, t)
    np.testing.assert_allclose(xt[0], x0[0])
    np.testing.assert_allclose(xt[1], noise[1])
    np.testing.assert_allclose(xt[2], 0.75 * x0[2] - 0.25)


def test_velocity_is_the_time_derivative_of_the_path():
    x0, noise = jax.random.normal(jax.random.key(0), (2, 4, 5))
    derivative = jax.jacfwd(lambda s: diffusion.interpolate(x0, noise, jnp.full((4,), s)))(0.3)
    np.testing.assert_allclose(derivative, diffusion.velocity_target(x0, noise), rtol=1e-5, atol=1e-6)


def test_shift_times_hand_values():
    t = jnp.array([0.0, 0.5, 1.0])
    np.testing.assert_allclose(diffusion.shift_times(t, 1.0), t)
    np.testing.assert_allclose(diffusion.shift_times(t, 3.0), [0.0, 0.75, 1.0])  # 3 * 0.5 / (1 + 2 * 0.5)


def test_sample_times_in_range():
    t = diffusion.sample_times(jax.random.key(1), 1000, shift=3.0)
    assert t.shape == (1000,) and float(t.min()) >= 0.0 and float(t.max()) < 1.0
    assert float(jnp.mean(t)) > 0.6  # shifted towards the noisy end (unshifted mean 0.5)


def test_shape_errors_name_the_shapes():
    with pytest.raises(ValueError, match=r"\(3, 2\).*\(3, 3\)"):
        diffusion.interpolate(jnp.zeros((3, 2)), jnp.zeros((3, 3)), jnp.zeros(3))
    with pytest.raises(ValueError, match=r"t must be \[batch\]"):
        diffusion.interpolate(jnp.zeros((3, 2)), jnp.zeros((3, 2)), jnp.zeros(2))
    with pytest.raises(ValueError, match="shift"):
        diffusion.shift_times(jnp.zeros(2), 0.0)
