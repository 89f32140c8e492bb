"""`jaxgen.metrics.inception` against pytorch-fid's own FID Inception on random weights (float32, CPU): the pool
features from the network alone, the resize, the whole pipeline from uint8 images through the FID judge of the
sample-quality evaluator, and the weights read from a `.pth` and from its `.npz` copy."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.support.numerics import rel_err
from tests.support.parity import require

torch = require("torch")
require("torchvision")
pytorch_fid_inception = require("pytorch_fid.inception")

from jaxgen.diffusion.sample_quality import InceptionJudge  # noqa: E402
from jaxgen.metrics import inception  # noqa: E402


@pytest.fixture(scope="module")
def reference():
    """pytorch-fid's `InceptionV3` (pool features, resizing and [-1, 1] scaling on) with random weights in place of
    the downloaded ones: He-scaled convolutions and non-trivial BatchNorm statistics, so every layer matters."""
    patch = pytest.MonkeyPatch()
    patch.setattr(pytorch_fid_inception, "load_state_dict_from_url", lambda *args, **kwargs: {})
    patch.setattr(torch.nn.Module, "load_state_dict", lambda self, *args, **kwargs: None)
    try:
        model = pytorch_fid_inception.InceptionV3([3], resize_input=True, normalize_input=True).eval()
    finally:
        patch.undo()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.Conv2d):
                fan_in = module.weight[0].numel()
                module.weight.copy_(torch.randn(module.weight.shape, generator=generator) * (2.0 / fan_in) ** 0.5)
            elif isinstance(module, torch.nn.BatchNorm2d):
                n = module.num_features
                module.weight.copy_(0.5 + torch.rand(n, generator=generator))
                module.bias.copy_(0.1 * torch.randn(n, generator=generator))
                module.running_mean.copy_(0.1 * torch.randn(n, generator=generator))
                module.running_var.copy_(0.5 + torch.rand(n, generator=generator))
    return model


@pytest.fixture(scope="module")
def weights_file(reference, tmp_path_factory):
    """The reference's weights as pytorch-fid's file holds them: the state dict of `fid_inception_v3()` (the 1,008-class
    head included, which FID does not use)."""
    blocks = reference.blocks
    names = {"Conv2d_1a_3x3": blocks[0][0], "Conv2d_2a_3x3": blocks[0][1], "Conv2d_2b_3x3": blocks[0][2],
             "Conv2d_3b_1x1": blocks[1][0], "Conv2d_4a_3x3": blocks[1][1]}
    names |= {f"Mixed_{n}": blocks[2][i] for i, n in enumerate(["5b", "5c", "5d", "6a", "6b", "6c", "6d", "6e"])}
    names |= {f"Mixed_{n}": blocks[3][i] for i, n in enumerate(["7a", "7b", "7c"])}
    state = {f"{prefix}.{k}": v for prefix, module in names.items() for k, v in module.state_dict().items()}
    state |= {"fc.weight": torch.zeros(1008, 2048), "fc.bias": torch.zeros(1008)}
    path = tmp_path_factory.mktemp("fid") / inception.FID_WEIGHTS_NAME
    torch.save(state, path)
    return path


def test_the_network_matches_pytorch_fid_on_random_weights(reference, weights_file):
    variables = inception.load_fid_inception(weights_file)
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, size=(2, 139, 139, 3)).astype(np.float32)  # 3 x 3 at Mixed_7c: its pools matter
    with torch.no_grad():
        x_torch = torch.from_numpy(x).permute(0, 3, 1, 2)
        for block in reference.blocks:
            x_torch = block(x_torch)
        expected = x_torch.reshape(2, -1).numpy()
    ours = np.asarray(jax.jit(inception.FIDInceptionV3().apply)(variables, jnp.asarray(x)))
    assert ours.shape == (2, inception.FEATURES)
    assert np.abs(expected).mean() > 1e-2  # the random network passes a signal all the way through
    assert rel_err(ours, expected) < 1e-4


def test_uint8_images_are_resized_and_scaled_as_pytorch_fid_does(reference):
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, size=(2, 32, 40, 3), dtype=np.uint8)
    with torch.no_grad():
        x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0  # pytorch-fid's ToTensor
        resized = torch.nn.functional.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
        expected = (2 * resized - 1).permute(0, 2, 3, 1).numpy()
    ours = np.asarray(inception.preprocess(jnp.asarray(images)))
    np.testing.assert_allclose(ours, expected, atol=1e-5)


def test_the_fid_judge_gives_pytorch_fid_features_of_uint8_images(reference, weights_file):
    rng = np.random.default_rng(2)
    images = rng.integers(0, 256, size=(2, 32, 32, 3), dtype=np.uint8)
    with torch.no_grad():
        (expected,) = reference(torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0)
    judge = InceptionJudge(str(weights_file))
    judge.prepare((32, 32, 3))
    features, logits = judge(jnp.asarray(images))
    assert logits is None and features.shape == (2, inception.FEATURES)
    assert rel_err(np.asarray(features), expected.reshape(2, -1).numpy()) < 1e-4


def test_the_npz_copy_reads_as_the_pth(weights_file, tmp_path):
    state = torch.load(weights_file, weights_only=True)
    copy = tmp_path / "fid_inception.npz"
    np.savez(copy, **{k: v.numpy() for k, v in state.items()})
    first, second = inception.load_fid_inception(weights_file), inception.load_fid_inception(copy)
    assert jax.tree.all(jax.tree.map(np.array_equal, first, second))


def test_missing_or_foreign_weights_are_named(weights_file, tmp_path):
    with pytest.raises(FileNotFoundError, match="pt_inception-2015-12-05-6726825d.pth.*github.com/mseitzer"):
        inception.load_fid_inception(tmp_path / "nowhere.pth")
    state = {k: v.numpy() for k, v in torch.load(weights_file, weights_only=True).items()}
    with pytest.raises(ValueError, match="not part of FID's Inception"):
        inception.variables_from_state_dict(state | {"Mixed_5b.extra.conv.bias": np.zeros(3)})
    del state["Mixed_7c.branch_pool.conv.weight"]
    with pytest.raises(ValueError, match="1 missing"):
        inception.variables_from_state_dict(state)
