"""Kernels per distinct condition (`DistinctConditions`): the grouping is exact and static-shaped, and layers and
models on this path equal the per-sample path under jit, for batches with repeated and with all-distinct conditions,
in training (outputs and every parameter gradient) and in guided sampling; a caller's `max_distinct` that the batch
exceeds is a ValueError outside jit and NaN (never a silently wrong sample) under it. The fused per-sample product
(`fused=True`, kernels formed on chip by `pallas_kernels.can_matmul`; its jnp reference on CPU, the Pallas body is
tested in tests/kernels/can_matmul) equals the per-sample path too."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgen.diffusion.task import ClassConditionalDiffusionTask
from jaxgen.nn.dit import DiT
from jaxgen.nn.uvit import UViT
from jaxgen.projects.can import CAN, AKS, ConditionAwareConv, ConditionAwareDense, ConditionAwareModel
from jaxgen.projects.can import DistinctConditions
from jaxgen.projects.can.layers import exact_bits, group_conditions

PRODUCTS = ["gather", "ragged"]
# Which of the three condition rows each of 6 samples takes: repeats (3 groups), and all distinct.
PATTERNS = {"repeated": [2, 0, 2, 2, 1, 0], "all distinct": list(range(6))}


def test_grouping_is_exact_static_and_sorts_contiguously():
    ids = jnp.array([[3, 9], [1, 9], [3, 9], [3, 8], [1, 9]])
    for groups in (group_conditions(ids, 4), jax.jit(group_conditions, static_argnums=1)(ids, 4)):
        np.testing.assert_array_equal(groups.index, [0, 1, 0, 2, 1])
        np.testing.assert_array_equal(groups.first, [0, 1, 3, 0])
        np.testing.assert_array_equal(groups.sizes, [2, 2, 1, 0])
    order, ordered = group_conditions(ids, 4).sorted_by_group()
    np.testing.assert_array_equal(order, [0, 2, 1, 4, 3])
    np.testing.assert_array_equal(ordered.index, [0, 0, 1, 1, 2])
    np.testing.assert_array_equal(ordered.first, [0, 2, 4, 0])
    assert ordered.contiguous
    # the third distinct condition finds no slot among 2: its sample is marked overflowing, not merged
    overflow = jax.jit(group_conditions, static_argnums=1)(ids, 2)
    np.testing.assert_array_equal(overflow.index, [0, 1, 0, 2, 1])
    np.testing.assert_array_equal(overflow.sizes, [2, 2])
    # bit patterns: 0.0 and -0.0 are two conditions; floats equal as numbers but not as bits are never merged
    np.testing.assert_array_equal(group_conditions(exact_bits(jnp.array([0.0, -0.0, 0.0]))).index, [0, 1, 0])


def _layer(kind, **fields):
    if kind == "dense AKS":
        return ConditionAwareDense(5, weights=AKS(num_kernels=3), **fields), (6, 3, 4)
    if kind == "dense":
        return ConditionAwareDense(5, weights=CAN(rank=2), **fields), (6, 3, 4)
    if kind == "depthwise conv":
        return ConditionAwareConv(4, (3, 3), feature_group_count=4, weights=AKS(num_kernels=3), **fields), (6, 5, 5, 4)
    return ConditionAwareConv(5, (2, 2), strides=2, padding="VALID", weights=CAN(), **fields), (6, 4, 4, 3)


def _random_params(params, key):
    """Every parameter N(0, 0.3²), the zero-initialised generators included, so each condition gets its own kernel."""
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(key, len(leaves))
    return jax.tree.unflatten(tree, [0.3 * jax.random.normal(k, v.shape) for k, v in zip(keys, leaves)])


@pytest.mark.parametrize("pattern", list(PATTERNS))
@pytest.mark.parametrize("product", PRODUCTS)
@pytest.mark.parametrize("kind", ["dense", "depthwise conv", "patch conv"])
def test_layers_equal_the_per_sample_path_with_gradients(kind, product, pattern):
    per_sample, shape = _layer(kind)
    distinct, _ = _layer(kind, distinct=DistinctConditions(product=product))
    x = jax.random.normal(jax.random.key(1), shape)
    cond = jax.random.normal(jax.random.key(2), (3, 7))[jnp.array(PATTERNS[pattern])]
    params = _random_params(per_sample.init(jax.random.key(0), x, cond)["params"], jax.random.key(3))
    target = jax.random.normal(jax.random.key(4), per_sample.apply({"params": params}, x, cond).shape)

    def loss(layer, p, x, cond):
        out = layer.apply({"params": p}, x, cond, max_distinct=len(set(PATTERNS[pattern])))
        return jnp.mean((out - target) ** 2), out

    (want_loss, want), want_grads = jax.jit(jax.value_and_grad(lambda p: loss(per_sample, p, x, cond),
                                                               has_aux=True))(params)
    (got_loss, got), got_grads = jax.jit(jax.value_and_grad(lambda p: loss(distinct, p, x, cond),
                                                            has_aux=True))(params)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got_loss, want_loss, rtol=1e-5)
    for name in want_grads:
        np.testing.assert_allclose(got_grads[name], want_grads[name], rtol=1e-4, atol=1e-5, err_msg=name)


def _dit():
    return DiT(num_classes=3, width=16, depth=1, num_heads=2, in_channels=3)


def _uvit():
    return UViT(num_classes=4, embed_dim=16, depth=2, num_heads=2, in_channels=3)


DIT_RULES = ("patch_embed", "blocks/attn/out", "unpatchify")
UVIT_RULES = ("patch_embed/proj", "(in_blocks|mid_block|out_blocks)/attn/proj", "decoder_pred")  # 2-axis DenseGeneral


def _model(backbone, rules, distinct=None, fused=False):
    return ConditionAwareModel(backbone(), num_classes=3, width=16, rules=rules, weights=CAN(rank=4),
                               distinct=distinct, fused=fused)


def _batch(pattern):
    """6 images; "repeated": a sampling step's conditions (one timestep, labels with repeats and the null label 3),
    "all distinct": training's (a timestep per sample)."""
    x = jax.random.normal(jax.random.key(1), (6, 4, 4, 3))
    if pattern == "repeated":
        return x, jnp.full((6,), 321.0), jnp.array([2, 3, 2, 0, 3, 3])
    return x, jnp.array([1.0, 50.0, 50.5, 400.0, 999.0, 7.0]), jnp.array([0, 1, 2, 3, 0, 1])


