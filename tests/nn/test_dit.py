"""The image DiT: tiers, patch sizes, embeddings, the safetensors reader and `from_diffusers`' errors (no torch)."""

from __future__ import annotations

import json
import math
import struct

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

from jaxgen import config
from jaxgen.nn import dit, safetensors_io
from jaxgen.nn.embeddings import sincos_2d, timestep_embedding


def tiny(**fields):
    return dit.DiT(**{**dict(num_classes=10, width=32, depth=2, num_heads=2, in_channels=3), **fields})


def inputs(size=8, channels=3, batch=2):
    x = jax.random.normal(jax.random.key(1), (batch, size, size, channels))
    return x, jnp.array([3.0, 999.0])[:batch], jnp.array([1, 10])[:batch]


@pytest.mark.parametrize("tier,low,high", [("dit_tiny", 0.17e6, 0.19e6), ("dit_cpu", 1.86e6, 1.88e6),
                                           ("dit_s", 32.5e6, 33.1e6),
                                           ("dit_b", 130e6, 130.6e6), ("dit_l", 457.5e6, 458.2e6),
                                           ("dit_xl", 674.5e6, 675.2e6)])
def test_tiers_parse_and_count_parameters(tier, low, high):
    """Counts from shapes alone (XL allocates nothing); the paper's counts at patch 2, 32x32x4 latents, learned
    sigma, 1000 classes (tiny and CPU: 32x32x3 pixels, 10 classes)."""
    config.parse([f"configs/diffusion/model/{tier}.gin"], [])
    fields = dict(num_classes=10, in_channels=3) if tier in ("dit_tiny", "dit_cpu") else dict(out_channels=8)
    model = config.configured(dit.DiT)(**fields)
    assert low < dit.num_params(model, 32) < high


@pytest.mark.parametrize("patch", [1, 2, 4, 8])
def test_patch_sizes_keep_the_image_shape_and_learned_sigma_doubles_channels(patch):
    model = tiny(patch_size=patch, out_channels=6)
    x, t, y = inputs(size=16)
    out = jax.eval_shape(lambda: model.init_with_output(jax.random.key(0), x, t, y)[0])
    assert out.shape == (2, 16, 16, 6) and out.dtype == jnp.float32


def test_fresh_model_predicts_zero_and_every_parameter_has_logical_axes():
    """adaLN-Zero: zero gates and a zero final layer make a new DiT the zero function."""
    model = tiny()
    x, t, y = inputs()
    out, variables = model.init_with_output(jax.random.key(0), x, t, y)
    np.testing.assert_array_equal(out, 0.0)
    leaves = jax.tree.leaves(variables["params"], is_leaf=lambda a: isinstance(a, nn.LogicallyPartitioned))
    assert all(isinstance(leaf, nn.LogicallyPartitioned) for leaf in leaves)
    stacked = variables["params"]["blocks"]["attn"]["qkv"]["kernel"]
    assert stacked.names == ("layers", "embed", None, "heads", "kv") and stacked.value.shape == (2, 32, 3, 2, 16)


def test_remat_and_bfloat16_compute_agree_with_the_plain_model():
    model = tiny()
    x, t, y = inputs()
    rng = np.random.default_rng(0)  # zero-initialised layers would hide a difference: perturb every parameter
    params = jax.tree.map(lambda a: a + 0.05 * rng.normal(size=a.shape).astype(np.float32),
                          nn.unbox(model.init(jax.random.key(0), x, t, y)))
    plain = model.apply(params, x, t, y)
    assert float(jnp.abs(plain).mean()) > 1e-3
    np.testing.assert_allclose(tiny(remat=True).apply(params, x, t, y), plain, rtol=1e-6, atol=1e-6)
    low = tiny(dtype=jnp.bfloat16).apply(params, x, t, y)
    assert low.dtype == jnp.float32
    assert float(jnp.linalg.norm(low - plain) / jnp.linalg.norm(plain)) < 0.05


