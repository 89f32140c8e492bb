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


@dataclasses.dataclass(frozen=True)
class EvalContext:
    """What an evaluator receives besides the variables.

    `batches()` yields global eval batches (sharded like training batches) once through the eval split; each batch
    carries a boolean `"valid"` entry marking the padding rows of the last batch. `outdir` is `eval/<step>/` in the
    workdir: evaluators write pictures and extra files there. `rng` is a key derived from the run seed and the step.
    """

    step: int
    rng: jax.Array
    outdir: Path
    batches: Callable[[], Iterator[Batch]]
    is_main_process: bool = True


Evaluator = Callable[[PyTree, EvalContext], Mapping[str, Any]]


@runtime_checkable
class Task(Protocol):
    """A paper's model and objective.

    `variables` is a Flax variables dict: `{"params": ..., <other collections>: ...}`. The trainer differentiates
    `loss` with respect to `variables["params"]` only; other collections ride along unchanged.

    `partition_rules` are `(regex, logical_axes)` pairs matched against "/"-joined parameter paths; the first match
    gives the logical axis names of that parameter (e.g. `(r"mlp/.*kernel", ("embed", "mlp"))`). Parameters that
    Flax modules already annotate with `nn.with_logical_partitioning` need no rule.
    """

    partition_rules: Sequence[tuple[str, tuple[str | None, ...]]]

    def init(self, rng: jax.Array, batch: Batch) -> PyTree: ...

    def loss(self, variables: PyTree, batch: Batch, rng: jax.Array) -> tuple[jax.Array, Metrics]: ...

    def evaluators(self) -> Mapping[str, Evaluator]: ...