@pytest.mark.parametrize("kind", ["dense", "dense AKS"])
def test_fused_layer_equals_the_per_sample_path_with_gradients(kind):
    per_sample, shape = _layer(kind)
    fused, _ = _layer(kind, fused=True)
    x = jax.random.normal(jax.random.key(1), shape)
    cond = jax.random.normal(jax.random.key(2), (6, 7))
    params = _random_params(per_sample.init(jax.random.key(0), x, cond)["params"], jax.random.key(3))
    loss = lambda layer: lambda p: jnp.sum(jnp.sin(layer.apply({"params": p}, x, cond)))
    want, want_grads = jax.jit(jax.value_and_grad(loss(per_sample)))(params)
    got, got_grads = jax.jit(jax.value_and_grad(loss(fused)))(params)
    np.testing.assert_allclose(got, want, rtol=1e-5)
    for name in want_grads:
        np.testing.assert_allclose(got_grads[name], want_grads[name], rtol=1e-4, atol=1e-5, err_msg=name)


# The layer tests above cover every product and pattern; at model level the default run keeps one DiT and one U-ViT
# case (`python -m pytest -m slow` runs the rest: the CI suite is near its time budget).
@pytest.mark.parametrize("backbone,rules,product,pattern", [
    (_dit, DIT_RULES, "gather", "repeated"),
    pytest.param(_dit, DIT_RULES, "ragged", "repeated", marks=pytest.mark.slow),
    pytest.param(_dit, DIT_RULES, "ragged", "all distinct", marks=pytest.mark.slow),
    (_uvit, UVIT_RULES, "ragged", "repeated"),
    pytest.param(_dit, DIT_RULES, "fused", "all distinct", marks=pytest.mark.slow)],
    ids=["DiT-gather-repeated", "DiT-ragged-repeated", "DiT-ragged-all-distinct", "UViT-ragged-repeated",
         "DiT-fused"])
