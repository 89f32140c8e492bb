"""LPIPS (Zhang et al., 2018, "The Unreasonable Effectiveness of Deep Features as a Perceptual Metric") in Linen, as
the official `lpips` package (v0.1 weights) computes it, with weights read from files the user supplies.

The distance between two images: both go through an ImageNet backbone (VGG16, the one DC-AE's paper trains with, or
AlexNet, the package's default) after the package's `ScalingLayer` (`(x - shift) / scale`, images in [-1, 1]); at each
of five feature taps the channel vectors are unit-normalised (`f / (‖f‖ + 1e-10)`), their squared difference is
weighted per channel by a learned 1x1 convolution without bias (the "lin" layer, whose weights were kept non-negative
in training, so the distance is a weighted squared Euclidean one) and averaged over positions; the five layer terms
add up to one number per image pair. Taps: VGG16's relu1_2, relu2_2, relu3_3, relu4_3, relu5_3; AlexNet's five
ReLUs (after conv1..conv5).

Weights, two files per backbone, none downloaded here:
- the backbone: torchvision's ImageNet state dict, `vgg16-397923af.pth` / `alexnet-owt-7be5be79.pth` (the files
  `torchvision.models.vgg16(weights="IMAGENET1K_V1")` and `alexnet(...)` download from download.pytorch.org); only
  `features.*` is read (the classifier is not part of LPIPS);
- the lin layers: the lpips package's `weights/v0.1/vgg.pth` / `alex.pth` (`lin{k}.model.1.weight`, `[1, C, 1, 1]`),
  which ship inside the `lpips` wheel on PyPI.
Each may also be an `.npz` or `.safetensors` copy with the same tensor names (no torch needed to read those).

The network is a metric, frozen: `load_lpips` returns an `Lpips` holding its variables, whose call gives per-image
distances and is differentiable in the images (DC-AE trains with it as its perceptual loss). Convolutions run in
float32 at full precision (no TF32 on GPUs), so the distances do not depend on the card.

Proof: `tests/metrics/lpips_vs_reference_test.py` builds `lpips.LPIPS` with a random backbone and the package's lin
weights, saves both files, loads them here and compares the distances.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxgen.nn import porting

# The package's ScalingLayer: ImageNet's mean and standard deviation, expressed for [-1, 1] inputs.
SHIFT = (-0.030, -0.088, -0.188)
SCALE = (0.458, 0.448, 0.450)
EPS = 1e-10  # lpips.normalize_tensor's

LIN_URL = "https://github.com/richzhang/PerceptualSimilarity/raw/master/lpips/weights/v0.1/{file}"


def _conv(features: int, kernel: int, index: int, stride: int = 1, pad: int | None = None) -> nn.Conv:
    """torchvision's `features[index]` Conv2d (bias included), named after its index in the state dict."""
    pad = kernel // 2 if pad is None else pad
    return nn.Conv(features, (kernel, kernel), (stride, stride), padding=((pad, pad), (pad, pad)),
                   precision=lax.Precision.HIGHEST, name=f"features_{index}")


def _max_pool(x, size: int, stride: int):
    return nn.max_pool(x, (size, size), (stride, stride))  # no padding, floor: torch's MaxPool2d defaults


class VGG16Features(nn.Module):
    """torchvision's `vgg16().features` up to relu5_3 -> the five LPIPS taps (relu1_2 ... relu5_3)."""

    @nn.compact
    def __call__(self, x) -> list[jax.Array]:
        taps, index = [], 0
        for stage, (width, convs) in enumerate(((64, 2), (128, 2), (256, 3), (512, 3), (512, 3))):
            if stage:
                x, index = _max_pool(x, 2, 2), index + 1
            for _ in range(convs):
                x, index = nn.relu(_conv(width, 3, index)(x)), index + 2  # a conv, then its ReLU
            taps.append(x)
        return taps


