"""SDEdit through the engine: with the whole image masked it is jaxgen's DDIM sampler on the edited image; outside
a partial mask it is the original trajectory, exactly."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgen.diffusion.ddim import ddim_sample
from jaxgen.diffusion.ddpm import add_noise, linear_schedule
from jaxgen.projects.sige import IncrementalEngine, random_params
from jaxgen.projects.sige.layers import SigeConv
from jaxgen.projects.sige.sdedit import sdedit


class ConvDenoiser(nn.Module):
    """Two convs and a timestep-dependent shift applied to the merged maps outside any SIGE layer."""

    @nn.compact
    def __call__(self, x, timesteps):
        out = SigeConv(3)(SigeConv(8)(x), act=nn.silu)
        return 0.1 * out + timesteps[:, None, None, None] / 1000.0


@pytest.fixture(scope="module")
def setup():
    module = ConvDenoiser()
    original = jax.random.normal(jax.random.key(0), (2, 32, 32, 3))
    edited = original.at[:, 4:8, 6:10, :].set(1.0)
    params = random_params(module, original, jnp.zeros((2,)))
    # Shared by the tests, so its passes compile once; LLVM at -O0 compiles faster and runs fast enough here.
    engine = IncrementalEngine(module, params, dilation=1, min_sparse_res=8,
                               compiler_options={"xla_backend_optimization_level": 0})
    return module, params, original, edited, engine


def test_a_full_mask_is_ddim_on_the_edited_image(setup):
    module, params, original, edited, engine = setup
    schedule, timesteps, rng = linear_schedule(), jnp.array([500, 300, 100]), jax.random.key(3)
    _, result = sdedit(engine, schedule, original, edited, np.ones((32, 32), bool), timesteps, rng)
    start = add_noise(schedule, edited, jax.random.normal(rng, edited.shape), jnp.full((2,), 500))
    expected, _ = ddim_sample(lambda x, t, i: (module.apply(params, x, t), None), schedule, start, timesteps)
    np.testing.assert_allclose(result, expected, atol=1e-5)


@pytest.mark.parametrize("sampler", ["ddim", "ddpm"])
def test_outside_the_mask_is_the_original_trajectory(setup, sampler):
    module, params, original, edited, engine = setup
    mask = np.zeros((32, 32), bool)
    mask[4:8, 6:10] = True
    ours, theirs = sdedit(engine, linear_schedule(), original, edited, mask, [400, 200], jax.random.key(1),
                          sampler=sampler)
    assert engine.last_plan.level is not None
    np.testing.assert_array_equal(np.asarray(theirs)[:, ~mask], np.asarray(ours)[:, ~mask])
    assert float(jnp.abs(theirs - ours).max()) > 0.1
