"""Sampling the Wan port from precomputed embeddings: the shifted Euler schedule with guidance, step by step against
direct model calls (SVG's dense warm-up in the sampler: `wan_vs_reference_test.py`, through the recipe's driver)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxgen.projects.svg import wan
from jaxgen.projects.svg.sampling import FlowSchedule, sample
from support.numerics import rel_err


def test_guided_euler_steps_at_the_shifted_times():
    model = wan.named("tiny")
    rng = np.random.default_rng(0)
    noise = rng.normal(size=(1, 2, 4, 6, 4)).astype(np.float32)
    text, negative = (rng.normal(size=(1, 3, model.text_dim)).astype(np.float32) for _ in range(2))
    leaves, tree = jax.tree.flatten(nn.unbox(jax.eval_shape(model.init, jax.random.key(0), noise, np.ones(1), text)))
    params = tree.unflatten([0.3 * rng.normal(size=x.shape).astype(np.float32) for x in leaves])
    schedule = FlowSchedule(num_steps=2, shift=3.0, guidance_scale=4.0)
    latents, aux = jax.jit(lambda p: sample(model, p, noise, text, negative, schedule=schedule,
                                            rng=jax.random.key(1)))(params)
    velocity = jax.jit(model.apply)
    by_hand = jnp.asarray(noise)
    for t, t_next in [(1.0, 0.75), (0.75, 0.0)]:  # shift 3: t = 3 s / (1 + 2 s) at s = 1, 0.5, 0
        cond, uncond = (velocity(params, by_hand, jnp.array([1000.0 * t]), c) for c in (text, negative))
        by_hand = by_hand + (t_next - t) * (uncond + 4.0 * (cond - uncond))
    assert latents.shape == noise.shape and aux == {}  # dense attention sows nothing
    assert rel_err(latents, by_hand) < 1e-5
