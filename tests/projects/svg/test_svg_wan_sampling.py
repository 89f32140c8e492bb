"""Sampling the Wan port from precomputed embeddings: the shifted Euler schedule with guidance, step by step against
direct model calls, and SVG's dense warm-up gate showing in the diagnostics."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxgen.projects.svg import DenseGate, wan
from jaxgen.projects.svg.sampling import FlowSchedule, sample
from support.numerics import rel_err


def test_guided_euler_steps_and_the_svg_warm_up():
    model = wan.named("tiny")
    rng = np.random.default_rng(0)
    noise = rng.normal(size=(1, 2, 4, 6, 4)).astype(np.float32)
    text, negative = (rng.normal(size=(1, 3, model.text_dim)).astype(np.float32) for _ in range(2))
    leaves, tree = jax.tree.flatten(nn.unbox(jax.eval_shape(model.init, jax.random.key(0), noise, np.ones(1), text)))
    params = tree.unflatten([0.3 * rng.normal(size=x.shape).astype(np.float32) for x in leaves])
    schedule = FlowSchedule(num_steps=2, shift=3.0, guidance_scale=4.0)
    svg = model.clone(attention_backend="svg", attention_options=dict(
        density=0.3, block_q=8, block_kv=8, implementation="reference", gate=DenseGate(dense_step_fraction=0.5)))

    @jax.jit
    def run(params):
        latents, _ = sample(model, params, noise, text, negative, schedule=schedule, rng=jax.random.key(1))
        by_hand = jnp.asarray(noise)
        for t, t_next in [(1.0, 0.75), (0.75, 0.0)]:  # shift 3: t = 3 s / (1 + 2 s) at s = 1, 0.5, 0
            cond, uncond = (model.apply(params, by_hand, jnp.array([1000.0 * t]), c) for c in (text, negative))
            by_hand = by_hand + (t_next - t) * (uncond + 4.0 * (cond - uncond))
        sparse, aux = sample(svg, params, noise, text, negative, schedule=schedule, rng=jax.random.key(1))
        return latents, by_hand, sparse, aux

    latents, by_hand, sparse, aux = run(params)
    assert latents.shape == noise.shape
    assert rel_err(latents, by_hand) < 1e-5
    assert aux["density"].shape == (2, 2) and aux["recall"].shape == (2, 2, 2, 2)  # [steps, layers, 2 rows, heads]
    np.testing.assert_allclose(aux["density"][0], 1.0)  # the first half of the steps is dense
    assert np.all(aux["density"][1] < 1.0) and np.all(aux["recall"][1] < 1.0)
    assert 0 < rel_err(sparse, latents) < 1.0
