"""InstanT's threshold, the transition estimators and every algorithm's mask logic, against hand computations."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgen.projects.instant import algorithms, estimators, instant_threshold, thresholds

T3 = np.array([[0.8, 0.1, 0.1], [0.2, 0.7, 0.1], [0.3, 0.3, 0.4]], np.float32)
STEP = jnp.asarray(0)


def test_instant_threshold_hand_computed():
    probs = jnp.array([[0.6, 0.3, 0.1], [0.2, 0.7, 0.1]])
    base = 0.9 * (0.6 + 0.7) / 2  # p_cutoff · mean of max p = 0.585
    # Row 0: q = softmax([1.2, 0.6, 0.2]); ŷ = 0; q₍₂₎ = q[1]; column 0 of T = (0.8, 0.2, 0.3).
    e = [math.exp(1.2), math.exp(0.6), math.exp(0.2)]
    q = [v / sum(e) for v in e]
    row0 = base + 0.8 * q[1] + 0.2 * q[1] + 0.3 * q[2]
    # Row 1: q = softmax([0.4, 1.4, 0.2]); ŷ = 1; q₍₂₎ = q[0]; column 1 of T = (0.1, 0.7, 0.3).
    e = [math.exp(0.4), math.exp(1.4), math.exp(0.2)]
    q = [v / sum(e) for v in e]
    row1 = base + 0.7 * q[0] + 0.1 * q[0] + 0.3 * q[2]
    got = instant_threshold(probs, jnp.asarray(T3), p_cutoff=0.9, temperature=0.5)
    np.testing.assert_allclose(got, [row0, row1], rtol=1e-6)
    assert abs(row0 - 0.92891) < 1e-4  # on paper: .585 + .8·.28633 + (.2·.28633 + .3·.19193)


def test_instant_threshold_warm_up_clip_and_per_instance_matrices():
    probs = jnp.array([[0.6, 0.3, 0.1], [0.2, 0.7, 0.1]])
    np.testing.assert_allclose(instant_threshold(probs, jnp.asarray(T3), warmed_up=False), [0.585, 0.585], rtol=1e-6)
    uniform = jnp.full((3, 3), 1.0)  # an (unnormalised) matrix large enough to push τ past the cap
    np.testing.assert_allclose(instant_threshold(probs, uniform, p_cutoff=0.9), [0.99, 0.99], rtol=1e-6)
    stacked = jnp.stack([jnp.asarray(T3), jnp.eye(3)])
    got = instant_threshold(probs, stacked)
    assert float(got[0]) == pytest.approx(float(instant_threshold(probs, jnp.asarray(T3))[0]), rel=1e-6)
    e = [math.exp(0.4), math.exp(1.4), math.exp(0.2)]
    assert float(got[1]) == pytest.approx(0.585 + 1.0 * e[0] / sum(e), rel=1e-6)  # identity: only T[ŷ,ŷ]·q₍₂₎
    jitted = jax.jit(lambda p, t, w: instant_threshold(p, t, warmed_up=w))
    np.testing.assert_allclose(jitted(probs, jnp.asarray(T3), jnp.asarray(False)), [0.585, 0.585], rtol=1e-6)


def test_instant_threshold_rejects_bad_shapes():
    with pytest.raises(ValueError, match=r"\[3, 3\] or \[2, 3, 3\].*\(2, 2\)"):
        instant_threshold(jnp.ones((2, 3)) / 3, jnp.eye(2))
    with pytest.raises(ValueError, match=r"\[batch, classes\].*\(3,\)"):
        instant_threshold(jnp.ones(3) / 3, jnp.eye(3))


@pytest.mark.parametrize("module", [estimators.ClassTransition(num_classes=4),
                                    estimators.InstanceTransition(num_classes=4, channels=(4,))],
                         ids=["class", "instance"])
def test_estimator_rows_sum_to_one(module):
    images = jax.random.uniform(jax.random.key(0), (3, 8, 8, 1))
    params = module.init(jax.random.key(1), images)["params"]
    params = jax.tree.map(lambda p: p + jax.random.normal(jax.random.key(2), p.shape), params)  # not just the init
    t = module.apply({"params": params}, images)
    assert t.shape[-2:] == (4, 4) and bool(jnp.all(t >= 0))
    np.testing.assert_allclose(jnp.sum(t, axis=-1), jnp.ones(t.shape[:-1]), rtol=1e-6)


def test_class_transition_starts_near_identity():
    t = estimators.ClassTransition(num_classes=3, scale=5.0, w_init=2.0).init_with_output(jax.random.key(0))[0]
    off = 1 / (1 + math.exp(2.0))  # sigmoid(-2)
    np.testing.assert_allclose(jnp.diag(t), [5 / (5 + 2 * off)] * 3, rtol=1e-6)


def test_labeled_fit_loss_picks_true_row_predicted_column():
    est = estimators.TransitionEstimator(estimators.ClassTransition(num_classes=3), fit="labeled")
    params = est.init(jax.random.key(0), None)
    t = est(params, None)
    probs = jnp.array([[0.1, 0.8, 0.1], [0.7, 0.2, 0.1]])
    loss = est.fit_loss(params, None, jnp.array([0, 0]), probs)
    assert float(loss) == pytest.approx(-(math.log(t[0, 1]) + math.log(t[0, 0])) / 2, rel=1e-6)
    forward = estimators.TransitionEstimator(estimators.ClassTransition(num_classes=3))
    assert float(forward.fit_loss(params, None, jnp.array([0, 0]), probs)) == 0.0


def test_alignment_and_losses_hand_computed():
    aligned = thresholds.align_distribution(jnp.array([[0.5, 0.5]]), jnp.array([0.8, 0.2]), jnp.array([0.5, 0.5]))
    np.testing.assert_allclose(aligned, [[0.2, 0.8]], rtol=1e-5)  # [0.625, 2.5] / 3.125
    t = jnp.array([[0.9, 0.1], [0.2, 0.8]])
    loss = thresholds.forward_corrected_cross_entropy(jnp.zeros((2, 2)), jnp.array([1, 0]), t, jnp.array([1.0, 0.0]))
    assert float(loss) == pytest.approx(-math.log(0.45) / 2, rel=1e-6)  # softmax [.5,.5] @ T = [.55,.45]; row 2 masked
    ce = thresholds.masked_cross_entropy(jnp.zeros((2, 2)), jnp.array([1, 0]), jnp.array([1.0, 0.0]))
    assert float(ce) == pytest.approx(math.log(2) / 2, rel=1e-6)
    logits = jnp.log(jnp.array([[0.75, 0.25], [0.75, 0.25]]))
    fair = thresholds.fairness_loss(logits, jnp.array([True, True]), jnp.array([0.5, 0.5]), jnp.array([0.5, 0.5]))
    assert float(fair) == pytest.approx(0.5 * math.log(1 + 1e-12) + 0.5 * math.log(1e-12), rel=1e-5)
    assert float(thresholds.fairness_loss(logits, jnp.array([False, False]), jnp.ones(2) / 2, jnp.ones(2) / 2)) == 0.0


def pseudo(alg, state, probs, *, index=None, probs_lb=None, step=STEP, transition=None):
    probs = jnp.asarray(probs)
    index = jnp.arange(len(probs)) if index is None else jnp.asarray(index)
    probs_lb = probs if probs_lb is None else jnp.asarray(probs_lb)
    return alg.pseudo_label(state, probs, probs_lb, index=index, step=step, transition=transition)


def test_fixmatch_and_supervised_masks():
    alg = algorithms.make("fixmatch", p_cutoff=0.95)
    out, _ = pseudo(alg, alg.init_state(2, 4), [[0.96, 0.04], [0.1, 0.9], [0.05, 0.95]])
    np.testing.assert_array_equal(out.weights, [1, 0, 1])
    np.testing.assert_array_equal(out.labels, [0, 1, 1])
    sup = algorithms.make("supervised")
    out, _ = pseudo(sup, sup.init_state(2, 4), [[0.99, 0.01]])
    assert float(out.weights[0]) == 0.0
    assert float(sup.unlabeled_loss(jnp.zeros((1, 2)), out, state={}, step=STEP)) == 0.0


@pytest.mark.parametrize("thresh_warmup, class0_threshold", [(True, 0.95 * (1 / 3) / (2 - 1 / 3)), (False, 0.95)])
def test_flexmatch_curriculum(thresh_warmup, class0_threshold):
    alg = algorithms.make("flexmatch", p_cutoff=0.95, thresh_warmup=thresh_warmup)
    state = alg.init_state(2, 4)
    # Step 1: no learning status yet -> thresholds 0, everything accepted; example 0 becomes confident as class 0.
    out, state = pseudo(alg, state, [[0.97, 0.03], [0.6, 0.4]], index=[0, 1])
    np.testing.assert_array_equal(out.weights, [1, 1])
    np.testing.assert_array_equal(state["selected_label"], [0, -1, -1, -1])
    # Counts: class 0 -> 1, unused -> 3. With warm-up β = (1/3, 0); without, β = (1/1, 0).
    np.testing.assert_allclose(state["classwise_acc"], [1 / 3 if thresh_warmup else 1.0, 0.0], rtol=1e-6)
    out, state = pseudo(alg, state, [[0.3, 0.7], [0.9, 0.1]], index=[2, 3])
    np.testing.assert_allclose(out.thresholds, [0.0, class0_threshold], rtol=1e-6)
    np.testing.assert_array_equal(out.weights, [1, 1 if 0.9 >= class0_threshold else 0])


def test_flexmatch_repeated_index_keeps_the_confident_copys_record():
    """A pool index twice in one batch, confident first and not later: only the confident row writes (USB's
    `selected_label[idx_ulb[select == 1]]`); the later copy must not write the old -1 back."""
    alg = algorithms.make("flexmatch", p_cutoff=0.95)
    _, state = pseudo(alg, alg.init_state(2, 4), [[0.97, 0.03], [0.2, 0.8], [0.6, 0.4]], index=[1, 0, 1])
    np.testing.assert_array_equal(state["selected_label"], [-1, 0, -1, -1])
    # Counts: class 0 -> 1, unused -> 3, so β = (1/3, 0) as in USB.
    np.testing.assert_allclose(state["classwise_acc"], [1 / 3, 0.0], rtol=1e-6)
    # An earlier record is overwritten only by a confident prediction, never by a non-confident one.
    _, state = pseudo(alg, state, [[0.1, 0.9], [0.02, 0.98]], index=[1, 2])
    np.testing.assert_array_equal(state["selected_label"], [-1, 0, 1, -1])


def test_freematch_self_adaptive_thresholds():
    alg = algorithms.make("freematch", ema_p=0.5)
    state = alg.init_state(2, 8)
    out, state = pseudo(alg, state, [[0.9, 0.1], [0.6, 0.4]])
    # time_p = .5·.5 + .5·.75 = .625; p_model = (.625, .375); local = (1, .6); both predict class 0.
    assert float(state["time_p"]) == pytest.approx(0.625)
    np.testing.assert_allclose(state["p_model"], [0.625, 0.375], rtol=1e-6)
    np.testing.assert_allclose(state["label_hist"], [0.75, 0.25], rtol=1e-6)
    np.testing.assert_allclose(out.thresholds, [0.625, 0.625], rtol=1e-6)
    np.testing.assert_array_equal(out.weights, [1, 0])
    out, _ = pseudo(alg, state, [[0.2, 0.8], [0.7, 0.3]])
    # time_p = .5·.625 + .5·.75 = .6875; p_model = .5·(.625, .375) + .5·(.45, .55) = (.5375, .4625).
    np.testing.assert_allclose(out.thresholds, [0.6875 * 0.4625 / 0.5375, 0.6875], rtol=1e-6)


def test_freematch_quantile_and_clip_options():
    probs = [[0.9, 0.1], [0.6, 0.4], [0.99, 0.01], [0.7, 0.3], [0.8, 0.2]]
    alg = algorithms.make("freematch", ema_p=0.5, use_quantile=True)
    _, state = pseudo(alg, alg.init_state(2, 8), probs)
    # 0.8-quantile of (.6, .7, .8, .9, .99) with linear interpolation: .9 + .2·(.99 − .9) = .918
    assert float(state["time_p"]) == pytest.approx(0.5 * 0.5 + 0.5 * 0.918)
    alg = algorithms.make("freematch", ema_p=0.0, clip_thresh=True)
    out, state = pseudo(alg, alg.init_state(2, 8), [[0.99, 0.01], [0.98, 0.02]])
    assert float(state["time_p"]) == pytest.approx(0.95)  # the mean .985, capped
    np.testing.assert_allclose(out.thresholds, [0.95, 0.95], rtol=1e-6)


def test_softmatch_truncated_gaussian_weights():
    alg = algorithms.make("softmatch", ema_p=0.5, dist_align=None)
    out, state = pseudo(alg, alg.init_state(2, 8), [[0.9, 0.1], [0.5, 0.5]])
    # batch mean .7, unbiased var .08 -> μ = .6, σ² = .54; row 2: exp(-(.1)² / (2·.54/4)).
    assert float(state["mu"]) == pytest.approx(0.6) and float(state["var"]) == pytest.approx(0.54)
    np.testing.assert_allclose(out.weights, [1.0, math.exp(-0.01 / 0.27)], rtol=1e-5)


def test_softmatch_labels_come_from_raw_probabilities_weights_from_aligned():
    """USB's SoftMatch aligns the distribution for its weights only; hard labels are argmax of the raw weak view."""
    alg = algorithms.make("softmatch", ema_p=0.5, dist_align="uniform")
    no_align = algorithms.make("softmatch", ema_p=0.5, dist_align=None)
    # Imbalanced batch: alignment divides by p_model = batch mean (.64, .36) and flips row 1 to class 1.
    probs = [[0.9, 0.1], [0.55, 0.45], [0.47, 0.53]]
    out, state = pseudo(alg, alg.init_state(2, 8), probs)
    np.testing.assert_array_equal(out.labels, [0, 0, 1])  # raw argmax, not the aligned (0, 1, 1)
    aligned = np.asarray(probs) / np.mean(probs, axis=0)
    aligned /= aligned.sum(axis=1, keepdims=True)
    assert np.argmax(aligned[1]) == 1
    weighted_on_aligned, _ = pseudo(no_align, no_align.init_state(2, 8), aligned)
    np.testing.assert_allclose(out.weights, weighted_on_aligned.weights, rtol=1e-5)
    np.testing.assert_allclose(state["mu"], 0.5 / 2 + 0.5 * np.mean(aligned.max(axis=1)), rtol=1e-5)


