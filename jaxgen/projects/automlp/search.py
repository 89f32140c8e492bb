"""The first-order bilevel search: the network's weights descend the training loss, alpha the validation loss.

`jaxgen.core.optim.Alternation` gives the two parameter groups turns, each with its own optax optimizer: step `s`
belongs to `schedule[s % len(schedule)]`; `("weights", "architecture")` alternates, a longer run of "weights" lets
the weights catch up first. A step computes one gradient, of the loss whose turn it is, at the current parameters:
first order, as DARTS-1st (no unrolled inner step). The other group's update is zero on that step and its optimizer
state is left alone, so the gradient of the wrong loss never reaches it.

The state carries the latest training and validation loss, so every logged step shows both whichever turn it was.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax

from jaxgen.core.optim import Alternation
from jaxgen.projects.automlp.model import ARCH_PATTERN, AutoMLP, cross_entropy

GROUPS = {"architecture": [ARCH_PATTERN]}
ALTERNATE = ("weights", "architecture")


def search_optimizer(weights: optax.GradientTransformation, architecture: optax.GradientTransformation,
                     schedule: Sequence[str] = ALTERNATE) -> optax.GradientTransformation:
    """`weights` for every parameter but alpha, `architecture` for alpha, each on its turns of `schedule`."""
    _check_schedule(schedule)
    return Alternation(tuple(schedule)).transform({"weights": weights, "architecture": architecture}, GROUPS,
                                                  default="weights")


def _check_schedule(schedule: Sequence[str]) -> None:
    if set(schedule) != {"weights", "architecture"}:
        raise ValueError(f"A search schedule gives turns to 'weights' and 'architecture', each at least once; got "
                         f"{tuple(schedule)}")


@flax.struct.dataclass
class SearchState:
    step: jax.Array
    params: Any
    opt_state: Any
    last_losses: jax.Array  # [train, valid], NaN until each has had a turn

    @classmethod
    def create(cls, params, optimizer: optax.GradientTransformation) -> "SearchState":
        return cls(step=jnp.zeros((), jnp.int32), params=params, opt_state=optimizer.init(params),
                   last_losses=jnp.full((2,), jnp.nan, jnp.float32))


def search_update(model: AutoMLP, optimizer: optax.GradientTransformation,
                  schedule: Sequence[str] = ALTERNATE) -> Callable:
    """The pure step `(state, {"train": batch, "valid": batch}, key) -> (state, metrics)` (batches hold "history" and
    "target", of one shape); `optimizer` is `search_optimizer(..., schedule)`. Dropout is on for both losses, as the
    training loss it is compared with. Metrics: the step's `loss`, `train_loss`, `valid_loss`, `grad_norm`, and
    `alpha/<k>`, the softmax weight of each window after the step."""
    _check_schedule(schedule)
    alternation = Alternation(tuple(schedule))
    architecture = alternation.groups.index("architecture")

    def loss_fn(params, batch, key):
        scores = model.apply({"params": params}, batch["history"], train=True, rngs={"dropout": key})
        return cross_entropy(scores, batch["target"])

    def update(state: SearchState, batches, key):
        on_alpha = alternation.turn(state.step) == architecture
        batch = jax.tree.map(lambda t, v: jnp.where(on_alpha, v, t), batches["train"], batches["valid"])
        loss, grads = jax.value_and_grad(loss_fn)(state.params, batch, key)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        last_losses = state.last_losses.at[on_alpha.astype(jnp.int32)].set(loss)
        weights = jax.nn.softmax(params["arch_alpha"])
        metrics = {"loss": loss, "train_loss": last_losses[0], "valid_loss": last_losses[1],
                   "grad_norm": optax.tree.norm(grads),
                   **{f"alpha/{k}": weights[i] for i, k in enumerate(model.windows)}}
        return SearchState(step=state.step + 1, params=params, opt_state=opt_state, last_losses=last_losses), metrics

    return update
