"""Edge-level differential privacy: each client perturbs its own adjacency once, before training.

Two neighbouring graphs differ in one undirected edge, i.e. one entry of the upper triangle of the adjacency matrix.
Both mechanisms (as LinkTeller, Wu et al., IEEE S&P 2022, defines them) are epsilon-edge-DP for that neighbouring
relation; everything a client does afterwards — local training, the updates it sends, evaluation — reads only the
perturbed graph, so the whole federated run is epsilon-edge-DP for each client's graph (post-processing).

- `edge_rand`: randomised response on every unordered pair {i, j}: the bit is flipped with probability
  1 / (1 + e^epsilon). The ratio of the probabilities of any output under two neighbouring graphs is at most e^epsilon.
- `lap_graph`: Laplace noise of scale 1 / epsilon_2 on every upper-triangle entry, then the T' largest entries become
  the edges, T' = the true edge count plus Laplace noise of scale 1 / epsilon_1 (rounded, clipped to the possible
  range). LinkTeller spends epsilon_1 = 1 % of epsilon on the count and epsilon_2 = 99 % on the entries.

Both take a symmetric 0/1 adjacency without self-loops (other nonzero values count as edges) and return one, as a
float32 JAX array. epsilon = inf leaves the graph unchanged (no flip, no noise).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

LAPGRAPH_COUNT_SHARE = 0.01


def _check(adjacency, epsilon: float, name: str) -> np.ndarray:
    if not epsilon > 0:  # NaN fails too
        raise ValueError(f"{name}: epsilon must be > 0 (smaller is more private; inf for no noise); got {epsilon}")
    a = np.asarray(adjacency)
    if a.ndim != 2 or a.shape[0] != a.shape[1]:
        raise ValueError(f"{name}: the adjacency must be a square matrix; got shape {a.shape}")
    if not np.array_equal(a != 0, (a != 0).T):
        raise ValueError(f"{name}: the adjacency must be symmetric (an undirected graph); symmetrise a directed one "
                         "first (graphs.undirected_edges)")
    return a != 0


def _symmetric(upper_values: jax.Array, n: int) -> jax.Array:
    """The symmetric 0/1 matrix with these values on the strict upper triangle (row-major order) and 0 elsewhere."""
    rows, cols = np.triu_indices(n, 1)
    upper = jnp.zeros((n, n), jnp.float32).at[rows, cols].set(upper_values.astype(jnp.float32))
    return upper + upper.T


def flip_probability(epsilon: float) -> float:
    """EdgeRand's per-pair flip probability 1 / (1 + e^epsilon)."""
    return 1.0 / (1.0 + math.exp(epsilon)) if math.isfinite(epsilon) else 0.0


def edge_rand(adjacency, epsilon: float, rng: jax.Array) -> jax.Array:
    """EdgeRand: each pair {i < j} flipped independently with probability 1 / (1 + e^epsilon)."""
    a = _check(adjacency, epsilon, "edge_rand")
    n = a.shape[0]
    bits = jnp.asarray(a[np.triu_indices(n, 1)])
    flips = jax.random.bernoulli(rng, flip_probability(epsilon), bits.shape)
    return _symmetric(bits ^ flips, n)


def noisy_edge_count(adjacency, epsilon: float, rng: jax.Array) -> jax.Array:
    """The number of undirected edges plus Laplace(1 / epsilon) noise, rounded and clipped to [0, n(n-1)/2]."""
    a = _check(adjacency, epsilon, "noisy_edge_count")
    n = a.shape[0]
    scale = 0.0 if math.isinf(epsilon) else 1.0 / epsilon
    noisy = np.triu(a, 1).sum() + scale * jax.random.laplace(rng)
    return jnp.clip(jnp.round(noisy), 0, n * (n - 1) // 2).astype(jnp.int32)


def lap_graph(adjacency, epsilon: float, rng: jax.Array, count_share: float = LAPGRAPH_COUNT_SHARE) -> jax.Array:
    """LapGraph: `count_key, entries_key = jax.random.split(rng)`; the edge count is privatised with
    `count_share * epsilon` (`noisy_edge_count`), the entries with the rest, and the top-count noisy entries kept."""
    a = _check(adjacency, epsilon, "lap_graph")
    if not 0 < count_share < 1:
        raise ValueError(f"lap_graph: count_share must be in (0, 1); got {count_share}")
    n = a.shape[0]
    count_key, entries_key = jax.random.split(rng)
    count = noisy_edge_count(a, count_share * epsilon, count_key)
    entries = jnp.asarray(a[np.triu_indices(n, 1)], jnp.float32)
    scale = 0.0 if math.isinf(epsilon) else 1.0 / ((1 - count_share) * epsilon)
    noisy = entries + scale * jax.random.laplace(entries_key, entries.shape)
    rank = jnp.argsort(jnp.argsort(-noisy, stable=True), stable=True)  # 0 = largest
    return _symmetric(rank < count, n)


MECHANISMS: dict[str, Callable[[object, float, jax.Array], jax.Array]] = {"edge_rand": edge_rand,
                                                                         "lap_graph": lap_graph}


def guarantee(mechanism: str | None, epsilon: float | None) -> str:
    """One line stating what a run's edge perturbation guarantees (written into run_info.json)."""
    if mechanism is None or epsilon is None or math.isinf(epsilon):
        return "no edge-level privacy: clients train on their true edges (epsilon = inf)"
    detail = {"edge_rand": f"randomised response, flip probability {flip_probability(epsilon):.4g}",
              "lap_graph": f"Laplace noise on entries (epsilon {1 - LAPGRAPH_COUNT_SHARE:g} x) and on the edge count "
                           f"({LAPGRAPH_COUNT_SHARE:g} x), top-count entries kept"}[mechanism]
    return (f"{epsilon:g}-edge-DP for each client's graph by {mechanism} ({detail}); training and evaluation read "
            "only the perturbed graphs")
