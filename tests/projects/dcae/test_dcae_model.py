"""DC-AE's shortcut ops against loop-by-loop numpy references, latent shapes of every named config, LiteMLA's two
forms, the shortcut switch and the errors for bad input."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgen.projects.dcae import model


def _unshuffle_reference(x, f):
    b, h, w, c = x.shape
    out = np.zeros((b, h // f, w // f, c * f * f), x.dtype)
    for y in range(h // f):
        for xx in range(w // f):
            for ch in range(c):
                for i in range(f):
                    for j in range(f):
                        out[:, y, xx, ch * f * f + i * f + j] = x[:, y * f + i, xx * f + j, ch]
    return out


def test_pixel_unshuffle_and_shuffle_follow_pytorch_channel_order():
    x = np.arange(2 * 4 * 6 * 3, dtype=np.float32).reshape(2, 4, 6, 3)
    unshuffled = np.asarray(model.pixel_unshuffle(jnp.asarray(x), 2))
    np.testing.assert_array_equal(unshuffled, _unshuffle_reference(x, 2))
    np.testing.assert_array_equal(np.asarray(model.pixel_shuffle(jnp.asarray(unshuffled), 2)), x)


def test_space_to_channel_average_is_the_mean_of_consecutive_channel_groups():
    x = np.random.default_rng(0).normal(size=(1, 4, 4, 6)).astype(np.float32)
    unshuffled = _unshuffle_reference(x, 2)  # 24 channels -> 8: groups of 3 consecutive channels
    expected = np.stack([unshuffled[..., 3 * k:3 * k + 3].mean(-1) for k in range(8)], -1)
    np.testing.assert_allclose(np.asarray(model.space_to_channel_average(jnp.asarray(x), 8, 2)), expected, rtol=1e-6)
    project_out = np.stack([x[..., 2 * k:2 * k + 2].mean(-1) for k in range(3)], -1)  # factor 1: averaging alone
    np.testing.assert_allclose(np.asarray(model.space_to_channel_average(jnp.asarray(x), 3, 1)), project_out,
                               rtol=1e-6)


def test_channel_to_space_duplicate_repeats_each_channel_then_shuffles():
    x = np.random.default_rng(1).normal(size=(1, 2, 3, 4)).astype(np.float32)
    out = np.asarray(model.channel_to_space_duplicate(jnp.asarray(x), 2, 2))  # 4 channels -> 2 x 4 = 8 (repeats 2)
    repeated = np.stack([x[..., k // 2] for k in range(8)], -1)
    expected = np.zeros((1, 4, 6, 2), np.float32)
    for y in range(4):
        for xx in range(6):
            for ch in range(2):
                expected[:, y, xx, ch] = repeated[:, y // 2, xx // 2, ch * 4 + (y % 2) * 2 + xx % 2]
    np.testing.assert_array_equal(out, expected)
    np.testing.assert_array_equal(np.asarray(model.channel_to_space_duplicate(jnp.asarray(x), 8, 1)), repeated)


def test_linear_attention_equals_its_quadratic_form():
    q, k, v = jax.random.normal(jax.random.key(0), (3, 2, 2, 10, 4))
    np.testing.assert_allclose(jax.jit(model.relu_linear_attention)(q, k, v),
                               jax.jit(model.relu_quadratic_attention)(q, k, v),
                               rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", sorted(model.CONFIGS))
def test_latent_shape_of_every_config(name):
    module = model.dcae(name)
    f, c = module.spatial_compression, module.latent_channels
    assert model.latent_shape(module, (2, 4 * f, 2 * f, 3)) == (2, 4, 2, c)


def test_paper_configs_compress_as_named():
    for name, (f, c) in {"f32c32": (32, 32), "f64c128": (64, 128), "f128c512": (128, 512)}.items():
        module = model.dcae(name)
        assert (module.spatial_compression, module.latent_channels) == (f, c)


@pytest.mark.parametrize("block", [model.DownBlock(8), model.UpBlock(4)], ids=["down", "up"])
def test_with_zero_weights_a_resampling_block_is_its_shortcut(block):
    """Zero weights silence the conv: the block's output is its shortcut exactly, and 0 without it."""
    x = jax.random.normal(jax.random.key(1), (1, 4, 4, 8))
    zeros = jax.tree.map(jnp.zeros_like, jax.eval_shape(block.init, jax.random.key(0), x))
    shortcut = (model.space_to_channel_average(x, 8, 2) if isinstance(block, model.DownBlock)
                else model.channel_to_space_duplicate(x, 4, 2))
    np.testing.assert_array_equal(np.asarray(jax.jit(block.apply)(zeros, x)), np.asarray(shortcut))
    ablated = block.clone(shortcut=False)
    np.testing.assert_array_equal(np.asarray(jax.jit(ablated.apply)(zeros, x)), 0.0)


def test_the_ablation_has_the_same_parameters():
    """Removing the shortcuts removes no parameter: the two variants differ only in the shortcut additions."""
    x = jax.ShapeDtypeStruct((1, 8, 8, 3), jnp.float32)
    shapes = [jax.tree.map(jnp.shape, jax.eval_shape(model.dcae("tiny", residual_shortcuts=s).init,
                                                     jax.random.key(0), x)) for s in (True, False)]
    assert shapes[0] == shapes[1]


def test_bad_inputs_are_named():
    module = model.dcae("tiny")
    variables = jax.eval_shape(module.init, jax.random.key(0), jnp.zeros((1, 8, 8, 3)))

    def apply(shape, method):
        return jax.eval_shape(lambda v, x: module.apply(v, x, method=method), variables, jnp.zeros(shape))

    with pytest.raises(ValueError, match=r"\[batch, height, width, 3\].*\(8, 8, 3\)"):
        apply((8, 8, 3), "encode")
    with pytest.raises(ValueError, match="multiples of the spatial compression 4; got 10 x 8"):
        apply((1, 10, 8, 3), "encode")
    with pytest.raises(ValueError, match=r"latents \[batch, height, width, 4\]"):
        apply((1, 2, 2, 3), "decode")
    with pytest.raises(ValueError, match=r"Unknown DC-AE config 'f32c23'.*'f32c32'"):
        model.dcae("f32c23")
    with pytest.raises(ValueError, match="unknown fields"):
        model.dcae("tiny", shortcuts=False)
    with pytest.raises(ValueError, match="latent_channels 5 must divide"):
        model.dcae("tiny", latent_channels=5)
