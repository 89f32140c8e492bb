"""DC-AE with the paper's perceptual loss, L1 + LPIPS, on random LPIPS-VGG16 weights written as the two files a user
supplies (no torch needed: `.npz` copies with torchvision's and lpips' tensor names): the loss is L1 + LPIPS, its
gradient reaches the autoencoder, the LPIPS network is no parameter, the evaluator reports LPIPS, and a missing file
or a missing setting stops the task (and a run of the `dcae/lpips.gin` tier) before anything starts."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgen import cli
from jaxgen.core.errors import ConfigError
from jaxgen.projects.dcae import model, task
from tests.support.lpips_weights import write_random_lpips


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    return write_random_lpips(tmp_path_factory.mktemp("lpips_weights"), "vgg")


def test_the_lpips_loss_trains_the_autoencoder_and_is_reported(weights, tmp_path):
    t = task.AutoencoderTask(model.dcae("tiny"), perceptual="lpips", lpips_weights=weights)
    images = jnp.asarray(np.random.default_rng(1).integers(0, 256, (2, 16, 16, 3), np.uint8))
    # Random parameters of the initialiser's shapes: compiling the initialiser would double the test's time.
    shapes = jax.eval_shape(t.init, jax.random.key(0), {"image": images})
    rng = np.random.default_rng(2)
    variables = jax.tree.map(lambda a: jnp.asarray(0.2 * rng.standard_normal(a.shape), a.dtype), shapes)
    assert set(variables["params"]) == {"autoencoder", "discriminator"}  # LPIPS is a constant, not a parameter

    def lpips_term(params):  # differentiates the LPIPS term alone; the whole loss comes along as aux
        value, metrics = t.loss({**variables, "params": params}, {"image": images}, jax.random.key(1))[:2]
        return metrics["lpips"], (value, metrics)

    grads, (value, metrics) = jax.jit(jax.grad(lpips_term, has_aux=True))(variables["params"])
    assert metrics["lpips"] > 0
    np.testing.assert_allclose(value, metrics["l1"] + metrics["lpips"], rtol=1e-5)
    ae_grads = jax.tree.leaves(grads["autoencoder"])
    assert all(np.isfinite(g).all() for g in ae_grads)
    assert sum(float(jnp.abs(g).sum()) for g in ae_grads) > 0  # LPIPS's gradient reaches the autoencoder

    result = t._evaluate(variables, [(images, jnp.ones(2, bool))], tmp_path, is_main=True)
    assert set(result) == {"psnr", "ssim", "lpips", "num_images"} and result["lpips"] > 0


def test_missing_lpips_weights_stop_the_task_and_the_run_before_they_start(weights, tmp_path, capsys, monkeypatch,
                                                                         repo):
    with pytest.raises(ConfigError, match="perceptual='lpips' needs lpips_weights.*vgg16-397923af.pth"):
        task.AutoencoderTask(model.dcae("tiny"), perceptual="lpips")
    with pytest.raises(ConfigError, match="No LPIPS-vgg lin weights at .*nowhere.pth.*lpips wheel on PyPI"):
        task.AutoencoderTask(model.dcae("tiny"), perceptual="lpips", lpips_weights=(weights[0], "nowhere.pth"))
    with pytest.raises(ValueError, match="Unknown DC-AE perceptual loss 'lpip'.*Did you mean 'lpips'"):
        task.AutoencoderTask(model.dcae("tiny"), perceptual="lpip")

    monkeypatch.chdir(repo)
    workdir = tmp_path / "run"
    code = cli.main(["run", "configs/dcae/dcae_smoke.gin", "configs/dcae/lpips.gin", "--workdir", str(workdir),
                     f"--gin.LPIPS_BACKBONE='{tmp_path / 'vgg16-397923af.pth'}'", f"--gin.LPIPS_LIN='{weights[1]}'"])
    assert code != 0 and not workdir.exists()
    assert "No LPIPS-vgg backbone weights at" in capsys.readouterr().err
