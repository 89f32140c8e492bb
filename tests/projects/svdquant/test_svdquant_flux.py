"""SVDQuant on FLUX.1 (`jaxgen.nn.flux`): `flux_rules` sends every Dense of the model to the rule deepcompressor's
FLUX recipe intends (checked path by path on the tiny config, from shapes), and a tiny FLUX quantized end to end
runs close to its 16-bit output."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxgen.nn import flux
from jaxgen.projects.svdquant import model as sq_model

FLOAT, W4A16, AFTER_GELU, BLOCK = range(4)  # the index of each rule in flux_rules
INTENDED = {
    "x_embedder": FLOAT, "context_embedder": FLOAT, "norm_out": FLOAT, "proj_out": FLOAT,
    "time_text_embed/timestep_embedder/linear_1": FLOAT, "time_text_embed/timestep_embedder/linear_2": FLOAT,
    "time_text_embed/guidance_embedder/linear_1": FLOAT, "time_text_embed/guidance_embedder/linear_2": FLOAT,
    "time_text_embed/text_embedder/linear_1": FLOAT, "time_text_embed/text_embedder/linear_2": FLOAT,
    "transformer_blocks/img_mod": W4A16, "transformer_blocks/txt_mod": W4A16, "single_transformer_blocks/mod": W4A16,
    "transformer_blocks/img_mlp/fc2": AFTER_GELU, "transformer_blocks/txt_mlp/fc2": AFTER_GELU,
    "single_transformer_blocks/mlp/fc2": AFTER_GELU,
    "transformer_blocks/img_attn/qkv": BLOCK, "transformer_blocks/img_attn/out": BLOCK,
    "transformer_blocks/txt_attn/qkv": BLOCK, "transformer_blocks/txt_attn/out": BLOCK,
    "transformer_blocks/img_mlp/fc1": BLOCK, "transformer_blocks/txt_mlp/fc1": BLOCK,
    "single_transformer_blocks/attn/qkv": BLOCK, "single_transformer_blocks/attn/out": BLOCK,
    "single_transformer_blocks/mlp/fc1": BLOCK,
}


def tiny_flux():
    """The tiny config at width 64 (the int4 kernels need K and N multiples of 64)."""
    return flux.flux("tiny", num_heads=4, head_dim=16)


def abstract_params(module):
    return nn.unbox(jax.eval_shape(module.init, jax.random.key(0), *flux.example_inputs(module)))["params"]


def dense_paths(module) -> list[str]:
    leaves = jax.tree_util.tree_flatten_with_path(abstract_params(module))[0]
    return sorted("/".join(k.key for k in path[:-1]) for path, _ in leaves if path[-1].key == "kernel")


def numpy_params(module, seed=0):
    """`flux.random_params`'s distribution drawn in numpy (its jitted draw compiles for seconds on CPU)."""
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        kind = path[-1].key
        if kind == "scale":
            return np.ones(leaf.shape, np.float32)
        std = 0.02 if kind == "bias" else leaf.shape[-2] ** -0.5
        return rng.uniform(-np.sqrt(3) * std, np.sqrt(3) * std, leaf.shape).astype(np.float32)

    return {"params": jax.tree_util.tree_map_with_path(draw, abstract_params(module))}


def test_flux_rules_send_every_dense_to_its_intended_rule():
    paths = dense_paths(tiny_flux())
    assert paths == sorted(INTENDED)  # every Dense of the model is listed above
    rules = sq_model.resolve_rules(sq_model.flux_rules("svdquant"))
    first = {path: next(i for i, (regex, _, _) in enumerate(rules) if regex.fullmatch(path)) for path in paths}
    assert first == INTENDED
    schemes = sq_model.assign_schemes(paths, sq_model.flux_rules("svdquant"))
    assert schemes["single_transformer_blocks/mlp/fc2"] == sq_model.SCHEMES["svdquant_gelu"]
    assert schemes["transformer_blocks/txt_mod"] == sq_model.SCHEMES["w4a16"]
    assert schemes["proj_out"].method is None
    # Weight-only FLUX: no "_gelu" twin, every block linear W4A16.
    assert {s.method for p, s in sq_model.assign_schemes(paths, sq_model.flux_rules("w4a16")).items()
            if INTENDED[p] != FLOAT} == {"w4a16"}


def test_quantized_tiny_flux_runs_close_to_16_bit():
    module = tiny_flux()
    variables = numpy_params(module)
    rng = np.random.default_rng(0)

    def batch(sigma):
        args = (rng.normal(size=(1, 16, module.in_channels)).astype(np.float32),
                rng.normal(size=(1, 8, module.joint_attention_dim)).astype(np.float32),
                rng.normal(size=(1, module.pooled_projection_dim)).astype(np.float32),
                np.full((1,), sigma, np.float32), np.asarray(flux.image_ids(8, 8)), np.asarray(flux.text_ids(8)),
                np.full((1,), 3.5, np.float32))
        return args, {}

    # Round-to-nearest W4A4 in the blocks: the smoothing and low-rank searches compile per layer shape (seconds each
    # on CPU) and are tested on their own in test_svdquant_linear.py.
    q = sq_model.quantize_model(module, variables, [batch(0.3), batch(0.8)], sq_model.flux_rules("w4a4"),
                                tokens_per_call=24)
    blocks = q.params["params"]["single_transformer_blocks"]
    assert blocks["mlp"]["fc2"]["svdquant"].activations == "uint4" and blocks["attn"]["qkv"]["svdquant"].rank == 0
    assert blocks["mod"]["svdquant"].activations == "float"
    np.testing.assert_array_equal(q.params["params"]["proj_out"]["kernel"], variables["params"]["proj_out"]["kernel"])
    args, _ = batch(0.5)
    reference = np.asarray(jax.jit(module.apply)(variables, *args))
    out = np.asarray(jax.jit(q.apply)(q.params, *args))
    relative = float(np.mean((out - reference) ** 2) / np.mean(reference ** 2))
    assert 0 < relative < 0.02, relative
    assert sq_model.model_bytes(q.params) < 0.5 * sq_model.model_bytes(jax.tree.map(jnp.asarray, variables))
