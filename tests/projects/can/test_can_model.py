"""CAN on DiT and U-ViT through placement rules: at initialisation the wrapped model is the static model (on random
backbone weights, so the outputs are not trivially zero), generators sit next to the kernels they modify (stacked
under `nn.scan`), gradients reach every condition-aware layer, the condition changes the output once the generators
are trained, and bad rules fail with the reason."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from jaxgen.nn.dit import DiT
from jaxgen.nn.uvit import UViT
from jaxgen.projects.can import AKS, CAN, ConditionAwareModel

DIT_RULES = ("patch_embed", "blocks/attn/out", "unpatchify")
UVIT_RULES = ("patch_embed/proj", "(in_blocks|mid_block|out_blocks)/attn/proj", "decoder_pred")
GENERATOR_PREFIXES = ("can_", "aks_")


def dit():
    return DiT(num_classes=3, width=32, depth=2, num_heads=2, in_channels=3)


def uvit():
    return UViT(num_classes=4, embed_dim=32, depth=2, num_heads=2, in_channels=3)


def inputs():
    x = jax.random.normal(jax.random.key(1), (3, 8, 8, 3))
    return x, jnp.array([1.0, 500.0, 900.0]), jnp.array([0, 2, 3])


ZERO_AT_START = ("can_generator", "aks_bank")


def split(backbone_params):
    """(static parameters, generator parameters) of the backbone subtree, as flat dicts keyed by path tuples."""
    flat = traverse_util.flatten_dict(backbone_params)
    generator = {k: v for k, v in flat.items() if k[-1].startswith(GENERATOR_PREFIXES)}
    return {k: v for k, v in flat.items() if k not in generator}, generator


def random_variables(model, seed=5):
    """Variables of `model` as at initialisation, except that every parameter initialised at random (the static
    ones included: DiT's zero-initialised output layers would make every output 0) is redrawn from N(0, 0.2²).
    Built from shapes alone: nothing is compiled for init."""
    shapes = nn.unbox(jax.eval_shape(model.init, jax.random.key(0), *inputs()))["params"]
    rng = np.random.default_rng(seed)
    flat = {k: np.zeros(v.shape, np.float32) if k[-1] in ZERO_AT_START
            else (0.2 * rng.standard_normal(v.shape)).astype(np.float32)
            for k, v in traverse_util.flatten_dict(shapes).items()}
    return {"params": traverse_util.unflatten_dict(flat)}


@pytest.mark.parametrize("backbone,rules,weights", [(dit, DIT_RULES, CAN(rank=4)), (uvit, UVIT_RULES, CAN()),
                                                    (uvit, UVIT_RULES, AKS(num_kernels=3))],
                         ids=["DiT-CAN(rank=4)", "UViT-CAN", "UViT-AKS(3)"])
def test_at_initialisation_the_model_is_the_static_backbone(backbone, rules, weights):
    model = ConditionAwareModel(backbone(), num_classes=3, width=16, rules=rules, weights=weights)
    variables = random_variables(model)
    static, generator = split(variables["params"]["backbone"])
    assert generator, "the rules made no layer condition-aware"
    ours = jax.jit(model.apply)(variables, *inputs())
    alone = jax.jit(backbone().apply)({"params": traverse_util.unflatten_dict(static)}, *inputs())
    assert float(jnp.abs(alone).max()) > 0.1
    np.testing.assert_allclose(ours, alone, rtol=0, atol=1e-6 * float(jnp.abs(alone).max()))


def test_generators_sit_next_to_their_kernels_stacked_over_scanned_layers():
    model = ConditionAwareModel(dit(), num_classes=3, width=16, rules=DIT_RULES, weights=CAN(rank=4))
    variables = nn.unbox(jax.eval_shape(model.init, jax.random.key(0), *inputs()))
    _, generator = split(variables["params"]["backbone"])
    shapes = {"/".join(k): v.shape for k, v in generator.items()}
    assert shapes == {"patch_embed/can_project": (16, 4), "patch_embed/can_generator": (4, 12 * 32),
                      "blocks/attn/out/can_project": (2, 16, 4), "blocks/attn/out/can_generator": (2, 4, 32 * 32),
                      "unpatchify/can_project": (16, 4), "unpatchify/can_generator": (4, 32 * 12)}


@pytest.mark.parametrize("backbone,rules", [(dit, DIT_RULES), (uvit, UVIT_RULES)], ids=["DiT", "UViT"])
def test_gradients_reach_every_generator_and_the_condition_then_matters(backbone, rules):
    model = ConditionAwareModel(backbone(), num_classes=3, width=16, rules=rules, weights=CAN())
    variables = random_variables(model)
    x, t, y = inputs()
    target = jax.random.normal(jax.random.key(3), x.shape)
    grads = jax.jit(jax.grad(lambda v: jnp.mean((model.apply(v, x, t, y) - target) ** 2)))(variables)
    _, generator_grads = split(grads["params"]["backbone"])
    for path, grad in generator_grads.items():  # scanned layers: every layer's slice must get a gradient
        per_layer = jnp.abs(grad).reshape(grad.shape[0], -1).max(-1) if grad.ndim == 3 else jnp.abs(grad).max()
        assert bool(jnp.all(per_layer > 0)), f"no gradient reaches {'/'.join(path)}"

    stepped = jax.tree.map(lambda v, g: v - 10.0 * g, variables, grads)
    same_image, same_t = jnp.repeat(x[:1], 3, axis=0), jnp.full((3,), 500.0)
    apply = jax.jit(model.apply)
    before, after = apply(variables, same_image, same_t, y), apply(stepped, same_image, same_t, y)
    # the backbones see labels too; what the generators add on top must differ between labels
    added = after - before - (after[:1] - before[:1])
    assert float(jnp.abs(added[1:]).max()) > 1e-4


@pytest.mark.parametrize("rules,message", [
    (("patch_embed", "blocks/attn/output"), r"\['blocks/attn/output'\] match no layer of DiT.*'blocks/attn/out'"),
    (("blocks/attn",), r"match 'blocks/attn', a Attention: .* nn.Dense, nn.DenseGeneral or nn.Conv layer only"),
    ((".*",), r"match 'patch_embed'|match 't_embed'"),
    (("blocks/(attn",), "not a valid regular expression"),
    ((), "non-empty list"),
    ("blocks/attn/out", "non-empty list"),
])
def test_bad_rules_fail_with_the_reason(rules, message):
    with pytest.raises(ValueError, match=message):
        jax.eval_shape(ConditionAwareModel(dit(), num_classes=3, width=16, rules=rules).init, jax.random.key(0),
                       *inputs())
