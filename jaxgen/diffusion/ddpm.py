"""Discrete-time diffusion (DDPM, Ho et al. 2020): noise schedules, what a model predicts, and the training loss.

Timesteps are integers `0 .. T-1` counted as diffusers counts them (t = 0 is the least noisy), so a model ported from
diffusers sees the same `t`. Noising is `x_t = alpha_t x_0 + sigma_t noise` with `alpha_t = sqrt(alphas_cumprod[t])`
and `sigma_t = sqrt(1 - alphas_cumprod[t])`; timestep -1 stands for clean data (alpha 1, sigma 0), where a sampler
ends. A model predicts one of (the names are diffusers' `prediction_type`):
- `"epsilon"`: the noise;
- `"v_prediction"`: `v = alpha_t noise - sigma_t x_0` (Salimans & Ho 2022), well scaled at both ends of the schedule;
- `"sample"`: `x_0` itself.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np


@flax.struct.dataclass
class NoiseSchedule:
    """`betas` and `alphas_cumprod` `[T]` (float32). A pytree, so it passes into `jit` as an argument."""

    betas: jax.Array
    alphas_cumprod: jax.Array

    @classmethod
    def from_betas(cls, betas) -> "NoiseSchedule":
        betas = np.asarray(betas, np.float32)
        if betas.ndim != 1 or not np.all((betas > 0) & (betas < 1)):
            raise ValueError(f"betas must be a 1-D array in (0, 1); got shape {betas.shape}, "
                             f"range [{betas.min() if betas.size else None}, {betas.max() if betas.size else None}]")
        return cls(betas=jnp.asarray(betas), alphas_cumprod=jnp.cumprod(1.0 - jnp.asarray(betas)))

    @property
    def num_timesteps(self) -> int:
        return self.betas.shape[0]

    def alpha_sigma(self, t: jax.Array) -> tuple[jax.Array, jax.Array]:
        """`(alpha_t, sigma_t)` for integer timesteps `t` (any shape); t = -1 gives (1, 0), the clean data."""
        t = jnp.asarray(t)
        alphas_cumprod = jnp.where(t >= 0, self.alphas_cumprod[jnp.maximum(t, 0)], 1.0)
        return jnp.sqrt(alphas_cumprod), jnp.sqrt(1.0 - alphas_cumprod)


def linear_schedule(num_timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> NoiseSchedule:
    """Betas evenly spaced from `beta_start` to `beta_end` (Ho et al.; DiT; diffusers' "linear")."""
    return NoiseSchedule.from_betas(np.linspace(beta_start, beta_end, num_timesteps, dtype=np.float32))


def scaled_linear_schedule(num_timesteps: int = 1000, beta_start: float = 0.00085,
                           beta_end: float = 0.012) -> NoiseSchedule:
    """Square roots of the betas evenly spaced (Stable Diffusion's latent models; diffusers' "scaled_linear")."""
    return NoiseSchedule.from_betas(
        np.linspace(beta_start**0.5, beta_end**0.5, num_timesteps, dtype=np.float32) ** 2)


def cosine_schedule(num_timesteps: int = 1000, offset: float = 0.008, max_beta: float = 0.999) -> NoiseSchedule:
    """`alphas_cumprod` following `cos((s + offset) / (1 + offset) * pi / 2)^2` over s = t / T (Nichol & Dhariwal
    2021; diffusers' "squaredcos_cap_v2"); betas are capped at `max_beta`, which keeps the last step finite."""

    def alpha_bar(s: float) -> float:
        return math.cos((s + offset) / (1 + offset) * math.pi / 2) ** 2

    betas = [min(1 - alpha_bar((i + 1) / num_timesteps) / alpha_bar(i / num_timesteps), max_beta)
             for i in range(num_timesteps)]
    return NoiseSchedule.from_betas(np.asarray(betas, np.float64).astype(np.float32))


SCHEDULES: dict[str, Callable[..., NoiseSchedule]] = {
    "linear": linear_schedule,
    "scaled_linear": scaled_linear_schedule,
    "cosine": cosine_schedule,
}


def make_schedule(name: str, num_timesteps: int = 1000, **kwargs) -> NoiseSchedule:
    """A schedule by name (`SCHEDULES`; diffusers' `squaredcos_cap_v2` is "cosine")."""
    if name not in SCHEDULES:
        raise ValueError(f"Unknown noise schedule {name!r}; known: {sorted(SCHEDULES)}")
    return SCHEDULES[name](num_timesteps, **kwargs)


# ======================================================================================================================
# What the model predicts.
# ======================================================================================================================


def _broadcast(scale: jax.Array, x: jax.Array) -> jax.Array:
    """A `[batch]` (or scalar) coefficient shaped to multiply `x` `[batch, ...]`."""
    scale = jnp.asarray(scale, jnp.float32)
    return scale.reshape(scale.shape + (1,) * (x.ndim - scale.ndim))


# Each maps (prediction, x_t, alpha, sigma) to (x_0, noise); alpha and sigma are already broadcast to x_t.
_TO_X0_AND_NOISE: dict[str, Callable[..., tuple[jax.Array, jax.Array]]] = {
    "epsilon": lambda eps, x, a, s: ((x - s * eps) / a, eps),
    "v_prediction": lambda v, x, a, s: (a * x - s * v, s * x + a * v),
    "sample": lambda x0, x, a, s: (x0, (x - a * x0) / s),
}

_TARGETS: dict[str, Callable[..., jax.Array]] = {
    "epsilon": lambda x0, noise, a, s: noise,
    "v_prediction": lambda x0, noise, a, s: a * noise - s * x0,
    "sample": lambda x0, noise, a, s: x0,
}

PREDICTIONS = tuple(_TARGETS)


def _check_prediction(prediction: str) -> None:
    if prediction not in _TARGETS:
        raise ValueError(f"Unknown prediction type {prediction!r}; known: {list(PREDICTIONS)}")


def add_noise(schedule: NoiseSchedule, x0: jax.Array, noise: jax.Array, t: jax.Array) -> jax.Array:
    """`x_t = alpha_t x0 + sigma_t noise` for integer timesteps `t` `[batch]`."""
    if x0.shape != noise.shape:
        raise ValueError(f"x0 and noise must share a shape; got {x0.shape} and {noise.shape}")
    alpha, sigma = schedule.alpha_sigma(t)
    return (_broadcast(alpha, x0) * x0 + _broadcast(sigma, x0) * noise).astype(x0.dtype)


def target(prediction: str, x0: jax.Array, noise: jax.Array, alpha: jax.Array, sigma: jax.Array) -> jax.Array:
    """What a `prediction`-type model should output for `x_t = alpha x0 + sigma noise` (`alpha`, `sigma` `[batch]`)."""
    _check_prediction(prediction)
    return _TARGETS[prediction](x0, noise, _broadcast(alpha, x0), _broadcast(sigma, x0))


def to_x0_and_noise(prediction: str, output: jax.Array, x_t: jax.Array, alpha: jax.Array,
                    sigma: jax.Array) -> tuple[jax.Array, jax.Array]:
    """`(x0, noise)` implied by a model's `output` at `x_t` (float32): the conversion every sampler step starts with.

    With `"epsilon"` the implied x0 divides by alpha, with `"sample"` the noise divides by sigma; both stay finite on
    the timesteps of a schedule (alpha_t > 0 and sigma_t > 0 for t >= 0)."""
    _check_prediction(prediction)
    if output.shape != x_t.shape:
        raise ValueError(f"The model returned shape {output.shape} for x_t {x_t.shape}")
    return _TO_X0_AND_NOISE[prediction](output.astype(jnp.float32), x_t.astype(jnp.float32),
                                        _broadcast(alpha, x_t), _broadcast(sigma, x_t))


# ======================================================================================================================
# Training.
# ======================================================================================================================


def noisy_example(schedule: NoiseSchedule, rng: jax.Array, x0: jax.Array,
                  prediction: str = "epsilon") -> tuple[jax.Array, jax.Array, jax.Array]:
    """`(x_t, t, target)` for a training step: t uniform over the T timesteps `[batch]` (int32), fresh noise."""
    _check_prediction(prediction)
    t_rng, noise_rng = jax.random.split(rng)
    t = jax.random.randint(t_rng, (x0.shape[0],), 0, schedule.num_timesteps)
    noise = jax.random.normal(noise_rng, x0.shape, jnp.float32)
    alpha, sigma = schedule.alpha_sigma(t)
    return add_noise(schedule, x0, noise.astype(x0.dtype), t), t, target(prediction, x0, noise, alpha, sigma)


def loss(model_fn: Callable[[jax.Array, jax.Array, Any], jax.Array], schedule: NoiseSchedule, rng: jax.Array,
         x0: jax.Array, cond: Any = None, prediction: str = "epsilon") -> jax.Array:
    """The simple DDPM objective: mean squared error of `model_fn(x_t, t, cond)` against its target, in float32.

    For classifier-free guidance the task first replaces some rows of `cond` by its null condition
    (`sampling.drop_conditions`), so the same model learns the unconditional prediction the guided samplers ask for.
    """
    x_t, t, wanted = noisy_example(schedule, rng, x0, prediction)
    output = model_fn(x_t, t, cond)
    if output.shape != x0.shape:
        raise ValueError(f"The model returned shape {output.shape} for x {x0.shape}")
    return jnp.mean((output.astype(jnp.float32) - wanted.astype(jnp.float32)) ** 2)
