"""The four graph models of DP-FedGCL — GCN, GAT, GraphSAGE, GIN — as Linen layers on segment sums, and one GNN that
stacks a chosen layer under a node-level or graph-level classifier and a projection head for contrastive learning.

Every layer maps node states `h [N, D]` and a `GraphsTuple` (see `graphs`: `senders`, `receivers`, a weight per edge)
to new node states. Messages flow sender -> receiver and are summed with `jax.ops.segment_sum` over receivers, so
padding and augmentation (edges of weight 0) cost nothing and shapes stay static. Weights enter as follows — dense
form in brackets, `A[r, s]` = the weight of edge s -> r, the reference each layer is tested against:

- GCN (Kipf & Welling 2017): `D^-1/2 (A + I) D^-1/2 H W + b`, `D = diag(rowsum(A + I))`.
- GAT (Velickovic et al. 2018): attention over the neighbours with weight > 0 and the node itself, per head,
  `alpha_rs = softmax_s(LeakyReLU(a_dst . W h_r + a_src . W h_s))`; heads concatenated.
- GraphSAGE, mean aggregator (Hamilton et al. 2017): `H W_self + (A H / rowsum(A)) W_neigh + b` (no neighbour: 0).
- GIN (Xu et al. 2019): `MLP((1 + eps) H + A H)`, eps learned, a two-layer MLP.

SAGE and GIN multiply by their first weight matrix before aggregating (the same result): messages are then as wide
as the layer's output, not its input (one-hot node ids are 422 wide).

None uses jraph's helpers (some call the removed `jax.tree_map`); jraph only provides the `GraphsTuple`.
"""

from __future__ import annotations

from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import jraph


def _aggregate(values: jax.Array, graph: jraph.GraphsTuple, num_nodes: int) -> jax.Array:
    """`A @ values`: the weighted sum of each node's incoming messages (`values` indexed by edge)."""
    return jax.ops.segment_sum(values, graph.receivers, num_segments=num_nodes)


class GCNLayer(nn.Module):
    features: int

    @nn.compact
    def __call__(self, h: jax.Array, graph: jraph.GraphsTuple) -> jax.Array:
        n = h.shape[0]
        weights = graph.edges
        degree = 1.0 + _aggregate(weights, graph, n)  # the self-loop counts once
        norm = weights * jax.lax.rsqrt(degree[graph.senders] * degree[graph.receivers])
        hw = nn.Dense(self.features, use_bias=False, name="linear")(h)
        out = _aggregate(hw[graph.senders] * norm[:, None], graph, n) + hw / degree[:, None]
        return out + self.param("bias", nn.initializers.zeros, (self.features,))


class GATLayer(nn.Module):
    """`features` per head; the output has `heads * features` columns."""

    features: int
    heads: int = 1
    negative_slope: float = 0.2

    @nn.compact
    def __call__(self, h: jax.Array, graph: jraph.GraphsTuple) -> jax.Array:
        n = h.shape[0]
        hw = nn.Dense(self.heads * self.features, use_bias=False, name="linear")(h).reshape(n, self.heads, -1)
        init = nn.initializers.glorot_uniform(in_axis=-1, out_axis=-2)
        score_src = jnp.sum(hw * self.param("attention_src", init, (self.heads, self.features)), -1)
        score_dst = jnp.sum(hw * self.param("attention_dst", init, (self.heads, self.features)), -1)
        # Every node attends to itself too: the self-loops are appended as extra edges, always present.
        nodes = jnp.arange(n, dtype=jnp.int32)
        senders = jnp.concatenate([graph.senders, nodes])
        receivers = jnp.concatenate([graph.receivers, nodes])
        present = jnp.concatenate([graph.edges > 0, jnp.ones(n, bool)])[:, None]
        logits = nn.leaky_relu(score_src[senders] + score_dst[receivers], self.negative_slope)
        logits = jnp.where(present, logits, -jnp.inf)
        # The softmax does not depend on the shift, so no gradient flows through it (segment_max's is slow on CPU);
        # it is finite because every node's self-loop is present.
        logits_max = jax.lax.stop_gradient(jax.ops.segment_max(logits, receivers, num_segments=n))
        scores = jnp.where(present, jnp.exp(logits - logits_max[receivers]), 0.0)
        alpha = scores / jax.ops.segment_sum(scores, receivers, num_segments=n)[receivers]
        out = jax.ops.segment_sum(alpha[..., None] * hw[senders], receivers, num_segments=n)
        return out.reshape(n, -1) + self.param("bias", nn.initializers.zeros, (self.heads * self.features,))


class SAGELayer(nn.Module):
    """The neighbour transform is applied before averaging (the same linear map, in the other order): messages then
    carry `features` numbers instead of the input's, which matters for wide inputs such as one-hot node ids."""

    features: int

    @nn.compact
    def __call__(self, h: jax.Array, graph: jraph.GraphsTuple) -> jax.Array:
        n = h.shape[0]
        messages = nn.Dense(self.features, use_bias=False, name="neighbours")(h)
        total = _aggregate(graph.edges[:, None] * messages[graph.senders], graph, n)
        weight = _aggregate(graph.edges, graph, n)
        mean = total / jnp.maximum(weight, 1e-12)[:, None]  # a node without neighbours has total 0
        return nn.Dense(self.features, name="self")(h) + mean


