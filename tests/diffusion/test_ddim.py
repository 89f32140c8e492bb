"""DDPM, DDIM and DDIM inversion with the exact model of Gaussian data, timestep spacing, and guidance at scale 1.

For data N(mu, sd^2) (per dimension) the noisy marginal at level (alpha, sigma) is N(alpha mu, alpha^2 sd^2 +
sigma^2), so the ideal denoiser is known in closed form: E[noise | x_t] = sigma (x_t - alpha mu) / (alpha^2 sd^2 +
sigma^2). A sampler driven by it must produce N(mu, sd^2).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgen import diffusion

MU, SD = jnp.array([1.5, -0.5]), jnp.array([0.5, 2.0])
SCHEDULE = diffusion.linear_schedule(1000)


def exact_model(prediction):
    """The ideal `prediction`-type denoiser of N(MU, SD^2) under SCHEDULE, as a `denoise_fn` (aux: the step)."""

    def denoise_fn(x, t, step):
        alpha, sigma = (c[:, None] for c in SCHEDULE.alpha_sigma(t))
        noise = sigma * (x - alpha * MU) / (alpha**2 * SD**2 + sigma**2)
        x0 = (x - sigma * noise) / alpha
        return diffusion.target(prediction, x0, noise, alpha[:, 0], sigma[:, 0]), step

    return denoise_fn


def test_spaced_timesteps_as_diffusers_lays_them_out():
    np.testing.assert_array_equal(diffusion.spaced_timesteps(1000, 4), [750, 500, 250, 0])
    np.testing.assert_array_equal(diffusion.spaced_timesteps(1000, 4, "leading", steps_offset=1), [751, 501, 251, 1])
    np.testing.assert_array_equal(diffusion.spaced_timesteps(1000, 4, "trailing"), [999, 749, 499, 249])
    np.testing.assert_array_equal(diffusion.spaced_timesteps(1000, 4, "linspace"), [999, 666, 333, 0])
    with pytest.raises(ValueError, match=r"Unknown timestep spacing 'lead'"):
        diffusion.spaced_timesteps(1000, 4, "lead")
    with pytest.raises(ValueError, match=r"steps_offset shifts 'leading' timesteps only"):
        diffusion.spaced_timesteps(1000, 4, "trailing", steps_offset=1)
    with pytest.raises(ValueError, match=r"num_steps must be in \[1, 10\]"):
        diffusion.spaced_timesteps(10, 11)


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
def test_ddpm_with_the_exact_model_samples_the_gaussian(prediction):
    noise = jax.random.normal(jax.random.key(0), (8000, 2))
    sample = jax.jit(lambda z: diffusion.ddpm_sample(exact_model(prediction), SCHEDULE, z,
                                                     diffusion.spaced_timesteps(1000, 1000), jax.random.key(1),
                                                     prediction=prediction))
    x, steps = sample(noise)
    np.testing.assert_array_equal(steps, np.arange(1000))
    np.testing.assert_allclose(x.mean(0), MU, atol=0.04 * SD.max())
    np.testing.assert_allclose(x.std(0) / SD, 1.0, atol=0.03)


def test_ddim_eta_zero_is_deterministic_and_eta_one_is_not():
    ts = diffusion.spaced_timesteps(1000, 20)
    noise = jax.random.normal(jax.random.key(0), (64, 2))
    model = exact_model("epsilon")
    run = jax.jit(lambda z, key, eta: diffusion.ddim_sample(model, SCHEDULE, z, ts, eta=eta, rng=key)[0],
                  static_argnums=2)
    np.testing.assert_array_equal(run(noise, jax.random.key(1), 0.0), run(noise, jax.random.key(2), 0.0))
    assert not np.allclose(run(noise, jax.random.key(1), 1.0), run(noise, jax.random.key(2), 1.0))
    with pytest.raises(ValueError, match="pass rng"):
        diffusion.ddim_sample(model, SCHEDULE, noise, ts, eta=0.5)


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
def test_ddim_inversion_then_sampling_returns_the_start(prediction):
    """50 trailing steps; the plain inversion is off by O(1/steps), its fixed-point refinements close the gap."""
    model, ts = exact_model(prediction), diffusion.spaced_timesteps(1000, 50, "trailing")
    x0 = MU + SD * jax.random.normal(jax.random.key(3), (256, 2))

    @jax.jit
    def roundtrip(x0):
        plain, _ = diffusion.ddim_invert(model, SCHEDULE, x0, ts, prediction=prediction)
        refined, _ = diffusion.ddim_invert(model, SCHEDULE, x0, ts, prediction=prediction, refinements=3)
        back = [diffusion.ddim_sample(model, SCHEDULE, z, ts, prediction=prediction)[0] for z in (plain, refined)]
        return refined, back

    latent, (back_plain, back_refined) = roundtrip(x0)
    _, steps = diffusion.ddim_invert(model, SCHEDULE, x0, ts, prediction=prediction)
    np.testing.assert_array_equal(steps, np.arange(50)[::-1])  # the sampler's step index of each timestep
    error_plain, error_refined = (float(jnp.max(jnp.abs(b - x0) / SD)) for b in (back_plain, back_refined))
    assert error_refined < 1e-3, error_refined
    assert error_plain > 10 * error_refined  # the refinements do the work
    alpha, sigma = SCHEDULE.alpha_sigma(999)  # the exact probability-flow map sends x0 to this latent
    exact = alpha * MU + jnp.sqrt(alpha**2 * SD**2 + sigma**2) * (x0 - MU) / SD
    assert float(jnp.mean(jnp.abs(latent - exact)) / jnp.mean(jnp.abs(exact))) < 0.1  # 50 steps: about 0.06


@pytest.mark.parametrize("sampler", ["euler", "ddim", "ddpm"])
def test_guidance_at_scale_one_is_the_conditional_model(sampler):
    """A class-conditional model whose null condition (class -1) predicts something else entirely."""

    def model_fn(x, t, step, labels):
        shift = jnp.where(labels[:, None] >= 0, labels[:, None].astype(jnp.float32), 40.0)
        return 0.1 * x + shift, step

    labels, null = jnp.array([0, 1, 2]), jnp.full((3,), -1)
    noise = jax.random.normal(jax.random.key(0), (3, 4))
    run = {
        "euler": lambda fn: diffusion.euler_sample(fn, noise, diffusion.euler_timesteps(4)),
        "ddim": lambda fn: diffusion.ddim_sample(fn, SCHEDULE, noise, diffusion.spaced_timesteps(1000, 4)),
        "ddpm": lambda fn: diffusion.ddpm_sample(fn, SCHEDULE, noise, diffusion.spaced_timesteps(1000, 4),
                                                 jax.random.key(1)),
    }[sampler]
    conditional, _ = run(lambda x, t, step: model_fn(x, t, step, labels))
    guided, _ = run(diffusion.guided(model_fn, labels, null, 1.0))
    strongly_guided, _ = run(diffusion.guided(model_fn, labels, null, 3.0))
    np.testing.assert_allclose(guided, conditional, rtol=1e-5, atol=1e-5)
    assert not np.allclose(strongly_guided, conditional, atol=1e-2)


def test_learned_variance_spans_the_posterior_and_the_beta():
    """Values -1 give the posterior's variance (the fixed-small sampler exactly), +1 the larger step beta."""
    ts, rng = diffusion.spaced_timesteps(1000, 5), jax.random.key(1)
    noise = jax.random.normal(jax.random.key(0), (256, 2))
    model = exact_model("epsilon")

    def with_values(value):
        return lambda x, t, step: (jnp.concatenate([model(x, t, step)[0], jnp.full_like(x, value)], -1), None)

    fixed, _ = diffusion.ddpm_sample(model, SCHEDULE, noise, ts, rng)
    low, _ = diffusion.ddpm_sample(with_values(-1.0), SCHEDULE, noise, ts, rng, variance="learned_range")
    high, _ = diffusion.ddpm_sample(with_values(1.0), SCHEDULE, noise, ts, rng, variance="learned_range")
    np.testing.assert_allclose(low, fixed, rtol=1e-5, atol=1e-5)
    assert float(high.std()) > float(fixed.std())
    with pytest.raises(ValueError, match=r"returned shape \(256, 2\) for x \(256, 2\); expected \(256, 4\)"):
        diffusion.ddpm_sample(model, SCHEDULE, noise, ts, rng, variance="learned_range")
    with pytest.raises(ValueError, match="Unknown DDPM variance 'learned'"):
        diffusion.ddpm_sample(model, SCHEDULE, noise, ts, rng, variance="learned")


def test_samplers_reject_bad_timesteps_and_outputs():
    with pytest.raises(ValueError, match="integer"):
        diffusion.ddim_sample(exact_model("epsilon"), SCHEDULE, jnp.zeros((1, 2)), jnp.array([0.5]))
    with pytest.raises(ValueError, match=r"denoise_fn returned shape \(1, 3\)"):
        diffusion.ddpm_sample(lambda x, t, s: (jnp.zeros((1, 3)), None), SCHEDULE, jnp.zeros((1, 2)),
                              jnp.array([5, 0]), jax.random.key(0))
