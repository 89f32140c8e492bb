"""The SSL trainer, forked from `jaxgen/train.py`: two data streams, an EMA model and the algorithms' running state.

Why a fork: the shared trainer reads one stream and differentiates a stateless loss. Here each step reads a labeled
and a `uratio`-times larger unlabeled batch, augments on device (weak view for labeled data and pseudo-labels,
strong view for the consistency loss), updates the algorithm's running statistics (FlexMatch's per-example
predictions, FreeMatch/SoftMatch EMAs, distribution alignment) and an EMA of the weights that evaluation uses, and
logs pseudo-label quantity and quality against the unlabeled pool's hidden labels. Everything else is
`jaxgen.core`: mesh, shardings, optimizer, orbax checkpoints (state + both data streams), key streams, metrics.

Read top to bottom: state -> the jitted step -> evaluators -> run() (workdir, restore or init, loop, clean-up).
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import flax
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
from jaxgen.core.classifier_task import ClassifierTask
from jaxgen.core.errors import ConfigError, require_positive
from jaxgen.core.evaluation import run_evaluators
from jaxgen.core.monitor import StepMonitor, run_steps
from jaxgen.core.optim import OptimizerConfig
from jaxgen.core.task import EvalContext
from jaxgen.data.loader import prefetch
from jaxgen.metrics.classification import cross_entropy
from jaxgen.projects.instant import analysis, plots
from jaxgen.projects.instant.algorithms import Algorithm
from jaxgen.projects.instant.augment import AugmentConfig, to_unit
from jaxgen.projects.instant.data import SSLData
from jaxgen.train import MODES, RunResult

# USB's SSL recipe: SGD with Nesterov-free momentum 0.9, lr 0.03, weight decay 5e-4, cosine decay.
DEFAULT_OPTIMIZER = OptimizerConfig(name="momentum", learning_rate=0.03, schedule="warmup_cosine", weight_decay=5e-4,
                                    clip_grad_norm=None)


CURVE_KEYS = ("loss", "sup_loss", "unsup_loss", "lb_accuracy", "mask_rate", "pl_accuracy", "threshold_mean",
              "eval/classification/error", "eval/pseudo_labels/pl_accuracy")  # curves.png; every metric is in the jsonl


@flax.struct.dataclass
class SSLState:
    """Everything a step changes. `params = {"classifier": ..., "transition": ...}` (the second only for algorithms
    with a transition estimator); `model_state` holds non-trained collections (BatchNorm statistics)."""

    step: jax.Array
    params: Any
    opt_state: Any
    ema_params: Any
    model_state: Any
    algorithm_state: Any

    def eval_variables(self) -> dict:
        """The EMA classifier with the live BatchNorm statistics (USB evaluates the EMA model)."""
        return {"params": self.ema_params["classifier"], **self.model_state}


def _to_model_input(images: jax.Array) -> jax.Array:
    return images * 2.0 - 1.0  # [0, 1] -> [-1, 1], what ClassifierTask.preprocess gives the evaluator


# ======================================================================================================================
# The step.
# ======================================================================================================================


def make_train_step(model: nn.Module, algorithm: Algorithm, augment: AugmentConfig, tx, schedule, ema_m: float,
                    train_stream: jax.Array):
    """The pure update: (state, {"labeled", "unlabeled"} batch) -> (state, metrics)."""
    estimator = algorithm.estimator

    def train_step(state: SSLState, batch):
        step_key = rng_lib.step_key(train_stream, state.step)
        lb_key, weak_key, strong_key, dropout_key = jax.random.split(step_key, 4)
        lb, ulb = batch["labeled"], batch["unlabeled"]
        x_lb = augment.weak(lb_key, lb["image"])
        x_weak = augment.weak(weak_key, ulb["image"])
        x_strong = augment.strong(strong_key, ulb["image"])
        num_lb, num_ulb = x_lb.shape[0], x_weak.shape[0]

        def forward(params, views):
            return model.apply({"params": params["classifier"], **state.model_state}, _to_model_input(views),
                               train=True, rngs={"dropout": dropout_key}, mutable=list(state.model_state))

        def loss_fn(params):
            if algorithm.uses_unlabeled:
                # One forward over [labeled; weak; strong], as USB's use_cat: BatchNorm sees all three views.
                logits, new_model_state = forward(params, jnp.concatenate([x_lb, x_weak, x_strong]))
                logits_lb, logits_weak, logits_strong = jnp.split(logits, [num_lb, num_lb + num_ulb])
            else:
                # Labeled data alone trains (USB's fully supervised baseline); the weak view is only judged, in
                # inference mode, for the pseudo-label metrics.
                logits_lb, new_model_state = forward(params, x_lb)
                logits_weak = jax.lax.stop_gradient(model.apply(
                    {"params": params["classifier"], **state.model_state}, _to_model_input(x_weak), train=False))
                logits_strong = logits_weak
            sup_loss = cross_entropy(logits_lb, lb["label"])
            probs_lb, probs_weak = jax.nn.softmax(logits_lb), jax.nn.softmax(logits_weak)
            transition = None if estimator is None else estimator(params["transition"], x_weak)
            pseudo, algorithm_state = algorithm.pseudo_label(
                state.algorithm_state, probs_weak, probs_lb, index=ulb["index"], step=state.step,
                transition=None if transition is None else jax.lax.stop_gradient(transition))
            loss_transition = None if transition is None else estimator.for_loss(transition)
            unsup_loss = algorithm.unlabeled_loss(logits_strong, pseudo, state=algorithm_state, step=state.step,
                                                  transition=loss_transition)
            fit_loss = jnp.zeros(()) if estimator is None else \
                estimator.fit_loss(params["transition"], x_lb, lb["label"], probs_lb)
            loss = sup_loss + unsup_loss + fit_loss
            return loss, (sup_loss, unsup_loss, fit_loss, pseudo, algorithm_state, dict(new_model_state), logits_lb)

        (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        sup_loss, unsup_loss, fit_loss, pseudo, algorithm_state, model_state, logits_lb = aux
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        ema_params = jax.tree.map(lambda e, p: ema_m * e + (1 - ema_m) * p, state.ema_params, params)
        new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state, ema_params=ema_params,
                                  model_state=model_state, algorithm_state=algorithm_state)
        metrics = {"loss": loss, "sup_loss": sup_loss, "unsup_loss": unsup_loss, "transition_fit_loss": fit_loss,
                   "grad_norm": optax.tree.norm(grads), "learning_rate": schedule(state.step),
                   "lb_accuracy": jnp.mean(jnp.argmax(logits_lb, -1) == lb["label"]),
                   **pseudo_label_metrics(pseudo.labels, pseudo.weights, pseudo.thresholds, ulb["label"])}
        return new_state, metrics

    return train_step


def pseudo_label_metrics(labels: jax.Array, weights: jax.Array, thresholds: jax.Array,
                         true_labels: jax.Array) -> dict[str, jax.Array]:
    """Quantity (`mask_rate`: mean weight) and quality (`pl_accuracy`: weight-averaged correctness of the accepted
    pseudo-labels, NaN when none is accepted; `pl_accuracy_all`: of every pseudo-label) plus threshold statistics."""
    correct = (labels == true_labels).astype(jnp.float32)
    total = jnp.sum(weights)
    return {"mask_rate": jnp.mean(weights),
            "pl_accuracy": jnp.where(total > 0, jnp.sum(weights * correct) / jnp.where(total > 0, total, 1.0), jnp.nan),
            "pl_accuracy_all": jnp.mean(correct),
            "threshold_mean": jnp.mean(thresholds), "threshold_std": jnp.std(thresholds),
            "threshold_min": jnp.min(thresholds), "threshold_max": jnp.max(thresholds)}


# ======================================================================================================================
# Evaluation: the EMA classifier on the test split, and the algorithm's pseudo-labels on it as it would judge them now.
# ======================================================================================================================


# Mask rates at which `pseudo_labels` compares the algorithm's selection rule with a fixed cut-off on the same model.
SELECTION_RATES = (0.2, 0.4, 0.6, 0.8)


class SSLEvaluators:
    """`classification` (accuracy, error, confusion and prediction pictures of the EMA model, via the shared
    ClassifierTask) and `pseudo_labels` (thresholds, mask rate and accuracy of accepted labels over the test split
    under the current algorithm state — the state itself is not changed — plus the threshold histogram and the
    training curves of pseudo-label quantity and quality). `pseudo_labels` also ranks the test images two ways at each
    of `SELECTION_RATES` — by confidence minus the algorithm's threshold, and by confidence alone (a fixed cut-off) —
    and reports the accuracy of each top share (`select<rate>_by_threshold` / `_by_confidence`, and their mean
    difference `selection_gain`): the same model at the same quantity, so the gain is the threshold rule's alone."""

    def __init__(self, model: nn.Module, algorithm: Algorithm, num_classes: int, workdir: Path):
        self.classifier = ClassifierTask(model, num_classes)
        self.algorithm = algorithm
        self.workdir = workdir
        self._judge = jax.jit(self._judge_batch)

    def _judge_batch(self, state: SSLState, batch):
        images = to_unit(batch["image"])
        logits = self.classifier.model.apply(state.eval_variables(), _to_model_input(images), train=False)
        probs = jax.nn.softmax(logits)
        estimator = self.algorithm.estimator
        transition = None if estimator is None else estimator(state.ema_params["transition"], images)
        pseudo, _ = self.algorithm.pseudo_label(state.algorithm_state, probs, probs,
                                                index=jnp.zeros(probs.shape[0], jnp.int32), step=state.step,
                                                transition=transition)
        return pseudo.labels, pseudo.weights, pseudo.thresholds, jnp.max(probs, axis=-1)

    def classification(self, state: SSLState, context: EvalContext) -> dict:
        results = dict(self.classifier.evaluate(state.eval_variables(), context))
        results["error"] = 1.0 - results["accuracy"]
        return results

    def pseudo_labels(self, state: SSLState, context: EvalContext) -> dict:
        thresholds, weights, correct, confidence, predicted = [], [], [], [], []
        for batch in context.batches():
            labels, w, t, c = self._judge(state, batch)
            valid = np.asarray(batch["valid"])
            thresholds.append(np.asarray(t)[valid])
            weights.append(np.asarray(w)[valid])
            confidence.append(np.asarray(c)[valid])
            predicted.append(np.asarray(labels)[valid])
            correct.append((np.asarray(labels) == np.asarray(batch["label"]))[valid])
        thresholds, weights, correct, confidence, predicted = map(
            np.concatenate, (thresholds, weights, correct, confidence, predicted))
        accepted = float(weights.sum())
        if context.is_main_process:
            plots.threshold_histogram(thresholds, correct, context.outdir / "thresholds.png")
            plots.pseudo_label_curves(metrics_lib.read_records(self.workdir), context.outdir / "pseudo_labels.png")
        results = {
            "mask_rate": float(weights.mean()),
            "pl_accuracy": float((weights * correct).sum() / accepted) if accepted else float("nan"),
            "threshold_mean": float(thresholds.mean()), "threshold_std": float(thresholds.std()),
            **analysis.threshold_spread(thresholds, predicted),
        }
        selection = analysis.selection_accuracy(confidence, thresholds, correct, SELECTION_RATES)
        for rate, (by_threshold, by_confidence) in selection.items():
            results[f"select{rate:g}_by_threshold"] = by_threshold
            results[f"select{rate:g}_by_confidence"] = by_confidence
        results["selection_gain"] = float(np.mean([a - b for a, b in selection.values()]))
        return results


