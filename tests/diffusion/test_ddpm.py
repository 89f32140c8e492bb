"""Noise schedules against hand-computed values; the epsilon / v / x0 conversions; the training example and loss."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgen import diffusion


def test_linear_schedule_hand_values():
    schedule = diffusion.linear_schedule(1000, 1e-4, 0.02)
    step = (0.02 - 1e-4) / 999
    np.testing.assert_allclose(np.asarray(schedule.betas)[[0, 1, 500, 999]],
                               [1e-4, 1e-4 + step, 1e-4 + 500 * step, 0.02], rtol=1e-6)
    first_three = [0.9999, 0.9999 * (1 - 1e-4 - step), 0.9999 * (1 - 1e-4 - step) * (1 - 1e-4 - 2 * step)]
    np.testing.assert_allclose(schedule.alphas_cumprod[:3], first_three, rtol=1e-6)
    # log alphas_cumprod[T-1] = sum log(1 - beta_i) with the betas an arithmetic series: about -10.12
    expected = math.exp(sum(math.log(1 - (1e-4 + i * step)) for i in range(1000)))
    np.testing.assert_allclose(schedule.alphas_cumprod[999], expected, rtol=1e-4)


def test_cosine_schedule_follows_its_closed_form():
    """alphas_cumprod[t] = f((t + 1) / T) / f(0), f(s) = cos((s + 0.008) / 1.008 * pi / 2)^2, until the beta cap."""
    schedule = diffusion.cosine_schedule(1000)

    def f(s):
        return math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2

    np.testing.assert_allclose(schedule.betas[0], 1 - f(0.001) / f(0.0), rtol=1e-5)  # about 4.128e-5
    for t in (0, 1, 499, 900):
        np.testing.assert_allclose(schedule.alphas_cumprod[t], f((t + 1) / 1000) / f(0.0), rtol=2e-4)
    np.testing.assert_allclose(schedule.betas[999], 0.999)  # f(1) = 0 would make it 1: capped


def test_scaled_linear_and_the_registry():
    schedule = diffusion.make_schedule("scaled_linear", 10, beta_start=0.01, beta_end=0.04)
    np.testing.assert_allclose(np.asarray(schedule.betas)[[0, 9]], [0.01, 0.04], rtol=1e-6)
    np.testing.assert_allclose(schedule.betas[3], (0.1 + 3 * (0.2 - 0.1) / 9) ** 2, rtol=1e-6)
    with pytest.raises(ValueError, match=r"Unknown noise schedule 'cosin'.*cosine"):
        diffusion.make_schedule("cosin")
    with pytest.raises(ValueError, match="betas must be a 1-D array in"):
        diffusion.NoiseSchedule.from_betas([0.1, 1.0])


def test_alpha_sigma_at_minus_one_is_clean_data():
    schedule = diffusion.linear_schedule(10)
    alpha, sigma = schedule.alpha_sigma(jnp.array([-1, 0, 9]))
    np.testing.assert_allclose(alpha**2 + sigma**2, 1.0, rtol=1e-6)
    np.testing.assert_allclose([alpha[0], sigma[0]], [1.0, 0.0])
    np.testing.assert_allclose(alpha[1:] ** 2, schedule.alphas_cumprod[jnp.array([0, 9])], rtol=1e-6)


@pytest.mark.parametrize("prediction", diffusion.PREDICTIONS)
def test_every_prediction_converts_back_to_its_x0_and_noise(prediction):
    x0, noise = jax.random.normal(jax.random.key(0), (2, 3, 4, 4, 2))
    alpha, sigma = jnp.array([0.9, 0.5, 0.1]), jnp.sqrt(1 - jnp.array([0.9, 0.5, 0.1]) ** 2)
    x_t = alpha[:, None, None, None] * x0 + sigma[:, None, None, None] * noise
    output = diffusion.target(prediction, x0, noise, alpha, sigma)
    got_x0, got_noise = diffusion.to_x0_and_noise(prediction, output, x_t, alpha, sigma)
    np.testing.assert_allclose(got_x0, x0, atol=2e-5)
    np.testing.assert_allclose(got_noise, noise, atol=2e-5)


def test_v_target_by_hand_and_errors():
    v = diffusion.target("v_prediction", jnp.array([[2.0]]), jnp.array([[1.0]]), jnp.array([0.6]), jnp.array([0.8]))
    np.testing.assert_allclose(v, [[0.6 * 1.0 - 0.8 * 2.0]])
    with pytest.raises(ValueError, match=r"Unknown prediction type 'eps'.*'epsilon'"):
        diffusion.target("eps", jnp.zeros((1, 1)), jnp.zeros((1, 1)), jnp.ones(1), jnp.zeros(1))
    with pytest.raises(ValueError, match=r"returned shape \(1, 2\) for x_t \(1, 1\)"):
        diffusion.to_x0_and_noise("epsilon", jnp.zeros((1, 2)), jnp.zeros((1, 1)), jnp.ones(1), jnp.zeros(1))


def test_noisy_example_and_loss():
    schedule = diffusion.linear_schedule(100)
    x0 = jax.random.normal(jax.random.key(1), (512, 3))
    x_t, t, wanted = diffusion.noisy_example(schedule, jax.random.key(2), x0, "v_prediction")
    assert t.dtype == jnp.int32 and int(t.min()) >= 0 and int(t.max()) < 100 and len(set(np.asarray(t))) > 50
    alpha, sigma = schedule.alpha_sigma(t)
    got_x0, _ = diffusion.to_x0_and_noise("v_prediction", wanted, x_t, alpha, sigma)
    np.testing.assert_allclose(got_x0, x0, atol=1e-4)

    def perfect(x, t, cond):
        return wanted + cond

    assert float(diffusion.loss(perfect, schedule, jax.random.key(2), x0, 0.0, "v_prediction")) < 1e-10
    np.testing.assert_allclose(diffusion.loss(perfect, schedule, jax.random.key(2), x0, 0.5, "v_prediction"), 0.25,
                               rtol=1e-5)