def test_unrolled_block_scan_keeps_parameters_outputs_and_gradients():
    """`scan_unroll=depth` (no loop) reads the same stacked parameters and computes the same function and gradient."""
    model, unrolled = tiny(), tiny(scan_unroll=2)
    x, t, y = inputs()
    variables = nn.unbox(model.init(jax.random.key(0), x, t, y))
    assert jax.tree.map(jnp.shape, nn.unbox(unrolled.init(jax.random.key(0), x, t, y))) == jax.tree.map(jnp.shape,
                                                                                                         variables)
    rng = np.random.default_rng(0)
    params = jax.tree.map(lambda a: a + 0.05 * rng.normal(size=a.shape).astype(np.float32), variables)

    def loss(module, p):
        return jnp.mean(module.apply(p, x, t, y) ** 2)

    np.testing.assert_allclose(unrolled.apply(params, x, t, y), model.apply(params, x, t, y), rtol=1e-5, atol=1e-6)
    for a, b in zip(jax.tree.leaves(jax.grad(lambda p: loss(unrolled, p))(params)),
                    jax.tree.leaves(jax.grad(lambda p: loss(model, p))(params))):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7)
    with pytest.raises(ValueError, match="unroll must be between 1 and depth=2; got 3"):
        jax.eval_shape(tiny(scan_unroll=3).init, jax.random.key(0), x, t, y)


def test_fused_norm_modulate_keeps_outputs_and_gradients():
    """`norm_implementation="pallas_gpu_interpret"` (the fused kernel's body, interpreted) computes the same function
    and gradient as the default flax LayerNorm + modulation, in every block and the final layer."""
    model, fused = tiny(), tiny(norm_implementation="pallas_gpu_interpret")
    x, t, y = inputs()
    rng = np.random.default_rng(0)
    params = jax.tree.map(lambda a: a + 0.05 * rng.normal(size=a.shape).astype(np.float32),
                          nn.unbox(model.init(jax.random.key(0), x, t, y)))

    def output_and_grad(module):  # one trace per model: the output rides along as the loss's aux
        return jax.jit(jax.grad(lambda p: (lambda o: (jnp.mean(o ** 2), o))(module.apply(p, x, t, y)),
                                has_aux=True))(params)

    (fused_grads, fused_out), (grads, out) = output_and_grad(fused), output_and_grad(model)
    np.testing.assert_allclose(fused_out, out, rtol=1e-5, atol=1e-6)
    for a, b in zip(jax.tree.leaves(fused_grads), jax.tree.leaves(grads)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7)
    with pytest.raises(ValueError, match="norm_implementation must be one of .*; got 'triton'"):
        jax.eval_shape(tiny(norm_implementation="triton").init, jax.random.key(0), x, t, y)


def test_patchify_round_trip_and_token_order():
    images = jnp.arange(2 * 4 * 6 * 3.0).reshape(2, 4, 6, 3)
    tokens = dit.patchify(images, 2)
    assert tokens.shape == (2, 6, 12)
    np.testing.assert_array_equal(tokens[0, 1, :3], images[0, 0, 2])  # token 1: rows 0-1, columns 2-3
    np.testing.assert_array_equal(dit.unpatchify(tokens, (2, 3), 2, 3), images)


def test_timestep_embedding_by_hand():
    t = jnp.array([0.0, 10.0])
    out = timestep_embedding(t, 8, freq_shift=1.0)  # freqs 10000 ** (-i / 3), i = 0..3
    freqs = 10000.0 ** (-np.arange(4) / 3)
    np.testing.assert_allclose(out[1], np.concatenate([np.cos(10 * freqs), np.sin(10 * freqs)]), rtol=1e-5)
    np.testing.assert_allclose(out[0], [1, 1, 1, 1, 0, 0, 0, 0])


def test_sincos_2d_columns_first_then_rows():
    table = sincos_2d(8, 3, 5).reshape(3, 5, 8)
    omega = 1.0 / 10000 ** (np.arange(2) / 2)
    row, col = 2, 4
    expected = np.concatenate([np.sin(col * omega), np.cos(col * omega), np.sin(row * omega), np.cos(row * omega)])
    np.testing.assert_allclose(table[row, col], expected, rtol=1e-6)
    rescaled = sincos_2d(8, 8, 8, base_size=4).reshape(8, 8, 8)  # position p counts as p / 2
    np.testing.assert_allclose(rescaled[2, 4], sincos_2d(8, 4, 4).reshape(4, 4, 8)[1, 2], rtol=1e-6)


def test_bad_shapes_are_named():
    model = tiny()
    with pytest.raises(ValueError, match=r"\(2, 9, 9, 3\)"):
        model.init(jax.random.key(0), jnp.zeros((2, 9, 9, 3)), jnp.zeros(2), jnp.zeros(2, jnp.int32))
    with pytest.raises(ValueError, match=r"t \(3,\)"):
        model.init(jax.random.key(0), jnp.zeros((2, 8, 8, 3)), jnp.zeros(3), jnp.zeros(2, jnp.int32))


