"""Ranking metrics for next-item recommendation: HR@k, NDCG@k and MRR@k over a full ranking (or sampled candidates).

Every function takes `scores [users, items]` and the column of each user's one relevant item, `targets [users]` (for
a sampled protocol put the positive in column 0 and pass zeros), and returns one value per user, so the caller can
drop padding rows before averaging; the metric is the mean over users. `exclude [users, items]` (optional, boolean)
takes items out of the ranking, e.g. those the user already interacted with (`seen_items`); the target itself is
never excluded, so a protocol that masks the history cannot hide a repeated target.

Ties rank pessimistically (broken against the target): the target ranks below every other item with the same score,
so a model that scores every item alike gets the worst rank, not the best, and a NaN target score ranks last.

MRR@k is RecBole's: the reciprocal rank where the target is among the top k, else 0 (`k=None`: no cut-off).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp


def target_rank(scores: jax.Array, targets: jax.Array, exclude: jax.Array | None = None) -> jax.Array:
    """0-based rank of each target among the items of its row (0: ranked first)."""
    if scores.ndim != 2 or targets.shape != scores.shape[:1]:
        raise ValueError(f"Ranking needs scores [users, items] and targets [users]; got {scores.shape} and "
                         f"{targets.shape}")
    if exclude is not None and exclude.shape != scores.shape:
        raise ValueError(f"exclude has shape {exclude.shape}; expected the shape of scores {scores.shape}")
    target_score = jnp.take_along_axis(scores, targets[:, None], axis=1)
    others = jnp.arange(scores.shape[1])[None, :] != targets[:, None]
    if exclude is not None:
        others &= ~exclude
    ahead = (scores >= target_score) | jnp.isnan(target_score)
    return jnp.sum(others & ahead, axis=1)


def hit_rate(scores: jax.Array, targets: jax.Array, k: int, exclude: jax.Array | None = None) -> jax.Array:
    """1 where the target is among the top `k`, else 0."""
    return hit_rate_from_rank(target_rank(scores, targets, exclude), k)


def ndcg(scores: jax.Array, targets: jax.Array, k: int, exclude: jax.Array | None = None) -> jax.Array:
    """`1 / log2(rank + 2)` where the target is among the top `k` (one relevant item: the ideal DCG is 1), else 0."""
    return ndcg_from_rank(target_rank(scores, targets, exclude), k)


def mrr(scores: jax.Array, targets: jax.Array, k: int | None, exclude: jax.Array | None = None) -> jax.Array:
    """`1 / (rank + 1)` where the target is among the top `k`, else 0."""
    return mrr_from_rank(target_rank(scores, targets, exclude), k)


def hit_rate_from_rank(rank: jax.Array, k: int) -> jax.Array:
    return (rank < k).astype(jnp.float32)


def ndcg_from_rank(rank: jax.Array, k: int) -> jax.Array:
    return jnp.where(rank < k, 1.0 / jnp.log2(rank.astype(jnp.float32) + 2.0), 0.0)


def mrr_from_rank(rank: jax.Array, k: int | None) -> jax.Array:
    reciprocal = 1.0 / (rank.astype(jnp.float32) + 1.0)
    return reciprocal if k is None else jnp.where(rank < k, reciprocal, 0.0)


METRICS = {"hr": hit_rate_from_rank, "ndcg": ndcg_from_rank, "mrr": mrr_from_rank}


def metrics_at(rank: jax.Array, ks: Sequence[int] = (5, 10, 20)) -> dict[str, jax.Array]:
    """`{"hr@5": per-user values, "ndcg@5": ..., "mrr@5": ..., "hr@10": ...}` from one ranking: every metric at every
    cut-off, the rank computed once."""
    return {f"{name}@{k}": metric(rank, k) for k in ks for name, metric in METRICS.items()}


def seen_items(history: jax.Array, num_columns: int, pad: int | None = 0) -> jax.Array:
    """`[users, num_columns]` booleans: True at the items of each user's `history [users, positions]` (item ids are
    columns), for `exclude`. Padding entries (`pad`) mark nothing."""
    marked = jnp.zeros((history.shape[0], num_columns), bool)
    marked = marked.at[jnp.arange(history.shape[0])[:, None], history].set(True)
    if pad is not None:
        marked = marked.at[:, pad].set(False)
    return marked
