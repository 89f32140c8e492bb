"""FixMatch, FlexMatch, FreeMatch and SoftMatch against USB's own code (`semilearn` 0.3.2, the PyPI package of
microsoft/Semi-supervised-learning), step by step on the same logits, state carried over several steps.

Each USB side below repeats its algorithm's `train_step` around the hooks (softmax, distribution alignment, masking
hook, pseudo-labelling hook, consistency loss, FreeMatch's entropy loss) without the network; ours runs
`Algorithm.pseudo_label` + `unlabeled_loss` as the trainer does. Compared at every step, in float32: labels, weights,
thresholds, the unlabeled loss and the running statistics (FlexMatch's per-example memory and learning status,
FreeMatch's τ_t / p̃ / histogram, SoftMatch's μ_t / σ_t² and its alignment's p_model / p_target).

The logits are built to reach the cases where ports go wrong: pool indices repeated within a batch (one copy
confident, the others not, in either order), class-imbalanced logits on which distribution alignment changes the
argmax, and enough confident rows that thresholds move. Each generator checks that its batches hold such a case.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import sys
import types
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgen.projects.instant import algorithms
from support.parity import require, require_installed

torch = require("torch")
require_installed("semilearn")

RTOL, ATOL = 1e-5, 1e-6
CLASSES, POOL, BATCH, STEPS = 4, 10, 8, 12
M = 0.9  # EMA momentum on both sides: far enough from USB's 0.999 that every step moves the statistics visibly


def _load_usb() -> types.SimpleNamespace:
    """semilearn's hook and loss modules, without its package `__init__`s.

    Those `__init__`s import the whole training stack (torchvision, torchaudio, timm, transformers, wandb, aim, ...):
    semilearn's declared requirements resolve to 114 packages and replace torch 2.13.0 by 2.14.1, so the `[parity]`
    extra installs semilearn with `--no-deps` (docs/parity.md). The modules compared here need only torch and numpy.
    So each package on the way is registered as a bare module (its `__path__` only) and the hook modules are imported
    for real; `freematch.py` (for `entropy_loss`) also needs `AlgorithmBase` and the `ALGORITHMS` registry at import
    time, given as stand-ins it only subclasses and decorates with. sys.modules is restored afterwards.
    """
    root = Path(importlib.util.find_spec("semilearn").origin).parent  # finds the package without running it
    saved = {name: module for name, module in sys.modules.items() if name.split(".")[0] == "semilearn"}

    def bare(name: str, **attributes) -> types.ModuleType:
        module = types.ModuleType(name)
        module.__path__ = [str(root.joinpath(*name.split(".")[1:]))]
        module.__dict__.update(attributes)
        sys.modules[name] = module
        return module

    registry = types.SimpleNamespace(register=lambda name: (lambda cls: cls))
    try:
        for name in ("semilearn", "semilearn.algorithms", "semilearn.algorithms.flexmatch",
                     "semilearn.algorithms.freematch", "semilearn.algorithms.softmatch"):
            bare(name)
        bare("semilearn.core", AlgorithmBase=object)
        bare("semilearn.core.utils", ALGORITHMS=registry)
        core_hooks = bare("semilearn.core.hooks")
        core_hooks.Hook = importlib.import_module("semilearn.core.hooks.hook").Hook
        imported = lambda name: importlib.import_module(f"semilearn.{name}")  # noqa: E731
        hooks = imported("algorithms.hooks")
        return types.SimpleNamespace(
            PseudoLabelingHook=hooks.PseudoLabelingHook, FixedThresholdingHook=hooks.FixedThresholdingHook,
            DistAlignEMAHook=hooks.DistAlignEMAHook,
            FlexMatchThresholdingHook=imported("algorithms.flexmatch.utils").FlexMatchThresholdingHook,
            FreeMatchThresholdingHook=imported("algorithms.freematch.utils").FreeMatchThresholdingHook,
            entropy_loss=imported("algorithms.freematch.freematch").entropy_loss,
            SoftMatchWeightingHook=imported("algorithms.softmatch.utils").SoftMatchWeightingHook,
            consistency_loss=imported("core.criterions").consistency_loss)
    finally:
        for name in [name for name in sys.modules if name.split(".")[0] == "semilearn"]:
            del sys.modules[name]
        sys.modules.update(saved)


USB = _load_usb()


@dataclasses.dataclass(frozen=True)
class Batch:
    logits_lb: np.ndarray  # [B, C] labeled (SoftMatch's "model" alignment target)
    logits_weak: np.ndarray  # [B, C] weak view of the unlabeled rows: pseudo-labels and weights come from these
    logits_strong: np.ndarray  # [B, C] strong view: the unlabeled loss
    index: np.ndarray  # [B] the rows' places in the unlabeled pool (FlexMatch's memory)


def _softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _batches(seed: int, *, scale: float, bias: tuple[float, ...] = (0.0,) * CLASSES) -> list[Batch]:
    """Random logits, `scale · N(0, 1) + bias`, indices drawn with replacement from a pool of POOL (so batches
    repeat indices). Where several copies of one index would be confident (max p ≥ 0.95), all but one are damped
    to near-uniform: which copy USB's memory keeps is then defined (the order of duplicate writes is not)."""
    rng = np.random.default_rng(seed)
    batches = []
    for _ in range(STEPS):
        logits = [(scale * rng.standard_normal((BATCH, CLASSES)) + np.asarray(bias)).astype(np.float32)
                  for _ in range(3)]
        index = rng.integers(0, POOL, BATCH)
        weak = logits[1]
        for i in np.unique(index):
            copies = np.flatnonzero(index == i)
            confident = copies[_softmax(weak[copies]).max(-1) >= 0.95]
            weak[confident[1:]] *= 0.05
        batches.append(Batch(logits[0], weak, logits[2], index.astype(np.int32)))
    return batches


