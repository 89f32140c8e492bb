"""Euler sampler on velocity fields whose Euler solution is known in closed form; the CFG formula and batching."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgen import diffusion


def test_timesteps_run_from_noise_to_data():
    ts = diffusion.euler_timesteps(4)
    np.testing.assert_allclose(ts, [1.0, 0.75, 0.5, 0.25, 0.0])
    shifted = diffusion.euler_timesteps(4, shift=3.0)
    assert float(shifted[0]) == 1.0 and float(shifted[-1]) == 0.0
    assert bool(jnp.all(jnp.diff(shifted) < 0)) and bool(jnp.all(shifted[1:-1] > ts[1:-1]))


@pytest.mark.parametrize("num_steps,shift", [(1, 1.0), (3, 1.0), (7, 3.0)])
def test_straight_path_field_reaches_its_target_exactly(num_steps, shift):
    """v(x, t) = (x - a) / t is the velocity of the straight line from a (t = 0) through x: every Euler step stays
    on that line, so any number of steps lands on a."""
    target = jnp.array([[1.5, -2.0, 0.25], [0.0, 3.0, -1.0]])
    x1 = jax.random.normal(jax.random.key(0), target.shape)

    def velocity(x, t, step):
        return (x - target) / t[:, None], step

    x0, steps = diffusion.euler_sample(velocity, x1, diffusion.euler_timesteps(num_steps, shift))
    np.testing.assert_allclose(x0, target, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(steps, np.arange(num_steps))


def test_linear_field_matches_the_euler_product():
    """v = x with 4 uniform steps from 1 to 0: each step multiplies by (1 - 0.25), so x_0 = 0.75^4 x_1."""
    x1 = jnp.array([[2.0, -1.0]])
    x0, _ = diffusion.euler_sample(lambda x, t, step: (x, None), x1, diffusion.euler_timesteps(4))
    np.testing.assert_allclose(x0, 0.75**4 * x1, rtol=1e-6)


def test_cfg_combine_formula():
    cond, uncond = jnp.array([3.0, 1.0]), jnp.array([1.0, 2.0])
    np.testing.assert_allclose(diffusion.cfg_combine(cond, uncond, 4.0), [1.0 + 4 * 2.0, 2.0 + 4 * -1.0])
    np.testing.assert_allclose(diffusion.cfg_combine(cond, uncond, 1.0), cond)
    np.testing.assert_allclose(diffusion.cfg_combine(cond, uncond, 0.0), uncond)
    with pytest.raises(ValueError, match=r"\(2,\).*\(3,\)"):
        diffusion.cfg_combine(cond, jnp.zeros(3), 2.0)


def test_guided_runs_one_doubled_batch():
    """The model sees [cond; uncond] rows with x and t repeated; the result is the CFG combination per row."""
    calls = []

    def model_fn(x, t, step, conditioning):
        calls.append((x.shape, t.shape))
        return x * 0 + conditioning[:, None], {"rows": conditioning}

    cond, uncond = jnp.array([1.0, 2.0, 3.0]), jnp.array([0.5, 0.5, 0.5])
    velocity = diffusion.guided(model_fn, cond, uncond, scale=2.0)
    v, aux = velocity(jnp.zeros((3, 4)), jnp.ones(3), 0)
    assert calls == [((6, 4), (6,))]
    np.testing.assert_allclose(v, np.broadcast_to((0.5 + 2.0 * (cond - 0.5))[:, None], (3, 4)))
    np.testing.assert_allclose(aux["rows"], [1.0, 2.0, 3.0, 0.5, 0.5, 0.5])


def test_euler_sample_rejects_bad_timesteps_and_velocities():
    with pytest.raises(ValueError, match="timesteps"):
        diffusion.euler_sample(lambda x, t, s: (x, None), jnp.zeros((1, 2)), jnp.array([1.0]))
    with pytest.raises(ValueError, match=r"velocity_fn returned shape \(1, 3\)"):
        diffusion.euler_sample(lambda x, t, s: (jnp.zeros((1, 3)), None), jnp.zeros((1, 2)),
                               diffusion.euler_timesteps(2))


def test_drop_conditions_replaces_whole_rows():
    cond = {"caption": jnp.arange(1.0, 401.0).reshape(200, 2), "label": jnp.arange(200)}
    null = {"caption": jnp.zeros((1, 2)), "label": jnp.full((1,), -1)}
    kept = diffusion.drop_conditions(jax.random.key(0), cond, null, 0.0)
    np.testing.assert_array_equal(kept["label"], cond["label"])
    mixed = diffusion.drop_conditions(jax.random.key(0), cond, null, 0.3)
    dropped = np.asarray(mixed["label"]) == -1
    assert 30 < dropped.sum() < 90  # 60 expected
    np.testing.assert_array_equal(np.asarray(mixed["caption"])[dropped], 0.0)  # caption and label go together
    np.testing.assert_array_equal(np.asarray(mixed["caption"])[~dropped], np.asarray(cond["caption"])[~dropped])
    assert (np.asarray(diffusion.drop_conditions(jax.random.key(1), cond, null, 1.0)["label"]) == -1).all()
    with pytest.raises(ValueError, match="probability"):
        diffusion.drop_conditions(jax.random.key(0), cond, null, 1.5)

