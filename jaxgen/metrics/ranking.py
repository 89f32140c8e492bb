"""Ranking metrics for recommendation (leave-one-out or sampled candidates): HR@k, NDCG@k and MRR.

Every function takes `scores [batch, items]` and the column of the one relevant item per row, `target [batch]` (for a
sampled protocol put the positive in column 0 and pass zeros), and returns one value per row so the caller can drop
padding rows before averaging. `exclude [batch, items]` (optional, boolean) removes items from the ranking, e.g. those
already seen in training; the target itself is never excluded.

Ties rank pessimistically: the target ranks below every other item with the same score, so a model that scores every
item alike gets the worst rank, not the best.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def target_rank(scores: jax.Array, target: jax.Array, exclude: jax.Array | None = None) -> jax.Array:
    """0-based rank of the target among the items of its row (0: ranked first)."""
    if scores.ndim != 2 or target.shape != scores.shape[:1]:
        raise ValueError(f"Ranking needs scores [batch, items] and target [batch]; got {scores.shape} and "
                         f"{target.shape}")
    if exclude is not None and exclude.shape != scores.shape:
        raise ValueError(f"exclude has shape {exclude.shape}; expected the shape of scores {scores.shape}")
    target_score = jnp.take_along_axis(scores, target[:, None], axis=1)
    others = jnp.arange(scores.shape[1])[None, :] != target[:, None]
    if exclude is not None:
        others &= ~exclude
    return jnp.sum(others & (scores >= target_score), axis=1)


def hit_rate_at_k(scores: jax.Array, target: jax.Array, k: int, exclude: jax.Array | None = None) -> jax.Array:
    """1 where the target is among the top `k`, else 0."""
    return (target_rank(scores, target, exclude) < k).astype(jnp.float32)


def ndcg_at_k(scores: jax.Array, target: jax.Array, k: int, exclude: jax.Array | None = None) -> jax.Array:
    """`1 / log2(rank + 2)` where the target is among the top `k` (one relevant item: the ideal DCG is 1), else 0."""
    rank = target_rank(scores, target, exclude)
    return jnp.where(rank < k, 1.0 / jnp.log2(rank.astype(jnp.float32) + 2.0), 0.0)


def mrr(scores: jax.Array, target: jax.Array, exclude: jax.Array | None = None) -> jax.Array:
    """Reciprocal rank `1 / (rank + 1)` of the target."""
    return 1.0 / (target_rank(scores, target, exclude).astype(jnp.float32) + 1.0)