def _has_repeat_with_later_unconfident_copy(batches: list[Batch], p_cutoff: float) -> bool:
    """A batch with a confident row and a later non-confident copy of the same index (issue 29's FlexMatch case)."""
    for b in batches:
        confident = _softmax(b.logits_weak).max(-1) >= p_cutoff
        for first in np.flatnonzero(confident):
            if np.any((b.index[first + 1:] == b.index[first]) & ~confident[first + 1:]):
                return True
    return False


def _ours(algorithm: algorithms.Algorithm, batches: list[Batch]):
    """Our algorithm as the trainer calls it; yields (labels, weights, thresholds, loss, state) per step."""
    state = algorithm.init_state(CLASSES, POOL)
    for step, b in enumerate(batches):
        probs_lb, probs_weak = jax.nn.softmax(jnp.asarray(b.logits_lb)), jax.nn.softmax(jnp.asarray(b.logits_weak))
        pseudo, state = algorithm.pseudo_label(state, probs_weak, probs_lb, index=jnp.asarray(b.index),
                                               step=jnp.asarray(step))
        loss = algorithm.unlabeled_loss(jnp.asarray(b.logits_strong), pseudo, state=state, step=jnp.asarray(step))
        yield pseudo.labels, pseudo.weights, pseudo.thresholds, loss, state


def _usb_algorithm(**attributes) -> types.SimpleNamespace:
    """What USB's hooks read from their algorithm object (AlgorithmBase's softmax, no distributed gather)."""
    return types.SimpleNamespace(distributed=False, world_size=1,
                                 compute_prob=lambda logits: torch.softmax(logits, dim=-1), **attributes)


def _t(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(array))


