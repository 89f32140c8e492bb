"""The SSL algorithms: how each turns weak-view probabilities into pseudo-labels, weights and an unlabeled loss.

One small class per algorithm, selected by name through `ALGORITHMS` (gin binds the class directly). Each keeps its
running statistics in a dict of arrays (`init_state`) that the trainer carries in its state and checkpoints, and is
pure: `pseudo_label(state, ...)` returns the new state instead of mutating it, so one jitted step does everything.

Behaviour follows USB (microsoft/Semi-supervised-learning) and the InstanT release (tmllab/2023_NeurIPS_InstanT);
the deliberate differences are listed in `experiments/instant/README.md`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

from jaxgen.projects.instant import estimators as estimators_lib
from jaxgen.projects.instant.thresholds import (align_distribution, fairness_loss, forward_corrected_cross_entropy,
                                                 instant_threshold, masked_cross_entropy)

State = dict[str, jax.Array]
DIST_ALIGN_TARGETS = ("uniform", "model")


@dataclasses.dataclass(frozen=True)
class PseudoLabels:
    """Hard pseudo-labels [B], their loss weights [B] (0/1 masks or soft weights) and each row's threshold [B]."""

    labels: jax.Array
    weights: jax.Array
    thresholds: jax.Array


@dataclasses.dataclass(frozen=True)
class Algorithm:
    """Shared plumbing: optional distribution alignment (EMA of unlabeled, and for "model" labeled, mean probs)
    before masking, hard pseudo-labels, and the masked cross-entropy on the strong view.

    Subclasses implement `_weights` (and `_init_state` for running statistics); those that change the loss override
    `unlabeled_loss`.
    """

    lambda_u: float = 1.0
    dist_align: str | None = None
    ema_p: float = 0.999
    estimator = None  # a TransitionEstimator for algorithms that model label noise (InstanT)
    uses_unlabeled = True  # False: the trainer forwards only labeled data through the model (and its BatchNorm)

    def __post_init__(self):
        if self.dist_align is not None and self.dist_align not in DIST_ALIGN_TARGETS:
            raise ValueError(f"dist_align must be None or one of {DIST_ALIGN_TARGETS}; got {self.dist_align!r}")

    def init_state(self, num_classes: int, num_unlabeled: int) -> State:
        uniform = jnp.full((num_classes,), 1.0 / num_classes, jnp.float32)
        alignment = {"da_p_model": uniform, "da_p_target": uniform, "da_steps": jnp.zeros((), jnp.int32)}
        return {**(alignment if self.dist_align else {}), **self._init_state(num_classes, num_unlabeled)}

    def pseudo_label(self, state: State, probs_ulb: jax.Array, probs_lb: jax.Array, *, index: jax.Array,
                     step: jax.Array, transition: jax.Array | None = None) -> tuple[PseudoLabels, State]:
        """Weak-view probabilities (no gradient) -> pseudo-labels and the updated state."""
        raw_ulb, probs_lb = jax.lax.stop_gradient(probs_ulb), jax.lax.stop_gradient(probs_lb)
        probs_ulb = raw_ulb
        if self.dist_align:
            probs_ulb, state = self._align(state, raw_ulb, probs_lb)
        weights, thresholds, state = self._weights(state, probs_ulb, index=index, step=step, transition=transition)
        return PseudoLabels(self._hard_labels(raw_ulb, probs_ulb), weights, thresholds), state

    def _hard_labels(self, raw_probs: jax.Array, aligned_probs: jax.Array) -> jax.Array:
        """The pseudo-labels: argmax of the aligned probabilities (USB's FlexMatch/FreeMatch, the InstanT release)."""
        return jnp.argmax(aligned_probs, axis=-1)

    def unlabeled_loss(self, logits_strong: jax.Array, pseudo: PseudoLabels, *, state: State, step: jax.Array,
                       transition: jax.Array | None = None) -> jax.Array:
        """The unlabeled part of the objective, already weighted (`lambda_u · ...`): total = supervised + this."""
        return self.lambda_u * masked_cross_entropy(logits_strong, pseudo.labels, pseudo.weights)

    def _align(self, state: State, probs_ulb: jax.Array, probs_lb: jax.Array) -> tuple[jax.Array, State]:
        """USB's DistAlignEMAHook: p_model starts at the first batch's mean, then follows an EMA (momentum ema_p)."""
        m = self.ema_p
        batch_mean = jnp.mean(probs_ulb, axis=0)
        p_model = jnp.where(state["da_steps"] == 0, batch_mean, m * state["da_p_model"] + (1 - m) * batch_mean)
        p_target = state["da_p_target"]
        if self.dist_align == "model":
            p_target = m * p_target + (1 - m) * jnp.mean(probs_lb, axis=0)
        state = {**state, "da_p_model": p_model, "da_p_target": p_target, "da_steps": state["da_steps"] + 1}
        return align_distribution(probs_ulb, p_model, p_target), state

    def _init_state(self, num_classes: int, num_unlabeled: int) -> State:
        return {}

    def _weights(self, state, probs, *, index, step, transition) -> tuple[jax.Array, jax.Array, State]:
        raise NotImplementedError


