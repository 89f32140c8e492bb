"""`jaxgen.metrics.lpips` against the official `lpips` package (0.1.4) in float32 on CPU, for VGG16 and AlexNet: a
random backbone (`pnet_rand=True`, nothing downloaded) with the package's own v0.1 lin weights, saved as the two
files a user supplies (torchvision's backbone state dict, the lin state dict), read back through `load_lpips`.
Also: the `.npz` / `.safetensors` copies read as the `.pth`, identical images are at distance 0, gradients are finite,
and missing or foreign files are named."""

from __future__ import annotations

import re
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.support.numerics import rel_err
from tests.support.parity import require

torch = require("torch")
require("torchvision")
lpips_reference = require("lpips")
pretrained_networks = require("lpips.pretrained_networks")

from torchvision.models import vgg as tv_vgg  # noqa: E402

from jaxgen.metrics import lpips  # noqa: E402


def _vgg16_features_only(pretrained=False):
    """torchvision's VGG16 `features` (its own `make_layers` on its config "D") without the 120 M-parameter
    classifier, which LPIPS never uses and whose random initialisation alone takes seconds on two cores."""
    return types.SimpleNamespace(features=tv_vgg.make_layers(tv_vgg.cfgs["D"]))


@pytest.fixture(scope="module", params=["vgg", "alex"])
def reference(request, tmp_path_factory):
    """(net, the package's LPIPS with a random He-scaled backbone and its v0.1 lin weights, the backbone file as
    torchvision's state dict `features.{i}.*` plus a stand-in classifier, the lin file)."""
    net = request.param
    patch = pytest.MonkeyPatch()
    patch.setattr(pretrained_networks.tv, "vgg16", _vgg16_features_only)
    try:
        model = lpips_reference.LPIPS(net=net, pretrained=True, pnet_rand=True, verbose=False).eval()
    finally:
        patch.undo()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for module in model.net.modules():
            if isinstance(module, torch.nn.Conv2d):
                fan_in = module.weight[0].numel()
                module.weight.copy_(torch.randn(module.weight.shape, generator=generator) * (2.0 / fan_in) ** 0.5)
                module.bias.copy_(0.1 * torch.randn(module.bias.shape, generator=generator))
    folder = tmp_path_factory.mktemp(f"lpips_{net}")
    spec = lpips.backbone(net)
    backbone_state = {re.sub(r"^slice\d+\.", "features.", k): v for k, v in model.net.state_dict().items()}
    backbone_state |= {"classifier.6.weight": torch.zeros(10, 4), "classifier.6.bias": torch.zeros(10)}
    torch.save(backbone_state, folder / spec.backbone_file)
    torch.save({k: v for k, v in model.state_dict().items() if re.match(r"lin\d\.", k)}, folder / spec.lin_file)
    return net, model, folder / spec.backbone_file, folder / spec.lin_file


def _images(seed, n=3, size=64):
    return np.random.default_rng(seed).uniform(-1, 1, size=(2, n, size, size, 3)).astype(np.float32)


def test_distances_match_the_lpips_package(reference):
    net, model, backbone_file, lin_file = reference
    a, b = _images(0)
    b = np.clip(a + 0.3 * b, -1, 1)  # nearby images, as in a reconstruction loss, and one far pair
    b[2] = _images(1)[0, 2]
    with torch.no_grad():
        expected = model(*(torch.from_numpy(x).permute(0, 3, 1, 2) for x in (a, b))).reshape(-1).numpy()
    metric = lpips.load_lpips(backbone_file, lin_file, net=net)
    ours = np.asarray(jax.jit(metric.__call__)(jnp.asarray(a), jnp.asarray(b)))
    assert ours.shape == (3,)
    assert expected.min() > 1e-3  # every layer term is alive on the random backbone
    assert rel_err(ours, expected) < 1e-4


def test_identical_images_are_at_zero_with_finite_gradients(reference):
    net, _, backbone_file, lin_file = reference
    metric = lpips.load_lpips(backbone_file, lin_file, net=net)
    a, b = (jnp.asarray(x[:2, :32, :32]) for x in _images(2))
    assert np.asarray(jax.jit(metric.__call__)(a, a)).tolist() == [0.0, 0.0]
    gradient = jax.jit(jax.grad(lambda x: jnp.sum(metric(x, b))))(a)
    assert np.isfinite(np.asarray(gradient)).all() and np.abs(np.asarray(gradient)).max() > 0


def test_npz_and_safetensors_copies_read_as_the_pth(reference, tmp_path):
    net, _, backbone_file, lin_file = reference
    from safetensors.numpy import save_file

    backbone_npz, lin_safetensors = tmp_path / "backbone.npz", tmp_path / "lin.safetensors"
    np.savez(backbone_npz, **{k: v.numpy() for k, v in torch.load(backbone_file, weights_only=True).items()})
    save_file({k: v.numpy() for k, v in torch.load(lin_file, weights_only=True).items()}, str(lin_safetensors))
    first = lpips.load_lpips(backbone_file, lin_file, net=net).variables
    second = lpips.load_lpips(backbone_npz, lin_safetensors, net=net).variables
    assert jax.tree.all(jax.tree.map(np.array_equal, first, second))


def test_missing_or_foreign_weights_are_named(reference, tmp_path):
    net, _, backbone_file, lin_file = reference
    spec = lpips.backbone(net)
    with pytest.raises(FileNotFoundError, match=f"{re.escape(spec.backbone_file)}.*download.pytorch.org"):
        lpips.load_lpips(tmp_path / "nowhere.pth", lin_file, net=net)
    with pytest.raises(FileNotFoundError, match=f"weights/v0.1/{spec.lin_file}.*lpips wheel on PyPI"):
        lpips.load_lpips(backbone_file, tmp_path / "nowhere.pth", net=net)
    backbone_state = {k: v.numpy() for k, v in torch.load(backbone_file, weights_only=True).items()}
    lin_state = {k: v.numpy() for k, v in torch.load(lin_file, weights_only=True).items()}
    with pytest.raises(ValueError, match=f"not part of LPIPS-{net}"):
        lpips.variables_from_state_dicts(backbone_state | {"features.0.running_mean": np.zeros(3)}, lin_state, net)
    with pytest.raises(ValueError, match="1 missing"):
        lpips.variables_from_state_dicts(backbone_state, {k: v for k, v in lin_state.items() if "lin4" not in k},
                                         net)
    other = "alex" if net == "vgg" else "vgg"
    with pytest.raises(ValueError, match=f"do not fit LPIPS-{other}"):
        lpips.variables_from_state_dicts(backbone_state, lin_state, other)
