"""VideoFlowTask: the flow-matching loss at initialisation, and dense / SVG sampling from the same noise."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxgen.projects.svg.model import VideoDiT
from jaxgen.projects.svg.task import VideoFlowTask


def _task(**kwargs):
    model = VideoDiT(vocab_size=15, width=32, depth=2, num_heads=2, patch=(2, 4, 4))
    return VideoFlowTask(model, num_sample_steps=2, svg_options={"block_q": 8, "block_kv": 8, "num_sampled_rows": 8},
                         **kwargs)


def test_loss_at_init_is_the_velocity_variance():
    """The output layer starts at zero, so the loss is E[(noise - x0)^2] = 1 + 1 for all-black videos (x0 = -1)."""
    task = _task()
    batch = {"video": np.zeros((4, 4, 16, 16, 3), np.uint8), "caption": np.ones((4, 8), np.int32)}
    variables = jax.jit(task.init)(jax.random.key(0), batch)
    loss, metrics = jax.jit(task.loss)(variables, batch, jax.random.key(1))
    assert abs(float(loss) - 2.0) < 0.05 and float(metrics["velocity_mse"]) == float(loss)


def test_dense_and_full_density_svg_samples_agree_and_report_heads():
    """SVG at density 1 moves the temporal heads' video tokens by the model's `VideoLayout` and back: equal to dense
    only if the layout matches where the model put caption and video tokens."""
    task = _task(guidance_scale=3.0)
    batch = {"video": np.zeros((2, 4, 16, 16, 3), np.uint8), "caption": np.array([[3, 8, 12, 0] * 2, [4] * 8])}
    rng = np.random.default_rng(0)  # noise in every parameter: the zero-initialised output layer would hide all
    variables = jax.tree.map(lambda x: jnp.asarray(0.1 * rng.standard_normal(x.shape), x.dtype),
                             jax.eval_shape(task.init, jax.random.key(0), batch))
    caption = jnp.asarray(batch["caption"])
    dense, dense_aux = task.sample(variables, caption, jax.random.key(2), video_shape=(4, 16, 16))
    sparse, aux = task.sample(variables, caption, jax.random.key(2), video_shape=(4, 16, 16), density=1.0)
    assert dense.shape == (2, 4, 16, 16, 3) and dense_aux == {}
    np.testing.assert_allclose(sparse, dense, rtol=1e-3, atol=1e-3)
    assert aux["head_is_temporal"].shape == (2, 2, 4, 2)  # [steps, layers, 2 * batch (CFG), heads]
    np.testing.assert_allclose(aux["density"], 1.0)
    assert not np.allclose(dense[0], dense[1])  # batch > 1: different captions, different videos



def test_the_evaluator_says_when_svg_and_dense_videos_are_the_same(tmp_path):
    """After a few steps the adaLN-Zero gates keep attention out (the smoke test: 131 dB at density 0.28): the
    evaluator says the PSNR means nothing then. Sampling is stubbed: this is about the report, not the sampler."""
    from jaxgen.core.task import EvalContext

    task = _task(densities=(0.25,), num_videos=1)
    batch = {"video": np.zeros((1, 4, 16, 16, 3), np.uint8), "caption": np.array([[3, 8, 12, 0] * 2])}
    context = EvalContext(step=0, rng=jax.random.key(2), outdir=tmp_path, batches=lambda: iter([batch]),
                          is_main_process=False)
    aux = {"head_is_temporal": np.zeros((2, 2, 2, 2), bool), "density": np.array([[1.0, 1.0], [0.28, 0.28]]),
           "recall": np.stack([np.ones((2, 2, 2)), np.stack([np.full((2, 2), 0.9), np.full((2, 2), 0.7)])])}

    def report(svg_offset):
        task.sample = lambda variables, caption, rng, *, video_shape, density=None: (
            jnp.zeros((1, *video_shape, 3)) + (0.0 if density is None else svg_offset), {} if density is None else aux)
        return task.evaluate(None, context)

    same = report(1e-6)
    assert same["psnr_d0.25"] > 100 and "adaLN-Zero gates" in same["note"] and "d0.25" in same["note"]
    np.testing.assert_allclose(same["recall_by_layer_d0.25"], [0.9, 0.7])  # the dense-gated first step left out
    np.testing.assert_allclose(same["recall_d0.25"], 0.8)
    different = report(0.05)
    assert different["psnr_d0.25"] < 60 and "note" not in different
