"""Euler integration of a flow-matching velocity field, and classifier-free guidance for every sampler.

A model enters as `velocity_fn(x, t, step) -> (velocity, aux)`: `t` is `[batch]`, `step` the (traced) step index,
which sparse-attention gates key on (SVG keeps the first steps dense), and `aux` any pytree of diagnostics, returned
stacked over steps. The loop is a `lax.scan`, so the model is compiled once however many steps are taken, and the
whole sampler can sit inside one `jit`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from jaxgen.diffusion.flow_matching import shift_times

VelocityFn = Callable[[jax.Array, jax.Array, jax.Array], tuple[jax.Array, Any]]


def euler_timesteps(num_steps: int, shift: float = 1.0) -> jax.Array:
    """`[num_steps + 1]` times from 1 (noise) down to 0 (data), evenly spaced before the shift."""
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1; got {num_steps}")
    return shift_times(jnp.linspace(1.0, 0.0, num_steps + 1), shift)


def euler_sample(velocity_fn: VelocityFn, noise: jax.Array, timesteps: jax.Array) -> tuple[jax.Array, Any]:
    """Integrates `dx/dt = velocity_fn(x, t, step)` from `timesteps[0]` to `timesteps[-1]` with Euler steps.

    Returns `(x at timesteps[-1], aux stacked over steps)`. The state is kept in float32 whatever the model's dtype,
    so many small steps do not lose precision.
    """
    if timesteps.ndim != 1 or timesteps.shape[0] < 2:
        raise ValueError(f"timesteps must be 1-D with at least 2 entries; got shape {timesteps.shape}")
    batch = noise.shape[0]

    def step(x, inputs):
        index, t, t_next = inputs
        velocity, aux = velocity_fn(x, jnp.full((batch,), t), index)
        if velocity.shape != x.shape:
            raise ValueError(f"velocity_fn returned shape {velocity.shape} for x {x.shape}")
        return x + (t_next - t) * velocity.astype(jnp.float32), aux

    steps = jnp.arange(timesteps.shape[0] - 1)
    return lax.scan(step, noise.astype(jnp.float32), (steps, timesteps[:-1], timesteps[1:]))


def cfg_combine(cond: jax.Array, uncond: jax.Array, scale: float) -> jax.Array:
    """Classifier-free guidance: `uncond + scale (cond - uncond)`; scale 1 is the conditional model alone."""
    if cond.shape != uncond.shape:
        raise ValueError(f"cond and uncond predictions must share a shape; got {cond.shape} and {uncond.shape}")
    return uncond + scale * (cond - uncond)


def guided(model_fn: Callable[..., tuple[jax.Array, Any]], cond: Any, uncond: Any, scale: float):
    """Classifier-free guidance for every sampler: a `(x, t, step) -> (output, aux)` function that runs
    `model_fn(x, t, step, conditioning)` once on the doubled batch [cond; uncond] and combines with `cfg_combine`.

    `uncond` is the null condition the model was trained with (dropped labels, empty captions). The combination is
    taken on whatever the model predicts (velocity, noise or v): each is affine in the score at fixed x and t, so
    guiding it guides the score. `cond` and `uncond` are pytrees with leading dim `batch`. One call on `2 * batch`
    rows instead of two calls keeps the kernels busy at small batch. The aux of the doubled call is returned as is
    (rows: cond first, then uncond).
    """
    both = jax.tree.map(lambda c, u: jnp.concatenate([c, u]), cond, uncond)

    def guided_fn(x, t, step):
        out, aux = model_fn(jnp.concatenate([x, x]), jnp.concatenate([t, t]), step, both)
        out_cond, out_uncond = jnp.split(out, 2)
        return cfg_combine(out_cond, out_uncond, scale), aux

    return guided_fn


def drop_conditions(rng: jax.Array, cond: Any, uncond: Any, probability: float) -> Any:
    """Training's half of classifier-free guidance: each row of `cond` replaced by `uncond`'s with `probability`.

    `cond` and `uncond` are pytrees of the same structure with leading dim `batch` (`uncond` may also have leading
    dim 1, one null condition for all rows); a row is dropped whole, across all leaves, so a caption and its mask go
    together. Ho & Salimans drop 10 to 20 percent.
    """
    if not 0.0 <= probability <= 1.0:
        raise ValueError(f"probability must be in [0, 1]; got {probability}")
    batch = jax.tree.leaves(cond)[0].shape[0]
    dropped = jax.random.bernoulli(rng, probability, (batch,))

    def pick(c, u):
        return jnp.where(dropped.reshape((batch,) + (1,) * (c.ndim - 1)), jnp.broadcast_to(u, c.shape), c)

    return jax.tree.map(pick, cond, uncond)

