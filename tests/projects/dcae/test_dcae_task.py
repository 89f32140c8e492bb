"""The three training phases: after steps of each, the parameters it freezes are bit-identical and the ones it
trains have moved; the masks claim what the paper says each phase trains."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxgen.core.optim import OptimizerConfig
from jaxgen.core.sharding import path_to_str
from jaxgen.projects.dcae import model, task


def _paths(params, mask):
    return {path_to_str(p) for p, m in jax.tree_util.tree_leaves_with_path(mask) if m}


def test_phases_train_exactly_their_parameters():
    module = model.dcae("tiny")  # f4: an empty first stage, a ResBlock stage, an EfficientViT stage
    images = np.random.default_rng(0).integers(0, 256, (2, 16, 16, 3), np.uint8)
    batch = {"image": jnp.asarray(images)}
    tasks = {name: task.AutoencoderTask(module, name) for name in task.PHASES}
    params = jax.jit(tasks["full"].init)(jax.random.key(0), batch)["params"]

    # One loss for all three phases, the refinement phase's (L1 + SSIM + GAN): every parameter, the discriminator's
    # included, gets a gradient in every phase, so only the masks keep the frozen ones in place (one compilation).
    grad = jax.jit(jax.grad(lambda p, b, r: tasks["refinement"].loss({"params": p}, b, r)[0]))
    for name, t in tasks.items():
        frozen = t.frozen_patterns()
        trainable = task.trainable_mask(params, frozen)
        paths = _paths(params, trainable)
        if name == "full":
            assert paths == {p for p in _paths(params, jax.tree.map(lambda _: True, params)) if
                             p.startswith("autoencoder/")}
        elif name == "latent_adaptation":
            assert paths and all(re.match(r"autoencoder/(encoder/(down_blocks_2_\d|conv_out)|decoder/(conv_in|"
                                          r"up_blocks_2_\d))/", p) for p in paths)
            assert any(p.startswith("autoencoder/encoder/") for p in paths)
            assert any(p.startswith("autoencoder/decoder/") for p in paths)
        else:
            assert {p.split("/")[1] for p in paths} == {"decoder", "conv_0", "conv_1", "conv_2", "norm_1", "norm_2",
                                                        "logits"}
            assert all(re.match(r"(autoencoder/decoder/(up_blocks_1_\d|norm_out|conv_out)|discriminator)/", p)
                       for p in paths)

        tx = OptimizerConfig(learning_rate=1e-2, schedule="constant", frozen=frozen).build(2)
        state, new = tx.init(params), params
        for step in range(2):
            updates, state = jax.jit(tx.update)(grad(new, batch, jax.random.key(step)), state, new)
            new = optax.apply_updates(new, updates)
        for (path, before), after, is_trained in zip(jax.tree_util.tree_leaves_with_path(params),
                                                     jax.tree.leaves(new), jax.tree.leaves(trainable)):
            if is_trained:
                assert not np.array_equal(before, after), f"{name}: {path_to_str(path)} did not move"
            else:
                np.testing.assert_array_equal(before, after, err_msg=f"{name}: {path_to_str(path)} moved")


def test_adaptive_gan_weight_is_the_ratio_of_gradient_norms_at_the_decoder_output():
    """VQGAN's weight, computed from the captured output layer alone, equals the ratio taken through the whole
    autoencoder by plain `jax.grad`; the loss adds `gan_weight * adaptive * adversarial`."""
    module = model.dcae("tiny")
    images = np.random.default_rng(1).integers(0, 256, (2, 16, 16, 3), np.uint8)
    batch = {"image": jnp.asarray(images)}
    refine = task.AutoencoderTask(module, "refinement", gan_weight=0.5, adaptive_gan_weight=True)
    variables = jax.jit(refine.init)(jax.random.key(0), batch)
    params, x = variables["params"], task.preprocess(batch["image"])

    def reconstruct(p):
        return module.apply({"params": p["autoencoder"]}, x)

    def adversarial(p):
        return -jnp.mean(refine.discriminator.apply({"params": p["discriminator"]}, reconstruct(p)))

    def output_layer_norm(loss_of):
        return optax.tree.norm(jax.grad(loss_of)(params)["autoencoder"]["decoder"]["conv_out"])

    expected = (output_layer_norm(lambda p: refine._reconstruction_loss(reconstruct(p), x)[0]) /
                (output_layer_norm(adversarial) + 1e-4))
    loss, metrics = jax.jit(refine.loss)(variables, batch, jax.random.key(1))
    np.testing.assert_allclose(metrics["adaptive_weight"], expected, rtol=1e-4)
    assert not np.isclose(expected, 1.0)
    reconstruction = refine._reconstruction_loss(reconstruct(params), x)[0]
    np.testing.assert_allclose(loss, reconstruction + 0.5 * expected * metrics["adversarial"] +
                               metrics["discriminator_loss"], rtol=1e-5)
