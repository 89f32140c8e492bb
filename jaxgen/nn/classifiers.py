"""Small MLP and CNN image classifiers whose weights carry logical axis names, so fsdp/tensor meshes shard them.

The quickstart trains them; InstanT uses the CNN for its CPU-sized runs; the diffusion sample-quality evaluators
judge generated images with one (`jaxgen.diffusion.sample_quality`). Each sows the input of its last Dense layer as
`intermediates/features` (`apply(..., mutable=["intermediates"])` returns it): the feature space of FD-classifier.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp


class MLPClassifier(nn.Module):
    """Flattens the image, then Dense -> GELU blocks -> logits."""

    num_classes: int = 10
    hidden: Sequence[int] = (256, 256)
    dropout: float = 0.0

    @nn.compact
    def __call__(self, images: jax.Array, *, train: bool = False) -> jax.Array:
        x = images.reshape(images.shape[0], -1)
        for width in self.hidden:
            x = nn.Dense(width, kernel_init=nn.with_logical_partitioning(nn.initializers.lecun_normal(), ("embed", "mlp")))(x)
            x = nn.gelu(x)
            x = nn.Dropout(self.dropout, deterministic=not train)(x)
        self.sow("intermediates", "features", x)
        return nn.Dense(self.num_classes,
                        kernel_init=nn.with_logical_partitioning(nn.initializers.lecun_normal(), ("mlp", "classes")))(x)


class CNNClassifier(nn.Module):
    """Two 3x3 conv blocks with 2x2 average pooling, then a Dense head."""

    num_classes: int = 10
    channels: Sequence[int] = (32, 64)
    dropout: float = 0.0

    @nn.compact
    def __call__(self, images: jax.Array, *, train: bool = False) -> jax.Array:
        x = images
        for width in self.channels:
            x = nn.Conv(width, (3, 3),
                        kernel_init=nn.with_logical_partitioning(nn.initializers.lecun_normal(),
                                                                 (None, None, "conv_in", "conv_out")))(x)
            x = nn.gelu(x)
            x = nn.avg_pool(x, (2, 2), strides=(2, 2), padding="SAME")
        x = jnp.mean(x, axis=(1, 2))
        self.sow("intermediates", "features", x)
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
        return nn.Dense(self.num_classes)(x)