def test_softmatch_per_class_statistics():
    alg = algorithms.make("softmatch", ema_p=0.5, dist_align=None, per_class=True)
    state = alg.init_state(3, 8)
    np.testing.assert_allclose(state["mu"], [1 / 3] * 3, rtol=1e-6)
    # class 0 predicted twice (.9, .5): mean .7, unbiased var .08; class 1 once (.6) and class 2 never: (0, 1).
    out, state = pseudo(alg, state, [[0.9, 0.05, 0.05], [0.5, 0.3, 0.2], [0.2, 0.6, 0.2]])
    np.testing.assert_allclose(state["mu"], [0.5 / 3 + 0.35, 0.5 / 3, 0.5 / 3], rtol=1e-5)
    np.testing.assert_allclose(state["var"], [0.54, 1.0, 1.0], rtol=1e-5)
    mu0 = 0.5 / 3 + 0.35
    np.testing.assert_allclose(out.thresholds, [mu0, mu0, 0.5 / 3], rtol=1e-5)
    np.testing.assert_allclose(out.weights, [1.0, math.exp(-((0.5 - mu0) ** 2) / (2 * 0.54 / 4)), 1.0], rtol=1e-5)


def test_instant_algorithm_warm_up_switches_threshold_and_loss():
    alg = algorithms.make("instant", p_cutoff=0.9, warm_up_steps=5, dist_align=None)
    probs = jnp.array([[0.6, 0.3, 0.1], [0.2, 0.7, 0.1]])
    before, _ = pseudo(alg, alg.init_state(3, 4), probs, transition=jnp.asarray(T3), step=jnp.asarray(4))
    after, _ = pseudo(alg, alg.init_state(3, 4), probs, transition=jnp.asarray(T3), step=jnp.asarray(5))
    np.testing.assert_allclose(before.thresholds, [0.585, 0.585], rtol=1e-6)
    np.testing.assert_array_equal(before.weights, [1, 1])
    np.testing.assert_array_equal(after.weights, [0, 0])  # 0.6 < 0.929 and 0.7 < τ₁
    logits = jnp.log(probs)
    plain = alg.unlabeled_loss(logits, before, state={}, step=jnp.asarray(4), transition=jnp.asarray(T3))
    corrected = alg.unlabeled_loss(logits, before, state={}, step=jnp.asarray(5), transition=jnp.asarray(T3))
    assert float(plain) == pytest.approx(-(math.log(0.6) + math.log(0.7)) / 2, rel=1e-5)
    noisy = np.asarray(probs) @ T3
    assert float(corrected) == pytest.approx(-(math.log(noisy[0, 0]) + math.log(noisy[1, 1])) / 2, rel=1e-5)


