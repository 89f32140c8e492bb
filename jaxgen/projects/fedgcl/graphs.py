"""Graphs as jraph `GraphsTuple`s: built from edge lists or adjacency matrices, padded to size buckets, stacked.

Conventions of this project (every layer and augmentation relies on them):
- `nodes` is the float32 feature matrix `[num_nodes, features]`; `edges` is a float32 weight per directed edge
  `[num_edges]`. An undirected graph stores each edge in both directions with weight 1; padding edges have weight 0,
  and an augmentation removes an edge by setting its weight to 0, so shapes never change inside `jit`.
- Padding is jraph's: `pad_with_graphs` appends one graph holding the padding nodes and edges (its edges join
  padding node to padding node) and empty graphs. Sizes are rounded up to powers of two (`bucket`), so graphs of
  similar size share one compiled program, and every client of a federation is padded to the same bucket so their
  arrays stack along a leading client axis (`stack`) for `vmap`.

jraph is unmaintained since 2022: only its `GraphsTuple`, `batch_np` and `pad_with_graphs` (host-side, dm-tree based)
are used here, never its helpers that call the removed `jax.tree_map`.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jraph
import numpy as np

MIN_BUCKET = 16


class EmptyGraphError(ValueError):
    """A graph (or a client's share of one) has no nodes, or no edges where edges are needed."""


def _check_edges(senders: np.ndarray, receivers: np.ndarray, num_nodes: int, what: str) -> None:
    if senders.shape != receivers.shape or senders.ndim != 1:
        raise ValueError(f"{what}: senders and receivers must be 1-d of one length; got {senders.shape} and "
                         f"{receivers.shape}")
    if senders.size and (min(senders.min(), receivers.min()) < 0 or max(senders.max(), receivers.max()) >= num_nodes):
        raise ValueError(f"{what}: edge endpoints must lie in [0, {num_nodes}); got senders in "
                         f"[{senders.min()}, {senders.max()}], receivers in [{receivers.min()}, {receivers.max()}]")


def undirected_edges(senders, receivers, num_nodes: int) -> tuple[np.ndarray, np.ndarray]:
    """The undirected, unweighted simple graph of an edge list: each pair {u, v} with u != v that appears in either
    direction, stored in both directions, sorted; self-loops and duplicates dropped."""
    senders, receivers = np.asarray(senders, np.int64), np.asarray(receivers, np.int64)
    _check_edges(senders, receivers, num_nodes, "undirected_edges")
    low, high = np.minimum(senders, receivers), np.maximum(senders, receivers)
    pairs = np.unique(low[low != high] * num_nodes + high[low != high])
    low, high = pairs // num_nodes, pairs % num_nodes
    both = np.stack([np.concatenate([low, high]), np.concatenate([high, low])])
    both = both[:, np.lexsort((both[1], both[0]))]
    return both[0].astype(np.int32), both[1].astype(np.int32)


def from_edges(features, senders, receivers, *, name: str = "graph") -> jraph.GraphsTuple:
    """One graph: node features `[N, F]` and directed edges (weight 1 each). Refuses a graph without nodes."""
    features = np.asarray(features, np.float32)
    if features.ndim != 2:
        raise ValueError(f"{name}: node features must be [num_nodes, features]; got shape {features.shape}")
    if features.shape[0] == 0:
        raise EmptyGraphError(f"{name} is empty: it has no nodes (node features of shape {features.shape})")
    senders, receivers = np.asarray(senders, np.int32), np.asarray(receivers, np.int32)
    _check_edges(senders, receivers, features.shape[0], name)
    return jraph.GraphsTuple(nodes=features, edges=np.ones(senders.shape, np.float32), senders=senders,
                             receivers=receivers, n_node=np.array([features.shape[0]], np.int32),
                             n_edge=np.array([senders.size], np.int32), globals=None)


def adjacency(graph: jraph.GraphsTuple) -> np.ndarray:
    """The dense 0/1 adjacency `[N, N]` of one unpadded graph, `A[receiver, sender] = 1` for each edge of weight > 0."""
    n = int(np.sum(graph.n_node))
    a = np.zeros((n, n), np.float32)
    keep = np.asarray(graph.edges) > 0
    a[np.asarray(graph.receivers)[keep], np.asarray(graph.senders)[keep]] = 1.0
    return a


def from_adjacency(features, adjacency_matrix, *, name: str = "graph") -> jraph.GraphsTuple:
    """One graph with an edge `j -> i` for every nonzero `adjacency_matrix[i, j]` (a symmetric matrix gives both
    directions of each undirected edge)."""
    receivers, senders = np.nonzero(np.asarray(adjacency_matrix))
    return from_edges(features, senders, receivers, name=name)


def bucket(size: int, minimum: int = MIN_BUCKET) -> int:
    """The smallest power of two >= max(size, minimum)."""
    return max(minimum, 1 << max(0, int(size) - 1).bit_length())


def padded_sizes(graphs: Sequence[jraph.GraphsTuple]) -> tuple[int, int, int]:
    """(nodes, edges, graphs) buckets that fit each of `graphs` once padded: one spare node for jraph's padding
    graph, one spare graph slot for it."""
    nodes = max(int(np.sum(g.n_node)) for g in graphs) + 1
    edges = max(int(np.sum(g.n_edge)) for g in graphs)
    count = max(len(g.n_node) for g in graphs) + 1
    return bucket(nodes), bucket(edges), count


def pad(graph: jraph.GraphsTuple, sizes: tuple[int, int, int]) -> jraph.GraphsTuple:
    """`graph` padded to exactly (nodes, edges, graphs) = `sizes` (padding edges and nodes are zeros)."""
    n_node, n_edge, n_graph = sizes
    padded = jraph.pad_with_graphs(graph, n_node=n_node, n_edge=n_edge, n_graph=n_graph)
    return _int32_indices(padded)


def _int32_indices(graph: jraph.GraphsTuple) -> jraph.GraphsTuple:
    """jraph's batching computes offsets in int64; JAX runs int32."""
    return graph._replace(**{k: np.asarray(getattr(graph, k), np.int32)
                             for k in ("senders", "receivers", "n_node", "n_edge")})


def batch(graphs: Sequence[jraph.GraphsTuple]) -> jraph.GraphsTuple:
    """Several graphs as one disjoint graph (jraph's host-side batching)."""
    if not graphs:
        raise EmptyGraphError("batch: no graphs to batch")
    return _int32_indices(jraph.batch_np(list(graphs)))


def node_mask(graph: jraph.GraphsTuple, num_real_graphs: int) -> np.ndarray:
    """True for the nodes of the first `num_real_graphs` graphs (the rest is padding)."""
    real = int(np.sum(np.asarray(graph.n_node)[:num_real_graphs]))
    return np.arange(np.asarray(graph.nodes).shape[0]) < real


def stack(graphs: Sequence[jraph.GraphsTuple]) -> jraph.GraphsTuple:
    """Padded graphs of identical shapes stacked along a new leading axis (one row per client)."""
    shapes = {tuple(np.shape(leaf) for leaf in jax.tree.leaves(g)) for g in graphs}
    if len(shapes) != 1:
        raise ValueError(f"stack needs graphs padded to one size; got leaf shapes {sorted(shapes)}")
    return jax.tree.map(lambda *leaves: np.stack(leaves), *graphs)
