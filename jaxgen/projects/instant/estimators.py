"""Estimators of the label-noise transition matrix T̂[i, j] = P(pseudo-label j | true class i); rows sum to 1.

InstanT treats pseudo-labels as noisy labels. Two parametrisations from the release:
- `ClassTransition`: one matrix, `scale·I + sigmoid(W)` off the diagonal, rows normalised. Starting from W = −w_init
  it is close to the identity (pseudo-labels assumed mostly right) and can only move mass off the diagonal slowly.
- `InstanceTransition`: a small CNN maps each weak view to its own matrix, `softmax_rows(logits + scale·I)`.
and two ways to fit them (`TransitionEstimator.fit`):
- "forward" (the release): through the forward-corrected unlabeled loss, jointly with the classifier.
- "labeled" (the paper's estimator): on labeled data, where the true class is known, by maximising
  log T̂(x)[y, ŷ] with ŷ the classifier's current prediction; the unlabeled loss then treats T̂ as a constant.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

FITS = ("forward", "labeled")


class ClassTransition(nn.Module):
    """One class-level transition matrix [C, C]; ignores the images it is given (same call as the instance one)."""

    num_classes: int = 10
    scale: float = 5.0
    w_init: float = 2.0  # W starts at −w_init: off-diagonal mass sigmoid(−2) ≈ 0.12 against `scale` on the diagonal

    @nn.compact
    def __call__(self, images: jax.Array | None = None) -> jax.Array:
        w = self.param("w", nn.initializers.constant(-self.w_init), (self.num_classes, self.num_classes))
        eye = jnp.eye(self.num_classes)
        t = self.scale * eye + jax.nn.sigmoid(w) * (1.0 - eye)
        return t / jnp.sum(t, axis=1, keepdims=True)


class InstanceTransition(nn.Module):
    """One matrix per image [B, C, C] from a small conv net (the release uses a ResNet-18)."""

    num_classes: int = 10
    scale: float = 1.0
    channels: Sequence[int] = (16, 32)

    @nn.compact
    def __call__(self, images: jax.Array) -> jax.Array:
        if images.ndim != 4:
            raise ValueError(f"InstanceTransition needs images [batch, height, width, channels]; got {images.shape}")
        x = images
        for width in self.channels:
            x = nn.avg_pool(nn.gelu(nn.Conv(width, (3, 3))(x)), (2, 2), strides=(2, 2), padding="SAME")
        logits = nn.Dense(self.num_classes * self.num_classes)(jnp.mean(x, axis=(1, 2)))
        logits = logits.reshape(-1, self.num_classes, self.num_classes) + self.scale * jnp.eye(self.num_classes)
        return jax.nn.softmax(logits, axis=-1)


@dataclasses.dataclass(frozen=True)
class TransitionEstimator:
    """A transition module plus how it is fitted ("forward" or "labeled", see the module docstring)."""

    module: nn.Module = dataclasses.field(default_factory=ClassTransition)
    fit: str = "forward"

    def __post_init__(self):
        if self.fit not in FITS:
            raise ValueError(f"TransitionEstimator.fit must be one of {FITS}; got {self.fit!r}")

    def init(self, rng: jax.Array, images: jax.Array):
        return self.module.init(rng, images)["params"]

    def __call__(self, params, images: jax.Array) -> jax.Array:
        return self.module.apply({"params": params}, images)

    def for_loss(self, transition: jax.Array) -> jax.Array:
        """T̂ as the unlabeled loss sees it: trainable through that loss only when fitted by "forward"."""
        return jax.lax.stop_gradient(transition) if self.fit == "labeled" else transition

    def fit_loss(self, params, images_lb: jax.Array, labels_lb: jax.Array, probs_lb: jax.Array) -> jax.Array:
        """The labeled-data objective: mean −log T̂(x)[y, argmax p(x)] (0 for "forward"; no gradient into p)."""
        if self.fit != "labeled":
            return jnp.zeros(())
        transition = jnp.broadcast_to(self(params, images_lb), (labels_lb.shape[0],) + (probs_lb.shape[-1],) * 2)
        predicted = jnp.argmax(jax.lax.stop_gradient(probs_lb), axis=-1)
        picked = transition[jnp.arange(labels_lb.shape[0]), labels_lb, predicted]
        return -jnp.mean(jnp.log(picked + 1e-12))