@dataclasses.dataclass(frozen=True)
class Supervised(Algorithm):
    """Labeled data only: every unlabeled row is rejected and the unlabeled loss is zero (the baseline). As in USB's
    fully supervised baseline, only labeled images pass through the model in training mode (BatchNorm statistics
    come from labeled batches alone); the trainer judges the unlabeled weak view in inference mode for its metrics."""

    lambda_u: float = 0.0
    uses_unlabeled = False

    def _weights(self, state, probs, *, index, step, transition):
        zeros = jnp.zeros(probs.shape[0])
        return zeros, jnp.ones(probs.shape[0]), state


@dataclasses.dataclass(frozen=True)
class FixMatch(Algorithm):
    """Accept when the confidence reaches a fixed `p_cutoff` (Sohn et al., 2020)."""

    p_cutoff: float = 0.95

    def _weights(self, state, probs, *, index, step, transition):
        thresholds = jnp.full(probs.shape[0], self.p_cutoff)
        return (jnp.max(probs, axis=-1) >= thresholds).astype(jnp.float32), thresholds, state


@dataclasses.dataclass(frozen=True)
class FlexMatch(Algorithm):
    """Curriculum pseudo-labelling (Zhang et al., 2021): class c's threshold is `p_cutoff · β_c / (2 − β_c)`.

    β_c, the class's learning status, is the number of unlabeled examples whose latest confident (≥ p_cutoff)
    prediction is c, divided by the largest such count — including the count of never-confident examples when
    `thresh_warmup` (so thresholds start near 0 and rise as the model commits). As in USB, the mask uses β from
    before this batch's update; then confident rows record their prediction and β is recomputed. Only confident rows
    write to the per-example memory (USB: `selected_label[idx_ulb[select == 1]] = ...`), so a non-confident copy of a
    pool index later in the same batch cannot overwrite a confident copy's record.
    """

    p_cutoff: float = 0.95
    thresh_warmup: bool = True

    def _init_state(self, num_classes, num_unlabeled):
        return {"selected_label": jnp.full((num_unlabeled,), -1, jnp.int32),
                "classwise_acc": jnp.zeros((num_classes,), jnp.float32)}

    def _weights(self, state, probs, *, index, step, transition):
        max_probs, predictions = jnp.max(probs, axis=-1), jnp.argmax(probs, axis=-1)
        beta = state["classwise_acc"][predictions]
        thresholds = self.p_cutoff * beta / (2.0 - beta)
        weights = (max_probs >= thresholds).astype(jnp.float32)
        selected = state["selected_label"]
        confident = max_probs >= self.p_cutoff
        written = jnp.where(confident, index, selected.shape[0])  # out of range: dropped, the old record stays
        selected = selected.at[written].set(predictions.astype(jnp.int32), mode="drop")
        return weights, thresholds, {**state, "selected_label": selected,
                                     "classwise_acc": self._learning_status(selected, state["classwise_acc"])}

    def _learning_status(self, selected: jax.Array, previous: jax.Array) -> jax.Array:
        classes = previous.shape[0]
        counts = jnp.zeros(classes + 1).at[selected + 1].add(1.0)  # slot 0 counts the unused (-1) entries
        per_class = counts[1:]
        denominator = jnp.max(counts) if self.thresh_warmup else jnp.max(per_class)
        updated = per_class / jnp.maximum(denominator, 1.0)
        return jnp.where(jnp.max(counts) < selected.shape[0], updated, previous)  # all still -1: keep zeros


