"""Parameter groups with their own transforms, gradients picked per group, and groups that take turns."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxgen.core.optim import Alternation, OptimizerConfig, group_labels, param_groups, pick_by_group

PARAMS = {"encoder": {"kernel": jnp.ones((2, 2))}, "decoder": {"kernel": jnp.ones((2,))},
          "disc": {"conv": {"kernel": jnp.ones((3,))}}}
GRADS = jax.tree.map(jnp.ones_like, PARAMS)
PATTERNS = {"disc": [r"^disc/"], "ae": [r"^encoder/", r"^decoder/"]}


def step(tx, params, grads, state=None):
    state = tx.init(params) if state is None else state
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state


def test_each_group_gets_its_own_transform_and_a_missing_group_is_named():
    labels = group_labels(PARAMS, PATTERNS)
    assert labels == {"encoder": {"kernel": "ae"}, "decoder": {"kernel": "ae"}, "disc": {"conv": {"kernel": "disc"}}}
    tx = param_groups({"ae": optax.sgd(0.1), "disc": optax.sgd(0.5)}, PATTERNS)
    new, _ = step(tx, PARAMS, GRADS)
    np.testing.assert_allclose(new["encoder"]["kernel"], 0.9)
    np.testing.assert_allclose(new["decoder"]["kernel"], 0.9)
    np.testing.assert_allclose(new["disc"]["conv"]["kernel"], 0.5)
    with pytest.raises(ValueError, match=r"Parameters \['decoder/kernel'\] match no group"):
        group_labels(PARAMS, {"disc": [r"^disc/"], "enc": [r"^encoder/"]})
    with pytest.raises(ValueError, match=r"Groups \['disc'\] have no transform"):
        param_groups({"ae": optax.sgd(0.1)}, PATTERNS)


def test_frozen_parameters_are_a_group_that_never_moves():
    tx = OptimizerConfig(name="sgd", learning_rate=0.1, schedule="constant", clip_grad_norm=None,
                         frozen=("^disc/",)).build(10)
    new, _ = step(tx, PARAMS, GRADS)
    np.testing.assert_allclose(new["disc"]["conv"]["kernel"], 1.0)
    np.testing.assert_allclose(new["encoder"]["kernel"], 0.9)


def test_pick_by_group_takes_each_leaf_from_its_groups_tree():
    labels = group_labels(PARAMS, PATTERNS)
    picked = pick_by_group(labels, {"ae": GRADS, "disc": jax.tree.map(lambda g: 2 * g, GRADS)})
    assert float(picked["encoder"]["kernel"][0, 0]) == 1.0 and float(picked["disc"]["conv"]["kernel"][0]) == 2.0


def test_alternating_groups_move_only_on_their_turns_and_keep_their_optimizer_state_otherwise():
    alternation = Alternation(("ae", "ae", "disc"))
    assert alternation.groups == ("ae", "disc")
    assert [int(alternation.turn(jnp.int32(s))) for s in range(6)] == [0, 0, 1, 0, 0, 1]
    tx = alternation.transform({"ae": optax.adam(0.1), "disc": optax.adam(0.1)}, PATTERNS)
    update = jax.jit(lambda p, s: step(tx, p, GRADS, s))
    params, state = PARAMS, tx.init(PARAMS)
    moved = []
    for _ in range(6):
        old_params, old_state = params, state
        params, state = update(params, state)
        changed = jax.tree.map(lambda a, b: not np.array_equal(a, b), params, old_params)
        moved.append((changed["encoder"]["kernel"], changed["disc"]["conv"]["kernel"]))
        if not changed["disc"]["conv"]["kernel"]:  # off-turn: the discriminator's Adam moments and count stay put
            jax.tree.map(np.testing.assert_array_equal, state.inner_states["disc"].inner_state.inner,
                         old_state.inner_states["disc"].inner_state.inner)
    assert moved == [(True, False), (True, False), (False, True)] * 2
