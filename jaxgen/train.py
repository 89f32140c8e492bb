"""The shared trainer: one readable `run()` over the Task protocol.

Read top to bottom: workdir -> mesh -> shapes and shardings -> restore or initialise -> the jitted step -> the loop
(bounded steps in flight, NaN guard, metrics, checkpoints, evaluators) -> clean-up. A paper whose outer loop differs
(federated rounds, calibration, bilevel search) forks this file into `projects/<paper>/trainer.py` and reuses
`jaxgen.core`; it does not add flags here.

The trainer is gin-free: `jaxgen.cli` binds its arguments from the experiment's gin files.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxgen.core import checkpoint as ckpt_lib
from jaxgen.core import mesh as mesh_lib
from jaxgen.core import metrics as metrics_lib
from jaxgen.core import progress as progress_lib
from jaxgen.core import rng as rng_lib
from jaxgen.core import sharding as sharding_lib
from jaxgen.core import workdir as workdir_lib
from jaxgen.core.errors import ConfigError, require_positive
from jaxgen.core.evaluation import run_evaluators
from jaxgen.core.monitor import NonFiniteLossError, StepMonitor, run_steps  # noqa: F401  (NonFiniteLossError: public here)
from jaxgen.core.optim import EmaConfig, EmaTrainState, OptimizerConfig, TrainState
from jaxgen.core.task import Task, split_loss_output
from jaxgen.data.loader import Loader, prefetch

MODES = ("train", "eval")
# What evaluators see when the run keeps an EMA: its moving average (the usual reason for one), or the trained
# parameters themselves (`eval-trained/...` records and `eval/<step>-trained/`, beside the average's).
EVAL_WEIGHTS = ("average", "trained")


@dataclasses.dataclass
class RunResult:
    workdir: Path
    step: int
    state: TrainState
    last_train_record: dict | None
    eval_results: dict[str, dict]


# ======================================================================================================================
# Shapes first, then shardings, then allocation.
# ======================================================================================================================


def _global_batch(loader: Loader, step: int, rows: np.ndarray, mesh) -> dict[str, jax.Array]:
    return sharding_lib.to_global(loader.batch(step, rows), mesh)


def _state_shardings(task: Task, optimizer, init_rng, example_batch, mesh, logical_axis_rules, ema):
    """(abstract state with shardings, state shardings); nothing is allocated. The EMA is sharded like `params`."""
    boxed = jax.eval_shape(task.init, init_rng, example_batch)
    variable_shardings = sharding_lib.variable_shardings(
        boxed, mesh, getattr(task, "partition_rules", ()), logical_axis_rules
    )
    if "params" not in variable_shardings:
        raise ValueError(f"Task.init must return a variables dict with 'params'; got keys {sorted(variable_shardings)}")
    abstract = jax.eval_shape(lambda variables: TrainState.create(variables, optimizer, ema), nn.unbox(boxed))
    replicated = sharding_lib.replicated(mesh)
    shardings = TrainState(
        step=replicated,
        params=variable_shardings["params"],
        opt_state=optax.tree_map_params(  # moments follow their parameter; frozen ones hold MaskedNode
            optimizer, lambda leaf, s: leaf if isinstance(leaf, optax.MaskedNode) else s, abstract.opt_state,
            variable_shardings["params"], transform_non_params=lambda _: replicated,
            is_leaf=lambda x: isinstance(x, optax.MaskedNode),
        ),
        extra_variables={k: v for k, v in variable_shardings.items() if k != "params"},
    )
    if ema is not None:
        shardings = EmaTrainState.extend(shardings, ema, ema_params=variable_shardings["params"])
    abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)
    return abstract, shardings


# ======================================================================================================================
# Restore: workdir > resume_from > init_from > scratch.
# ======================================================================================================================


def _restore_or_init(
    *, checkpointer, abstract, init_fn, restore_step, resume_from, init_from, mode, train_data
) -> tuple[TrainState, str]:
    restored = ckpt_lib.restore_run_state(checkpointer, abstract, restore_step,
                                          step_flag="--step" if mode == "eval" else "--restore-step")
    if restored is not None:
        state, data_state, step = restored
        ckpt_lib.warn_if_data_changed(data_state, train_data.state(step))
        return state, f"workdir checkpoint {checkpointer.step_dir(step)}"
    if mode == "eval":
        raise ckpt_lib.CheckpointError(f"Nothing to evaluate: no checkpoint in {checkpointer.directory}")
    if resume_from:
        source, step = ckpt_lib.open_source(resume_from, f"resume_from={resume_from!r}")
        state, _ = source.restore(step, abstract)
        return state, f"resume_from {source.step_dir(step)}"
    state = init_fn()
    if init_from:
        source, step = ckpt_lib.open_source(init_from, f"init_from={init_from!r}")
        params = source.restore_subtree(step, {"params": abstract.params})["params"]
        state = state.replace(params=params)
        if isinstance(state, EmaTrainState):  # the average starts from the copied parameters too
            state = state.replace(ema_params=jax.tree.map(jnp.copy, params))
        return state, f"parameters from init_from {source.step_dir(step)}"
    return state, "scratch"


# ======================================================================================================================
# Evaluation.
# ======================================================================================================================


def evaluate(task, state, *, step, eval_data, mesh, eval_stream, workdir, writer, progress=True,
             weights: str = "average") -> dict[str, dict]:
    """Runs every evaluator of the task on the state's `eval_variables` (see `jaxgen.core.evaluation`): the trained
    variables, or with EMA on their moving average (sample quality, the usual reason for EMA, is measured on it).
    `weights="trained"` (one of `EVAL_WEIGHTS`, checked by `run`) evaluates a run with EMA on its trained variables
    instead, tagged "trained"."""
    trained_beside_average = weights == "trained" and isinstance(state, EmaTrainState)
    variables = state.variables if trained_beside_average else state.eval_variables
    evaluators = {name: functools.partial(evaluator, variables) for name, evaluator in task.evaluators().items()}
    return run_evaluators(evaluators, step=step, eval_data=eval_data, mesh=mesh, eval_stream=eval_stream,
                          workdir=workdir, writer=writer, progress=progress,
                          tag="trained" if trained_beside_average else "")


# ======================================================================================================================
# The run.
# ======================================================================================================================


def run(
    *,
    task: Task,
    workdir: str | Path,
    train_data: Loader,
    train_steps: int,
    eval_data: Loader | None = None,
    optimizer: OptimizerConfig = OptimizerConfig(),
    ema: EmaConfig | None = None,
    seed: int = 0,
    log_every: int = 10,
    checkpoint_every: int = 1000,
    eval_every: int = 1000,
    keep_checkpoints: int = 3,
    async_checkpointing: bool = True,
    mesh: mesh_lib.MeshConfig = mesh_lib.MeshConfig(),
    logical_axis_rules: Sequence[tuple[str, Any]] = sharding_lib.LOGICAL_AXIS_RULES,
    resume_from: str | None = None,
    init_from: str | None = None,
    restore_step: int | None = None,
    max_steps_in_flight: int = 8,
    progress: bool = True,
    mode: str = "train",
    eval_weights: str = "average",
) -> RunResult:
    """Trains `task` for `train_steps` updates (or, with mode="eval", evaluates the workdir's checkpoint).

    Training records (`metrics.jsonl`) are written every `log_every` steps and at the end; `step` counts completed
    updates, so the record of step 100 and the checkpoint of step 100 describe the same state. `eval_every=0`
    evaluates only at the end. Resuming after a crash continues bit-for-bit: every step's batch and key are pure
    functions of (seed, step). `ema` keeps a moving average of the parameters (checkpointed, given to evaluators;
    `eval_weights="trained"` gives them the trained parameters instead, `EVAL_WEIGHTS`).
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}; got {mode!r}")
    if eval_weights not in EVAL_WEIGHTS:
        raise ConfigError(f"eval_weights must be one of {EVAL_WEIGHTS}; got {eval_weights!r}")
    require_positive(train_steps=train_steps, log_every=log_every, checkpoint_every=checkpoint_every,
                     max_steps_in_flight=max_steps_in_flight)
    if eval_every < 0:
        raise ConfigError(f"eval_every must be >= 0 (0: only at the end); got {eval_every}")

    if eval_data is None and task.evaluators():
        logging.warning("The task has evaluators %s but the run has no eval_data: evaluators that read eval batches "
                        "will fail at the first evaluation", sorted(task.evaluators()))

    # ---------------------------------------------------------------------------------------------------------- setup
    workdir = Path(workdir).absolute()
    is_main = jax.process_index() == 0
    if is_main:
        workdir.mkdir(parents=True, exist_ok=True)
    mesh = mesh_lib.make_mesh(mesh)
    rows = sharding_lib.process_rows(train_data.batch_size, mesh)

    init_stream, train_stream, eval_stream = (rng_lib.stream(seed, s) for s in ("init", "train", "eval"))
    example_batch = _global_batch(train_data, 0, rows, mesh)
    tx = optimizer.build(train_steps)
    schedule = optimizer.schedule_fn(train_steps)
    abstract, shardings = _state_shardings(task, tx, init_stream, example_batch, mesh, logical_axis_rules, ema)

    def create_state(key, batch) -> TrainState:
        return TrainState.create(nn.unbox(task.init(key, batch)), tx, ema)

    def init_fn() -> TrainState:
        """Parameters are created already sharded (`out_shardings`), never whole on one device."""
        return jax.jit(create_state, out_shardings=shardings)(init_stream, example_batch)

    # Evaluation reads the checkpoints and never changes them (an earlier step leaves the later ones in place).
    checkpointer = ckpt_lib.Checkpointer(workdir / "checkpoints", max_to_keep=keep_checkpoints,
                                         async_save=async_checkpointing, read_only=mode == "eval")
    state, origin = _restore_or_init(
        checkpointer=checkpointer, abstract=abstract, init_fn=init_fn,
        restore_step=restore_step, resume_from=resume_from, init_from=init_from, mode=mode, train_data=train_data,
    )
    start_step = int(jax.device_get(state.step))
    logging.info("Starting at step %d from %s", start_step, origin)
    if is_main and mode == "train":
        progress_lib.announce_start(start_step, origin)
        metrics_lib.truncate_after(workdir, start_step)
    if is_main and mode == "train" and start_step < train_steps:  # a finished run, rerun, changes nothing
        workdir_lib.record_start(workdir, workdir_lib.run_info(
            mesh_lib.describe(mesh),
            {"train_data": train_data.state(0), "train_steps": train_steps, "seed": seed, "start_step": start_step,
             "started_from": origin},
        ))
    writer = metrics_lib.MetricWriter(workdir, enabled=is_main, source="eval" if mode == "eval" else None)

    def evaluate_at(state: TrainState, step: int) -> dict[str, dict]:
        return evaluate(task, state, step=step, eval_data=eval_data, mesh=mesh, eval_stream=eval_stream,
                        workdir=workdir, writer=writer, progress=progress, weights=eval_weights)

    if mode == "eval":
        try:
            results = evaluate_at(state, start_step)
        finally:
            writer.close()
            checkpointer.close()
        return RunResult(workdir, start_step, state, None, results)

    # ------------------------------------------------------------------------------------------------- the train step
    def train_step(state: TrainState, batch):
        step_rng = rng_lib.step_key(train_stream, state.step)

        def loss_fn(params):
            loss, task_metrics, updated = split_loss_output(
                task.loss({"params": params, **state.extra_variables}, batch, step_rng), state.extra_variables)
            return loss, (task_metrics, updated)

        (loss, (task_metrics, updated)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        new_state = state.replace(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                                  opt_state=opt_state, extra_variables={**state.extra_variables, **updated})
        new_state = new_state.after_update()  # the EMA, when the run keeps one
        step_metrics = {**task_metrics, "loss": loss, "grad_norm": optax.tree.norm(grads),
                        "learning_rate": schedule(state.step)}
        return new_state, step_metrics

    batch_sharding = sharding_lib.batch_sharding(mesh)
    jitted_step = jax.jit(
        train_step,
        in_shardings=(shardings, batch_sharding),
        out_shardings=(shardings, sharding_lib.replicated(mesh)),
        donate_argnums=0,
    )

    # -------------------------------------------------------------------------------------------------------- the loop
    batches = prefetch(train_data.iterate(start_step, rows),
                       convert=lambda b: sharding_lib.to_global(b, mesh))
    bar, monitor_writer = progress_lib.training_display(writer, total=train_steps, initial=start_step,
                                                        desc=f"train {workdir.name}", enabled=progress and is_main)
    monitor = StepMonitor(monitor_writer, checkpointer, log_every=log_every, last_step=train_steps,
                          max_in_flight=max_steps_in_flight, progress_bar=bar)
    try:
        state, eval_results = run_steps(
            jitted_step, state, batches, start_step=start_step, train_steps=train_steps,
            checkpoint_every=checkpoint_every, eval_every=eval_every, monitor=monitor, checkpointer=checkpointer,
            data_state=train_data.state, evaluate=evaluate_at)
    finally:
        bar.close()
        batches.close()
        checkpointer.close()
        writer.close()

    if is_main and start_step < train_steps:
        metrics_lib.plot_curves(metrics_lib.read_records(workdir), workdir / "curves.png")
    return RunResult(workdir, max(start_step, train_steps), state, monitor.last_record, eval_results)