@dataclasses.dataclass(frozen=True)
class FreeMatch(Algorithm):
    """Self-adaptive thresholds (Wang et al., 2023): global τ_t = EMA of mean confidence, local = EMA of the mean
    class probabilities p̃; accept when `max p ≥ τ_t · p̃[ŷ] / max p̃`. Statistics update before masking (USB).
    Adds the self-adaptive fairness loss with weight `ent_loss_ratio` (0.001, what every FreeMatch config USB ships
    runs; its argparse default is 0.01). USB's two options, off by default as in USB:
    `use_quantile` tracks the batch's 0.8-quantile of confidence instead of its mean, `clip_thresh` caps τ_t at 0.95."""

    ent_loss_ratio: float = 0.001
    use_quantile: bool = False
    clip_thresh: bool = False

    def _init_state(self, num_classes, num_unlabeled):
        uniform = jnp.full((num_classes,), 1.0 / num_classes, jnp.float32)
        return {"time_p": jnp.asarray(1.0 / num_classes, jnp.float32), "p_model": uniform, "label_hist": uniform}

    def _weights(self, state, probs, *, index, step, transition):
        m = self.ema_p
        max_probs, predictions = jnp.max(probs, axis=-1), jnp.argmax(probs, axis=-1)
        hist = jnp.zeros(probs.shape[-1]).at[predictions].add(1.0) / probs.shape[0]
        batch_level = jnp.quantile(max_probs, 0.8) if self.use_quantile else jnp.mean(max_probs)
        time_p = m * state["time_p"] + (1 - m) * batch_level
        state = {**state,
                 "time_p": jnp.clip(time_p, 0.0, 0.95) if self.clip_thresh else time_p,
                 "p_model": m * state["p_model"] + (1 - m) * jnp.mean(probs, axis=0),
                 "label_hist": m * state["label_hist"] + (1 - m) * hist}
        local = state["p_model"] / jnp.max(state["p_model"])
        thresholds = state["time_p"] * local[predictions]
        return (max_probs >= thresholds).astype(jnp.float32), thresholds, state

    def unlabeled_loss(self, logits_strong, pseudo, *, state, step, transition=None):
        consistency = masked_cross_entropy(logits_strong, pseudo.labels, pseudo.weights)
        fairness = fairness_loss(logits_strong, pseudo.weights > 0, state["p_model"], state["label_hist"])
        return self.lambda_u * consistency + self.ent_loss_ratio * fairness


