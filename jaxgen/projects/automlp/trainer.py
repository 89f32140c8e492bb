"""The AutoMLP trainer, forked from `jaxgen/train.py`: a bilevel search for the short-term window, then the chosen
window retrained from scratch.

Why a fork: the search reads two streams at once (training batches move the weights, validation batches move alpha)
with two optimizers taking turns (`search.py`), which the shared trainer's one-loss step does not do. Everything else
is `jaxgen.core` (mesh, checkpoints, key streams, the step monitor's loop, progress display, metric records), and
the retraining *is* the shared trainer: `retrain` is `jaxgen.train.run`, bound in gin with the data, optimizer and
loop settings that the baselines' recipes use, so AutoMLP's final model is trained exactly like them.

Read top to bottom: `run` -> `search` (restore or init, the loop, the choice) -> the retraining.

Workdir: `search/` (metrics.jsonl with `alpha/<k>`, the softmax weight of each window, at every logged step;
checkpoints/; curves.png), `alpha_trajectory.png`, `search.json` (windows, final alpha and weights, the chosen
window), then everything the shared trainer writes for the retrained model. A finished search (search.json exists) is
never redone; an interrupted one continues from its latest checkpoint; `restore_step` is the retraining's.
`jaxgen eval` evaluates the retrained model, its window read from search.json.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import jax
import numpy as np

from jaxgen.core import checkpoint as ckpt_lib
from jaxgen.core import mesh as mesh_lib
from jaxgen.core import metrics as metrics_lib
from jaxgen.core import progress as progress_lib
from jaxgen.core import rng as rng_lib
from jaxgen.core import sharding as sharding_lib
from jaxgen.core import workdir as workdir_lib
from jaxgen.core.errors import ConfigError, require_positive
from jaxgen.core.monitor import StepMonitor, run_steps
from jaxgen.core.optim import OptimizerConfig
from jaxgen.data.loader import Loader, prefetch
from jaxgen.projects.automlp.search import ALTERNATE, SearchState, search_optimizer, search_update
from jaxgen.projects.automlp.task import NextItemTask
from jaxgen.train import MODES, RunResult

SEARCH_DIR = "search"
SEARCH_FILE = "search.json"
ALPHA_PLOT = "alpha_trajectory.png"
# The search draws its keys from the run's streams folded with this tag, so they never equal the retraining's.
SEARCH_TAG = zlib.crc32(b"automlp search")
# DARTS's architecture optimizer: Adam, lr 3e-4, beta1 0.5, weight decay 1e-3, no schedule.
ARCHITECTURE_OPTIMIZER = OptimizerConfig(name="adam", learning_rate=3e-4, schedule="constant", weight_decay=1e-3,
                                         clip_grad_norm=None, kwargs=(("b1", 0.5),))


def run(
    *,
    task: NextItemTask,
    workdir: str | Path,
    train_data: Loader,
    valid_data: Loader,
    search_steps: int,
    retrain: Callable[..., RunResult],
    weights_optimizer: OptimizerConfig = OptimizerConfig(),
    architecture_optimizer: OptimizerConfig = ARCHITECTURE_OPTIMIZER,
    schedule: Sequence[str] = ALTERNATE,
    seed: int = 0,
    log_every: int = 10,
    checkpoint_every: int = 1000,
    keep_checkpoints: int = 2,
    async_checkpointing: bool = True,
    mesh: mesh_lib.MeshConfig = mesh_lib.MeshConfig(),
    restore_step: int | None = None,
    max_steps_in_flight: int = 8,
    progress: bool = True,
    mode: str = "train",
) -> RunResult:
    """Searches `task.model`'s windows for `search_steps` steps (weights on `train_data`, alpha on `valid_data`,
    batches of one size), then `retrain`s the task with the argmax window alone; returns the retraining's result.
    mode="eval" evaluates the retrained model's checkpoint."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}; got {mode!r}")
    windows = tuple(task.model.windows)
    if len(windows) < 2:
        raise ConfigError(f"The model has one window {windows}: nothing to search. Train it with jaxgen.train.run "
                          "(the fixed-k recipes), or give the model several candidate windows")
    workdir = Path(workdir).absolute()
    if mode == "eval":
        chosen = read_search(workdir)["chosen_window"]
    else:
        chosen = search(task, workdir, train_data=train_data, valid_data=valid_data, search_steps=search_steps,
                        weights_optimizer=weights_optimizer, architecture_optimizer=architecture_optimizer,
                        schedule=schedule, seed=seed, log_every=log_every, checkpoint_every=checkpoint_every,
                        keep_checkpoints=keep_checkpoints, async_checkpointing=async_checkpointing, mesh=mesh,
                        max_steps_in_flight=max_steps_in_flight, progress=progress)["chosen_window"]
    fixed = task.with_model(task.model.clone(windows=(chosen,)))
    return retrain(task=fixed, workdir=workdir, restore_step=restore_step, progress=progress, mode=mode)


