"""SDEdit (Meng et al. 2022) through the incremental engine: noise the original and the edited image to a middle
timestep with the same noise, denoise both, the edited one with the sparse pass, re-blending everything outside the
mask from the original trajectory after every step (so the two differ only where the mask says, which is what keeps
the cached features valid).

The loop runs on the host, one jitted step at a time (both trajectories' updates and the blend in one program),
because the engine plans on the host; its updates are those of `jaxgen.diffusion.ddim`'s samplers (DDIM with eta 0,
DDPM ancestral with the posterior's variance), written per step here. The original trajectory is recomputed in
lock-step (one cache); an application that edits one image many times would keep one cache per step
(`IncrementalEngine.full(..., cache_id=step)`) and skip it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxgen.diffusion.ddpm import NoiseSchedule, add_noise, to_x0_and_noise
from jaxgen.projects.sige.engine import IncrementalEngine


def _ddim_step(schedule, prediction, x, output, t, t_next, key):
    x0, eps = to_x0_and_noise(prediction, output, x, *schedule.alpha_sigma(t))
    alpha_next, sigma_next = schedule.alpha_sigma(t_next)
    return alpha_next * x0 + sigma_next * eps


def _ddpm_step(schedule, prediction, x, output, t, t_next, key):
    alpha, sigma = schedule.alpha_sigma(t)
    alpha_next, sigma_next = schedule.alpha_sigma(t_next)
    x0, _ = to_x0_and_noise(prediction, output, x, alpha, sigma)
    step_alpha_sq = (alpha / alpha_next) ** 2
    step_beta = 1.0 - step_alpha_sq
    mean = (alpha_next * step_beta * x0 + jnp.sqrt(step_alpha_sq) * sigma_next**2 * x) / sigma**2
    std = jnp.where(t_next >= 0, jnp.sqrt(jnp.maximum(sigma_next**2 / sigma**2 * step_beta, 1e-20)), 0.0)
    return mean + std * jax.random.normal(key, x.shape)


SAMPLERS: dict[str, Callable] = {"ddim": _ddim_step, "ddpm": _ddpm_step}


def sdedit(engine: IncrementalEngine, schedule: NoiseSchedule, original: jax.Array, edited: jax.Array,
           mask: np.ndarray, timesteps, rng: jax.Array, *, sampler: str = "ddim", prediction: str = "epsilon",
           **cond) -> tuple[jax.Array, jax.Array]:
    """`(original result, edited result)` of SDEdit from `timesteps[0]` (noisiest first, integer) down to clean.

    `mask` ([H, W] bool) marks the edited region: the sparse pass recomputes there (plus the engine's dilation)
    and the result takes it from the edited trajectory; everything else is the original trajectory's. The model is
    called as `engine.module.apply(params, x, timesteps=t, **cond)`.
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"sdedit: unknown sampler {sampler!r}; known: {sorted(SAMPLERS)}")
    if np.shape(original) != np.shape(edited) or np.shape(mask) != np.shape(original)[1:3]:
        raise ValueError(f"sdedit: original {np.shape(original)}, edited {np.shape(edited)} and mask "
                         f"{np.shape(mask)} must agree (mask [H, W])")
    timesteps = [int(t) for t in np.asarray(timesteps)]
    batch = original.shape[0]
    inside = jnp.asarray(mask)[None, :, :, None]
    x_original, x_edited = _start(schedule, original, edited, inside, rng, np.full((batch,), timesteps[0], np.int32))
    for i, (t, t_next) in enumerate(zip(timesteps, timesteps[1:] + [-1])):
        t_batch = np.full((batch,), t, np.int32)
        out_original = engine.full(x_original.astype(original.dtype), timesteps=t_batch, **cond)
        out_edited = engine.edit(x_edited.astype(original.dtype), mask=mask, timesteps=t_batch, **cond)
        x_original, x_edited = _advance(schedule, x_original, x_edited, out_original, out_edited, inside,
                                        np.int32(t), np.int32(t_next), rng, np.int32(i), sampler, prediction)
    return x_original, x_edited


@jax.jit
def _start(schedule, original, edited, inside, rng, start):
    """Both images noised to `start` with the same noise; the edited one keeps the original's outside the mask."""
    noise = jax.random.normal(rng, original.shape, jnp.float32)
    x_original = add_noise(schedule, original.astype(jnp.float32), noise, start)
    return x_original, jnp.where(inside, add_noise(schedule, edited.astype(jnp.float32), noise, start), x_original)


@functools.partial(jax.jit, static_argnums=(10, 11))
def _advance(schedule, x_original, x_edited, out_original, out_edited, inside, t, t_next, rng, i, sampler,
             prediction):
    """One sampler step of both trajectories with the same key, the edited one re-blended outside the mask.
    Jitted whole (the timesteps traced) so the host loop dispatches one program per step."""
    step, key = SAMPLERS[sampler], jax.random.fold_in(rng, i)
    x_original_next = step(schedule, prediction, x_original, out_original, t, t_next, key)
    x_edited_next = step(schedule, prediction, x_edited, out_edited, t, t_next, key)
    return x_original_next, jnp.where(inside, x_edited_next, x_original_next)
