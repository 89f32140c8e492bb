"""Samplers of discrete-time diffusion: DDPM's ancestral sampler, DDIM (Song et al. 2021) and DDIM inversion.

A model enters as in `sampling.euler_sample`: `denoise_fn(x, t, step) -> (output, aux)`, where `t` is `[batch]`
integer timesteps (diffusers' count), `step` the traced step index and `output` the schedule's `prediction` type
(`"epsilon"`, `"v_prediction"` or `"sample"`, see `jaxgen.diffusion.ddpm`). Classifier-free guidance wraps a
conditional model with `sampling.guided`, exactly as for the Euler sampler. Each sampler is one `lax.scan` over its
timesteps, so the model compiles once and the whole loop sits inside a `jit`; the state is float32.

Timesteps run from noisy to clean (`spaced_timesteps`); step i goes from `timesteps[i]` to `timesteps[i + 1]`, and
the last step to timestep -1, the clean data (diffusers' `set_alpha_to_one=True`). Following the next entry of the
list rather than `t - T // num_steps` (diffusers' rule) is the same thing for "leading" spacing and keeps "trailing"
and "linspace" exact as well.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxgen.diffusion.ddpm import NoiseSchedule, to_x0_and_noise

DenoiseFn = Callable[[jax.Array, jax.Array, jax.Array], tuple[jax.Array, Any]]


def _leading(num_train: int, num_steps: int) -> np.ndarray:
    return (np.arange(num_steps) * (num_train // num_steps))[::-1]


def _trailing(num_train: int, num_steps: int) -> np.ndarray:
    return np.round(np.arange(num_train, 0, -num_train / num_steps)) - 1


def _linspace(num_train: int, num_steps: int) -> np.ndarray:
    return np.round(np.linspace(0, num_train - 1, num_steps))[::-1]


# diffusers' `timestep_spacing` values. "leading" (DDIM's paper, diffusers' default) never reaches T - 1, so it
# starts from a point that is not quite pure noise; "trailing" starts at T - 1 (Lin et al. 2024 recommend it).
TIMESTEP_SPACINGS: dict[str, Callable[[int, int], np.ndarray]] = {
    "leading": _leading,
    "trailing": _trailing,
    "linspace": _linspace,
}


def spaced_timesteps(num_train_timesteps: int, num_steps: int, spacing: str = "leading",
                     steps_offset: int = 0) -> jax.Array:
    """`[num_steps]` int32 timesteps, noisiest first, as diffusers' `set_timesteps` lays them out (`steps_offset`:
    diffusers' option of that name, 1 in Stable Diffusion's configs)."""
    if spacing not in TIMESTEP_SPACINGS:
        raise ValueError(f"Unknown timestep spacing {spacing!r}; known: {sorted(TIMESTEP_SPACINGS)}")
    if not 1 <= num_steps <= num_train_timesteps:
        raise ValueError(f"num_steps must be in [1, {num_train_timesteps}] (the schedule's timesteps); got {num_steps}")
    if steps_offset and spacing != "leading":
        raise ValueError(f"steps_offset shifts 'leading' timesteps only (diffusers ignores it for {spacing!r}); "
                         f"got steps_offset={steps_offset} with spacing {spacing!r}")
    timesteps = TIMESTEP_SPACINGS[spacing](num_train_timesteps, num_steps).astype(np.int64) + steps_offset
    if timesteps.max() >= num_train_timesteps:
        raise ValueError(f"steps_offset {steps_offset} puts timestep {timesteps.max()} past the schedule's "
                         f"{num_train_timesteps}")
    return jnp.asarray(timesteps, jnp.int32)


def _check_timesteps(timesteps: jax.Array) -> jax.Array:
    timesteps = jnp.asarray(timesteps)
    if timesteps.ndim != 1 or timesteps.shape[0] < 1 or not jnp.issubdtype(timesteps.dtype, jnp.integer):
        raise ValueError(f"timesteps must be a non-empty 1-D integer array; got {timesteps.dtype}{timesteps.shape}")
    return timesteps.astype(jnp.int32)


def _denoise(denoise_fn: DenoiseFn, x: jax.Array, t: jax.Array, index: jax.Array, learned: bool = False):
    """The model at `x` with timestep `t` for every row; `(output, aux)`. `learned`: the output carries variance
    values after the prediction, doubling the last axis."""
    output, aux = denoise_fn(x, jnp.full((x.shape[0],), t, jnp.int32), index)
    expected = x.shape[:-1] + (2 * x.shape[-1],) if learned else x.shape
    if output.shape != expected:
        raise ValueError(f"denoise_fn returned shape {output.shape} for x {x.shape}; expected {expected}"
                         + (" (prediction and variance values along the last axis)" if learned else ""))
    return output, aux


def _x0_and_noise(schedule, prediction, output, x, t, clip_x0):
    alpha, sigma = schedule.alpha_sigma(t)
    x0, noise = to_x0_and_noise(prediction, output, x, alpha, sigma)
    return (x0 if clip_x0 is None else jnp.clip(x0, -clip_x0, clip_x0)), noise


def _scan(step_fn, x: jax.Array, timesteps: jax.Array, rng: jax.Array | None):
    """Runs `step_fn(x, index, t, t_next, key)` over consecutive pairs of `timesteps` + [-1]; key per step."""
    timesteps = _check_timesteps(timesteps)
    following = jnp.concatenate([timesteps[1:], jnp.full((1,), -1, jnp.int32)])
    indices = jnp.arange(timesteps.shape[0])

    def body(x, inputs):
        index, t, t_next = inputs
        key = None if rng is None else jax.random.fold_in(rng, index)
        return step_fn(x, index, t, t_next, key)

    return lax.scan(body, x.astype(jnp.float32), (indices, timesteps, following))


def ddim_sample(denoise_fn: DenoiseFn, schedule: NoiseSchedule, noise: jax.Array, timesteps: jax.Array, *,
                prediction: str = "epsilon", eta: float = 0.0, rng: jax.Array | None = None,
                clip_x0: float | None = None) -> tuple[jax.Array, Any]:
    """DDIM from `noise` (at `timesteps[0]`) to clean data; `(samples, aux stacked over steps)`.

    Each step predicts `(x0, noise)` and moves to the next timestep's noise level with the same noise direction,
    plus fresh noise of standard deviation `eta * sqrt(var)`, var being the DDPM posterior variance between the two
    levels: `eta = 0` is the deterministic DDIM (an ODE solver; `ddim_invert` runs it backwards), `eta = 1` matches
    DDPM's ancestral noise. `clip_x0` clips the predicted x0 to [-clip_x0, clip_x0] (diffusers' `clip_sample`).
    """
    if eta < 0:
        raise ValueError(f"eta must be >= 0; got {eta}")
    if eta > 0 and rng is None:
        raise ValueError(f"ddim_sample with eta={eta} draws noise: pass rng")

    def step(x, index, t, t_next, key):
        output, aux = _denoise(denoise_fn, x, t, index)
        x0, eps = _x0_and_noise(schedule, prediction, output, x, t, clip_x0)
        alpha, sigma = schedule.alpha_sigma(t)
        alpha_next, sigma_next = schedule.alpha_sigma(t_next)
        x_next = alpha_next * x0
        if eta == 0:
            return x_next + sigma_next * eps, aux
        std = eta * sigma_next / sigma * jnp.sqrt(1.0 - (alpha / alpha_next) ** 2)
        direction = jnp.sqrt(jnp.maximum(sigma_next**2 - std**2, 0.0))
        return x_next + direction * eps + std * jax.random.normal(key, x.shape), aux

    return _scan(step, noise, timesteps, rng if eta > 0 else None)


def _fixed_small(posterior_variance, step_beta, model_values):
    return jnp.log(jnp.maximum(posterior_variance, 1e-20))


def _learned_range(posterior_variance, step_beta, model_values):
    """Improved DDPM (Nichol & Dhariwal): the model's values v in [-1, 1] interpolate the log variance between the
    posterior's (v = -1) and the step's beta (v = 1). DiT's released models predict it in their second half of
    channels."""
    fraction = (model_values + 1.0) / 2.0
    return fraction * jnp.log(step_beta) + (1.0 - fraction) * _fixed_small(posterior_variance, step_beta, None)


# diffusers' `variance_type` values: name -> (whether the model outputs the values, log variance of a step).
DDPM_VARIANCES: dict[str, tuple[bool, Callable[..., jax.Array]]] = {
    "fixed_small": (False, _fixed_small),
    "learned_range": (True, _learned_range),
}


def ddpm_sample(denoise_fn: DenoiseFn, schedule: NoiseSchedule, noise: jax.Array, timesteps: jax.Array,
                rng: jax.Array, *, prediction: str = "epsilon", variance: str = "fixed_small",
                clip_x0: float | None = None) -> tuple[jax.Array, Any]:
    """Ancestral sampling (Ho et al.): each step draws from the Gaussian posterior `q(x_next | x_t, x0)` with x0
    the model's prediction, and with the posterior's own variance (`variance="fixed_small"`) or one the model
    predicts (`"learned_range"`: the model returns twice the channels, the prediction then the variance values,
    along the last axis, as DiT does).

    With fewer timesteps than the schedule has, the step uses the betas between consecutive listed timesteps
    (`1 - alphas_cumprod[t] / alphas_cumprod[t_next]`), as diffusers' `DDPMScheduler` does.
    """
    if variance not in DDPM_VARIANCES:
        raise ValueError(f"Unknown DDPM variance {variance!r}; known: {sorted(DDPM_VARIANCES)}")
    learned, log_variance = DDPM_VARIANCES[variance]

    def step(x, index, t, t_next, key):
        output, aux = _denoise(denoise_fn, x, t, index, learned=learned)
        output, model_values = jnp.split(output, 2, axis=-1) if learned else (output, None)
        x0, _ = _x0_and_noise(schedule, prediction, output, x, t, clip_x0)
        alpha, sigma = schedule.alpha_sigma(t)
        alpha_next, sigma_next = schedule.alpha_sigma(t_next)
        step_alpha_sq = (alpha / alpha_next) ** 2  # alphas_cumprod[t] / alphas_cumprod[t_next]
        step_beta = 1.0 - step_alpha_sq
        mean = (alpha_next * step_beta * x0 + jnp.sqrt(step_alpha_sq) * sigma_next**2 * x) / sigma**2
        log_var = log_variance(sigma_next**2 / sigma**2 * step_beta, step_beta, model_values)
        std = jnp.where(t_next >= 0, jnp.exp(0.5 * log_var), 0.0)
        return mean + std * jax.random.normal(key, x.shape), aux

    return _scan(step, noise, timesteps, rng)


def ddim_invert(denoise_fn: DenoiseFn, schedule: NoiseSchedule, x0: jax.Array, timesteps: jax.Array, *,
                prediction: str = "epsilon", refinements: int = 0) -> tuple[jax.Array, Any]:
    """Deterministic DDIM run backwards: the latent at `timesteps[0]` that `ddim_sample(eta=0)` maps back to `x0`.

    `timesteps` are the sampler's (noisiest first); the walk goes through them in reverse. The sampler's step from
    the noisier level `t_up` down to `t` asks the model at the (unknown) point of level `t_up`; the inversion asks
    it at a guess of that point, first the current point (the usual DDIM inversion, diffusers'
    `DDIMInverseScheduler`: exact only as the steps get small), then `refinements` times at its own last answer.
    These fixed-point iterations converge to the exact inverse of the sampler's step when the step is small enough
    for the model to change little between the two levels (on the tests' Gaussian at 50 steps each cuts the
    round-trip error about tenfold); each costs one more model call per step. The model sees the sampler's
    `(t, step)` pairs (step `i` is `timesteps[i]`, counted from the noisy end). `aux` is that of each step's first
    call, stacked from the clean end.
    """
    if refinements < 0:
        raise ValueError(f"refinements must be >= 0; got {refinements}")
    timesteps = _check_timesteps(timesteps)
    ascending = timesteps[::-1]
    levels = jnp.concatenate([jnp.full((1,), -1, jnp.int32), ascending[:-1]])
    indices = jnp.arange(timesteps.shape[0])[::-1]  # the sampler's index of each t_up

    def step(x, inputs):
        index, t, t_up = inputs
        alpha, sigma = schedule.alpha_sigma(t)
        alpha_up, sigma_up = schedule.alpha_sigma(t_up)

        def up(guess, output):
            """The point of level t_up whose sampler step lands on x, with the noise read off the model there."""
            _, eps = _x0_and_noise(schedule, prediction, output, guess, t_up, None)
            return alpha_up * (x - sigma * eps) / alpha + sigma_up * eps

        def refine(_, guess):
            return up(guess, _denoise(denoise_fn, guess, t_up, index)[0])

        output, aux = _denoise(denoise_fn, x, t_up, index)
        return lax.fori_loop(0, refinements, refine, up(x, output)), aux

    return lax.scan(step, x0.astype(jnp.float32), (indices, levels, ascending))
