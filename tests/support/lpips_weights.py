"""Random LPIPS weight files in the layouts a user supplies (torchvision's backbone names, lpips' lin names), saved
as `.npz` so that tests of LPIPS's users need no torch."""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jaxgen.metrics import lpips


def write_random_lpips(folder: Path, net: str = "vgg", seed: int = 0) -> tuple[str, str]:
    """(backbone file, lin file) in `folder`: He-scaled convolutions with small random biases (a signal reaches
    every tap) and non-negative lin weights, as the trained ones are."""
    rng = np.random.default_rng(seed)
    size = lpips.backbone(net).min_size
    abstract = jax.eval_shape(lpips.LPIPS(net).init, jax.random.key(0), *[jnp.zeros((1, size, size, 3))] * 2)
    backbone, lin = {}, {}
    for name, leaves in abstract["params"]["net"].items():
        kh, kw, cin, cout = leaves["kernel"].shape
        index = name.removeprefix("features_")
        backbone[f"features.{index}.weight"] = (rng.standard_normal((cout, cin, kh, kw)) *
                                                (2.0 / (cin * kh * kw)) ** 0.5).astype(np.float32)
        backbone[f"features.{index}.bias"] = (0.1 * rng.standard_normal(cout)).astype(np.float32)
    for k, channels in enumerate(lpips.backbone(net).channels):
        lin[f"lin{k}.model.1.weight"] = rng.uniform(0, 0.1, (1, channels, 1, 1)).astype(np.float32)
    np.savez(folder / f"{net}_backbone.npz", **backbone)
    np.savez(folder / f"{net}_lin.npz", **lin)
    return str(folder / f"{net}_backbone.npz"), str(folder / f"{net}_lin.npz")