class AlexNetFeatures(nn.Module):
    """torchvision's `alexnet().features` up to the fifth ReLU -> the five LPIPS taps (one per convolution)."""

    @nn.compact
    def __call__(self, x) -> list[jax.Array]:
        relu1 = nn.relu(_conv(64, 11, 0, stride=4, pad=2)(x))
        relu2 = nn.relu(_conv(192, 5, 3)(_max_pool(relu1, 3, 2)))
        relu3 = nn.relu(_conv(384, 3, 6)(_max_pool(relu2, 3, 2)))
        relu4 = nn.relu(_conv(256, 3, 8)(relu3))
        relu5 = nn.relu(_conv(256, 3, 10)(relu4))
        return [relu1, relu2, relu3, relu4, relu5]


@dataclasses.dataclass(frozen=True)
class Backbone:
    """One LPIPS network: its feature extractor, the channels of its five taps, the smallest input it takes, and the
    two weight files it needs (torchvision's backbone at `backbone_url`, the lpips package's lin layers)."""

    features: type[nn.Module]
    channels: tuple[int, ...]
    min_size: int
    backbone_file: str
    lin_file: str

    @property
    def backbone_url(self) -> str:
        return f"https://download.pytorch.org/models/{self.backbone_file}"


BACKBONES: dict[str, Backbone] = {
    "vgg": Backbone(VGG16Features, (64, 128, 256, 512, 512), 16, "vgg16-397923af.pth", "vgg.pth"),
    "alex": Backbone(AlexNetFeatures, (64, 192, 384, 256, 256), 31, "alexnet-owt-7be5be79.pth", "alex.pth"),
}


def backbone(net: str) -> Backbone:
    if net not in BACKBONES:
        raise ValueError(f"Unknown LPIPS network {net!r}; known: {sorted(BACKBONES)}")
    return BACKBONES[net]


def _unit_normalise(f: jax.Array) -> jax.Array:
    """`f / (‖f‖ + 1e-10)` over channels, as the package does; the norm's gradient is kept finite where a position's
    features are all zero (dead ReLUs), where `sqrt`'s derivative at 0 would turn the loss gradient into NaN."""
    squared = jnp.sum(f * f, axis=-1, keepdims=True)
    positive = squared > 0
    norm = jnp.where(positive, jnp.sqrt(jnp.where(positive, squared, 1.0)), 0.0)
    return f / (norm + EPS)


class LPIPS(nn.Module):
    """Two image batches NHWC in [-1, 1], one shape -> LPIPS distance per image `[batch]`."""

    net: str = "vgg"

    @nn.compact
    def __call__(self, a: jax.Array, b: jax.Array) -> jax.Array:
        spec = backbone(self.net)
        if a.shape != b.shape or a.ndim != 4 or a.shape[-1] != 3 or min(a.shape[1:3]) < spec.min_size:
            raise ValueError(f"LPIPS-{self.net} compares two RGB batches of one shape [batch, height, width, 3], at "
                             f"least {spec.min_size} x {spec.min_size}; got {a.shape} and {b.shape}")
        x = jnp.concatenate([a, b]).astype(jnp.float32)  # one backbone pass for both batches
        x = (x - jnp.asarray(SHIFT)) / jnp.asarray(SCALE)
        distance = jnp.zeros(a.shape[0], jnp.float32)
        for k, features in enumerate(spec.features(name="net")(x)):
            fa, fb = jnp.split(_unit_normalise(features), 2)
            weighted = nn.Dense(1, use_bias=False, precision=lax.Precision.HIGHEST, name=f"lin{k}")((fa - fb) ** 2)
            distance = distance + jnp.mean(weighted, axis=(1, 2, 3))
        return distance


@dataclasses.dataclass(frozen=True)
class Lpips:
    """A loaded LPIPS network: `metric(a, b)` -> per-image distances `[batch]` of two NHWC batches in [-1, 1].
    Usable inside `jit` and `grad` (the variables are constants there: the network is never trained)."""

    net: str
    variables: Mapping[str, Any] = dataclasses.field(repr=False)

    def __call__(self, a: jax.Array, b: jax.Array) -> jax.Array:
        return LPIPS(self.net).apply(self.variables, a, b)


