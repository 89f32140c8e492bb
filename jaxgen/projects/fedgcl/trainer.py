"""The federated trainer, forked from `jaxgen/train.py`: one step is one communication round.

Why a fork: the shared trainer applies one optimizer step per batch to one model. A federated round instead samples
clients, runs `local_epochs` optimizer steps on each client's own (privacy-perturbed) graph starting from the global
parameters, and replaces the global parameters with the clients' weighted mean (FedAvg; FedProx adds its proximal
term to the local loss). The clients are simulated in one process: their graphs are padded to one size and stacked
(`clients.Clients`), and one `vmap` runs the local training of every sampled client at once. With several devices the
client axis is laid over the mesh's batch axes (`data`, `fsdp`): the stacked clients are placed with a `NamedSharding`
on that axis and `shard_map` gives each device its share of the sampled clients, so local training never
communicates; the weighted mean is the only cross-device sum. Local optimizer state starts afresh each round (only
parameters travel). Everything else is `jaxgen.core`: workdir records, orbax
checkpoints of the server state, key streams, the bounded step loop with its NaN guard, metrics and curves.

Read top to bottom: server state -> the round (local training, aggregation) -> evaluation -> run().
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxgen.core import checkpoint as ckpt_lib
from jaxgen.core import mesh as mesh_lib
from jaxgen.core import metrics as metrics_lib
from jaxgen.core import progress as progress_lib
from jaxgen.core import rng as rng_lib
from jaxgen.core import sharding as sharding_lib
from jaxgen.core import workdir as workdir_lib
from jaxgen.core.errors import ConfigError, require_positive
from jaxgen.core.evaluation import run_evaluators
from jaxgen.core.monitor import StepMonitor, run_steps
from jaxgen.core.optim import OptimizerConfig
from jaxgen.core.task import EvalContext
from jaxgen.projects.fedgcl.clients import Clients, Federation
from jaxgen.projects.fedgcl.federated import FedAvg, weighted_average
from jaxgen.projects.fedgcl.task import FedGraphTask
from jaxgen.train import MODES, RunResult

# Adam at 0.01 with weight decay 5e-4: the usual optimizer of GCN/GAT node classification, here per client.
DEFAULT_LOCAL_OPTIMIZER = OptimizerConfig(name="adam", learning_rate=0.01, schedule="constant", weight_decay=5e-4,
                                          clip_grad_norm=None)
CURVE_KEYS = ("loss", "sup_loss", "contrastive_loss", "train_accuracy", "update_norm", "eval/accuracy/val_accuracy",
              "eval/accuracy/test_accuracy")
FEDERATION_FILE = "federation.json"


@flax.struct.dataclass
class ServerState:
    """What a round changes: the round count (`step`, as in every trainer) and the global parameters."""

    step: jax.Array
    params: Any


# ======================================================================================================================
# The round.
# ======================================================================================================================


def make_local_train(task: FedGraphTask, algorithm: FedAvg, tx: optax.GradientTransformation, local_epochs: int):
    """(global params, one client, key) -> (the client's params after `local_epochs` full-batch steps, its metrics
    averaged over those steps)."""

    def local_train(global_params, client: Clients, key: jax.Array):
        def epoch(carry, index):
            params, opt_state = carry

            def objective(p):
                loss, metrics = task.loss(p, client, jax.random.fold_in(key, index))
                return loss + algorithm.penalty(p, global_params), metrics

            (loss, metrics), grads = jax.value_and_grad(objective, has_aux=True)(params)
            updates, opt_state = tx.update(grads, opt_state, params)
            return (optax.apply_updates(params, updates), opt_state), {**metrics, "loss": loss}

        (params, _), history = jax.lax.scan(epoch, (global_params, tx.init(global_params)), jnp.arange(local_epochs))
        return params, jax.tree.map(lambda m: jnp.mean(m, axis=0), history)

    return local_train


def client_shards(mesh: Mesh | None) -> int:
    """How many devices the client axis spreads over: those of the mesh's batch axes (1 without a mesh)."""
    return 1 if mesh is None else math.prod(mesh.shape[a] for a in sharding_lib.BATCH_AXES)


