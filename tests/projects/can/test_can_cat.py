"""The CaT-like model: ReLU linear attention against its quadratic definition, a new model is the zero function with
its blocks stacked, and with its depthwise convolutions and output projections condition-aware it starts as the
static model (random static weights)."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from jaxgen.projects.can import CAN, ConditionAwareModel
from jaxgen.projects.can.cat import CaTDiT, relu_linear_attention

CAT_RULES = ("patch_embed", "blocks/attn/aggregate_[0-9]+_depthwise", "blocks/mbconv/depthwise", "blocks/attn/proj",
             "unpatchify")  # configs/can/placement/cat.gin


def tiny():
    return CaTDiT(num_classes=3, width=32, depth=2, num_heads=2, head_dim=8, scales=(3,))


def inputs():
    return jax.random.normal(jax.random.key(1), (2, 8, 8, 3)), jnp.array([3.0, 700.0]), jnp.array([0, 3])


def test_relu_linear_attention_is_the_normalised_quadratic_form():
    q, k, v = (np.asarray(jax.random.normal(jax.random.key(i), (2, 5, 3, 4))) for i in range(3))
    scores = np.einsum("bnhd,bmhd->bhnm", np.maximum(q, 0), np.maximum(k, 0))
    expected = np.einsum("bhnm,bmhd->bnhd", scores, v) / (scores.sum(-1).transpose(0, 2, 1)[..., None] + 1e-6)
    np.testing.assert_allclose(relu_linear_attention(q, k, v), expected, rtol=1e-5, atol=1e-6)


def test_a_new_model_is_the_zero_function_with_stacked_blocks():
    out, variables = jax.jit(tiny().init_with_output)(jax.random.key(0), *inputs())
    assert out.shape == (2, 8, 8, 3)
    np.testing.assert_array_equal(out, 0.0)
    blocks = variables["params"]["blocks"]
    assert blocks["attn"]["aggregate_3_depthwise"]["kernel"].shape == (2, 3, 3, 1, 48)
    assert blocks["mbconv"]["depthwise"]["kernel"].shape == (2, 3, 3, 1, 128)


def test_with_condition_aware_depthwise_convs_and_projections_it_starts_as_the_static_model():
    model = ConditionAwareModel(tiny(), num_classes=3, width=16, rules=CAT_RULES, weights=CAN(rank=4))
    shapes = nn.unbox(jax.eval_shape(model.init, jax.random.key(0), *inputs()))["params"]
    rng = np.random.default_rng(0)
    flat = {k: np.zeros(v.shape, np.float32) if k[-1] == "can_generator"
            else (0.2 * rng.standard_normal(v.shape)).astype(np.float32)
            for k, v in traverse_util.flatten_dict(shapes).items()}
    generators = {k[:-1] for k in flat if k[-1] == "can_generator"}
    assert generators == {("backbone", *rule.replace("[0-9]+", "3").split("/")) for rule in CAT_RULES}
    static = {k[1:]: v for k, v in flat.items() if k[0] == "backbone" and not k[-1].startswith("can_")}
    ours = jax.jit(model.apply)({"params": traverse_util.unflatten_dict(flat)}, *inputs())
    alone = jax.jit(tiny().apply)({"params": traverse_util.unflatten_dict(static)}, *inputs())
    assert float(jnp.abs(alone).max()) > 0.1
    np.testing.assert_allclose(ours, alone, rtol=0, atol=1e-6 * float(jnp.abs(alone).max()))
