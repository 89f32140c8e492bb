"""Graph contrastive learning: the views and losses that DP-FedGCL adds to the supervised loss (times lambda).

Why it should help: edge-level DP perturbs graph proximity, which is exactly what contrastive views perturb (dropped,
added, rewired edges); an encoder trained to agree across such views leans less on any single edge.

- Node tasks, GRACE (Zhu et al. 2020): two views of a client's graph, each with edges dropped (rate `edge_drop[v]`)
  and feature columns masked (rate `feature_mask[v]`); the projected node embeddings of the two views are pulled
  together node by node with GRACE's InfoNCE: for node i of view u, the positive is node i of view v, the negatives
  are every other node of both views (`grace_loss`).
- Graph tasks, GraphCL (You et al. 2020): each view applies one augmentation drawn at random from node dropping,
  edge perturbation, attribute masking and subgraph; the projected graph embeddings go through NT-Xent (SimCLR's
  normalised temperature-scaled cross entropy over the 2B views of a batch, `nt_xent`).

All views keep the padded shapes: a removed edge gets weight 0, a removed node leaves `node_mask` and loses its
edges; losses only count real (masked-in) nodes or graphs. Deviations from the references, chosen for fixed shapes:
masked attributes are set to 0 (GraphCL draws Gaussian noise), edge perturbation rewires an edge's receiver to a
random node of the same graph (GraphCL removes and adds edges in equal number), and subgraph keeps the nodes within
`subgraph_hops` hops of a random seed node (GraphCL grows a random walk).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import jraph

# ======================================================================================================================
# Views.
# ======================================================================================================================


def drop_edges(graph: jraph.GraphsTuple, rate: float, key: jax.Array) -> jraph.GraphsTuple:
    """Each edge independently removed (weight 0) with probability `rate`."""
    keep = jax.random.bernoulli(key, 1.0 - rate, graph.edges.shape)
    return graph._replace(edges=graph.edges * keep)


def mask_feature_columns(graph: jraph.GraphsTuple, rate: float, key: jax.Array) -> jraph.GraphsTuple:
    """Each feature dimension zeroed for every node with probability `rate` (GRACE's masking)."""
    keep = jax.random.bernoulli(key, 1.0 - rate, graph.nodes.shape[-1:])
    return graph._replace(nodes=graph.nodes * keep)


def _without_nodes(graph: jraph.GraphsTuple, node_mask: jax.Array, keep: jax.Array):
    """`graph` and `node_mask` with the nodes where `keep` is False removed: mask 0, features 0, edges weight 0."""
    keep = keep & (node_mask > 0)
    edges = graph.edges * keep[graph.senders] * keep[graph.receivers]
    return graph._replace(nodes=graph.nodes * keep[:, None], edges=edges), keep.astype(node_mask.dtype)


def drop_nodes(graph, node_mask, rate: float, key):
    """GraphCL's node dropping: each node removed with probability `rate`, with its edges."""
    return _without_nodes(graph, node_mask, jax.random.bernoulli(key, 1.0 - rate, node_mask.shape))


def _graph_of_each_node(graph: jraph.GraphsTuple) -> jax.Array:
    n = graph.nodes.shape[0]
    return jnp.repeat(jnp.arange(graph.n_node.shape[0]), graph.n_node, total_repeat_length=n)


def perturb_edges(graph, node_mask, rate: float, key):
    """GraphCL's edge perturbation: each edge, with probability `rate`, gets a new receiver drawn uniformly from the
    nodes of its own graph (a removed edge and an added one)."""
    choose, target = jax.random.split(key)
    graph_of_edge = _graph_of_each_node(graph)[graph.senders]
    first_node = jnp.cumsum(graph.n_node) - graph.n_node
    random_receiver = first_node[graph_of_edge] + jnp.floor(
        jax.random.uniform(target, graph.senders.shape) * graph.n_node[graph_of_edge]).astype(graph.receivers.dtype)
    rewire = jax.random.bernoulli(choose, rate, graph.senders.shape)
    return graph._replace(receivers=jnp.where(rewire, random_receiver, graph.receivers)), node_mask


def mask_attributes(graph, node_mask, rate: float, key):
    """GraphCL's attribute masking: the features of each node zeroed with probability `rate`."""
    keep = jax.random.bernoulli(key, 1.0 - rate, node_mask.shape)
    return graph._replace(nodes=graph.nodes * keep[:, None]), node_mask


def subgraph(graph, node_mask, hops: int, key):
    """GraphCL's subgraph, breadth-first: per graph, a random real node and the nodes within `hops` hops of it."""
    segments = _graph_of_each_node(graph)
    num_graphs = graph.n_node.shape[0]
    score = jnp.where(node_mask > 0, jax.random.uniform(key, node_mask.shape), -1.0)
    best = jax.ops.segment_max(score, segments, num_segments=num_graphs)
    reached = (score == best[segments]) & (node_mask > 0)
    present = graph.edges > 0
    for _ in range(hops):
        incoming = jax.ops.segment_max((reached[graph.senders] & present).astype(jnp.int32), graph.receivers,
                                       num_segments=node_mask.shape[0])
        reached = reached | (incoming > 0)
    return _without_nodes(graph, node_mask, reached)


# ======================================================================================================================
# Losses.
# ======================================================================================================================


def _unit(x: jax.Array) -> jax.Array:
    """Rows scaled to norm 1; a zero row (a padding node's embedding) stays 0 with a finite gradient, which
    `x / norm(x)` would not give."""
    return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), 1e-24))