def client_sharding(mesh: Mesh, num_clients: int) -> NamedSharding:
    """The stacked clients' placement: split over the batch axes where they divide the clients, else replicated
    (every round's sampled clients are split by `make_round` either way)."""
    if num_clients % client_shards(mesh):
        return sharding_lib.replicated(mesh)
    return NamedSharding(mesh, PartitionSpec(sharding_lib.BATCH_AXES))


def make_round(task: FedGraphTask, algorithm: FedAvg, tx: optax.GradientTransformation, local_epochs: int,
               mesh: Mesh | None = None):
    """The pure round: (state, {"clients": sampled client indices, "key": the round's key}, all clients) ->
    (state, metrics). Client `k` trains with fold_in(key, k). Data and keys are arguments, not constants of the
    compiled program, so runs that differ only in seed or epsilon share it (JAX's persistent compilation cache).
    On a `mesh` whose batch axes hold several devices, each device trains its share of the sampled clients
    (`shard_map`; their number must divide evenly)."""
    train_clients = jax.vmap(make_local_train(task, algorithm, tx, local_epochs), in_axes=(None, 0, 0))
    if client_shards(mesh) > 1:
        vmapped, spread = train_clients, PartitionSpec(sharding_lib.BATCH_AXES)

        def device_share(global_params, clients: Clients, keys):
            # The global parameters are the same on every device, and shard_map would sum the gradients taken with
            # respect to such a replicated value over the devices (the transpose of replication); each client
            # differentiates its own copy, so the copy is marked as varying per device first.
            return vmapped(jax.lax.pcast(global_params, sharding_lib.BATCH_AXES, to="varying"), clients, keys)

        train_clients = jax.shard_map(device_share, mesh=mesh, in_specs=(PartitionSpec(), spread, spread),
                                      out_specs=spread)

    def round_step(state: ServerState, batch, clients: Clients):
        chosen = batch["clients"]
        sampled = jax.tree.map(lambda x: x[chosen], clients)
        keys = jax.vmap(lambda k: jax.random.fold_in(batch["key"], k))(chosen)
        client_params, client_metrics = train_clients(state.params, sampled, keys)
        params = weighted_average(client_params, sampled.weight)
        metrics = {name: jnp.sum(values * sampled.weight) / jnp.sum(sampled.weight)
                   for name, values in client_metrics.items()}
        metrics["update_norm"] = optax.tree.norm(jax.tree.map(jnp.subtract, params, state.params))
        return state.replace(step=state.step + 1, params=params), metrics

    return round_step


def sampled_clients(seed: int, round_number: int, num_clients: int, per_round: int) -> np.ndarray:
    """The clients of round `round_number` (sorted): a pure function of (seed, round), so a resumed run samples the
    same ones."""
    if per_round == num_clients:
        return np.arange(num_clients, dtype=np.int32)
    rng = np.random.default_rng([seed, 3, round_number])
    return np.sort(rng.choice(num_clients, per_round, replace=False)).astype(np.int32)


# ======================================================================================================================
# Evaluation: the global model on every client's (perturbed) graph.
# ======================================================================================================================


def make_evaluate(task: FedGraphTask):
    """params, clients -> per-client correct counts (jitted once)."""
    return jax.jit(jax.vmap(task.correct_counts, in_axes=(None, 0)))


def accuracy_metrics(counts: dict[str, np.ndarray]) -> dict[str, Any]:
    """Accuracy over the union of the clients' items per split (NaN for an empty split), and each client's test
    accuracy."""
    results = {}
    for split in ("train", "val", "test"):
        total = float(np.sum(counts[f"{split}_count"]))
        results[f"{split}_accuracy"] = float(np.sum(counts[f"{split}_correct"])) / total if total else math.nan
    per_client = np.asarray(counts["test_correct"]) / np.maximum(np.asarray(counts["test_count"]), 1)
    results["per_client_test_accuracy"] = [round(float(a), 4) for a in per_client]
    return results