def variables_from_state_dicts(backbone_state: Mapping[str, np.ndarray], lin_state: Mapping[str, np.ndarray],
                               net: str = "vgg") -> dict[str, Any]:
    """torchvision's backbone state dict + the lpips package's lin state dict -> the variables of `LPIPS(net)`
    (float32), checked against the module: a missing, unexpected or misshapen tensor is an error naming it."""
    spec = backbone(net)
    params: dict[str, dict] = {"net": {}}
    unknown = []
    for name, value in backbone_state.items():
        parts = name.split(".")
        if parts[0] == "classifier":  # the ImageNet head: LPIPS reads the features before it
            continue
        if len(parts) != 3 or parts[0] != "features" or parts[2] not in ("weight", "bias"):
            unknown.append(name)
            continue
        value = np.asarray(value, np.float32)
        leaf = ("kernel", porting.conv(value)) if parts[2] == "weight" else ("bias", value)
        params["net"].setdefault(f"features_{parts[1]}", {})[leaf[0]] = leaf[1]
    for name, value in lin_state.items():
        parts = name.split(".")
        if len(parts) != 4 or not parts[0].startswith("lin") or parts[1:] != ["model", "1", "weight"]:
            unknown.append(name)
            continue
        params[parts[0]] = {"kernel": np.asarray(value, np.float32).reshape(value.shape[1], 1)}  # [1, C, 1, 1]
    if unknown:
        raise ValueError(f"{len(unknown)} tensors of the weights are not part of LPIPS-{net}, e.g. {unknown[:3]}: "
                         f"expected torchvision's {spec.backbone_file} and lpips' weights/v0.1/{spec.lin_file}")
    size = max(spec.min_size, 16)
    expected = jax.eval_shape(LPIPS(net).init, jax.random.key(0), *[jnp.zeros((1, size, size, 3))] * 2)["params"]
    want = {jax.tree_util.keystr(p): a.shape for p, a in jax.tree_util.tree_leaves_with_path(expected)}
    got = {jax.tree_util.keystr(p): a.shape for p, a in jax.tree_util.tree_leaves_with_path(params)}
    missing = sorted(set(want) - set(got))
    wrong = sorted(k for k in set(want) & set(got) if want[k] != got[k])
    extra = sorted(set(got) - set(want))
    if missing or wrong or extra:
        raise ValueError(f"The weights do not fit LPIPS-{net} (torchvision's {spec.backbone_file} + lpips' "
                         f"v0.1/{spec.lin_file}): {len(missing)} missing (e.g. {missing[:2]}), wrong shapes "
                         f"{[(k, got[k], want[k]) for k in wrong[:2]]}, unexpected {extra[:2]}")
    return {"params": params}


def check_weight_files(backbone_weights: str | Path, lin_weights: str | Path, net: str = "vgg") -> None:
    """FileNotFoundError naming the missing file, what it is and where it comes from (before any work is done)."""
    spec = backbone(net)
    if not Path(backbone_weights).is_file():
        raise FileNotFoundError(
            f"No LPIPS-{net} backbone weights at {backbone_weights}: LPIPS needs torchvision's ImageNet "
            f"{spec.backbone_file} ({spec.backbone_url}, the file torchvision downloads); download it where the "
            "internet is and pass its path")
    if not Path(lin_weights).is_file():
        raise FileNotFoundError(
            f"No LPIPS-{net} lin weights at {lin_weights}: LPIPS needs the lpips package's weights/v0.1/"
            f"{spec.lin_file}, inside the lpips wheel on PyPI (pip download lpips==0.1.4 --no-deps, then unzip "
            f"lpips/weights/v0.1/{spec.lin_file} from it) or at {LIN_URL.format(file=spec.lin_file)}")


def load_lpips(backbone_weights: str | Path, lin_weights: str | Path, net: str = "vgg") -> Lpips:
    """LPIPS-`net` ("vgg" or "alex") from torchvision's backbone file and the lpips package's v0.1 lin file (or
    their .npz / .safetensors copies)."""
    check_weight_files(backbone_weights, lin_weights, net)
    variables = variables_from_state_dicts(porting.read_state_dict(Path(backbone_weights)),
                                           porting.read_state_dict(Path(lin_weights)), net)
    return Lpips(net, jax.device_put(variables))