def test_model_training_step_equals_the_per_sample_path(backbone, rules, product, pattern):
    x, t, y = _batch(pattern)
    per_sample = _model(backbone, rules)
    distinct = (_model(backbone, rules, fused=True) if product == "fused"
                else _model(backbone, rules, DistinctConditions(product=product)))
    variables = _random_params(jax.eval_shape(per_sample.init, jax.random.key(0), x, t, y), jax.random.key(5))
    target = jax.random.normal(jax.random.key(3), x.shape)

    def loss(model, v):
        out = model.apply(v, x, t, y)
        return jnp.mean((out - target) ** 2), out

    (_, want), want_grads = jax.jit(jax.value_and_grad(lambda v: loss(per_sample, v), has_aux=True))(variables)
    (_, got), got_grads = jax.jit(jax.value_and_grad(lambda v: loss(distinct, v), has_aux=True))(variables)
    scale = float(jnp.abs(want).max())
    assert scale > 0.1
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * scale)
    for (path, g), w in zip(jax.tree_util.tree_leaves_with_path(got_grads), jax.tree.leaves(want_grads)):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5 * float(jnp.abs(w).max() + 1e-3),
                                   err_msg=jax.tree_util.keystr(path))


@pytest.mark.parametrize("product", PRODUCTS)
def test_guided_sampling_equals_the_per_sample_path(product):
    labels = jnp.array([0, 2, 2, 1])  # guided: these 4 + 4 null labels, one timestep per step: 4 distinct conditions
    kwargs = dict(num_classes=3, num_sample_steps=2, guidance_scale=2.0)
    per_sample = ClassConditionalDiffusionTask(_model(_dit, DIT_RULES), **kwargs)
    distinct = ClassConditionalDiffusionTask(
        _model(_dit, DIT_RULES, DistinctConditions(max_distinct=4, product=product)), **kwargs)
    x = jnp.zeros((4, 4, 4, 3))
    variables = _random_params(jax.eval_shape(per_sample.model.init, jax.random.key(0), x, jnp.zeros(4), labels),
                               jax.random.key(6))
    want = per_sample.sample(variables, labels, jax.random.key(7), (4, 4, 3))
    got = distinct.sample(variables, labels, jax.random.key(7), (4, 4, 3))
    assert float(jnp.abs(want).max()) > 0.1
    # samples in [-1, 1]; two guided steps on random weights amplify float32 rounding (a batched product blocked
    # differently for 4 kernels than for 8) to ~1e-4
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-3)


@pytest.mark.parametrize("product", PRODUCTS)
def test_exceeding_max_distinct_is_an_error_outside_jit_and_nan_under_it(product):
    x, t, y = _batch("repeated")  # 3 distinct (label, timestep) pairs
    model = _model(_dit, DIT_RULES, DistinctConditions(product=product))
    variables = _random_params(jax.eval_shape(model.init, jax.random.key(0), x, t, y), jax.random.key(5))
    with pytest.raises(ValueError, match=r"ConditionAwareModel: the batch holds 3 distinct conditions but "
                                         r"max_distinct=2"):
        model.apply(variables, x, t, y, max_distinct=2)
    out = jax.jit(lambda v: model.apply(v, x, t, y, max_distinct=2))(variables)
    overflowing = y == 0  # the third distinct condition in order of appearance
    assert bool(jnp.isnan(out[overflowing]).all()) and not bool(jnp.isnan(out[~overflowing]).any())
    want = jax.jit(_model(_dit, DIT_RULES).apply)(variables, x, t, y)
    np.testing.assert_allclose(out[~overflowing], want[~overflowing], rtol=0, atol=1e-5 * float(jnp.abs(want).max()))

    layer, shape = _layer("dense", distinct=DistinctConditions(product=product))
    cond = jnp.eye(3)[jnp.array([0, 1, 2, 0, 1, 2])]
    params = layer.init(jax.random.key(0), jnp.ones(shape), cond)
    with pytest.raises(ValueError, match="3 distinct conditions but max_distinct=1"):
        layer.apply(params, jnp.ones(shape), cond, max_distinct=1)


def test_bad_distinct_settings_are_refused():
    with pytest.raises(ValueError, match=r"product must be one of \['gather', 'ragged'\]"):
        DistinctConditions(product="loop")
    with pytest.raises(ValueError, match="max_distinct must be a positive int or None"):
        DistinctConditions(max_distinct=0)
    with pytest.raises(ValueError, match="fused=True forms one kernel per sample on chip.*choose one"):
        _model(_dit, DIT_RULES, DistinctConditions(), fused=True)
    with pytest.raises(ValueError, match="condition_ids .* need one row per sample"):
        ConditionAwareDense(3, distinct=DistinctConditions()).init(jax.random.key(0), jnp.ones((2, 4)),
                                                                   jnp.ones((2, 5)), condition_ids=jnp.arange(3))
