"""Masked classification metrics: the padded rows of the last eval batch never count."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def cross_entropy(logits: jax.Array, labels: jax.Array, valid: jax.Array | None = None) -> jax.Array:
    """Mean softmax cross-entropy over valid rows."""
    per_example = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels)
    if valid is None:
        return per_example.mean()
    weights = valid.astype(jnp.float32)
    return jnp.sum(per_example * weights) / jnp.maximum(weights.sum(), 1.0)


def confusion_matrix(predictions: jax.Array, labels: jax.Array, num_classes: int,
                     valid: jax.Array | None = None) -> jax.Array:
    """counts[true, predicted] over valid rows."""
    weights = jnp.ones_like(labels, jnp.int32) if valid is None else valid.astype(jnp.int32)
    flat = labels * num_classes + predictions
    return jnp.bincount(flat, weights=weights, length=num_classes * num_classes).reshape(num_classes, num_classes)
