"""The forked SSL trainer end to end: every `configs/instant/*_smoke.gin` runs through the entry point the CLI calls
(`config.trainer`, bound to the fork by `configs/instant/run.gin`), writes SSL metrics, checkpoints and pictures; a
resumed run continues exactly; the per-step metrics are right."""

from __future__ import annotations

import shutil
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

from jaxgen import config
from jaxgen.core import metrics
from jaxgen.projects.instant import algorithms, estimators, trainer

REPO = Path(__file__).resolve().parents[3]
SMOKE = sorted(p.relative_to(REPO) for p in (REPO / "configs" / "instant").glob("*_smoke.gin"))
SSL_KEYS = {"loss", "sup_loss", "unsup_loss", "mask_rate", "pl_accuracy_all", "threshold_mean", "threshold_std",
            "grad_norm", "learning_rate"}


def run_config(path, workdir, *bindings):
    config.parse([str(REPO / path)], list(bindings))
    run = config.configured(config.trainer)()
    assert run.__wrapped__ is trainer.run  # what `jaxgen run` calls for these configs
    return run(workdir=workdir, restore_step=None, progress=False)


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    """Each smoke config runs once per module (a run is mostly compile time); tests that continue a run copy it."""
    done = {}

    def run(path):
        if path not in done:
            workdir = tmp_path_factory.mktemp(path.stem)
            done[path] = (workdir, run_config(path, workdir))
        return done[path]

    return run


def train_records(workdir):
    return [{k: v for k, v in r.items() if k != "steps_per_sec"} for r in metrics.read_records(workdir) if "loss" in r]


def test_every_algorithm_has_a_smoke_config():
    assert {p.name for p in SMOKE} == {f"{a}_smoke.gin" for a in
                                       ("supervised", "fixmatch", "flexmatch", "freematch", "softmatch", "instant")}


@pytest.mark.parametrize("tier, fit", [("instant_instance", "forward"), ("instant_labeled", "labeled")])
def test_instant_variant_tiers_bind_the_instance_estimator(tier, fit):
    config.parse([str(REPO / "configs/instant/smoke.gin"), str(REPO / f"configs/instant/algorithms/{tier}.gin")])
    algorithm = config.configured(algorithms.InstanT)()
    assert isinstance(algorithm.estimator.module, estimators.InstanceTransition) and algorithm.estimator.fit == fit


@pytest.mark.parametrize("tier", ["instant", "instant_instance", "instant_labeled"])
def test_algorithm_tiers_keep_the_experiments_warm_up(tier):
    """A tier appended after an experiment must not reset the experiment's macros (it once set WARM_UP_STEPS to
    10,240, so the variants never left warm-up in a 5,000-step run)."""
    config.parse([str(REPO / "configs/instant/fashion_mnist_4.gin"), str(REPO / f"configs/instant/algorithms/{tier}.gin")])
    assert config.configured(algorithms.InstanT)().warm_up_steps == 500


# tests/smoke runs every *_smoke config; here two of them (the seed paper and its closest baseline) get the
# SSL-specific checks, which keeps the suite's compile time down.
DETAILED = [p for p in SMOKE if p.stem in ("instant_smoke", "flexmatch_smoke")]


@pytest.mark.parametrize("path", DETAILED, ids=lambda p: p.stem)
def test_smoke_run_writes_ssl_metrics_and_pictures(path, smoke_run):
    workdir, result = smoke_run(path)
    records = train_records(workdir)
    assert [r["step"] for r in records] == [1, 2] and SSL_KEYS <= set(records[-1])
    assert all(np.isfinite(r["loss"]) for r in records)
    assert all(("pl_accuracy" in r) == (r["mask_rate"] > 0) for r in records)  # undefined when none accepted
    for name in ("checkpoints/2/jaxgen_manifest.json", "eval/2/metrics.json", "eval/2/thresholds.png",
                 "eval/2/pseudo_labels.png", "eval/2/confusion.png", "curves.png", "run_info.json"):
        assert (workdir / name).exists(), name
    assert result.eval_results["classification"]["examples"] == 360
    pseudo = result.eval_results["pseudo_labels"]
    assert 0.0 <= pseudo["mask_rate"] <= 1.0
    for rate in trainer.SELECTION_RATES:
        for rule in ("threshold", "confidence"):
            assert 0.0 <= pseudo[f"select{rate:g}_by_{rule}"] <= 1.0
    assert np.isfinite(pseudo["selection_gain"])