# ======================================================================================================================
# The run.
# ======================================================================================================================


def run(
    *,
    model: nn.Module,
    algorithm: Algorithm,
    data: SSLData,
    workdir: str | Path,
    train_steps: int,
    augment: AugmentConfig = AugmentConfig(),
    optimizer: OptimizerConfig = DEFAULT_OPTIMIZER,
    ema_m: float = 0.999,
    seed: int = 0,
    log_every: int = 10,
    checkpoint_every: int = 1000,
    eval_every: int = 1000,
    keep_checkpoints: int = 3,
    async_checkpointing: bool = True,
    mesh: mesh_lib.MeshConfig = mesh_lib.MeshConfig(),
    restore_step: int | None = None,
    max_steps_in_flight: int = 8,
    progress: bool = True,
    mode: str = "train",
) -> RunResult:
    """Trains `model` with `algorithm` on `data` for `train_steps` updates (mode="eval": evaluates the workdir's
    checkpoint). Same workdir layout, resume order (the workdir's latest checkpoint, else scratch), NaN guard and
    records as `jaxgen.train.run`; the state is data-parallel (replicated weights: these models are small)."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}; got {mode!r}")
    require_positive(train_steps=train_steps, log_every=log_every, checkpoint_every=checkpoint_every,
                     max_steps_in_flight=max_steps_in_flight)
    if eval_every < 0:
        raise ConfigError(f"eval_every must be >= 0 (0: only at the end); got {eval_every}")
    if not 0.0 <= ema_m < 1.0:
        raise ConfigError(f"ema_m must be in [0, 1); got {ema_m}")

    # ---------------------------------------------------------------------------------------------------------- setup
    workdir = Path(workdir).absolute()
    is_main = jax.process_index() == 0
    if is_main:
        workdir.mkdir(parents=True, exist_ok=True)
    mesh = mesh_lib.make_mesh(mesh)
    lb_rows = sharding_lib.process_rows(data.labeled.batch_size, mesh)
    ulb_rows = sharding_lib.process_rows(data.unlabeled.batch_size, mesh)

    def global_batch(host_batch):
        return {"labeled": sharding_lib.to_global(host_batch["labeled"], mesh, data.labeled.batch_size),
                "unlabeled": sharding_lib.to_global(host_batch["unlabeled"], mesh, data.unlabeled.batch_size)}

    init_stream, train_stream, eval_stream = (rng_lib.stream(seed, s) for s in ("init", "train", "eval"))
    example = global_batch(data.batch(0, lb_rows, ulb_rows))
    tx = optimizer.build(train_steps)
    schedule = optimizer.schedule_fn(train_steps)
    replicated = sharding_lib.replicated(mesh)

    def init_state(key) -> SSLState:
        model_key, estimator_key = jax.random.split(key)
        images = to_unit(example["labeled"]["image"])
        variables = dict(model.init({"params": model_key}, _to_model_input(images), train=False))
        params = {"classifier": variables.pop("params")}
        if algorithm.estimator is not None:
            params["transition"] = algorithm.estimator.init(estimator_key, images)
        return SSLState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params), ema_params=params,
                        model_state=variables,
                        algorithm_state=algorithm.init_state(data.num_classes, data.num_unlabeled))

    abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=replicated),
                            jax.eval_shape(init_state, init_stream))
    checkpointer = ckpt_lib.Checkpointer(workdir / "checkpoints", max_to_keep=keep_checkpoints,
                                         async_save=async_checkpointing, read_only=mode == "eval")
    restored = ckpt_lib.restore_run_state(checkpointer, abstract, restore_step,
                                          step_flag="--step" if mode == "eval" else "--restore-step")
    if restored is not None:
        state, saved_data, restored_at = restored
        ckpt_lib.warn_if_data_changed(saved_data, data.state(restored_at))
    elif mode == "eval":
        raise ckpt_lib.CheckpointError(f"Nothing to evaluate: no checkpoint in {checkpointer.directory}")
    else:
        state = jax.jit(init_state, out_shardings=replicated)(init_stream)
    start_step = int(jax.device_get(state.step))
    if is_main and mode == "train":
        if restored is not None:
            progress_lib.announce_start(start_step, f"workdir checkpoint {checkpointer.step_dir(start_step)}")
        metrics_lib.truncate_after(workdir, start_step)
    if is_main and mode == "train" and start_step < train_steps:
        workdir_lib.record_start(workdir, workdir_lib.run_info(
            mesh_lib.describe(mesh), {"train_data": data.state(0), "train_steps": train_steps, "seed": seed,
                                      "algorithm": type(algorithm).__name__, "start_step": start_step}))
    writer = metrics_lib.MetricWriter(workdir, enabled=is_main, source="eval" if mode == "eval" else None)
    evaluators = SSLEvaluators(model, algorithm, data.num_classes, workdir)

    def evaluate(state: SSLState, step: int) -> dict[str, dict]:
        return run_evaluators(
            {"classification": functools.partial(evaluators.classification, state),
             "pseudo_labels": functools.partial(evaluators.pseudo_labels, state)},
            step=step, eval_data=data.evaluation, mesh=mesh, eval_stream=eval_stream, workdir=workdir, writer=writer)

    if mode == "eval":
        try:
            return RunResult(workdir, start_step, state, None, evaluate(state, start_step))
        finally:
            writer.close()
            checkpointer.close()

    jitted_step = jax.jit(make_train_step(model, algorithm, augment, tx, schedule, ema_m, train_stream),
                          in_shardings=(replicated, sharding_lib.batch_sharding(mesh)),
                          out_shardings=(replicated, replicated), donate_argnums=0)

    # -------------------------------------------------------------------------------------------------------- the loop
    def host_batches():
        step = start_step
        while True:
            yield data.batch(step, lb_rows, ulb_rows)
            step += 1

    batches = prefetch(host_batches(), convert=global_batch)
    bar, monitor_writer = progress_lib.training_display(writer, total=train_steps, initial=start_step,
                                                        desc=f"ssl {workdir.name}", enabled=progress and is_main,
                                                        keys=("loss", "mask_rate"))
    monitor = StepMonitor(monitor_writer, checkpointer, log_every=log_every, last_step=train_steps,
                          max_in_flight=max_steps_in_flight, progress_bar=bar, postfix_keys=("loss", "mask_rate"))
    try:
        state, eval_results = run_steps(
            jitted_step, state, batches, start_step=start_step, train_steps=train_steps,
            checkpoint_every=checkpoint_every, eval_every=eval_every, monitor=monitor, checkpointer=checkpointer,
            data_state=data.state, evaluate=evaluate)
    finally:
        bar.close()
        batches.close()
        checkpointer.close()
        writer.close()

    if is_main and start_step < train_steps:
        metrics_lib.plot_curves(metrics_lib.read_records(workdir), workdir / "curves.png", keys=CURVE_KEYS)
    return RunResult(workdir, max(start_step, train_steps), state, monitor.last_record, eval_results)
