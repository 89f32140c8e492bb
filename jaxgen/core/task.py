"""The Task protocol: the only thing the shared trainer knows about a paper.

A paper plugs into `jaxgen.train.run` by providing an object with this shape. Everything is pure: `init` builds
variables from a key and an example batch, `loss` maps (variables, batch, key) to a scalar and metrics. The trainer
owns optimisation, sharding, checkpoints, logging and the loop; the task owns the model and the objective.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import jax

PyTree = Any
Batch = Mapping[str, jax.Array]
Metrics = Mapping[str, jax.Array]
LossOutput = tuple[jax.Array, Metrics] | tuple[jax.Array, Metrics, Mapping[str, PyTree]]


@dataclasses.dataclass(frozen=True)
class EvalContext:
    """What an evaluator receives besides the variables.

    `batches()` yields global eval batches (sharded like training batches) once through the eval split; each batch
    carries a boolean `"valid"` entry marking the padding rows of the last batch. `outdir` is `eval/<step>/` in the
    workdir: evaluators write pictures and extra files there. `rng` is a key derived from the run seed and the step.
    `show_progress` is false when the run was asked for no progress output (`--no-progress`) or on processes other
    than the first: an evaluator with a long loop (sampling) shows its progress only when it is true.
    """

    step: int
    rng: jax.Array
    outdir: Path
    batches: Callable[[], Iterator[Batch]]
    is_main_process: bool = True
    show_progress: bool = True


Evaluator = Callable[[PyTree, EvalContext], Mapping[str, Any]]


@runtime_checkable
class Task(Protocol):
    """A paper's model and objective.

    `variables` is a Flax variables dict: `{"params": ..., <other collections>: ...}`. The trainer differentiates
    `loss` with respect to `variables["params"]` only. `loss` returns `(loss, metrics)`, or `(loss, metrics, updated)`
    when the step changes non-param collections (BatchNorm `batch_stats`, EMA buffers): `updated` maps some of the
    collections that `init` created to their new values, typically the second output of
    `model.apply(variables, x, mutable=["batch_stats"])`. The trainer carries them in `TrainState.extra_variables`
    (checkpointed with the rest); collections not named in `updated` stay as they were.

    `partition_rules` are `(regex, logical_axes)` pairs matched against "/"-joined parameter paths; the first match
    gives the logical axis names of that parameter (e.g. `(r"mlp/.*kernel", ("embed", "mlp"))`). Parameters that
    Flax modules already annotate with `nn.with_logical_partitioning` need no rule.
    """

    partition_rules: Sequence[tuple[str, tuple[str | None, ...]]]

    def init(self, rng: jax.Array, batch: Batch) -> PyTree: ...

    def loss(self, variables: PyTree, batch: Batch, rng: jax.Array) -> LossOutput: ...

    def evaluators(self) -> Mapping[str, Evaluator]: ...


def split_loss_output(output: LossOutput, collections: Mapping[str, PyTree]) -> tuple[jax.Array, Metrics, dict]:
    """`(loss, metrics, updated collections)` from what `Task.loss` returned (`updated` is {} for a 2-tuple).

    `collections` are the non-param collections the state holds: `updated` may replace some of them, never add one
    (the trainer laid out the state's shardings from `init`, so a new collection would have nowhere to live).
    """
    if not isinstance(output, tuple) or len(output) not in (2, 3):
        raise ValueError("Task.loss must return (loss, metrics) or (loss, metrics, updated_collections); got "
                         f"{type(output).__name__} of length {len(output) if isinstance(output, tuple) else '-'}")
    loss, metrics, *rest = output
    updated = dict(rest[0]) if rest else {}
    unknown = sorted(set(updated) - set(collections))
    if unknown:
        raise ValueError(f"Task.loss returned collections {unknown} that Task.init did not create; init created "
                         f"{sorted(collections)} besides 'params'")
    return loss, metrics, updated