def test_resume_continues_exactly(smoke_run, tmp_path):
    path = SMOKE[[p.stem for p in SMOKE].index("flexmatch_smoke")]  # per-example state: the hardest to resume
    two_steps, _ = smoke_run(path)
    shutil.copytree(two_steps, tmp_path / "resumed")
    resumed = run_config(path, tmp_path / "resumed", "TRAIN_STEPS=3")
    run_config(path, tmp_path / "straight", "TRAIN_STEPS=3", "EVAL_EVERY=3")
    assert [r["step"] for r in train_records(tmp_path / "resumed")] == [1, 2, 3]
    assert train_records(tmp_path / "resumed") == train_records(tmp_path / "straight")
    assert int(resumed.state.step) == 3 and resumed.state.algorithm_state["selected_label"].shape == (1437,)


def test_pseudo_label_metrics_hand_computed():
    got = trainer.pseudo_label_metrics(jnp.array([0, 1, 2, 1]), jnp.array([1.0, 1.0, 0.5, 0.0]),
                                       jnp.array([0.2, 0.4, 0.6, 0.8]), jnp.array([0, 2, 2, 1]))
    assert float(got["mask_rate"]) == pytest.approx(2.5 / 4)
    assert float(got["pl_accuracy"]) == pytest.approx((1 + 0 + 0.5) / 2.5)
    assert float(got["pl_accuracy_all"]) == pytest.approx(3 / 4)
    assert float(got["threshold_mean"]) == pytest.approx(0.5) and float(got["threshold_max"]) == pytest.approx(0.8)
    nothing = trainer.pseudo_label_metrics(jnp.array([0]), jnp.array([0.0]), jnp.array([0.9]), jnp.array([0]))
    assert np.isnan(float(nothing["pl_accuracy"]))


def test_supervised_step_trains_on_labeled_data_alone():
    """USB's fully supervised baseline forwards labeled images only: BatchNorm statistics, parameters and the loss
    do not depend on the unlabeled batch (the SSL algorithms' single forward over all three views does)."""
    import jax
    import optax

    from jaxgen.projects.instant.augment import AugmentConfig
    from jaxgen.projects.instant.model import WideResNet

    model = WideResNet(num_classes=3, depth=4, widen=1)
    images = jax.random.uniform(jax.random.key(0), (4, 8, 8, 1))
    variables = model.init(jax.random.key(1), images * 2 - 1, train=False)
    tx = optax.sgd(0.1)
    params = {"classifier": variables["params"]}

    def leaves_after_step(algorithm, unlabeled_sets):
        state = trainer.SSLState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                                 ema_params=params, model_state={"batch_stats": variables["batch_stats"]},
                                 algorithm_state=algorithm.init_state(3, 8))
        step = jax.jit(trainer.make_train_step(model, algorithm, AugmentConfig(), tx, lambda s: 0.1, 0.9,
                                               jax.random.key(2)))
        for unlabeled in unlabeled_sets:
            batch = {"labeled": {"image": images[:2], "label": jnp.array([0, 1])},
                     "unlabeled": {"image": unlabeled, "index": jnp.arange(4), "label": jnp.zeros(4, jnp.int32)}}
            new_state, _ = step(state, batch)
            yield jax.tree.leaves((new_state.params, new_state.model_state))

    other = jax.random.uniform(jax.random.key(3), (4, 8, 8, 1))
    for name, independent in (("supervised", True), ("fixmatch", False)):
        leaves_a, leaves_b = leaves_after_step(algorithms.make(name), (images, other))
        same = all(np.array_equal(a, b) for a, b in zip(leaves_a, leaves_b))
        assert same is independent, name
