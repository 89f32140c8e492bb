"""Rectified flow (flow matching with a straight path): t = 0 is data, t = 1 is Gaussian noise.

`x_t = (1 - t) x_0 + t noise` and the model learns the constant velocity `dx_t/dt = noise - x_0` (the convention of
SD3, HunyuanVideo and CogVideoX-style flow models; integrating it from t = 1 down to 0 generates). `shift_times`
is the resolution shift of SD3/HunyuanVideo: it moves time towards the noisy end, where large videos need more steps
because neighbouring tokens share their noise-free content.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp


def _times_like(t: jax.Array, x: jax.Array) -> jax.Array:
    t = jnp.asarray(t, jnp.float32)
    if t.ndim != 1 or t.shape[0] != x.shape[0]:
        raise ValueError(f"t must be [batch] for x {x.shape}; got t {t.shape}")
    return t.reshape((-1,) + (1,) * (x.ndim - 1))


def interpolate(x0: jax.Array, noise: jax.Array, t: jax.Array) -> jax.Array:
    """The point of the path at time `t` `[batch]`: `(1 - t) x0 + t noise`."""
    if x0.shape != noise.shape:
        raise ValueError(f"x0 and noise must share a shape; got {x0.shape} and {noise.shape}")
    t = _times_like(t, x0)
    return ((1.0 - t) * x0 + t * noise).astype(x0.dtype)


def velocity_target(x0: jax.Array, noise: jax.Array) -> jax.Array:
    """What the model predicts at every t on the straight path: `noise - x0`."""
    if x0.shape != noise.shape:
        raise ValueError(f"x0 and noise must share a shape; got {x0.shape} and {noise.shape}")
    return noise - x0


def shift_times(t: jax.Array, shift: float) -> jax.Array:
    """`shift t / (1 + (shift - 1) t)`: identity at shift 1, keeps 0 and 1 fixed, pushes towards 1 when shift > 1."""
    if shift <= 0:
        raise ValueError(f"shift must be positive; got {shift}")
    return shift * t / (1.0 + (shift - 1.0) * t)


def sample_times(rng: jax.Array, batch: int, shift: float = 1.0) -> jax.Array:
    """Training times `[batch]`: uniform on [0, 1), then shifted like the sampler's schedule."""
    return shift_times(jax.random.uniform(rng, (batch,)), shift)


def resolution_shift(image_tokens: int, base_tokens: int = 256, max_tokens: int = 4096, base_shift: float = 0.5,
                     max_shift: float = 1.15) -> float:
    """The `shift` diffusers' FLUX/SD3 pipelines pick from the image token count (their "dynamic shifting"):
    `exp(mu)`, `mu` linear in the count from `base_shift` at `base_tokens` to `max_shift` at `max_tokens`
    (`calculate_shift`). Their scheduler's exponential `time_shift(mu, 1, t) = e^mu / (e^mu + 1/t - 1)` is
    `shift_times(t, e^mu)`. FLUX.1 at 1024 px (4,096 tokens) gets e^1.15 ≈ 3.16."""
    slope = (max_shift - base_shift) / (max_tokens - base_tokens)
    return math.exp(base_shift + slope * (image_tokens - base_tokens))
