"""Our schedules, timestep spacings and whole DDPM / DDIM sampling loops against diffusers' `DDPMScheduler` and
`DDIMScheduler` (the `[parity]` extra), in float32.

Both sides run the same deterministic stand-in model (numpy on diffusers' side) through every step; the noise each
of our steps draws (`fold_in(rng, step)`) is handed to diffusers, as `variance_noise` for DDIM and through its
`randn_tensor` for DDPM, so stochastic steps are compared exactly too.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgen import diffusion
from support.parity import require

torch = require("torch")
schedulers = require("diffusers.schedulers")
ddpm_module = require("diffusers.schedulers.scheduling_ddpm")

T, STEPS, SHAPE = 1000, 10, (2, 3, 4)
BETAS = {"linear": dict(), "scaled_linear": dict(beta_start=0.00085, beta_end=0.012), "squaredcos_cap_v2": dict()}
OURS = {"linear": "linear", "scaled_linear": "scaled_linear", "squaredcos_cap_v2": "cosine"}


def model_np(x, t):
    return (0.6 * np.cos(t / 300.0) * x + 0.2 * np.sin(x)).astype(np.float32)


def model_jax(x, t, step):
    return 0.6 * jnp.cos(t[:, None, None] / 300.0) * x + 0.2 * jnp.sin(x), None


@pytest.mark.parametrize("beta_schedule", sorted(BETAS))
def test_schedules_match(beta_schedule):
    theirs = schedulers.DDPMScheduler(num_train_timesteps=T, beta_schedule=beta_schedule, **BETAS[beta_schedule])
    ours = diffusion.make_schedule(OURS[beta_schedule], T, **BETAS[beta_schedule])
    np.testing.assert_allclose(ours.betas, theirs.betas.numpy(), rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(ours.alphas_cumprod, theirs.alphas_cumprod.numpy(), rtol=2e-5, atol=1e-9)


@pytest.mark.parametrize("spacing,steps,offset", [(spacing, steps, 0) for spacing in sorted(diffusion.TIMESTEP_SPACINGS)
                                                  for steps in (10, 7, 50)] + [("leading", 50, 1)])
def test_timesteps_match(spacing, steps, offset):
    theirs = schedulers.DDIMScheduler(num_train_timesteps=T, timestep_spacing=spacing, steps_offset=offset)
    theirs.set_timesteps(steps)
    np.testing.assert_array_equal(diffusion.spaced_timesteps(T, steps, spacing, offset), theirs.timesteps.numpy())


def _noises(rng, count):
    return [np.array(jax.random.normal(jax.random.fold_in(rng, i), SHAPE)) for i in range(count)]


@pytest.mark.parametrize("prediction,spacing,eta", [("epsilon", "leading", 0.0), ("v_prediction", "trailing", 0.0),
                                                    ("epsilon", "trailing", 0.7), ("v_prediction", "leading", 1.0)])
def test_ddim_loop_matches(prediction, spacing, eta):
    theirs = schedulers.DDIMScheduler(num_train_timesteps=T, beta_schedule="squaredcos_cap_v2", clip_sample=False,
                                      prediction_type=prediction, timestep_spacing=spacing, set_alpha_to_one=True)
    theirs.set_timesteps(STEPS)
    start, rng = np.array(jax.random.normal(jax.random.key(0), SHAPE)), jax.random.key(1)
    x = torch.from_numpy(start)
    for t, noise in zip(theirs.timesteps, _noises(rng, STEPS)):
        output = torch.from_numpy(model_np(x.numpy(), float(t)))
        x = theirs.step(output, t, x, eta=eta, variance_noise=torch.from_numpy(noise) if eta else None).prev_sample
    ours, _ = diffusion.ddim_sample(model_jax, diffusion.cosine_schedule(T), jnp.asarray(start),
                                    diffusion.spaced_timesteps(T, STEPS, spacing), prediction=prediction, eta=eta,
                                    rng=rng)
    np.testing.assert_allclose(ours, x.numpy(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
def test_ddpm_loop_matches(prediction, monkeypatch):
    theirs = schedulers.DDPMScheduler(num_train_timesteps=T, clip_sample=False, prediction_type=prediction,
                                      variance_type="fixed_small")
    theirs.set_timesteps(STEPS)
    start, rng = np.array(jax.random.normal(jax.random.key(0), SHAPE)), jax.random.key(1)
    noises = iter(_noises(rng, STEPS))
    monkeypatch.setattr(ddpm_module, "randn_tensor", lambda *args, **kwargs: torch.from_numpy(next(noises)))
    x = torch.from_numpy(start)
    for t in theirs.timesteps:
        x = theirs.step(torch.from_numpy(model_np(x.numpy(), float(t))), t, x).prev_sample
    ours, _ = diffusion.ddpm_sample(model_jax, diffusion.linear_schedule(T), jnp.asarray(start),
                                    diffusion.spaced_timesteps(T, STEPS), rng, prediction=prediction)
    np.testing.assert_allclose(ours, x.numpy(), rtol=1e-4, atol=1e-5)


def test_add_noise_and_v_target_match():
    theirs = schedulers.DDPMScheduler(num_train_timesteps=T)
    x0, noise = (np.array(a) for a in jax.random.normal(jax.random.key(2), (2,) + SHAPE))
    t = np.array([0, 999])
    ours_schedule = diffusion.linear_schedule(T)
    np.testing.assert_allclose(
        diffusion.add_noise(ours_schedule, jnp.asarray(x0), jnp.asarray(noise), jnp.asarray(t)),
        theirs.add_noise(torch.from_numpy(x0), torch.from_numpy(noise), torch.from_numpy(t)).numpy(), rtol=1e-5,
        atol=1e-6)
    alpha, sigma = ours_schedule.alpha_sigma(jnp.asarray(t))
    np.testing.assert_allclose(
        diffusion.target("v_prediction", jnp.asarray(x0), jnp.asarray(noise), alpha, sigma),
        theirs.get_velocity(torch.from_numpy(x0), torch.from_numpy(noise), torch.from_numpy(t)).numpy(), rtol=1e-5,
        atol=1e-6)


def test_ddpm_loop_with_learned_variance_matches(monkeypatch):
    """DiT's sampler: the model returns the noise and then the variance values (here 2-D samples, so diffusers'
    channel axis 1 is our last axis)."""
    theirs = schedulers.DDPMScheduler(num_train_timesteps=T, clip_sample=False, variance_type="learned_range")
    theirs.set_timesteps(STEPS)
    shape, rng = (4, 3), jax.random.key(1)
    start = np.array(jax.random.normal(jax.random.key(0), shape))
    noises = iter([np.array(jax.random.normal(jax.random.fold_in(rng, i), shape)) for i in range(STEPS)])
    monkeypatch.setattr(ddpm_module, "randn_tensor", lambda *args, **kwargs: torch.from_numpy(next(noises)))

    def both(x, t):
        return np.concatenate([0.6 * np.cos(t / 300.0) * x, np.tanh(2 * x)], axis=-1).astype(np.float32)

    x = torch.from_numpy(start)
    for t in theirs.timesteps:
        x = theirs.step(torch.from_numpy(both(x.numpy(), float(t))), t, x).prev_sample
    ours, _ = diffusion.ddpm_sample(
        lambda x, t, step: (jnp.concatenate([0.6 * jnp.cos(t[:, None] / 300.0) * x, jnp.tanh(2 * x)], -1), None),
        diffusion.linear_schedule(T), jnp.asarray(start), diffusion.spaced_timesteps(T, STEPS), rng,
        variance="learned_range")
    np.testing.assert_allclose(ours, x.numpy(), rtol=1e-4, atol=1e-5)
