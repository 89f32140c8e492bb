"""Running a run's evaluators at one step: `eval/<step>/` for their files, `metrics.json`, and eval records.

Trainers (the shared one and the forks) hand over closures `context -> {metric: value}`, each already bound to the
state it evaluates; this module owns the folder, the eval batches (global arrays, padded last batch marked by
`valid`), the key of the step and the bookkeeping, so every trainer writes evaluations the same way.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import jax

from jaxgen.core import metrics as metrics_lib
from jaxgen.core import rng as rng_lib
from jaxgen.core import sharding as sharding_lib
from jaxgen.core import workdir as workdir_lib
from jaxgen.core.task import EvalContext


def eval_dir(workdir: str | Path, step: int, tag: str = "") -> Path:
    """Where an evaluation at `step` writes its files: `eval/<step>/`, or `eval/<step>-<tag>/` for a tagged one."""
    return Path(workdir) / "eval" / (f"{step}-{tag}" if tag else str(step))


def run_evaluators(
    evaluators: Mapping[str, Callable[[EvalContext], Mapping[str, Any]]],
    *, step: int, eval_data, mesh, eval_stream: jax.Array, workdir: str | Path, writer: metrics_lib.MetricWriter,
    progress: bool = True, tag: str = "",
) -> dict[str, dict]:
    """Runs each evaluator; returns `{name: {metric: value}}`. `progress=False` asks evaluators for no progress
    output (`EvalContext.show_progress`).

    Numbers go to metrics.jsonl as `eval/<name>/<metric>`; a NaN there means undefined at this step (e.g. the
    accuracy of zero accepted pseudo-labels) and is left out of the record, as training records do. A `tag` (e.g.
    "trained", for a run's own weights beside the moving average its evaluations use) keeps such an evaluation apart:
    files in `eval/<step>-<tag>/`, records as `eval-<tag>/<name>/<metric>`, so it never overwrites the usual one.
    """
    if not evaluators:
        return {}
    outdir = eval_dir(workdir, step, tag)
    is_main = jax.process_index() == 0
    if is_main:
        outdir.mkdir(parents=True, exist_ok=True)

    def batches() -> Iterator[dict[str, jax.Array]]:
        if eval_data is None:
            raise ValueError("This task's evaluators read eval batches, but the run has no eval_data")
        rows = sharding_lib.process_rows(eval_data.batch_size, mesh)
        for batch in eval_data.eval_batches(rows):
            yield sharding_lib.to_global(batch, mesh)

    context = EvalContext(step=step, rng=rng_lib.step_key(eval_stream, step), outdir=outdir, batches=batches,
                          is_main_process=is_main, show_progress=progress and is_main)
    results = {name: {k: metrics_lib.to_python(v) for k, v in evaluator(context).items()}
               for name, evaluator in evaluators.items()}
    if is_main:
        workdir_lib.write_json(outdir / "metrics.json", results)
    prefix = f"eval-{tag}" if tag else "eval"
    writer.write(step, {f"{prefix}/{name}/{k}": v for name, values in results.items() for k, v in values.items()
                        if isinstance(v, (int, float)) and not (isinstance(v, float) and math.isnan(v))})
    return results