@dataclasses.dataclass(frozen=True)
class SoftMatch(Algorithm):
    """Truncated-Gaussian weights (Chen et al., 2023): `w = exp(−min(max p − μ_t, 0)² / (2 σ_t² / n_sigma²))`, μ_t and
    σ_t² EMAs of the batch's mean and unbiased variance of max p (updated before weighting), with uniform
    distribution alignment. The reported threshold is μ_t, where the weight starts to fall below 1. As in USB,
    alignment serves the weights only: the hard pseudo-labels are the argmax of the raw weak-view probabilities.

    `per_class` (USB's option, off by default as there) keeps μ_t and σ_t² per predicted class; as in USB, a class
    predicted for fewer than two rows of the batch contributes (0, 1) to its EMAs."""

    n_sigma: float = 2.0
    dist_align: str | None = "uniform"
    per_class: bool = False

    def _init_state(self, num_classes, num_unlabeled):
        shape = (num_classes,) if self.per_class else ()
        return {"mu": jnp.full(shape, 1.0 / num_classes, jnp.float32), "var": jnp.ones(shape, jnp.float32)}

    def _hard_labels(self, raw_probs, aligned_probs):
        return jnp.argmax(raw_probs, axis=-1)

    def _weights(self, state, probs, *, index, step, transition):
        if probs.shape[0] < 2:
            raise ValueError(f"SoftMatch needs >= 2 unlabeled rows for a variance; got probs of shape {probs.shape}")
        m = self.ema_p
        max_probs, predictions = jnp.max(probs, axis=-1), jnp.argmax(probs, axis=-1)
        if self.per_class:
            batch_mu, batch_var = _per_class_mean_var(max_probs, predictions, probs.shape[-1])
        else:
            batch_mu, batch_var = jnp.mean(max_probs), jnp.var(max_probs, ddof=1)
        state = {**state, "mu": m * state["mu"] + (1 - m) * batch_mu, "var": m * state["var"] + (1 - m) * batch_var}
        mu, var = (state["mu"][predictions], state["var"][predictions]) if self.per_class else (state["mu"],
                                                                                                 state["var"])
        gap = jnp.minimum(max_probs - mu, 0.0)
        weights = jnp.exp(-(gap**2) / (2 * var / self.n_sigma**2))
        return weights, jnp.broadcast_to(mu, max_probs.shape), state


def _per_class_mean_var(values, classes, num_classes):
    """Mean and unbiased variance of `values` per class; (0, 1) for a class with fewer than two values (USB)."""
    onehot = jax.nn.one_hot(classes, num_classes, dtype=values.dtype)
    count = jnp.sum(onehot, axis=0)
    mean = jnp.sum(onehot * values[:, None], axis=0) / jnp.maximum(count, 1.0)
    var = jnp.sum(onehot * (values[:, None] - mean) ** 2, axis=0) / jnp.maximum(count - 1.0, 1.0)
    enough = count > 1
    return jnp.where(enough, mean, 0.0), jnp.where(enough, var, 1.0)


@dataclasses.dataclass(frozen=True)
class InstanT(Algorithm):
    """Instance-dependent thresholds (Li et al., 2023): see `instant_threshold`. Distribution alignment towards the
    labeled prediction distribution; before `warm_up_steps` the threshold is the batch-adaptive base and the loss
    plain masked cross-entropy; afterwards the per-instance threshold and the forward-corrected loss through T̂."""

    p_cutoff: float = 0.9
    temperature: float = 0.5
    warm_up_steps: int = 10240
    dist_align: str | None = "model"
    estimator: estimators_lib.TransitionEstimator = dataclasses.field(
        default_factory=lambda: estimators_lib.TransitionEstimator(estimators_lib.ClassTransition()))

    def _weights(self, state, probs, *, index, step, transition):
        if transition is None:
            raise ValueError("InstanT needs the transition estimate T̂; got transition=None")
        thresholds = instant_threshold(probs, transition, p_cutoff=self.p_cutoff, temperature=self.temperature,
                                       warmed_up=step >= self.warm_up_steps)
        return (jnp.max(probs, axis=-1) >= thresholds).astype(jnp.float32), thresholds, state

    def unlabeled_loss(self, logits_strong, pseudo, *, state, step, transition=None):
        plain = masked_cross_entropy(logits_strong, pseudo.labels, pseudo.weights)
        corrected = forward_corrected_cross_entropy(logits_strong, pseudo.labels, transition, pseudo.weights)
        return self.lambda_u * jnp.where(step >= self.warm_up_steps, corrected, plain)


ALGORITHMS: Mapping[str, type[Algorithm]] = {
    "supervised": Supervised,
    "fixmatch": FixMatch,
    "flexmatch": FlexMatch,
    "freematch": FreeMatch,
    "softmatch": SoftMatch,
    "instant": InstanT,
}


def make(name: str, **kwargs: Any) -> Algorithm:
    """An algorithm by name, e.g. `make("fixmatch", p_cutoff=0.9)`."""
    if name not in ALGORITHMS:
        raise ValueError(f"Unknown SSL algorithm {name!r}; known: {sorted(ALGORITHMS)}")
    return ALGORITHMS[name](**kwargs)
