"""Classifiers for the SSL suite: the shared small CNN of `jaxgen.nn.classifiers` (CPU-sized runs) and WRN-28-2 (the
SSL benchmarks' backbone, 1.5M parameters, laid out like USB's `wrn_28_2`: pre-activation blocks, leaky ReLU 0.1,
BatchNorm momentum 0.001; unlike USB, a channel-changing block's first conv also sees the activated input).

Both map float images [B, H, W, C] in [-1, 1] to logits and take `train=` (BatchNorm batch statistics and dropout).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxgen.nn.classifiers import CNNClassifier

__all__ = ["CNNClassifier", "WideResNet"]


def _leaky_relu(x: jax.Array) -> jax.Array:
    return nn.leaky_relu(x, negative_slope=0.1)


class _Block(nn.Module):
    """Pre-activation residual block; a 1x1 projection of the activated input when the shape changes."""

    channels: int
    stride: int

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        norm = lambda name: nn.BatchNorm(use_running_average=not train, momentum=0.999, epsilon=1e-3,  # noqa: E731
                                         name=name)
        pre = _leaky_relu(norm("bn1")(x))
        h = nn.Conv(self.channels, (3, 3), self.stride, padding=1, use_bias=False, name="conv1")(pre)
        h = nn.Conv(self.channels, (3, 3), 1, padding=1, use_bias=False, name="conv2")(_leaky_relu(norm("bn2")(h)))
        if x.shape[-1] == self.channels and self.stride == 1:
            return x + h
        return nn.Conv(self.channels, (1, 1), self.stride, use_bias=False, name="shortcut")(pre) + h


class WideResNet(nn.Module):
    """WRN-depth-widen; `WideResNet()` is WRN-28-2."""

    num_classes: int = 10
    depth: int = 28
    widen: int = 2

    @nn.compact
    def __call__(self, images: jax.Array, *, train: bool = False) -> jax.Array:
        if (self.depth - 4) % 6:
            raise ValueError(f"WideResNet depth must be 6n + 4; got {self.depth}")
        blocks = (self.depth - 4) // 6
        x = nn.Conv(16, (3, 3), padding=1, use_bias=False)(images)
        for width, stride in zip((16, 32, 64), (1, 2, 2)):
            for i in range(blocks):
                x = _Block(width * self.widen, stride if i == 0 else 1)(x, train)
        x = _leaky_relu(nn.BatchNorm(use_running_average=not train, momentum=0.999, epsilon=1e-3)(x))
        return nn.Dense(self.num_classes)(jnp.mean(x, axis=(1, 2)))