def write_safetensors(path, tensors: dict[str, np.ndarray]) -> None:
    """The format by hand: header length, JSON header, raw bytes (what the `safetensors` package writes)."""
    names = {np.dtype(np.float32): "F32", np.dtype(ml_dtypes.bfloat16): "BF16", np.dtype(np.int64): "I64"}
    header, blobs, offset = {"__metadata__": {"format": "pt"}}, [], 0
    for name, value in tensors.items():
        blob = np.ascontiguousarray(value).tobytes()
        header[name] = {"dtype": names[value.dtype], "shape": list(value.shape),
                        "data_offsets": [offset, offset + len(blob)]}
        blobs.append(blob)
        offset += len(blob)
    text = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + b"".join(blobs))


def test_safetensors_reader_single_sharded_and_bfloat16(tmp_path):
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    b = np.array([1.5, -2.0, 3.25], dtype=ml_dtypes.bfloat16)
    c = np.array([7, 8], dtype=np.int64)
    write_safetensors(tmp_path / "m.safetensors", {"a": a, "b": b})
    reader = safetensors_io.open_checkpoint(tmp_path, "m")
    assert reader.names == ["a", "b"]
    np.testing.assert_array_equal(reader.get("b"), b)
    assert reader.get("b").dtype == ml_dtypes.bfloat16 and reader.used == {"b"}

    sharded = tmp_path / "sharded"
    sharded.mkdir()
    write_safetensors(sharded / "m-1.safetensors", {"a": a})
    write_safetensors(sharded / "m-2.safetensors", {"c": c, "b": b})
    (sharded / "m.safetensors.index.json").write_text(json.dumps(
        {"metadata": {}, "weight_map": {"a": "m-1.safetensors", "b": "m-2.safetensors", "c": "m-2.safetensors"}}))
    reader = safetensors_io.open_checkpoint(sharded, "m")
    np.testing.assert_array_equal(reader.get("a"), a)
    np.testing.assert_array_equal(reader.get("c"), c)
    with pytest.raises(KeyError, match="'d' is not in the checkpoint"):
        reader.get("d")
    with pytest.raises(FileNotFoundError, match="no x.safetensors"):
        safetensors_io.open_checkpoint(tmp_path, "x")


def test_from_diffusers_names_unsupported_configs(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"_class_name": "DiTTransformer2DModel", "activation_fn": "geglu",
                                                      "norm_elementwise_affine": True}))
    with pytest.raises(ValueError, match="activation_fn.*norm_elementwise_affine|norm_elementwise_affine.*activation"):
        dit.from_diffusers(tmp_path)
    with pytest.raises(FileNotFoundError, match="no config.json"):
        dit.from_diffusers(tmp_path / "missing")


def test_module_from_config_reads_the_diffusers_fields():
    module = dit.module_from_config({"num_attention_heads": 16, "attention_head_dim": 72, "num_layers": 28,
                                     "in_channels": 4, "out_channels": 8, "sample_size": 32, "patch_size": 2,
                                     "num_embeds_ada_norm": 1000}, attention_backend="cudnn")
    assert (module.width, module.depth, module.num_heads, module.output_channels) == (1152, 28, 16, 8)
    assert module.mlp_norm_eps == 1e-5 and module.attention_backend == "cudnn"
    assert math.isclose(dit.num_params(module.clone(attention_backend="dense"), 32) / 1e6, 674.83, abs_tol=0.01)


# ------------------------------------------------------------------------------------------------- caption tokens
CAPTION_DIM = 12


def captioned(**fields):
    return tiny(caption_dim=CAPTION_DIM, patch_size=4, depth=1, **fields)


def perturbed(variables, seed=0):
    """Every parameter moved off its initial value: zero-initialised layers would hide what captions do."""
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda a: a + 0.1 * rng.normal(size=a.shape).astype(np.float32), nn.unbox(variables))


