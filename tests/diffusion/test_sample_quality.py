"""The sample-quality evaluator and its classifier judge, with a tiny classifier trained by the shared trainer and
restored by path: the judge gives the trained model's outputs; samples that are the held-out images themselves score
FD 0 and the classifier's own accuracy; constant samples score the hand-computed FD and accuracy; the DiT sampler
path runs with padding batches and prints its progress."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgen import cli, train
from jaxgen.core.checkpoint import CheckpointError
from jaxgen.core.classifier_task import ClassifierTask
from jaxgen.core.errors import ConfigError
from jaxgen.core.optim import OptimizerConfig
from jaxgen.core.task import EvalContext
from jaxgen.data import ArraySource, Loader
from jaxgen.diffusion import sample_quality
from jaxgen.diffusion import task as task_lib
from jaxgen.nn.classifiers import CNNClassifier
from jaxgen.nn.dit import DiT

NUM_CLASSES = 3
EVAL_SIZE = 30  # label of eval image i is i % 3, the order in which the evaluator asks for classes


def images_of(labels, rng):
    """8x8 RGB images whose class is the brightest channel (noisy, so the classifier is not perfect at once)."""
    images = rng.integers(0, 196, (len(labels), 8, 8, 3))
    images[np.arange(len(labels)), :, :, labels] += rng.integers(0, 60, (len(labels), 1, 1))
    return images.astype(np.uint8)


def classifier() -> CNNClassifier:
    return CNNClassifier(num_classes=NUM_CLASSES, channels=(4,))


@pytest.fixture(scope="module")
def trained_classifier(tmp_path_factory):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, NUM_CLASSES, 256).astype(np.int32)
    source = ArraySource({"image": images_of(labels, rng), "label": labels})
    workdir = tmp_path_factory.mktemp("classifier")
    result = train.run(task=ClassifierTask(classifier(), NUM_CLASSES), workdir=workdir,
                       train_data=Loader(source, batch_size=32, seed=1), train_steps=12, checkpoint_every=12,
                       eval_data=Loader(source, batch_size=64, shuffle=False),
                       eval_every=0, optimizer=OptimizerConfig(learning_rate=1e-2, schedule="constant"),
                       async_checkpointing=False, progress=False)
    return workdir, result.state.params


@pytest.fixture(scope="module")
def eval_data():
    labels = (np.arange(EVAL_SIZE) % NUM_CLASSES).astype(np.int32)
    return {"image": images_of(labels, np.random.default_rng(1)), "label": labels}


def eval_context(eval_data, tmp_path, show_progress=False) -> EvalContext:
    def batches():
        for start in range(0, EVAL_SIZE, 16):  # 16 + 14 valid rows, the last batch padded to 16
            rows = np.arange(start, start + 16)
            valid = rows < EVAL_SIZE
            yield {k: jnp.asarray(v[np.minimum(rows, EVAL_SIZE - 1)]) for k, v in eval_data.items()} | {
                "valid": jnp.asarray(valid)}

    return EvalContext(step=0, rng=jax.random.key(5), outdir=tmp_path, batches=batches, show_progress=show_progress)


def diffusion_task(judge, **kwargs):
    model = DiT(num_classes=NUM_CLASSES, width=32, depth=1, num_heads=2, patch_size=4, in_channels=3, sample_size=8)
    options = dict(num_sample_steps=2, samples_per_class=1, judges=[judge], num_judged_samples=EVAL_SIZE,
                   sample_batch_size=8)
    return task_lib.ClassConditionalDiffusionTask(model, NUM_CLASSES, **(options | kwargs))


def fake_sampler(images):
    """Stands in for `task.sample`: hands out `images` in order, batch after batch (then zeros), as floats."""
    position = 0

    def sample(variables, labels, rng, image_shape):
        nonlocal position
        batch = np.zeros((len(labels), *image_shape), np.uint8)
        taken = images[position:position + len(labels)]
        batch[:len(taken)] = taken
        position += len(labels)
        return ClassifierTask.preprocess(jnp.asarray(batch))

    return sample


def test_judge_restores_the_trained_classifier_by_path(trained_classifier, eval_data, monkeypatch):
    workdir, params = trained_classifier
    monkeypatch.chdir(workdir.parent)  # a path relative to where the run starts, as the recipes give it
    judge = sample_quality.ClassifierJudge(classifier(), workdir.name)
    judge.prepare((8, 8, 3))
    features, logits = judge(eval_data["image"])
    expected, state = classifier().apply({"params": params}, ClassifierTask.preprocess(eval_data["image"]),
                                         mutable=["intermediates"])
    np.testing.assert_allclose(logits, expected, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(features, state["intermediates"]["features"][0], rtol=1e-6, atol=1e-6)
    assert features.shape == (EVAL_SIZE, 4)


def test_held_out_images_as_samples_score_zero_distance_and_the_classifier_accuracy(trained_classifier, eval_data,
                                                                                    tmp_path):
    judge = sample_quality.ClassifierJudge(classifier(), str(trained_classifier[0]))
    task = diffusion_task(judge)
    assert "sample_quality" in task.evaluators()
    task.sample = fake_sampler(eval_data["image"])
    results = task.evaluate_sample_quality(None, eval_context(eval_data, tmp_path))
    assert results["fd_classifier"] == pytest.approx(0.0, abs=1e-6)
    predictions = np.argmax(judge(eval_data["image"])[1], -1)
    accuracy = np.mean(predictions == eval_data["label"])
    assert 0.5 < accuracy < 1.0  # a meaningful check: the classifier is trained, and not perfect
    assert results["classifier_accuracy"] == pytest.approx(accuracy)
    assert results["classifier_real_accuracy"] == pytest.approx(accuracy)
    per_class = [np.mean(predictions[eval_data["label"] == c] == c) for c in range(NUM_CLASSES)]
    np.testing.assert_allclose(results["classifier_class_accuracy"], per_class)
    assert results["classifier_worst_class_accuracy"] == pytest.approx(min(per_class))
    assert results["num_samples"] == EVAL_SIZE


def test_constant_samples_score_the_hand_computed_distance_and_accuracy(trained_classifier, eval_data, tmp_path):
    judge = sample_quality.ClassifierJudge(classifier(), str(trained_classifier[0]))
    task = diffusion_task(judge)
    grey = np.full((EVAL_SIZE, 8, 8, 3), 128, np.uint8)
    task.sample = fake_sampler(grey)
    results = task.evaluate_sample_quality(None, eval_context(eval_data, tmp_path))
    real_features = np.asarray(judge(eval_data["image"])[0], np.float64)
    grey_features, grey_logits = (np.asarray(a, np.float64) for a in judge(grey[:1]))
    # One point vs a Gaussian: |mu_g - mu_r|^2 + tr(Sigma_r) (the generated covariance is zero).
    expected = np.sum((grey_features[0] - real_features.mean(0)) ** 2) + np.trace(np.cov(real_features, rowvar=False))
    assert results["fd_classifier"] == pytest.approx(expected, rel=1e-6)
    labels = np.arange(EVAL_SIZE) % NUM_CLASSES
    assert results["classifier_accuracy"] == pytest.approx(np.mean(labels == np.argmax(grey_logits)))


def test_the_sampler_path_runs_with_a_padded_last_batch_and_shows_progress(trained_classifier, eval_data, tmp_path,
                                                                           capsys):
    judge = sample_quality.ClassifierJudge(classifier(), str(trained_classifier[0]))
    task = diffusion_task(judge, num_judged_samples=10, sample_batch_size=4)  # 4 + 4 + 2 of a padded 4
    rng = np.random.default_rng(2)
    batch = {"image": images_of(np.zeros(4, int), rng), "label": np.zeros(4, np.int32)}
    variables = task.init(jax.random.key(0), batch)
    results = task.evaluate_sample_quality(variables, eval_context(eval_data, tmp_path, show_progress=True))
    assert results["num_samples"] == 10 and np.isfinite(results["fd_classifier"]) and results["fd_classifier"] > 0
    assert 0.0 <= results["classifier_accuracy"] <= 1.0
    assert "sampling 10/10 img" in capsys.readouterr().err


def test_a_missing_or_mismatched_classifier_is_named(trained_classifier, tmp_path):
    with pytest.raises(CheckpointError, match="no_such_run.*classifier_shape_classes32.gin"):
        sample_quality.ClassifierJudge(classifier(), str(tmp_path / "no_such_run"))
    wrong = sample_quality.ClassifierJudge(CNNClassifier(num_classes=NUM_CLASSES, channels=(8,)),
                                           str(trained_classifier[0]))
    with pytest.raises(CheckpointError, match="ClassifierJudge.model"):
        wrong.prepare((8, 8, 3))
    with pytest.raises(ValueError, match="distinct names"):
        diffusion_task(wrong, judges=[wrong, wrong])
    with pytest.raises(ConfigError, match="nowhere.pth.*pt_inception-2015-12-05-6726825d.pth"):
        sample_quality.InceptionJudge(str(tmp_path / "nowhere.pth"))


def test_a_recipe_whose_classifier_is_not_trained_stops_before_the_run_starts(tmp_path, capsys, monkeypatch, repo):
    monkeypatch.chdir(repo)
    workdir = tmp_path / "run"
    code = cli.main(["run", "configs/diffusion/dit_tiny_shape_classes32.gin", "--workdir", str(workdir),
                     f"--gin.CLASSIFIER_CHECKPOINT='{tmp_path / 'untrained'}'"])
    assert code != 0 and not workdir.exists()
    assert "No classifier checkpoint at" in capsys.readouterr().err


def test_the_fid_tier_stops_before_the_run_starts_without_the_inception_weights(trained_classifier, tmp_path, capsys,
                                                                                  monkeypatch, repo):
    monkeypatch.chdir(repo)
    workdir = tmp_path / "run"
    code = cli.main(["run", "configs/diffusion/dit_tiny_shape_classes32.gin", "configs/diffusion/fid.gin",
                     "--workdir", str(workdir), f"--gin.CLASSIFIER_CHECKPOINT='{trained_classifier[0]}'",
                     f"--gin.INCEPTION_WEIGHTS='{tmp_path / 'pt_inception.pth'}'"])
    assert code != 0 and not workdir.exists()
    assert "No Inception weights at" in capsys.readouterr().err