def read_search(workdir: Path) -> dict:
    path = Path(workdir) / SEARCH_FILE
    if not path.is_file():
        raise ckpt_lib.CheckpointError(f"{path} does not exist: the search of this run has not finished")
    return json.loads(path.read_text())


# ======================================================================================================================
# The search.
# ======================================================================================================================


def search(task: NextItemTask, workdir: str | Path, *, train_data: Loader, valid_data: Loader, search_steps: int,
           weights_optimizer: OptimizerConfig = OptimizerConfig(),
           architecture_optimizer: OptimizerConfig = ARCHITECTURE_OPTIMIZER, schedule: Sequence[str] = ALTERNATE,
           seed: int = 0, log_every: int = 10, checkpoint_every: int = 1000, keep_checkpoints: int = 2,
           async_checkpointing: bool = True, mesh: mesh_lib.MeshConfig = mesh_lib.MeshConfig(),
           max_steps_in_flight: int = 8, progress: bool = True) -> dict:
    """Runs (or continues) the search (`run`'s first phase, its arguments' meaning and defaults); returns
    search.json's contents, writing it and the alpha plot once done."""
    workdir = Path(workdir).absolute()
    if (workdir / SEARCH_FILE).is_file():
        return read_search(workdir)
    require_positive(search_steps=search_steps, log_every=log_every, checkpoint_every=checkpoint_every,
                     max_steps_in_flight=max_steps_in_flight)
    if train_data.batch_size != valid_data.batch_size:
        raise ConfigError(f"The search takes training and validation batches of one size; got "
                          f"{train_data.batch_size} and {valid_data.batch_size}")

    # ------------------------------------------------------------------------------------------------------ setup
    search_dir = workdir / SEARCH_DIR
    is_main = jax.process_index() == 0
    if is_main:
        search_dir.mkdir(parents=True, exist_ok=True)
    mesh = mesh_lib.make_mesh(mesh)
    rows = sharding_lib.process_rows(train_data.batch_size, mesh)
    replicated = sharding_lib.replicated(mesh)

    def host_batches(step: int):
        return {"train": train_data.batch(step, rows), "valid": valid_data.batch(step, rows)}

    def global_batches(batches):
        return {name: sharding_lib.to_global(batch, mesh) for name, batch in batches.items()}

    def data_state(step: int) -> dict:
        return {"train": train_data.state(step), "valid": valid_data.state(step)}

    init_stream, step_stream = (jax.random.fold_in(rng_lib.stream(seed, name), SEARCH_TAG)
                                for name in ("init", "train"))
    tx = search_optimizer(weights_optimizer.build(search_steps), architecture_optimizer.build(search_steps), schedule)
    example = global_batches(host_batches(0))

    def init_state(key) -> SearchState:
        return SearchState.create(task.init(key, example["train"])["params"], tx)

    abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=replicated),
                            jax.eval_shape(init_state, init_stream))
    checkpointer = ckpt_lib.Checkpointer(search_dir / "checkpoints", max_to_keep=keep_checkpoints,
                                         async_save=async_checkpointing)
    restored = ckpt_lib.restore_run_state(checkpointer, abstract)
    if restored is not None:
        state, saved_data, start_step = restored
        ckpt_lib.warn_if_data_changed(saved_data, data_state(start_step))
        if is_main:
            progress_lib.announce_start(start_step, f"search checkpoint {checkpointer.step_dir(start_step)}")
    else:
        state, start_step = jax.jit(init_state, out_shardings=replicated)(init_stream), 0
    if is_main:
        metrics_lib.truncate_after(search_dir, start_step)
        workdir_lib.record_start(search_dir, workdir_lib.run_info(
            mesh_lib.describe(mesh), {"train_data": train_data.state(0), "valid_data": valid_data.state(0),
                                      "search_steps": search_steps, "seed": seed, "windows": list(task.model.windows),
                                      "schedule": list(schedule), "start_step": start_step}))
    writer = metrics_lib.MetricWriter(search_dir, enabled=is_main)

    # ------------------------------------------------------------------------------------------------ the step
    update = search_update(task.model, tx, schedule)

    def search_step(state: SearchState, batches):
        return update(state, batches, rng_lib.step_key(step_stream, state.step))

    jitted_step = jax.jit(search_step, in_shardings=(replicated, sharding_lib.batch_sharding(mesh)),
                          out_shardings=(replicated, replicated), donate_argnums=0)

    # ------------------------------------------------------------------------------------------------ the loop
    def batch_stream():
        step = start_step
        while True:
            yield host_batches(step)
            step += 1

    batches = prefetch(batch_stream(), convert=global_batches)
    shown = ("loss", "valid_loss")
    bar, monitor_writer = progress_lib.training_display(writer, total=search_steps, initial=start_step,
                                                        desc=f"search {workdir.name}", enabled=progress and is_main,
                                                        keys=shown)
    monitor = StepMonitor(monitor_writer, checkpointer, log_every=log_every, last_step=search_steps,
                          max_in_flight=max_steps_in_flight, progress_bar=bar, postfix_keys=shown)
    try:
        state, _ = run_steps(jitted_step, state, batches, start_step=start_step, train_steps=search_steps,
                             checkpoint_every=checkpoint_every, eval_every=0, monitor=monitor,
                             checkpointer=checkpointer, data_state=data_state, evaluate=lambda state, step: {})
    finally:
        bar.close()
        batches.close()
        checkpointer.close()
        writer.close()

    # ------------------------------------------------------------------------------------------------ the choice
    alpha = np.asarray(jax.device_get(state.params["arch_alpha"]), np.float64)
    weights = np.exp(alpha - alpha.max()) / np.exp(alpha - alpha.max()).sum()
    windows = list(task.model.windows)
    result = {"windows": windows, "alpha": alpha.tolist(), "weights": weights.tolist(),
              "chosen_window": windows[int(np.argmax(weights))], "search_steps": search_steps}
    if is_main:
        records = metrics_lib.read_records(search_dir)
        metrics_lib.plot_curves(records, search_dir / "curves.png")
        plot_alpha_trajectory(records, windows, workdir / ALPHA_PLOT)
        workdir_lib.write_json(workdir / SEARCH_FILE, result)  # last: its presence means the search is done
    return result


def alpha_trajectory(records: Sequence[Mapping], windows: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """(steps [n], weights [n, len(windows)]) of the search records that hold every window's weight."""
    rows = [r for r in records if all(f"alpha/{k}" in r for k in windows)]
    return (np.asarray([r["step"] for r in rows]),
            np.asarray([[r[f"alpha/{k}"] for k in windows] for r in rows]).reshape(len(rows), len(windows)))


def plot_alpha_trajectory(records: Sequence[Mapping], windows: Sequence[int], path: str | Path) -> Path:
    """softmax(alpha) of each candidate window against the search step, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps, weights = alpha_trajectory(records, windows)
    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    for i, k in enumerate(windows):
        ax.plot(steps, weights[:, i], label=f"k = {k}")
    ax.axhline(1 / len(windows), color="grey", lw=0.8, ls=":")
    ax.set_xlabel("search step")
    ax.set_ylabel("softmax(alpha)")
    ax.set_title("short-term window weights during the search")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