def test_distribution_alignment_state_follows_usb():
    alg = algorithms.make("fixmatch", dist_align="model", ema_p=0.5)
    state = alg.init_state(2, 4)
    _, state = pseudo(alg, state, [[0.8, 0.2], [0.6, 0.4]], probs_lb=[[0.5, 0.5], [0.3, 0.7]])
    np.testing.assert_allclose(state["da_p_model"], [0.7, 0.3], rtol=1e-6)  # first batch: its mean
    np.testing.assert_allclose(state["da_p_target"], [0.45, 0.55], rtol=1e-6)  # .5·uniform + .5·(.4, .6)
    _, state = pseudo(alg, state, [[0.4, 0.6], [0.4, 0.6]])
    np.testing.assert_allclose(state["da_p_model"], [0.55, 0.45], rtol=1e-6)  # then an EMA


def test_unknown_names_fail_clearly():
    with pytest.raises(ValueError, match="Unknown SSL algorithm 'fixmach'"):
        algorithms.make("fixmach")
    with pytest.raises(ValueError, match="dist_align"):
        algorithms.make("fixmatch", dist_align="gt")
    with pytest.raises(ValueError, match="fit must be one of"):
        estimators.TransitionEstimator(fit="noisy")


@pytest.mark.parametrize("fit, trained_by_unlabeled_loss", [("forward", True), ("labeled", False)])
def test_transition_gradient_comes_only_from_where_it_is_fitted(fit, trained_by_unlabeled_loss):
    est = estimators.TransitionEstimator(estimators.InstanceTransition(num_classes=3, channels=(4,)), fit=fit)
    images = jax.random.uniform(jax.random.key(0), (4, 8, 8, 1))
    params = est.init(jax.random.key(1), images)
    alg = algorithms.make("instant", warm_up_steps=0, dist_align=None, estimator=est)
    logits = jax.random.normal(jax.random.key(2), (4, 3))
    pseudo = algorithms.PseudoLabels(jnp.array([0, 1, 2, 0]), jnp.ones(4), jnp.zeros(4))

    def unlabeled(p):
        return alg.unlabeled_loss(logits, pseudo, state={}, step=STEP, transition=est.for_loss(est(p, images)))

    norm = lambda tree: float(sum(jnp.sum(g**2) for g in jax.tree.leaves(tree)))  # noqa: E731
    assert (norm(jax.grad(unlabeled)(params)) > 0) == trained_by_unlabeled_loss
    fit_grad = jax.grad(lambda p: est.fit_loss(p, images, jnp.array([0, 1, 2, 0]), jax.nn.softmax(logits)))(params)
    assert (norm(fit_grad) > 0) == (fit == "labeled")
