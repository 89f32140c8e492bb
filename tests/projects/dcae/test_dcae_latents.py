"""Latent diffusion on DC-AE latents: `DcaeLatents` restores exactly the autoencoder an `AutoencoderTask` run saved,
scales its latents to unit standard deviation and decodes them back; the shared diffusion task with those `latents`
trains its backbone on latents and hands out decoded images."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxgen.core.checkpoint import Checkpointer
from jaxgen.data import sources
from jaxgen.diffusion.task import ClassConditionalDiffusionTask
from jaxgen.projects.dcae import latents, model

DATASET = "dcae_textures/16"  # prepared in about a second; the DC-AE smoke run uses it too


class _Backbone(nn.Module):
    """The smallest `model(x, t, y)`: a 1x1 convolution, so its kernel's shape shows what it was given."""

    @nn.compact
    def __call__(self, x, t, y):
        return nn.Dense(x.shape[-1])(x)


def test_latents_of_a_restored_autoencoder_feed_the_diffusion_task(tmp_path):
    autoencoder = model.dcae("tiny_f2c4", residual_shortcuts=False)  # ResBlocks only: the quickest to compile
    shapes = nn.unbox(jax.eval_shape(lambda: model.init(autoencoder, jax.random.key(0), jnp.zeros((1, 16, 16, 3)))))
    rng = np.random.default_rng(0)
    params = jax.tree.map(lambda s: jnp.asarray(0.2 * rng.standard_normal(s.shape), s.dtype), shapes["params"])
    saver = Checkpointer(tmp_path / "checkpoints", async_save=False)
    saver.save(5, {"params": {"autoencoder": params, "discriminator": {"kernel": jnp.ones(3)}}}, {})
    saver.close()

    space = latents.DcaeLatents(autoencoder, str(tmp_path), DATASET, scale_examples=8)
    jax.tree.map(np.testing.assert_array_equal, space._variables["params"], params)

    images = sources.read_batch(sources.source(DATASET, "train"), np.arange(8))["image"]
    x = jnp.asarray(images, jnp.float32) / 127.5 - 1.0
    z = jax.jit(space.encode)(x)
    assert z.shape == (8, 8, 8, 4) and space.latent_shape((16, 16, 3)) == (8, 8, 4)
    np.testing.assert_allclose(float(np.std(z)), 1.0, rtol=1e-4)  # the scale was measured on these 8 images
    np.testing.assert_allclose(space.decode(z), jax.jit(autoencoder.apply)({"params": params}, x), atol=1e-5)

    task = ClassConditionalDiffusionTask(_Backbone(), num_classes=2, num_sample_steps=2, latents=space,
                                         clip_x0=None)
    batch = {"image": jnp.asarray(images), "label": jnp.zeros(8, jnp.int32)}
    variables = jax.jit(task.init)(jax.random.key(1), batch)
    assert variables["params"]["Dense_0"]["kernel"].shape == (4, 4)  # the backbone saw 4-channel latents
    assert np.isfinite(float(jax.jit(task.loss)(variables, batch, jax.random.key(2))[0]))
    samples = task.sample(variables, jnp.zeros(8, jnp.int32), jax.random.key(3), (16, 16, 3))
    assert samples.shape == (8, 16, 16, 3)