# ======================================================================================================================
# The run.
# ======================================================================================================================


def run(
    *,
    task: FedGraphTask,
    federation: Federation,
    workdir: str | Path,
    rounds: int,
    local_epochs: int = 1,
    clients_per_round: int | None = None,
    algorithm: FedAvg = FedAvg(),
    local_optimizer: OptimizerConfig = DEFAULT_LOCAL_OPTIMIZER,
    seed: int = 0,
    log_every: int = 1,
    checkpoint_every: int = 100,
    eval_every: int = 10,
    keep_checkpoints: int = 2,
    async_checkpointing: bool = True,
    mesh: mesh_lib.MeshConfig = mesh_lib.MeshConfig(),
    restore_step: int | None = None,
    max_steps_in_flight: int = 8,
    progress: bool = True,
    mode: str = "train",
) -> RunResult:
    """Trains `task` over `federation` for `rounds` rounds (mode="eval": evaluates the workdir's checkpoint).

    Each round samples `clients_per_round` clients (None: all), trains each for `local_epochs` steps with
    `local_optimizer` and averages (`algorithm`: FedAvg or FedProx). Same workdir layout, resume order (the
    workdir's latest checkpoint, else scratch), NaN guard and records as `jaxgen.train.run`; `federation.json`
    holds the clients' sizes, the split and the privacy guarantee. Evaluation reports accuracy on every client's
    train / validation / test items under `eval/accuracy/`.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}; got {mode!r}")
    require_positive(rounds=rounds, local_epochs=local_epochs, log_every=log_every,
                     checkpoint_every=checkpoint_every, max_steps_in_flight=max_steps_in_flight)
    if eval_every < 0:
        raise ConfigError(f"eval_every must be >= 0 (0: only at the end); got {eval_every}")
    num_clients = federation.clients.num_clients
    per_round = num_clients if clients_per_round is None else clients_per_round
    if not 1 <= per_round <= num_clients:
        raise ConfigError(f"clients_per_round must be in [1, {num_clients}] (the federation's clients); "
                          f"got {per_round}")
    mesh = mesh_lib.make_mesh(mesh)
    if per_round % client_shards(mesh):
        raise ConfigError(f"{per_round} clients per round cannot be split evenly over the {client_shards(mesh)} "
                          "devices of the mesh's batch axes: pick clients_per_round (or NUM_CLIENTS) as a multiple, "
                          "or fewer devices (trainer.run.mesh = @MeshConfig(num_devices=...))")
    if task.model.level != federation.level:
        raise ConfigError(f"The model classifies {task.model.level}s but the federation is a {federation.level} "
                          "classification task: set the model's level to match")
    if task.model.num_classes != federation.num_classes:
        raise ConfigError(f"The model has {task.model.num_classes} classes but {federation.description['dataset']} has "
                          f"{federation.num_classes}: set NUM_CLASSES to {federation.num_classes}")

    # ---------------------------------------------------------------------------------------------------------- setup
    workdir = Path(workdir).absolute()
    is_main = jax.process_index() == 0
    if is_main:
        workdir.mkdir(parents=True, exist_ok=True)
    replicated = sharding_lib.replicated(mesh)
    clients = jax.device_put(federation.clients, client_sharding(mesh, num_clients))
    init_stream, train_stream, eval_stream = (rng_lib.stream(seed, s) for s in ("init", "train", "eval"))
    tx = local_optimizer.build(local_epochs)

    def init_state(key) -> ServerState:
        return ServerState(step=jnp.zeros((), jnp.int32), params=task.init(key, clients))

    abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=replicated),
                            jax.eval_shape(init_state, init_stream))
    checkpointer = ckpt_lib.Checkpointer(workdir / "checkpoints", max_to_keep=keep_checkpoints,
                                         async_save=async_checkpointing, read_only=mode == "eval")
    data_state = functools.partial(_data_state, federation.description)
    restored = ckpt_lib.restore_run_state(checkpointer, abstract, restore_step,
                                          step_flag="--step" if mode == "eval" else "--restore-step")
    if restored is not None:
        state, saved_data, restored_at = restored
        ckpt_lib.warn_if_data_changed(saved_data, data_state(restored_at))
    elif mode == "eval":
        raise ckpt_lib.CheckpointError(f"Nothing to evaluate: no checkpoint in {checkpointer.directory}")
    else:
        state = jax.jit(init_state, out_shardings=replicated)(init_stream)
    start_step = int(jax.device_get(state.step))
    if is_main and mode == "train":
        if restored is not None:
            progress_lib.announce_start(start_step, f"workdir checkpoint {checkpointer.step_dir(start_step)}")
        metrics_lib.truncate_after(workdir, start_step)
        workdir_lib.write_json(workdir / FEDERATION_FILE, {**federation.description,
                                                           "privacy_guarantee": federation.guarantee})
    if is_main and mode == "train" and start_step < rounds:
        workdir_lib.record_start(workdir, workdir_lib.run_info(
            mesh_lib.describe(mesh), {"federation": federation.description, "privacy_guarantee": federation.guarantee,
                                      "rounds": rounds, "seed": seed, "algorithm": repr(algorithm),
                                      "start_step": start_step}))
    writer = metrics_lib.MetricWriter(workdir, enabled=is_main, source="eval" if mode == "eval" else None)
    evaluate_counts = make_evaluate(task)

    def evaluate(state: ServerState, step: int) -> dict[str, dict]:
        def accuracy(context: EvalContext) -> dict:
            return accuracy_metrics(jax.device_get(evaluate_counts(state.params, clients)))

        return run_evaluators({"accuracy": accuracy}, step=step, eval_data=None, mesh=mesh, eval_stream=eval_stream,
                              workdir=workdir, writer=writer)

    if mode == "eval":
        try:
            return RunResult(workdir, start_step, state, None, evaluate(state, start_step))
        finally:
            writer.close()
            checkpointer.close()

    jitted_round = jax.jit(make_round(task, algorithm, tx, local_epochs, mesh),
                           out_shardings=(replicated, replicated), donate_argnums=0)

    # -------------------------------------------------------------------------------------------------------- the loop
    def round_batches() -> Iterator[dict[str, np.ndarray]]:
        for round_number in range(start_step, rounds):
            yield {"clients": sampled_clients(seed, round_number, num_clients, per_round),
                   "key": rng_lib.step_key(train_stream, round_number)}

    batches = round_batches()
    bar, monitor_writer = progress_lib.training_display(writer, total=rounds, initial=start_step,
                                                        desc=f"fedgcl {workdir.name}", enabled=progress and is_main,
                                                        keys=("loss", "train_accuracy"))
    monitor = StepMonitor(monitor_writer, checkpointer, log_every=log_every, last_step=rounds,
                          max_in_flight=max_steps_in_flight, progress_bar=bar, guarded=("loss", "update_norm"),
                          postfix_keys=("loss", "train_accuracy"))
    step_fn: Callable = lambda state, batch: jitted_round(state, batch, clients)  # noqa: E731
    try:
        state, eval_results = run_steps(
            step_fn, state, batches, start_step=start_step, train_steps=rounds, checkpoint_every=checkpoint_every,
            eval_every=eval_every, monitor=monitor, checkpointer=checkpointer, data_state=data_state,
            evaluate=evaluate)
    finally:
        bar.close()
        checkpointer.close()
        writer.close()

    if is_main and start_step < rounds:
        metrics_lib.plot_curves(metrics_lib.read_records(workdir), workdir / "curves.png", keys=CURVE_KEYS)
    return RunResult(workdir, max(start_step, rounds), state, monitor.last_record, eval_results)


def _data_state(description: dict, step: int) -> dict:
    """What a checkpoint records of the data: the federation's settings (a resumed run warns when they changed)."""
    keys = ("dataset", "num_clients", "split", "privacy", "epsilon", "seed", "train_fraction", "val_fraction")
    return {"next_step": step, **{k: description.get(k) for k in keys}}
