"""The DP-FedGCL objective on one client: supervised cross-entropy on its training items plus lambda times a
contrastive loss over all its items (GRACE or GraphCL), and the counts that evaluation sums over clients.

The federated trainer calls `loss` inside `vmap` over the sampled clients, so everything here sees one client's
arrays (`Clients` without its leading axis).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import optax

from jaxgen.projects.fedgcl.clients import Clients
from jaxgen.projects.fedgcl.contrastive import Grace, GraphCL
from jaxgen.projects.fedgcl.model import GNN


def masked_mean(values: jax.Array, mask: jax.Array) -> jax.Array:
    return jnp.sum(values * mask) / jnp.maximum(jnp.sum(mask), 1.0)


@dataclasses.dataclass(frozen=True, eq=False)
class FedGraphTask:
    """`model`'s level ("node" or "graph") must match the federation's. `contrastive=None` trains on labels only."""

    model: GNN
    contrastive: Grace | GraphCL | None = None
    contrastive_weight: float = 1.0

    def init(self, rng: jax.Array, clients: Clients):
        first = jax.tree.map(lambda x: x[0], clients)
        return self.model.init({"params": rng}, first.graph, first.node_mask)["params"]

    def loss(self, params, client: Clients, rng: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
        dropout_key, view_key = jax.random.split(rng)
        logits, _ = self.model.apply({"params": params}, client.graph, client.node_mask, train=True,
                                     rngs={"dropout": dropout_key})
        supervised = masked_mean(optax.softmax_cross_entropy_with_integer_labels(logits, client.labels),
                                 client.train_mask)
        if self.contrastive is None:
            contrastive = jnp.zeros(())
        else:
            def encode(graph, node_mask):
                return self.model.apply({"params": params}, graph, node_mask, method=GNN.contrastive_embedding)

            contrastive = self.contrastive.loss(encode, client.graph, client.node_mask, view_key, client.item_mask)
        loss = supervised + self.contrastive_weight * contrastive
        accuracy = masked_mean(jnp.argmax(logits, -1) == client.labels, client.train_mask)
        return loss, {"sup_loss": supervised, "contrastive_loss": contrastive, "train_accuracy": accuracy}

    def correct_counts(self, params, client: Clients) -> dict[str, jax.Array]:
        """Correct predictions and item counts on the client's train / val / test items (no dropout)."""
        logits, _ = self.model.apply({"params": params}, client.graph, client.node_mask)
        correct = (jnp.argmax(logits, -1) == client.labels).astype(jnp.float32)
        counts = {}
        for split, mask in (("train", client.train_mask), ("val", client.val_mask), ("test", client.test_mask)):
            counts[f"{split}_correct"] = jnp.sum(correct * mask)
            counts[f"{split}_count"] = jnp.sum(mask)
        return counts
