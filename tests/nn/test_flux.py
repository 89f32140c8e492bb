"""FLUX.1 port: sizes of the named configs (shapes only), parameter layout, RoPE, latent packing and sampling."""

from __future__ import annotations

import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgen.nn import flux


@pytest.mark.parametrize("name,count", [("dev", 11_901_408_320), ("schnell", 11_891_178_560)])
def test_named_configs_have_flux_sizes(name, count):
    """FLUX.1-dev's published size (11.9 B); schnell lacks only the guidance embedder (256·3072 + 3072² + 2·3072)."""
    assert flux.num_params(flux.flux(name)) == count


def test_every_parameter_has_logical_axes_and_a_readable_path():
    module = flux.flux("dev")
    boxed = jax.eval_shape(module.init, jax.random.key(0), *flux.example_inputs(module))["params"]
    leaves = jax.tree_util.tree_flatten_with_path(boxed, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))[0]
    assert all(isinstance(leaf, nn.LogicallyPartitioned) for _, leaf in leaves)
    kernels = {"/".join(k.key for k in path): leaf.value.shape for path, leaf in leaves if path[-1].key == "kernel"}
    post_gelu = {p: s for p, s in kernels.items() if re.fullmatch(r".*mlp/fc2/kernel", p)}
    assert post_gelu == {"transformer_blocks/img_mlp/fc2/kernel": (19, 12288, 3072),
                         "transformer_blocks/txt_mlp/fc2/kernel": (19, 12288, 3072),
                         "single_transformer_blocks/mlp/fc2/kernel": (38, 12288, 3072)}
    assert kernels["single_transformer_blocks/attn/qkv/kernel"] == (38, 3072, 3 * 3072)
    assert kernels["transformer_blocks/img_mod/kernel"] == (19, 3072, 6 * 3072)


def test_rope_tables_rotate_each_axis_by_its_own_frequencies():
    ids = jnp.array([[0.0, 3.0, 5.0], [1.0, 0.0, 2.0]])
    cos, sin = flux.rope_tables(ids, (4, 6, 6))
    angles = np.concatenate([np.outer(np.asarray(ids)[:, i], 10000.0 ** (-np.arange(0, d, 2) / d))
                             for i, d in enumerate((4, 6, 6))], axis=1)
    np.testing.assert_allclose(cos, np.cos(angles), atol=1e-6)
    np.testing.assert_allclose(sin, np.sin(angles), atol=1e-6)
    with pytest.raises(ValueError, match="ids"):
        flux.rope_tables(ids[:, :2], (4, 6, 6))


def test_packing_puts_each_2x2_patch_in_one_token():
    latents = np.random.default_rng(0).normal(size=(2, 4, 6, 3)).astype(np.float32)
    tokens = flux.pack_latents(latents)
    assert tokens.shape == (2, 6, 12)
    # token (row 1, column 2) = index 1 * 3 + 2; feature (channel c, dy, dx) = c * 4 + dy * 2 + dx
    for c, dy, dx in [(0, 0, 0), (2, 1, 0), (1, 0, 1)]:
        assert tokens[1, 5, c * 4 + dy * 2 + dx] == latents[1, 2 + dy, 4 + dx, c]
    np.testing.assert_array_equal(flux.unpack_latents(tokens, 4, 6), latents)
    np.testing.assert_array_equal(flux.image_ids(4, 6)[5], [0.0, 1.0, 2.0])
    with pytest.raises(ValueError, match="do not pack"):
        flux.unpack_latents(tokens, 4, 8)


def test_inputs_are_checked():
    module = flux.flux("tiny")
    args = list(flux.example_inputs(module, image_tokens=4, text_tokens=2))
    args[4] = jnp.zeros((3, 3))  # img_ids for 3 tokens, hidden_states has 4
    with pytest.raises(ValueError, match="img_ids"):
        jax.eval_shape(module.init, jax.random.key(0), *args)
    with pytest.raises(ValueError, match="no guidance embedding"):
        jax.eval_shape(flux.flux("tiny", guidance_embeds=False).init, jax.random.key(0),
                       *flux.example_inputs(module))


def test_sampling_integrates_a_constant_velocity_to_noise_minus_velocity():
    """With proj_out's kernel zeroed the model's velocity is proj_out's bias whatever the input, so Euler from
    sigma 1 to 0 lands on `noise - unpack(bias)`: proves the packing, the ids, the schedule and the loop together."""
    module = flux.flux("tiny")
    batch, height, width = 2, 4, 6
    rng = np.random.default_rng(0)
    text = rng.normal(size=(batch, 3, module.joint_attention_dim)).astype(np.float32)
    pooled = rng.normal(size=(batch, module.pooled_projection_dim)).astype(np.float32)
    noise = rng.normal(size=(batch, height, width, module.in_channels // 4)).astype(np.float32)
    bias = jnp.arange(module.output_channels, dtype=jnp.float32) / 8
    params = flux.random_params(module, seed=0)
    params["params"]["proj_out"] = {"kernel": jnp.zeros_like(params["params"]["proj_out"]["kernel"]), "bias": bias}
    sigmas = flux.schedule(3, height * width // 4)
    out = jax.jit(lambda p: flux.sample(module, p, noise, text, pooled, sigmas, guidance_scale=3.5))(params)
    expected = noise - flux.unpack_latents(jnp.broadcast_to(bias, (batch, 6, 16)), height, width)
    np.testing.assert_allclose(out, expected, atol=1e-5)