def _compare(step: int, ours, usb: dict) -> None:
    labels, weights, thresholds, loss, state = ours
    where = f"step {step}"
    np.testing.assert_array_equal(np.asarray(labels), usb["labels"].numpy(), err_msg=f"{where}: pseudo-labels")
    np.testing.assert_allclose(np.asarray(weights), usb["weights"].numpy(), RTOL, ATOL, err_msg=f"{where}: weights")
    np.testing.assert_allclose(np.asarray(thresholds), usb["thresholds"].numpy(), RTOL, ATOL,
                               err_msg=f"{where}: thresholds")
    np.testing.assert_allclose(float(loss), float(usb["loss"]), RTOL, ATOL, err_msg=f"{where}: unlabeled loss")
    for key, value in usb["state"].items():
        np.testing.assert_allclose(np.asarray(state[key]), np.asarray(value), RTOL, ATOL, err_msg=f"{where}: {key}")


def _hard_labels_and_loss(algorithm, logits_for_labels, logits_strong, mask, lambda_u=1.0):
    """USB's train_step tail: hard pseudo-labels through PseudoLabelingHook, then `lambda_u · consistency_loss`."""
    labels = USB.PseudoLabelingHook().gen_ulb_targets(algorithm, logits=logits_for_labels, use_hard_label=True,
                                                      T=0.5, softmax=False)
    return labels, lambda_u * USB.consistency_loss(logits_strong, labels, "ce", mask=mask)


def test_fixmatch_matches_usb():
    batches = _batches(0, scale=3.0)
    usb_algorithm = _usb_algorithm(p_cutoff=0.95)
    hook = USB.FixedThresholdingHook()
    for step, (b, ours) in enumerate(zip(batches, _ours(algorithms.FixMatch(p_cutoff=0.95), batches))):
        probs = usb_algorithm.compute_prob(_t(b.logits_weak))
        mask = hook.masking(usb_algorithm, logits_x_ulb=probs, softmax_x_ulb=False)
        labels, loss = _hard_labels_and_loss(usb_algorithm, probs, _t(b.logits_strong), mask)
        _compare(step, ours, {"labels": labels, "weights": mask, "thresholds": torch.full((BATCH,), 0.95),
                              "loss": loss, "state": {}})


@pytest.mark.parametrize("thresh_warmup", [True, False], ids=["warmup", "no_warmup"])
def test_flexmatch_matches_usb_with_repeated_pool_indices(thresh_warmup):
    batches = _batches(1, scale=3.0)
    assert _has_repeat_with_later_unconfident_copy(batches, 0.95), "the data must hold the repeated-index case"
    usb_algorithm = _usb_algorithm(p_cutoff=0.95)
    hook = USB.FlexMatchThresholdingHook(ulb_dest_len=POOL, num_classes=CLASSES, thresh_warmup=thresh_warmup)
    ours_steps = _ours(algorithms.FlexMatch(p_cutoff=0.95, thresh_warmup=thresh_warmup), batches)
    for step, (b, ours) in enumerate(zip(batches, ours_steps)):
        probs = usb_algorithm.compute_prob(_t(b.logits_weak))
        beta = hook.classwise_acc[probs.argmax(-1)].clone()  # the learning status the mask uses (before the update)
        mask = hook.masking(usb_algorithm, logits_x_ulb=probs, softmax_x_ulb=False, idx_ulb=_t(b.index).long())
        labels, loss = _hard_labels_and_loss(usb_algorithm, probs, _t(b.logits_strong), mask)
        _compare(step, ours, {"labels": labels, "weights": mask, "thresholds": 0.95 * beta / (2.0 - beta),
                              "loss": loss, "state": {"selected_label": hook.selected_label,
                                                      "classwise_acc": hook.classwise_acc}})


