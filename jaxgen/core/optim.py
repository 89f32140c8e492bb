"""Optimizers, learning-rate schedules, parameter groups, the train state they update and its parameters' EMA.

Names resolve through registries (`OPTIMIZERS`, `SCHEDULES`), so a config says `name="adamw"`,
`schedule="warmup_cosine"` and a paper adds its own entry instead of an `if` branch.

Papers with several objectives or optimizers (a GAN discriminator beside an autoencoder, architecture weights beside
network weights) build on three pieces here, so their forked trainers stay short:
- `param_groups`: named groups of parameters chosen by path regexes, each with its own optax transform (`frozen` in
  `OptimizerConfig` is the special case of a group whose transform is `set_to_zero`);
- `pick_by_group`: one gradient tree assembled from several (each group's gradient from its own loss);
- `Alternation`: groups that take turns, step by step (`("weights", "weights", "architecture")`); its transform updates
  a group only on its turn and leaves that group's optimizer state untouched otherwise, and `turn(step)` tells the
  train step whose turn it is (to pick that group's loss and batch).
"""

from __future__ import annotations

import dataclasses
import difflib
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

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
            transform = param_groups({"train": transform, "frozen": optax.set_to_zero()},
                                     {"frozen": self.frozen}, default="train")
        return transform


GroupPatterns = Mapping[str, Sequence[str]]


def group_labels(params, patterns: GroupPatterns, default: str | None = None):
    """A tree like `params` holding each parameter's group: the first group (in order) with a regex that matches the
    "/"-joined path (`re.search`), else `default`. A parameter no group claims is an error when `default` is None."""
    compiled = [(name, [re.compile(p) for p in regexes]) for name, regexes in patterns.items()]
    unclaimed = []

    def label(path, _):
        name = path_to_str(path)
        group = next((group for group, regexes in compiled if any(r.search(name) for r in regexes)), default)
        if group is None:
            unclaimed.append(name)
        return group

    labels = jax.tree_util.tree_map_with_path(label, params)
    if unclaimed:
        raise ValueError(f"Parameters {unclaimed} match no group of {dict(patterns)} and there is no default group")
    return labels


def param_groups(transforms: Mapping[str, optax.GradientTransformation], patterns: GroupPatterns,
                 default: str | None = None) -> optax.GradientTransformation:
    """One optax transform per named group of parameters (`optax.multi_transform` over `group_labels`)."""
    missing = sorted((set(patterns) | ({default} - {None})) - set(transforms))
    if missing:
        raise ValueError(f"Groups {missing} have no transform; transforms are given for {sorted(transforms)}")
    return optax.multi_transform(dict(transforms), lambda params: group_labels(params, patterns, default))


def pick_by_group(labels, trees: Mapping[str, Any]):
    """Each leaf from the tree of its group: `pick_by_group(labels, {"generator": g_grads, "discriminator": d_grads})`
    gives the generator's parameters their gradient of the generator loss and the discriminator's theirs."""
    return jax.tree.map(lambda label, *leaves: leaves[list(trees).index(label)], labels, *trees.values())


class _TurnState(NamedTuple):
    count: jax.Array
    inner: Any


def _on_turns(inner: optax.GradientTransformation, turns: Sequence[bool]) -> optax.GradientTransformation:
    """`inner` on the steps where `turns[count % len(turns)]`; zero updates and an unchanged state on the others."""
    table = jnp.asarray(turns)

    def init(params):
        return _TurnState(jnp.zeros((), jnp.int32), inner.init(params))

    def update(updates, state, params=None):
        def skip():
            return jax.tree.map(jnp.zeros_like, updates), state.inner

        new_updates, new_inner = jax.lax.cond(table[state.count % len(turns)],
                                              lambda: inner.update(updates, state.inner, params), skip)
        return new_updates, _TurnState(state.count + 1, new_inner)

    return optax.GradientTransformation(init, update)


