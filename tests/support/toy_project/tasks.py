"""Tasks over the toy project's variable-size batches: a masked-mean sequence classifier and a one-layer message
passing graph classifier that maps over the per-device axis of a packed graph batch."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import jraph
import optax


def _binary_loss(logits: jax.Array, labels: jax.Array, weights: jax.Array) -> tuple[jax.Array, dict]:
    weights = weights.astype(jnp.float32)
    per_example = optax.sigmoid_binary_cross_entropy(logits, labels.astype(jnp.float32))
    total = jnp.maximum(weights.sum(), 1.0)
    accuracy = jnp.sum(((logits > 0) == (labels > 0)) * weights) / total
    return jnp.sum(per_example * weights) / total, {"accuracy": accuracy}


class SequenceModel(nn.Module):
    @nn.compact
    def __call__(self, tokens: jax.Array, mask: jax.Array) -> jax.Array:
        h = nn.Dense(16)(nn.Embed(5, 16)(tokens))
        pooled = jnp.sum(jnp.where(mask[..., None], h, 0.0), 1) / jnp.maximum(mask.sum(1, keepdims=True), 1)
        return nn.Dense(1)(nn.tanh(pooled))[:, 0]


class SequenceTask:
    partition_rules = ()

    def __init__(self):
        self.model = SequenceModel()

    def init(self, rng, batch):
        return self.model.init(rng, batch["tokens"], batch["mask"])

    def loss(self, variables, batch, rng):
        logits = self.model.apply(variables, batch["tokens"], batch["mask"])
        return _binary_loss(logits, batch["label"], jnp.ones_like(logits))

    def evaluators(self):
        return {}


class GraphModel(nn.Module):
    """One packed GraphsTuple -> one logit per graph (the padding graph's included; the loss masks it)."""

    @nn.compact
    def __call__(self, graph: jraph.GraphsTuple) -> jax.Array:
        num_nodes, num_graphs = graph.nodes.shape[0], graph.n_node.shape[0]
        h = nn.relu(nn.Dense(16)(graph.nodes))
        messages = jax.ops.segment_sum(h[graph.senders], graph.receivers, num_nodes)
        h = nn.relu(nn.Dense(16)(jnp.concatenate([h, messages], -1)))
        node_graph = jnp.repeat(jnp.arange(num_graphs), graph.n_node, total_repeat_length=num_nodes)
        return nn.Dense(1)(jax.ops.segment_sum(h, node_graph, num_graphs))[:, 0]


class GraphTask:
    """Leading axis of every batch leaf: one packed graph batch per device; vmap maps the model over it."""

    partition_rules = ()

    def __init__(self):
        self.model = GraphModel()

    def init(self, rng, batch):
        return self.model.init(rng, jax.tree.map(lambda x: x[0], batch["graph"]))

    def loss(self, variables, batch, rng):
        logits = jax.vmap(lambda g: self.model.apply(variables, g))(batch["graph"])
        return _binary_loss(logits, batch["label"], batch["graph_mask"])

    def evaluators(self):
        return {}