class GINLayer(nn.Module):
    """The MLP's first linear map is applied before the neighbour sum (W((1 + eps) h + A h) = (1 + eps) hW + A hW),
    its bias after: messages carry `features` numbers, not the input's."""

    features: int

    @nn.compact
    def __call__(self, h: jax.Array, graph: jraph.GraphsTuple) -> jax.Array:
        eps = self.param("eps", nn.initializers.zeros, ())
        hw = nn.Dense(self.features, use_bias=False, name="mlp_in")(h)
        combined = (1.0 + eps) * hw + _aggregate(graph.edges[:, None] * hw[graph.senders], graph, h.shape[0])
        hidden = nn.relu(combined + self.param("mlp_in_bias", nn.initializers.zeros, (self.features,)))
        return nn.Dense(self.features, name="mlp_out")(hidden)


LAYERS: dict[str, Callable[..., nn.Module]] = {"gcn": GCNLayer, "gat": GATLayer, "sage": SAGELayer, "gin": GINLayer}


def _graph_of_each_node(graph: jraph.GraphsTuple, num_nodes: int) -> jax.Array:
    return jnp.repeat(jnp.arange(graph.n_node.shape[0]), graph.n_node, total_repeat_length=num_nodes)


def mean_readout(h: jax.Array, graph: jraph.GraphsTuple, node_mask: jax.Array) -> jax.Array:
    """`[num_graphs, D]`: the mean of each graph's nodes where `node_mask` is 1 (0 for a graph with none)."""
    segments = _graph_of_each_node(graph, h.shape[0])
    total = jax.ops.segment_sum(h * node_mask[:, None], segments, num_segments=graph.n_node.shape[0])
    count = jax.ops.segment_sum(node_mask, segments, num_segments=graph.n_node.shape[0])
    return total / jnp.maximum(count, 1.0)[:, None]


def sum_readout(h: jax.Array, graph: jraph.GraphsTuple, node_mask: jax.Array) -> jax.Array:
    """`[num_graphs, D]`: the sum over each graph's nodes where `node_mask` is 1 (GIN's readout)."""
    segments = _graph_of_each_node(graph, h.shape[0])
    return jax.ops.segment_sum(h * node_mask[:, None], segments, num_segments=graph.n_node.shape[0])


READOUTS = {"mean": mean_readout, "sum": sum_readout}
LEVELS = ("node", "graph")


class GNN(nn.Module):
    """`num_layers` layers of `layer` (a `LAYERS` name), ReLU and dropout between them; a linear classifier on the
    node states (`level="node"`) or on their `readout` per graph (`level="graph"`, an MLP there); and a two-layer
    projection head (GRACE's and GraphCL's) that only the contrastive loss reads.

    `__call__(graph, node_mask, train)` returns `(logits, embeddings)`: per node or per graph; `project(embeddings)`
    maps embeddings into the contrastive space. `node_mask` (1 real, 0 padding or dropped) matters for graph-level
    readout only: node-level losses mask their own nodes.
    """

    layer: str
    num_classes: int
    hidden: int = 64
    num_layers: int = 2
    level: str = "node"
    dropout: float = 0.5
    heads: int = 4
    readout: str = "mean"
    projection: int = 64

    def setup(self):
        if self.layer not in LAYERS:
            raise ValueError(f"Unknown GNN layer {self.layer!r}; known: {sorted(LAYERS)}")
        if self.level not in LEVELS:
            raise ValueError(f"level must be one of {LEVELS}; got {self.level!r}")
        if self.readout not in READOUTS:
            raise ValueError(f"Unknown readout {self.readout!r}; known: {sorted(READOUTS)}")
        if self.layer == "gat":  # heads concatenated: the same width as the other models
            if self.hidden % self.heads:
                raise ValueError(f"GAT's hidden width {self.hidden} must be a multiple of its {self.heads} heads")
            self.convs = [GATLayer(self.hidden // self.heads, heads=self.heads) for _ in range(self.num_layers)]
        else:
            self.convs = [LAYERS[self.layer](self.hidden) for _ in range(self.num_layers)]
        self.drop = nn.Dropout(self.dropout)
        self.graph_mlp = nn.Dense(self.hidden) if self.level == "graph" else None
        self.classifier = nn.Dense(self.num_classes)
        self.projector = (nn.Dense(self.projection), nn.Dense(self.projection))

    def encode(self, graph: jraph.GraphsTuple, train: bool) -> jax.Array:
        h = graph.nodes
        for conv in self.convs:
            h = nn.relu(conv(self.drop(h, deterministic=not train), graph))
        return h

    def __call__(self, graph: jraph.GraphsTuple, node_mask: jax.Array, train: bool = False):
        h = self.encode(graph, train)
        if self.level == "graph":
            h = READOUTS[self.readout](h, graph, node_mask)
            logits = self.classifier(self.drop(nn.relu(self.graph_mlp(h)), deterministic=not train))
        else:
            logits = self.classifier(self.drop(h, deterministic=not train))
        if self.is_initializing():  # the projection head's parameters exist from the start
            self.project(h)
        return logits, h

    def contrastive_embedding(self, graph: jraph.GraphsTuple, node_mask: jax.Array) -> jax.Array:
        """Projected embeddings of the items the classifier labels (nodes, or graphs through the readout); no
        dropout: the views are the augmentation."""
        h = self.encode(graph, train=False)
        if self.level == "graph":
            h = READOUTS[self.readout](h, graph, node_mask)
        return self.project(h)

    def project(self, embeddings: jax.Array) -> jax.Array:
        first, second = self.projector
        return second(nn.elu(first(embeddings)))