@dataclasses.dataclass(frozen=True)
class Alternation:
    """Parameter groups that take turns: step `s` belongs to group `schedule[s % len(schedule)]`.

    `transform` counts its own updates, so it agrees with `turn(state.step)` when the train step calls it once per
    step from step 0 (its count is checkpointed with the optimizer state, so resumes agree too).
    """

    schedule: Sequence[str]

    def __post_init__(self):
        if not self.schedule:
            raise ValueError("An Alternation needs a non-empty schedule of group names")

    @property
    def groups(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(self.schedule))

    def turn(self, step: jax.Array) -> jax.Array:
        """Index into `groups` of the group whose turn `step` is (for `jax.lax.switch` over per-group losses)."""
        order = jnp.asarray([self.groups.index(name) for name in self.schedule])
        return order[step % len(self.schedule)]

    def transform(self, transforms: Mapping[str, optax.GradientTransformation], patterns: GroupPatterns,
                  default: str | None = None) -> optax.GradientTransformation:
        """`param_groups` whose groups in the schedule move only on their turns (groups outside it: every step)."""
        turned = {name: _on_turns(tx, [turn == name for turn in self.schedule]) if name in self.schedule else tx
                  for name, tx in transforms.items()}
        return param_groups(turned, patterns, default)


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

    @property
    def eval_variables(self) -> dict:
        """What evaluators receive: the trained variables here, their moving average in `EmaTrainState`."""
        return self.variables

    def after_update(self) -> "TrainState":
        """Hook run by the train step once `params` and `step` are updated (the EMA's update in `EmaTrainState`)."""
        return self

    @classmethod
    def create(cls, variables: dict, optimizer: optax.GradientTransformation,
               ema: "EmaConfig | None" = None) -> "TrainState":
        """A state at step 0; with `ema`, an `EmaTrainState` whose average starts as a copy of the parameters."""
        variables = dict(variables)
        if "params" not in variables:
            raise ValueError(f"Task.init must return a variables dict with 'params'; got keys {sorted(variables)}")
        params = variables.pop("params")
        state = cls(step=jnp.zeros((), jnp.int32), params=params, opt_state=optimizer.init(params),
                    extra_variables=variables)
        return state if ema is None else EmaTrainState.extend(state, ema)


@dataclasses.dataclass(frozen=True)
class EmaConfig:
    """An exponential moving average of the parameters, kept beside them (`train.run(ema=EmaConfig())`).

    After update `n` (counting from 1) the average is `decay * ema + (1 - decay) * params` once `n > start_step`;
    before, it is a plain copy of the parameters, so a late start does not average in the first, poor, weights.
    The average has the parameters' dtype: with decays near 1, bfloat16 parameters would round every increment away.

    `warmup=True` uses `min(decay, (1 + k) / (10 + k))` at the `k`-th averaged update (`k = n - start_step`), the
    rule of diffusers' `EMAModel` and TensorFlow's `ExponentialMovingAverage(num_updates=...)`: without it the
    starting copy keeps the weight `decay^k`, 37 % after 10,000 updates at DiT's 0.9999, so a short run's evaluators
    see mostly the initial model (measured in experiments/diffusion/README.md); with it the early average follows the
    parameters and the full decay takes over after `9 / (1 - decay) - 10` updates.
    """

    decay: float = 0.9999
    start_step: int = 0
    warmup: bool = False

    def __post_init__(self):
        if not 0.0 <= self.decay <= 1.0:
            raise ValueError(f"EmaConfig.decay must be in [0, 1]; got {self.decay}")
        if self.start_step < 0:
            raise ValueError(f"EmaConfig.start_step must be >= 0; got {self.start_step}")

    def update(self, ema_params, params, step: jax.Array):
        """The average after the update that made `params` and brought the step counter to `step`."""
        averaging = step > self.start_step
        decay = self.decay
        if self.warmup:
            updates = (step - self.start_step).astype(jnp.float32)
            decay = jnp.minimum(decay, (1.0 + updates) / (10.0 + updates))
        return jax.tree.map(
            lambda e, p: jnp.where(averaging, decay * e + (1.0 - decay) * p, p).astype(e.dtype),
            ema_params, params)


@flax.struct.dataclass
class EmaTrainState(TrainState):
    """A `TrainState` that also carries (and checkpoints) the moving average of its parameters.

    A separate class rather than an optional field, so runs without EMA keep the state tree of their existing
    checkpoints (orbax refuses a target tree with an extra, even empty, node). Evaluators see the average:
    `eval_variables` holds `ema_params` in place of `params` (the other collections, BatchNorm statistics included,
    are the trained ones).
    """

    ema_params: Any = None
    ema: EmaConfig = flax.struct.field(pytree_node=False, default=EmaConfig())

    @property
    def eval_variables(self) -> dict:
        return {**self.variables, "params": self.ema_params}

    def after_update(self) -> "EmaTrainState":
        return self.replace(ema_params=self.ema.update(self.ema_params, self.params, self.step))

    @classmethod
    def extend(cls, state: TrainState, ema: EmaConfig, ema_params: Any = None) -> "EmaTrainState":
        """`state` with an average: `ema_params`, or a copy of `state.params` (own buffers, so donation works)."""
        if ema_params is None:
            ema_params = jax.tree.map(jnp.copy, state.params)
        return cls(step=state.step, params=state.params, opt_state=state.opt_state,
                   extra_variables=state.extra_variables, ema_params=ema_params, ema=ema)