@pytest.mark.parametrize("use_quantile, clip_thresh", [(False, False), (True, True)], ids=["mean", "quantile_clip"])
def test_freematch_matches_usb(use_quantile, clip_thresh):
    batches = _batches(2, scale=4.0, bias=(1.5, 0.0, 0.0, -1.0))
    lambda_e = 0.001  # the fairness weight of USB's shipped FreeMatch configs
    usb_algorithm = _usb_algorithm(use_quantile=use_quantile, clip_thresh=clip_thresh)
    hook = USB.FreeMatchThresholdingHook(num_classes=CLASSES, momentum=M)
    ours_steps = _ours(algorithms.FreeMatch(ema_p=M, ent_loss_ratio=lambda_e, use_quantile=use_quantile,
                                            clip_thresh=clip_thresh), batches)
    accepted_some = False
    for step, (b, ours) in enumerate(zip(batches, ours_steps)):
        logits_weak, logits_strong = _t(b.logits_weak), _t(b.logits_strong)
        mask = hook.masking(usb_algorithm, logits_x_ulb=logits_weak)  # FreeMatch passes logits: softmax inside
        labels = USB.PseudoLabelingHook().gen_ulb_targets(usb_algorithm, logits=logits_weak, use_hard_label=True)
        loss = USB.consistency_loss(logits_strong, labels, "ce", mask=mask)
        if mask.sum() > 0:  # as FreeMatch.train_step: the fairness term only when a row is accepted
            loss = loss + lambda_e * USB.entropy_loss(mask, logits_strong, usb_algorithm.p_model,
                                                      usb_algorithm.label_hist)[0]
            accepted_some = True
        local = hook.p_model / hook.p_model.max()
        _compare(step, ours, {"labels": labels, "weights": mask, "thresholds": hook.time_p * local[labels],
                              "loss": loss, "state": {"time_p": hook.time_p, "p_model": hook.p_model,
                                                      "label_hist": hook.label_hist}})
    assert accepted_some, "the data must reach the fairness loss"


@pytest.mark.parametrize("dist_align, per_class", [("uniform", False), ("model", True)],
                         ids=["uniform_global", "model_per_class"])
def test_softmatch_matches_usb(dist_align, per_class):
    """Labels from the raw weak logits, weights from the aligned probabilities (USB's SoftMatch.train_step).

    USB's per-class option cannot be constructed (its `__init__` reads `self.args.num_classes`, an attribute the
    hook does not have), so for it the hook is built global and given the per-class start that line means: μ = 1/C
    and σ² = 1 for every class.
    """
    batches = _batches(3, scale=2.0, bias=(2.0, 0.5, 0.0, 0.0))
    usb_algorithm = _usb_algorithm()
    align = USB.DistAlignEMAHook(num_classes=CLASSES, momentum=M, p_target_type=dist_align)
    hook = USB.SoftMatchWeightingHook(num_classes=CLASSES, n_sigma=2, momentum=M, per_class=False)
    if per_class:
        hook.per_class = True
        hook.prob_max_mu_t, hook.prob_max_var_t = torch.ones(CLASSES) / CLASSES, torch.ones(CLASSES)
    ours_steps = _ours(algorithms.SoftMatch(ema_p=M, n_sigma=2.0, dist_align=dist_align, per_class=per_class),
                       batches)
    alignment_moved_a_label = False
    for step, (b, ours) in enumerate(zip(batches, ours_steps)):
        logits_weak = _t(b.logits_weak)
        probs_lb, probs_weak = torch.softmax(_t(b.logits_lb), dim=-1), torch.softmax(logits_weak, dim=-1)
        aligned = align.dist_align(usb_algorithm, probs_x_ulb=probs_weak, probs_x_lb=probs_lb)
        mask = hook.masking(usb_algorithm, logits_x_ulb=aligned, softmax_x_ulb=False)
        labels, loss = _hard_labels_and_loss(usb_algorithm, logits_weak, _t(b.logits_strong), mask)
        alignment_moved_a_label |= bool(torch.any(aligned.argmax(-1) != labels))
        mu = hook.prob_max_mu_t[aligned.argmax(-1)] if per_class else hook.prob_max_mu_t.expand(BATCH)
        _compare(step, ours, {"labels": labels, "weights": mask, "thresholds": mu, "loss": loss,
                              "state": {"mu": hook.prob_max_mu_t, "var": hook.prob_max_var_t,
                                        "da_p_model": align.p_model, "da_p_target": align.p_target}})
    assert alignment_moved_a_label, "the data must hold rows whose aligned argmax differs from the raw one"