def _cosine(a: jax.Array, b: jax.Array) -> jax.Array:
    return _unit(a) @ _unit(b).T


def _grace_side(u: jax.Array, v: jax.Array, mask: jax.Array, temperature: float) -> jax.Array:
    """-log(e^{s(u_i, v_i)} / (sum_k e^{s(u_i, v_k)} + sum_{k != i} e^{s(u_i, u_k)})) per node, s = cos / tau, the
    sums over masked-in nodes k (in log space: a padding row stays finite, so its zero weight keeps gradients
    finite)."""
    between, within = _cosine(u, v) / temperature, _cosine(u, u) / temperature
    weights = jnp.concatenate([jnp.broadcast_to(mask[None, :], between.shape),
                               mask[None, :] * (1.0 - jnp.eye(mask.shape[0], dtype=mask.dtype))], axis=1)
    log_denominator = jax.nn.logsumexp(jnp.concatenate([between, within], axis=1), axis=1, b=weights)
    return log_denominator - jnp.diagonal(between)


def grace_loss(z1: jax.Array, z2: jax.Array, mask: jax.Array, temperature: float) -> jax.Array:
    """GRACE's symmetric InfoNCE over the nodes where `mask` is 1 (`z`: projected embeddings of the two views)."""
    mask = mask.astype(z1.dtype)
    per_node = 0.5 * (_grace_side(z1, z2, mask, temperature) + _grace_side(z2, z1, mask, temperature))
    return jnp.sum(per_node * mask) / jnp.maximum(mask.sum(), 1.0)


def nt_xent(z1: jax.Array, z2: jax.Array, mask: jax.Array, temperature: float) -> jax.Array:
    """SimCLR's NT-Xent over the 2B views of the graphs where `mask` is 1: view i's positive is the other view of
    its graph; its negatives are every other view in the batch."""
    mask = jnp.concatenate([mask, mask]).astype(z1.dtype)
    z = jnp.concatenate([z1, z2])
    b = z1.shape[0]
    logits = _cosine(z, z) / temperature
    others = mask[None, :] * (1.0 - jnp.eye(2 * b, dtype=z.dtype))
    log_denominator = jax.nn.logsumexp(logits, axis=1, b=others)
    positive = jnp.concatenate([jnp.arange(b, 2 * b), jnp.arange(b)])
    per_view = log_denominator - logits[jnp.arange(2 * b), positive]
    return jnp.sum(per_view * mask) / jnp.maximum(mask.sum(), 1.0)


# ======================================================================================================================
# The two objectives, as the task calls them.
# ======================================================================================================================

Encode = Callable[[jraph.GraphsTuple, jax.Array], jax.Array]  # (graph, node_mask) -> projected item embeddings

# Both objectives work on "items": the nodes of a node task, the graphs of a graph task. `encode` returns one projected
# embedding per item and `item_mask` marks the real ones, so either objective serves either level; GRACE is the node
# tasks' default and GraphCL the graph tasks'.


@dataclasses.dataclass(frozen=True)
class Grace:
    """GRACE's objective; defaults are GRACE's Cora settings."""

    edge_drop: tuple[float, float] = (0.2, 0.4)
    feature_mask: tuple[float, float] = (0.3, 0.4)
    temperature: float = 0.4

    def loss(self, encode: Encode, graph: jraph.GraphsTuple, node_mask: jax.Array, key: jax.Array,
             item_mask: jax.Array) -> jax.Array:
        keys = jax.random.split(key, 4)
        views = [mask_feature_columns(drop_edges(graph, self.edge_drop[v], keys[2 * v]), self.feature_mask[v],
                                      keys[2 * v + 1]) for v in (0, 1)]
        return grace_loss(encode(views[0], node_mask), encode(views[1], node_mask), item_mask, self.temperature)


@dataclasses.dataclass(frozen=True)
class GraphCL:
    """GraphCL's objective: each view one augmentation drawn from the four (GraphCL's random4)."""

    rate: float = 0.2
    subgraph_hops: int = 1
    temperature: float = 0.5

    def view(self, graph, node_mask, key):
        choose, apply = jax.random.split(key)
        augmentations = [
            lambda g, m: drop_nodes(g, m, self.rate, apply),
            lambda g, m: perturb_edges(g, m, self.rate, apply),
            lambda g, m: mask_attributes(g, m, self.rate, apply),
            lambda g, m: subgraph(g, m, self.subgraph_hops, apply),
        ]
        return jax.lax.switch(jax.random.randint(choose, (), 0, len(augmentations)), augmentations, graph, node_mask)

    def loss(self, encode: Encode, graph: jraph.GraphsTuple, node_mask: jax.Array, key: jax.Array,
             item_mask: jax.Array) -> jax.Array:
        first, second = jax.random.split(key)
        z1 = encode(*self.view(graph, node_mask, first))
        z2 = encode(*self.view(graph, node_mask, second))
        return nt_xent(z1, z2, item_mask, self.temperature)
