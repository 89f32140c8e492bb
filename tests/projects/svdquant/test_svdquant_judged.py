"""The SVDQuant driver's sample-quality path: judged samples are drawn class by class from one noise stream for every
scheme, padding rows are not counted, the verdict is the shared `judged_metrics`, and a misconfigured call is refused.
The judge here reads colours (mean RGB as features, the brightest channel as its class), so every number is known."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgen.data import ArraySource, Loader
from jaxgen.diffusion.sample_quality import Judgement, judged_metrics
from jaxgen.nn import dit
from jaxgen.projects.svdquant import driver

NUM_CLASSES = 3


@dataclasses.dataclass(eq=False)
class ColourJudge:
    """Features: the mean of each channel; logits: those means, so the class is the brightest channel."""

    name: str = "colour"
    prepared: tuple | None = None

    def prepare(self, image_shape):
        self.prepared = tuple(image_shape)

    def __call__(self, images):
        means = jnp.asarray(images, jnp.float32).mean(axis=(1, 2))
        return means, means


def coloured(labels, size=4, noise=None):
    """Images in [-1, 1] lit in the channel of their label (plus optional noise): what a perfect model draws."""
    images = -np.ones((len(labels), size, size, 3), np.float32)
    images[np.arange(len(labels)), :, :, labels] = 1.0
    return images if noise is None else np.clip(images + noise, -1, 1)


def real_loader(count=10):
    labels = np.arange(count) % NUM_CLASSES
    images = np.round((coloured(labels) + 1) * 127.5).astype(np.uint8)
    return Loader(ArraySource({"image": images, "label": labels.astype(np.int32)}), batch_size=4, shuffle=False)


def test_judge_samples_counts_only_requested_samples_in_class_order():
    calls = []

    def perfect_sampler(params, noise, labels):
        calls.append((noise.copy(), labels.copy()))
        return coloured(labels), None

    judge = ColourJudge()
    real = driver.judge_real_images([judge], real_loader(), NUM_CLASSES)
    assert judge.prepared == (4, 4, 3)
    assert real["colour"].seen.sum() == 10  # the loader's padded last batch is not counted
    judged = driver.judge_samples(perfect_sampler, None, [judge], real, image_shape=(4, 4, 3),
                                  num_classes=NUM_CLASSES, count=7, batch_size=3, seed=5, desc="test",
                                  show_progress=False)
    assert [labels.tolist() for _, labels in calls] == [[0, 1, 2], [0, 1, 2], [0, 1, 2]]  # 9 drawn, 7 kept
    assert judged["colour_accuracy"] == 1.0 and judged["colour_real_accuracy"] == 1.0
    assert judged["colour_class_accuracy"] == [1.0, 1.0, 1.0]
    # 7 samples (classes 0,1,2,0,1,2,0) against 10 real images (0,1,2,...,0): the Fréchet distance by hand.
    by_hand_generated, by_hand_real = Judgement(NUM_CLASSES), Judgement(NUM_CLASSES)
    for images, labels, judgement in ((coloured(np.arange(7) % 3), np.arange(7) % 3, by_hand_generated),
                                      (coloured(np.arange(10) % 3), np.arange(10) % 3, by_hand_real)):
        means = np.round((images + 1) * 127.5).mean(axis=(1, 2))
        judgement.add(means, means, labels, np.ones(len(labels), bool))
    assert judged["fd_colour"] == pytest.approx(judged_metrics("colour", by_hand_generated, by_hand_real)["fd_colour"])
    # The same seed gives the same noise: every scheme is judged on the same draws.
    again = []
    driver.judge_samples(lambda p, n, y: (again.append(n.copy()) or coloured(y), None), None, [judge], real,
                         image_shape=(4, 4, 3), num_classes=NUM_CLASSES, count=7, batch_size=3, seed=5, desc="test",
                         show_progress=False)
    for (first, _), second in zip(calls, again):
        np.testing.assert_array_equal(first, second)


def test_wrong_colours_are_scored_as_wrong():
    judge = ColourJudge()
    real = driver.judge_real_images([judge], real_loader(), NUM_CLASSES)
    judged = driver.judge_samples(lambda p, n, y: (coloured((y + 1) % NUM_CLASSES), None), None, [judge], real,
                                  image_shape=(4, 4, 3), num_classes=NUM_CLASSES, count=6, batch_size=3, seed=0,
                                  desc="test", show_progress=False)
    assert judged["colour_accuracy"] == 0.0 and judged["colour_worst_class_accuracy"] == 0.0


def test_quantize_and_compare_judges_every_scheme_and_the_16_bit_model():
    module = dit.DiT(num_classes=NUM_CLASSES, width=64, depth=1, num_heads=2, patch_size=2, in_channels=3,
                     sample_size=4, attention_backend="dense")
    variables = driver.random_variables(module, (4, 4, 3), seed=0, scale=0.05)
    results, _ = driver.quantize_and_compare(
        module, variables, image_shape=(4, 4, 3), num_classes=NUM_CLASSES, schemes=("w4a4",), calib_seeds=(0, 1),
        calib_batch=2, calib_timesteps=1, num_samples=2, num_sample_steps=2, probe_timestep=None, rank=4,
        lowrank_iters=1, tokens_per_call=8, judges=[ColourJudge()], real_data=real_loader(), num_judged_samples=4,
        judge_batch_size=4, show_progress=False)
    assert set(results["float"]["judged"]) >= {"fd_colour", "colour_accuracy", "colour_real_accuracy"}
    per_seed = [r["judged"]["fd_colour"] for r in results["w4a4"]["per_seed"]]
    assert len(per_seed) == 2
    assert results["w4a4"]["judged"]["fd_colour"]["mean"] == pytest.approx(np.mean(per_seed))
    # Naive W4A4 needs no search: both calibration seeds give the same model, the same noise, the same verdict.
    assert per_seed[0] == pytest.approx(per_seed[1])


def test_judges_without_real_images_are_refused():
    with pytest.raises(ValueError, match="real_data"):
        driver.quantize_and_compare(None, None, image_shape=(4, 4, 3), num_classes=NUM_CLASSES,
                                    judges=[ColourJudge()])


def test_restore_variables_reads_a_runs_ema_parameters_from_a_relative_workdir(tmp_path, monkeypatch):
    """The trained-DiT recipes name a diffusion run's workdir relative to where `jaxgen run` starts."""
    from jaxgen.core import checkpoint as ckpt_lib

    module = dit.DiT(num_classes=NUM_CLASSES, width=32, depth=1, num_heads=2, patch_size=2, in_channels=3,
                     sample_size=4)
    params = driver.random_variables(module, (4, 4, 3), seed=0, scale=0.05)["params"]
    ema = jax.tree.map(lambda a: a + 1.0, params)
    saver = ckpt_lib.Checkpointer(tmp_path / "run" / "checkpoints", async_save=False)
    saver.save(7, {"params": params, "ema_params": ema, "step": np.int32(7)}, {})
    saver.close()
    monkeypatch.chdir(tmp_path)
    restored = driver.restore_variables(module, (4, 4, 3), "run", "ema_params")["params"]
    for got, want in zip(jax.tree.leaves(restored), jax.tree.leaves(ema)):
        np.testing.assert_array_equal(got, want)
