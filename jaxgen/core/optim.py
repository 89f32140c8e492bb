"""Optimizers, learning-rate schedules, frozen-parameter masks and the train state they update.

Names resolve through registries (`OPTIMIZERS`, `SCHEDULES`), so a config says `name="adamw"`,
`schedule="warmup_cosine"` and a paper adds its own entry instead of an `if` branch.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
from collections.abc import Callable, Sequence
from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax

from jaxgen.core.sharding import path_to_str


def _lookup(registry: dict, kind: str, name: str):
    if name not in registry:
        close = difflib.get_close_matches(name, registry, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"Unknown {kind} {name!r}; known: {sorted(registry)}.{hint}")
    return registry[name]


def _constant(lr: float, total_steps: int, warmup_steps: int) -> optax.Schedule:
    return optax.constant_schedule(lr)


def _warmup_constant(lr: float, total_steps: int, warmup_steps: int) -> optax.Schedule:
    return optax.join_schedules(
        [optax.linear_schedule(0.0, lr, max(warmup_steps, 1)), optax.constant_schedule(lr)], [warmup_steps]
    )


def _warmup_cosine(lr: float, total_steps: int, warmup_steps: int) -> optax.Schedule:
    return optax.warmup_cosine_decay_schedule(0.0, lr, warmup_steps, max(total_steps, warmup_steps + 1))


def _warmup_linear(lr: float, total_steps: int, warmup_steps: int) -> optax.Schedule:
    return optax.join_schedules(
        [optax.linear_schedule(0.0, lr, max(warmup_steps, 1)),
         optax.linear_schedule(lr, 0.0, max(total_steps - warmup_steps, 1))],
        [warmup_steps],
    )


SCHEDULES: dict[str, Callable[[float, int, int], optax.Schedule]] = {
    "constant": _constant,
    "warmup_constant": _warmup_constant,
    "warmup_cosine": _warmup_cosine,
    "warmup_linear": _warmup_linear,
}

OPTIMIZERS: dict[str, Callable[..., optax.GradientTransformation]] = {
    "sgd": lambda lr, weight_decay, **kw: optax.chain(optax.add_decayed_weights(weight_decay), optax.sgd(lr, **kw)),
    "momentum": lambda lr, weight_decay, **kw: optax.chain(
        optax.add_decayed_weights(weight_decay), optax.sgd(lr, momentum=kw.pop("momentum", 0.9), **kw)
    ),
    "adam": lambda lr, weight_decay, **kw: optax.chain(optax.add_decayed_weights(weight_decay), optax.adam(lr, **kw)),
    "adamw": lambda lr, weight_decay, **kw: optax.adamw(lr, weight_decay=weight_decay, **kw),
    "lion": lambda lr, weight_decay, **kw: optax.lion(lr, weight_decay=weight_decay, **kw),
}


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    """A complete optimizer recipe; `build(total_steps)` turns it into an optax transformation.

    `frozen` holds regexes over "/"-joined parameter paths (e.g. `"encoder/.*"`): matching parameters get zero
    updates and no optimizer state. `clip_grad_norm` clips the global norm before the update (None: no clipping).
    """

    name: str = "adamw"
    learning_rate: float = 1e-3
    schedule: str = "warmup_cosine"
    warmup_steps: int = 0
    weight_decay: float = 0.0
    clip_grad_norm: float | None = 1.0
    frozen: Sequence[str] = ()
    kwargs: tuple[tuple[str, Any], ...] = ()

    def schedule_fn(self, total_steps: int) -> optax.Schedule:
        return _lookup(SCHEDULES, "schedule", self.schedule)(self.learning_rate, total_steps, self.warmup_steps)

    def build(self, total_steps: int) -> optax.GradientTransformation:
        make = _lookup(OPTIMIZERS, "optimizer", self.name)
        transform = make(self.schedule_fn(total_steps), self.weight_decay, **dict(self.kwargs))
        if self.clip_grad_norm is not None:
            transform = optax.chain(optax.clip_by_global_norm(self.clip_grad_norm), transform)
        if self.frozen:
            patterns = [re.compile(p) for p in self.frozen]
            transform = optax.multi_transform(
                {"train": transform, "frozen": optax.set_to_zero()},
                lambda params: frozen_labels(params, patterns),
            )
        return transform


def frozen_labels(params, patterns: Sequence[re.Pattern]):
    """'frozen' for parameters whose path matches any pattern, 'train' otherwise."""

    def label(path, _):
        name = path_to_str(path)
        return "frozen" if any(p.search(name) for p in patterns) else "train"

    return jax.tree_util.tree_map_with_path(label, params)


@flax.struct.dataclass
class TrainState:
    """Everything a step changes: the step counter, parameters, optimizer state and other variable collections."""

    step: jax.Array
    params: Any
    opt_state: Any
    extra_variables: Any

    @property
    def variables(self) -> dict:
        return {"params": self.params, **self.extra_variables}

    @classmethod
    def create(cls, variables: dict, optimizer: optax.GradientTransformation) -> "TrainState":
        variables = dict(variables)
        if "params" not in variables:
            raise ValueError(f"Task.init must return a variables dict with 'params'; got keys {sorted(variables)}")
        params = variables.pop("params")
        return cls(step=jnp.zeros((), jnp.int32), params=params, opt_state=optimizer.init(params),
                   extra_variables=variables)
