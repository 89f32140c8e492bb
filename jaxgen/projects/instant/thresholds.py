"""Pure pseudo-labelling math: InstanT's instance-dependent threshold, distribution alignment, corrected losses.

Everything here is a jit-able function of arrays (no state objects, no randomness), so each piece is tested against
numbers computed by hand. The algorithms in `algorithms.py` combine these with their own running statistics.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

MAX_THRESHOLD = 0.99  # InstanT clips every threshold below 1, so a confident prediction can always pass


def _check_probs(probs: jax.Array, name: str = "probs") -> None:
    if probs.ndim != 2:
        raise ValueError(f"{name} must be [batch, classes]; got shape {probs.shape}")


def instant_threshold(probs: jax.Array, transition: jax.Array, *, p_cutoff: float = 0.9, temperature: float = 0.5,
                      warmed_up: bool | jax.Array = True) -> jax.Array:
    """Per-instance thresholds τ(x) of InstanT, shape [batch].

    `base = p_cutoff · mean_batch(max_c p)` is the warm-up threshold (a batch-adaptive FixMatch). After warm-up,
    `τ(x) = base + T̂[ŷ,ŷ]·q₍₂₎ + Σ_{j≠ŷ} T̂[j,ŷ]·q_j` with `q = softmax(p / temperature)`, ŷ = argmax q and q₍₂₎
    the second-largest entry of q: the more probable it is that a *different* true class j was flipped into ŷ
    (column ŷ of the row-stochastic T̂, rows = true class) and the more ambiguous the instance, the higher its bar.
    τ is clipped to [0, 0.99]; an instance is accepted when `max_c p ≥ τ(x)`.

    `transition` is one matrix [classes, classes] or one per instance [batch, classes, classes]. `warmed_up` may be a
    traced boolean (the step is a traced value inside the trainer's jit).
    """
    _check_probs(probs)
    batch, classes = probs.shape
    if transition.shape not in ((classes, classes), (batch, classes, classes)):
        raise ValueError(f"transition must be [{classes}, {classes}] or [{batch}, {classes}, {classes}] for probs of "
                         f"shape {probs.shape}; got {transition.shape}")
    if classes < 2:
        raise ValueError(f"InstanT needs at least 2 classes (it uses the second-largest probability); got {classes}")
    base = p_cutoff * jnp.mean(jnp.max(probs, axis=-1))
    q = jax.nn.softmax(probs / temperature, axis=-1)
    label = jnp.argmax(q, axis=-1)
    second = jax.lax.top_k(q, 2)[0][:, 1]
    per_instance = jnp.broadcast_to(transition, (batch, classes, classes))
    column = jnp.take_along_axis(per_instance, label[:, None, None], axis=2)[..., 0]  # T̂[j, ŷ] for every j: [B, C]
    diagonal = jnp.take_along_axis(column, label[:, None], axis=1)[:, 0]
    q_label = jnp.take_along_axis(q, label[:, None], axis=1)[:, 0]
    off_diagonal = jnp.sum(column * q, axis=-1) - diagonal * q_label
    corrected = base + diagonal * second + off_diagonal
    return jnp.clip(jnp.where(warmed_up, corrected, base), 0.0, MAX_THRESHOLD)


def align_distribution(probs: jax.Array, p_model: jax.Array, p_target: jax.Array, eps: float = 1e-6) -> jax.Array:
    """ReMixMatch's distribution alignment: `p · p_target / p_model`, renormalised per row."""
    _check_probs(probs)
    aligned = probs * (p_target + eps) / (p_model + eps)
    return aligned / jnp.sum(aligned, axis=-1, keepdims=True)


def masked_cross_entropy(logits: jax.Array, labels: jax.Array, weights: jax.Array) -> jax.Array:
    """`mean_b(w_b · CE_b)` — USB's consistency loss: rejected rows still count in the denominator."""
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels) * weights)


def forward_corrected_cross_entropy(logits: jax.Array, labels: jax.Array, transition: jax.Array,
                                    weights: jax.Array) -> jax.Array:
    """Forward loss correction: `-log (softmax(logits) @ T̂)[label]`, masked like `masked_cross_entropy`.

    The model's clean-class posterior is pushed through T̂ (rows: true class, columns: observed pseudo-label) so
    the loss compares like with like: a noisy pseudo-label with the predicted distribution of noisy labels.
    """
    _check_probs(logits, "logits")
    batch, classes = logits.shape
    if transition.shape not in ((classes, classes), (batch, classes, classes)):
        raise ValueError(f"transition must be [{classes}, {classes}] or [{batch}, {classes}, {classes}] for logits "
                         f"of shape {logits.shape}; got {transition.shape}")
    noisy = jnp.einsum("bi,bij->bj", jax.nn.softmax(logits, axis=-1),
                       jnp.broadcast_to(transition, (batch, classes, classes)))
    nll = -jnp.log(jnp.take_along_axis(noisy, labels[:, None], axis=1)[:, 0] + 1e-12)
    return jnp.mean(nll * weights)


def fairness_loss(logits_strong: jax.Array, mask: jax.Array, p_model: jax.Array, label_hist: jax.Array) -> jax.Array:
    """FreeMatch's self-adaptive fairness term over the accepted rows (USB sign convention: Σ p̃ log q̃).

    p̃ = SumNorm(p_model / label_hist) from the running statistics; q̃ = SumNorm(mean_accepted(softmax) / hist) of
    the strong view's predictions. Zero when nothing is accepted. Classes with an empty histogram get scale 0.
    """
    classes = logits_strong.shape[-1]
    accepted = mask.astype(jnp.float32)
    count = jnp.sum(accepted)
    probs = jax.nn.softmax(logits_strong, axis=-1)
    hist = jnp.zeros(classes).at[jnp.argmax(probs, axis=-1)].add(accepted) / jnp.maximum(count, 1.0)
    safe_inverse = lambda x: jnp.where(x > 0, 1.0 / jnp.where(x > 0, x, 1.0), 0.0)  # noqa: E731
    target = p_model * safe_inverse(label_hist)
    target = target / jnp.sum(target)
    mean_probs = jnp.sum(probs * accepted[:, None], axis=0) / jnp.maximum(count, 1.0)
    estimate = mean_probs * jax.lax.stop_gradient(safe_inverse(hist))
    estimate = estimate / jnp.maximum(jnp.sum(estimate), 1e-12)
    return jnp.where(count > 0, jnp.sum(target * jnp.log(estimate + 1e-12)), 0.0)
