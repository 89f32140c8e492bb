"""FID's Inception-v3 in Linen: the network of TensorFlow's FID (the 2015-12-05 ImageNet graph) as pytorch-fid ports
it, returning the 2,048 pool features that FID compares, with weights read from a file the user supplies.

Which network and weights. FID is only comparable across papers when computed with one particular Inception: the
`inception-2015-12-05` graph of TensorFlow's original FID code (TTUR), not torchvision's or Keras' ImageNet Inception
(which differ by about 1.5 FID). pytorch-fid ships those weights as a PyTorch state dict,
`pt_inception-2015-12-05-6726825d.pth`
(https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth),
for torchvision's Inception-v3 layout with four changes that reproduce the TF graph: average pools that do not count
padding, in Mixed_5b-5d, 6b-6e and 7b, and a max pool in Mixed_7c's pool branch (a quirk of that graph), and 1,008
classes. This module mirrors that layout (module names as in the state dict: `Mixed_5b/branch5x5_2/conv`, ...) and
reads that file: `.pth` through torch (`weights_only`, so torch must be installed to read it), or the same tensors
saved as `.npz` or `.safetensors` under the same names, which need no torch. clean-fid's TorchScript file
(`inception-2015-12-05.pt`) holds the same graph in another layout and is not read here. Nothing is downloaded.

Input handling follows pytorch-fid: uint8 images -> [0, 1] -> bilinear resize to 299 × 299 (no antialiasing, as
`F.interpolate(..., mode="bilinear", align_corners=False)`) -> [-1, 1]. clean-fid resizes with PIL's bicubic
filter instead, which changes FID values somewhat; numbers from here compare with pytorch-fid's. Convolutions run in
float32 at full precision (on GPUs XLA would otherwise use TF32), so features do not depend on the card.

Proof: `tests/metrics/inception_vs_reference_test.py` builds pytorch-fid's network with random weights, loads them
through `load_fid_inception` and compares the pool features.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxgen.nn import porting

FID_WEIGHTS_NAME = "pt_inception-2015-12-05-6726825d.pth"
FID_WEIGHTS_URL = f"https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/{FID_WEIGHTS_NAME}"
INPUT_SIZE = 299
FEATURES = 2048

Padding = tuple[tuple[int, int], tuple[int, int]]


def _same(kernel: tuple[int, int]) -> Padding:
    """The padding that keeps the size at stride 1 for an odd kernel (torchvision's `padding=k // 2`)."""
    return ((kernel[0] // 2, kernel[0] // 2), (kernel[1] // 2, kernel[1] // 2))


class BasicConv(nn.Module):
    """Convolution without bias -> BatchNorm (running statistics, ε = 1e-3) -> ReLU: torchvision's BasicConv2d."""

    features: int
    kernel: tuple[int, int] = (1, 1)
    strides: tuple[int, int] = (1, 1)
    padding: Padding = ((0, 0), (0, 0))

    @nn.compact
    def __call__(self, x):
        x = nn.Conv(self.features, self.kernel, self.strides, padding=self.padding, use_bias=False,
                    precision=lax.Precision.HIGHEST, name="conv")(x)
        x = nn.BatchNorm(use_running_average=True, epsilon=1e-3, name="bn")(x)
        return nn.relu(x)


def _conv(features, kernel=(1, 1), strides=(1, 1), *, name, same=True):
    return BasicConv(features, kernel, strides, _same(kernel) if same else ((0, 0), (0, 0)), name=name)


def _avg_pool_same(x):
    """3x3 stride-1 average over the window's real pixels only (TF's pool; torch's count_include_pad=False)."""
    return nn.avg_pool(x, (3, 3), (1, 1), padding=((1, 1), (1, 1)), count_include_pad=False)


def _max_pool_reduce(x):
    return nn.max_pool(x, (3, 3), (2, 2))


class InceptionA(nn.Module):
    pool_features: int

    @nn.compact
    def __call__(self, x):
        b1 = _conv(64, name="branch1x1")(x)
        b5 = _conv(64, (5, 5), name="branch5x5_2")(_conv(48, name="branch5x5_1")(x))
        b3 = _conv(64, name="branch3x3dbl_1")(x)
        b3 = _conv(96, (3, 3), name="branch3x3dbl_3")(_conv(96, (3, 3), name="branch3x3dbl_2")(b3))
        pool = _conv(self.pool_features, name="branch_pool")(_avg_pool_same(x))
        return jnp.concatenate([b1, b5, b3, pool], axis=-1)


class InceptionB(nn.Module):
    """The 35 -> 17 reduction."""

    @nn.compact
    def __call__(self, x):
        b3 = _conv(384, (3, 3), (2, 2), name="branch3x3", same=False)(x)
        b3d = _conv(96, (3, 3), name="branch3x3dbl_2")(_conv(64, name="branch3x3dbl_1")(x))
        b3d = _conv(96, (3, 3), (2, 2), name="branch3x3dbl_3", same=False)(b3d)
        return jnp.concatenate([b3, b3d, _max_pool_reduce(x)], axis=-1)


class InceptionC(nn.Module):
    """Factorised 7x7 convolutions (1x7 then 7x1) at 17 x 17."""

    channels_7x7: int

    @nn.compact
    def __call__(self, x):
        c7 = self.channels_7x7
        b1 = _conv(192, name="branch1x1")(x)
        b7 = _conv(c7, name="branch7x7_1")(x)
        b7 = _conv(c7, (1, 7), name="branch7x7_2")(b7)
        b7 = _conv(192, (7, 1), name="branch7x7_3")(b7)
        bd = _conv(c7, name="branch7x7dbl_1")(x)
        for index, (kernel, features) in enumerate([((7, 1), c7), ((1, 7), c7), ((7, 1), c7), ((1, 7), 192)], 2):
            bd = _conv(features, kernel, name=f"branch7x7dbl_{index}")(bd)
        pool = _conv(192, name="branch_pool")(_avg_pool_same(x))
        return jnp.concatenate([b1, b7, bd, pool], axis=-1)


class InceptionD(nn.Module):
    """The 17 -> 8 reduction."""

    @nn.compact
    def __call__(self, x):
        b3 = _conv(320, (3, 3), (2, 2), name="branch3x3_2", same=False)(_conv(192, name="branch3x3_1")(x))
        b7 = _conv(192, name="branch7x7x3_1")(x)
        b7 = _conv(192, (7, 1), name="branch7x7x3_3")(_conv(192, (1, 7), name="branch7x7x3_2")(b7))
        b7 = _conv(192, (3, 3), (2, 2), name="branch7x7x3_4", same=False)(b7)
        return jnp.concatenate([b3, b7, _max_pool_reduce(x)], axis=-1)


class InceptionE(nn.Module):
    """Expanded filter banks at 8 x 8. `max_pool`: the pool branch takes a 3x3 max instead of the average (FID's
    graph does so in its last block, Mixed_7c)."""

    max_pool: bool = False

    @nn.compact
    def __call__(self, x):
        b1 = _conv(320, name="branch1x1")(x)
        b3 = _conv(384, name="branch3x3_1")(x)
        b3 = jnp.concatenate([_conv(384, (1, 3), name="branch3x3_2a")(b3),
                              _conv(384, (3, 1), name="branch3x3_2b")(b3)], axis=-1)
        bd = _conv(384, (3, 3), name="branch3x3dbl_2")(_conv(448, name="branch3x3dbl_1")(x))
        bd = jnp.concatenate([_conv(384, (1, 3), name="branch3x3dbl_3a")(bd),
                              _conv(384, (3, 1), name="branch3x3dbl_3b")(bd)], axis=-1)
        pooled = nn.max_pool(x, (3, 3), (1, 1), padding=((1, 1), (1, 1))) if self.max_pool else _avg_pool_same(x)
        pool = _conv(192, name="branch_pool")(pooled)
        return jnp.concatenate([b1, b3, bd, pool], axis=-1)


class FIDInceptionV3(nn.Module):
    """Images NHWC float in [-1, 1] (at least 75 × 75; FID feeds 299 × 299) -> pool features `[batch, 2048]`."""

    @nn.compact
    def __call__(self, x):
        if min(x.shape[1:3]) < 75:
            raise ValueError(f"Inception-v3 needs images of at least 75 x 75 pixels; got {x.shape} (NHWC)")
        x = _conv(32, (3, 3), (2, 2), name="Conv2d_1a_3x3", same=False)(x)
        x = _conv(32, (3, 3), name="Conv2d_2a_3x3", same=False)(x)
        x = _conv(64, (3, 3), name="Conv2d_2b_3x3")(x)
        x = _max_pool_reduce(x)
        x = _conv(80, name="Conv2d_3b_1x1")(x)
        x = _conv(192, (3, 3), name="Conv2d_4a_3x3", same=False)(x)
        x = _max_pool_reduce(x)
        for name, pool_features in (("Mixed_5b", 32), ("Mixed_5c", 64), ("Mixed_5d", 64)):
            x = InceptionA(pool_features, name=name)(x)
        x = InceptionB(name="Mixed_6a")(x)
        for name, channels in (("Mixed_6b", 128), ("Mixed_6c", 160), ("Mixed_6d", 160), ("Mixed_6e", 192)):
            x = InceptionC(channels, name=name)(x)
        x = InceptionD(name="Mixed_7a")(x)
        x = InceptionE(name="Mixed_7b")(x)
        x = InceptionE(max_pool=True, name="Mixed_7c")(x)
        return jnp.mean(x, axis=(1, 2))


def preprocess(images: jax.Array, resize: bool = True) -> jax.Array:
    """uint8 NHWC images (RGB; grey is repeated to 3 channels) -> float32 in [-1, 1], resized to 299 × 299 as
    pytorch-fid does (bilinear, half-pixel centres, no antialiasing)."""
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise ValueError(f"FID's Inception takes images [batch, height, width, 1 or 3]; got shape {images.shape}")
    x = images.astype(jnp.float32) / 255.0
    if x.shape[-1] == 1:
        x = jnp.repeat(x, 3, axis=-1)
    if resize:
        x = jax.image.resize(x, (x.shape[0], INPUT_SIZE, INPUT_SIZE, 3), "bilinear", antialias=False)
    return 2.0 * x - 1.0


# state-dict suffix -> (variable collection, Linen name, conversion)
_LEAVES = {
    "conv.weight": ("params", ("conv", "kernel"), lambda w: w.transpose(2, 3, 1, 0)),  # [O, I, kh, kw] -> HWIO
    "bn.weight": ("params", ("bn", "scale"), lambda w: w),
    "bn.bias": ("params", ("bn", "bias"), lambda w: w),
    "bn.running_mean": ("batch_stats", ("bn", "mean"), lambda w: w),
    "bn.running_var": ("batch_stats", ("bn", "var"), lambda w: w),
}
_UNUSED = ("fc.weight", "fc.bias")  # the 1,008-class head: FID reads the pool features before it


def variables_from_state_dict(state_dict: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """pytorch-fid's state dict -> the variables of `FIDInceptionV3` (float32), checked name by name and shape by
    shape against the module, so a tensor the table forgot or a truncated file is an error, not silent zeros."""
    expected = jax.eval_shape(FIDInceptionV3().init, jax.random.key(0), jnp.zeros((1, 75, 75, 3)))
    variables: dict[str, dict] = {"params": {}, "batch_stats": {}}
    unknown = []
    for name, value in state_dict.items():
        if name in _UNUSED or name.endswith("num_batches_tracked"):
            continue
        module_path, _, leaf = name.rpartition(".")
        module_path, _, layer = module_path.rpartition(".")
        key = f"{layer}.{leaf}"
        if key not in _LEAVES:
            unknown.append(name)
            continue
        collection, (sub, variable), convert = _LEAVES[key]
        node = variables[collection]
        for part in (*module_path.split("."), sub):
            node = node.setdefault(part, {})
        node[variable] = np.asarray(convert(np.asarray(value)), np.float32)
    if unknown:
        raise ValueError(f"{len(unknown)} tensors of the weights are not part of FID's Inception-v3, e.g. "
                         f"{unknown[:3]}: is this pytorch-fid's {FID_WEIGHTS_NAME}?")
    want = {jax.tree_util.keystr(p): a.shape for p, a in jax.tree_util.tree_leaves_with_path(expected)}
    got = {jax.tree_util.keystr(p): a.shape for p, a in jax.tree_util.tree_leaves_with_path(variables)}
    missing = sorted(set(want) - set(got))
    wrong = sorted(k for k in set(want) & set(got) if want[k] != got[k])
    if missing or wrong or set(got) - set(want):
        raise ValueError(f"The weights do not fit FID's Inception-v3: {len(missing)} missing (e.g. {missing[:2]}), "
                         f"wrong shapes {[(k, got[k], want[k]) for k in wrong[:2]]}, unexpected "
                         f"{sorted(set(got) - set(want))[:2]}")
    return variables


def load_fid_inception(path: str | Path) -> dict[str, Any]:
    """The variables of `FIDInceptionV3` from pytorch-fid's weights file (or its .npz / .safetensors copy)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No Inception weights at {path}: FID needs pytorch-fid's {FID_WEIGHTS_NAME} "
                                f"({FID_WEIGHTS_URL}); download it where the internet is and pass its path")
    return variables_from_state_dict(porting.read_state_dict(path))