def test_cross_attention_matches_a_plain_softmax_reference_and_an_empty_caption_adds_nothing():
    from jaxgen.nn.transformer import CrossAttention

    layer = CrossAttention(num_heads=2, head_dim=4)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 5, 8)).astype(np.float32)
    tokens = rng.normal(size=(3, 4, 6)).astype(np.float32)
    mask = np.array([[1, 1, 0, 1], [1, 0, 0, 0], [0, 0, 0, 0]], bool)
    params = jax.tree.map(np.asarray, perturbed(layer.init(jax.random.key(0), x, tokens, mask))["params"])
    out = np.asarray(layer.apply({"params": params}, x, tokens, mask))

    q = np.einsum("bsw,whd->bshd", x, params["q"]["kernel"]) + params["q"]["bias"]
    kv = np.einsum("blw,wkhd->blkhd", tokens, params["kv"]["kernel"]) + params["kv"]["bias"]
    logits = np.einsum("bshd,blhd->bhsl", q, kv[:, :, 0]) / np.sqrt(4)
    logits = np.where(mask[:, None, None, :], logits, -np.inf)
    with np.errstate(invalid="ignore"):
        weights = np.exp(logits - logits.max(-1, keepdims=True))
        weights /= weights.sum(-1, keepdims=True)
    attended = np.nan_to_num(np.einsum("bhsl,blhd->bshd", weights, kv[:, :, 1]))  # no key at all: nothing
    expected = np.einsum("bshd,hdw->bsw", attended, params["out"]["kernel"]) + params["out"]["bias"]
    expected[2] = 0.0  # the empty caption: the whole sublayer contributes nothing, bias included
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


def test_captions_condition_the_dit_and_masked_tokens_do_not():
    model = captioned()
    x, t, y = inputs()
    rng = np.random.default_rng(1)
    captions = rng.normal(size=(2, 5, CAPTION_DIM)).astype(np.float32)
    mask = np.array([[1, 1, 1, 0, 0], [1, 0, 1, 1, 0]], bool)
    fresh, variables = model.init_with_output(jax.random.key(0), x, t, y, captions, mask)
    np.testing.assert_array_equal(fresh, 0.0)  # still adaLN-Zero's zero function
    params = perturbed(variables)
    apply = jax.jit(model.apply)
    out = apply(params, x, t, y, captions, mask)
    other = captions + 1.0
    assert float(jnp.abs(apply(params, x, t, y, other, mask) - out).max()) > 1e-3  # captions matter
    padding_changed = np.where(mask[..., None], captions, 100.0)  # only the masked-out tokens change
    np.testing.assert_allclose(apply(params, x, t, y, padding_changed, mask), out, rtol=1e-6, atol=1e-6)


def test_the_empty_caption_is_the_model_without_cross_attention():
    model = captioned()
    x, t, y = inputs()
    captions = np.ones((2, 3, CAPTION_DIM), np.float32)
    params = perturbed(model.init(jax.random.key(0), x, t, y, captions))
    empty = np.zeros((2, 3), bool)
    silenced = jax.tree_util.tree_map_with_path(  # cross-attention's output projection set to zero
        lambda path, a: a * 0 if "cross_attn" in jax.tree_util.keystr(path) and "'out'" in jax.tree_util.keystr(path)
        else a, params)
    apply = jax.jit(model.apply)
    np.testing.assert_allclose(apply(params, x, t, y, captions, empty), apply(silenced, x, t, y, captions, None),
                               rtol=1e-6, atol=1e-6)


def test_captions_without_labels_and_guided_ddim_with_the_empty_caption():
    from jaxgen.diffusion import ddim, ddpm, sampling

    model = captioned()
    x, t, _ = inputs()
    captions = np.random.default_rng(2).normal(size=(2, 4, CAPTION_DIM)).astype(np.float32)
    mask = np.ones((2, 4), bool)
    params = perturbed(model.init(jax.random.key(0), x, t, None, captions, mask))
    assert "class_embed" not in params["params"]  # timestep-only adaLN, as PixArt
    guided = sampling.guided(lambda x, t, step, cond: (model.apply(params, x, t, None, *cond), None),
                             (captions, mask), (np.zeros_like(captions), np.zeros_like(mask)), 3.0)
    samples, _ = jax.jit(lambda noise: ddim.ddim_sample(guided, ddpm.make_schedule("linear", 1000), noise,
                                                        ddim.spaced_timesteps(1000, 2)))(x)
    assert samples.shape == x.shape and bool(jnp.isfinite(samples).all())


def test_caption_inputs_are_checked():
    x, t, y = inputs()
    with pytest.raises(ValueError, match="caption_dim=None takes captions None"):
        tiny().init(jax.random.key(0), x, t, y, np.ones((2, 3, CAPTION_DIM), np.float32))
    with pytest.raises(ValueError, match=r"caption_dim=12 takes captions \[2, length, 12\]"):
        captioned().init(jax.random.key(0), x, t, y)
    with pytest.raises(ValueError, match="mask must be"):
        captioned().init(jax.random.key(0), x, t, y, np.ones((2, 3, CAPTION_DIM), np.float32), np.ones((2, 4), bool))
