"""ClassConditionalDiffusionTask: the loss a zero output gets, CFG label dropout, the samples grid, a train step."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from PIL import Image

from jaxgen.core.task import EvalContext
from jaxgen.diffusion import task as task_lib
from jaxgen.nn.dit import DiT

NUM_CLASSES = 3


def tiny_dit() -> DiT:
    return DiT(num_classes=NUM_CLASSES, width=32, depth=1, num_heads=2, patch_size=4, in_channels=3, sample_size=8)


def make_task(**kwargs) -> task_lib.ClassConditionalDiffusionTask:
    options = dict(num_sample_steps=2, samples_per_class=2, eval_timesteps=(10, 900), class_names=("a", "b", "c"))
    return task_lib.ClassConditionalDiffusionTask(tiny_dit(), NUM_CLASSES, **(options | kwargs))


def batch(n: int = 64, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return {"image": rng.integers(0, 256, (n, 8, 8, 3), dtype=np.uint8),
            "label": rng.integers(0, NUM_CLASSES, n).astype(np.int32)}


def test_loss_of_a_zero_output_model_is_the_noise_variance():
    class Zero(nn.Module):
        @nn.compact
        def __call__(self, x, t, y):
            return x * self.param("w", nn.initializers.zeros, ())

    task = task_lib.ClassConditionalDiffusionTask(Zero(), NUM_CLASSES)
    data = batch(256)
    variables = task.init(jax.random.key(0), data)
    loss, metrics = task.loss(variables, data, jax.random.key(1))
    # target is standard normal noise: E[eps^2] = 1; 256 * 192 draws put the mean within ~0.01 of it.
    assert abs(float(loss) - 1.0) < 0.03 and metrics["eps_mse"] == loss
    # DiT's output layer starts at zero, so the real backbone at init scores the same.
    dit_task = make_task()
    dit_loss, _ = dit_task.loss(dit_task.init(jax.random.key(0), data), data, jax.random.key(1))
    assert float(dit_loss) == pytest.approx(float(loss), abs=1e-6)


def test_label_dropout_rate_and_null_label():
    task = make_task(label_dropout=0.25)
    labels = jnp.zeros(20_000, jnp.int32)
    dropped = task.drop_labels(jax.random.key(0), labels)
    assert set(np.unique(np.asarray(dropped)).tolist()) == {0, NUM_CLASSES}
    assert float(jnp.mean(dropped == NUM_CLASSES)) == pytest.approx(0.25, abs=0.015)
    with pytest.raises(ValueError, match="label_dropout"):
        make_task(label_dropout=1.0)


def test_evaluators_write_a_class_grid_and_report_denoising_loss(tmp_path):
    task = make_task()
    data = batch(6)
    variables = task.init(jax.random.key(0), data)
    eval_batch = {**{k: jnp.asarray(v) for k, v in data.items()}, "valid": jnp.array([True] * 5 + [False])}
    context = EvalContext(step=0, rng=jax.random.key(2), outdir=tmp_path, batches=lambda: iter([eval_batch]))
    results = task.evaluate_samples(variables, context)
    assert results["num_samples"] == NUM_CLASSES * 2
    width, height = Image.open(tmp_path / "samples.png").size
    cell = 8 * task.grid_scale + task_lib.GRID_GAP
    assert (height, width) == (NUM_CLASSES * cell + task_lib.GRID_GAP, task_lib.LABEL_WIDTH + 2 * cell)
    denoising = task.evaluate_denoising(variables, context)
    assert set(denoising) == {"eps_mse_t10", "eps_mse_t900", "eps_mse_mean"}
    assert all(0.5 < v < 1.5 for v in denoising.values())  # zero output at init: about the noise variance


def test_train_steps_reduce_the_loss():
    task = make_task()
    data = batch(32)
    variables = task.init(jax.random.key(0), data)
    tx = optax.adam(3e-3)
    opt_state = tx.init(variables["params"])

    @jax.jit
    def step(params, opt_state, key):
        (loss, _), grads = jax.value_and_grad(lambda p: task.loss({"params": p}, data, key), has_aux=True)(params)
        updates, opt_state = tx.update(grads, opt_state)
        return optax.apply_updates(params, updates), opt_state, loss

    params, key = variables["params"], jax.random.key(3)
    losses = []
    for _ in range(30):
        params, opt_state, loss = step(params, opt_state, key)  # same key: the same noisy batch every step
        losses.append(float(loss))
    assert np.isfinite(losses).all() and losses[-1] < 0.9 * losses[0]
