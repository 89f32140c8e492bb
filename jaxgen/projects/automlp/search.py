"""The first-order bilevel search: the network's weights descend the training loss, alpha the validation loss.

Both gradients are taken at the same parameters (first order: no unrolled inner step, as DARTS-1st), and
`jaxgen.core.optim.Alternation` gives the two groups turns, so each step moves one group with its own optimizer:
`schedule=("weights", "architecture")` alternates, a longer run of "weights" lets the weights catch up first.
"""

from __future__ import annotations

from typing import Callable, Sequence

import jax
import optax

from jaxgen.core.optim import Alternation, group_labels, pick_by_group
from jaxgen.projects.automlp.model import ARCH_PATTERN, AutoMLP, cross_entropy

GROUPS = {"architecture": [ARCH_PATTERN]}


def search_optimizer(weights: optax.GradientTransformation, architecture: optax.GradientTransformation,
                     schedule: Sequence[str] = ("weights", "architecture")) -> optax.GradientTransformation:
    """`weights` for every parameter but alpha, `architecture` for alpha, each on its turns of `schedule`."""
    return Alternation(tuple(schedule)).transform({"weights": weights, "architecture": architecture}, GROUPS,
                                                  default="weights")


def search_step(model: AutoMLP, optimizer: optax.GradientTransformation) -> Callable:
    """A jitted `(params, opt_state, train_batch, valid_batch) -> (params, opt_state, train_loss, valid_loss)`;
    batches hold "history" and "target"."""

    def loss(params, batch):
        return cross_entropy(model.apply({"params": params}, batch["history"]), batch["target"])

    @jax.jit
    def step(params, opt_state, train_batch, valid_batch):
        train_loss, train_grads = jax.value_and_grad(loss)(params, train_batch)
        valid_loss, valid_grads = jax.value_and_grad(loss)(params, valid_batch)
        grads = pick_by_group(group_labels(params, GROUPS, default="weights"),
                              {"weights": train_grads, "architecture": valid_grads})
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, train_loss, valid_loss

    return step
