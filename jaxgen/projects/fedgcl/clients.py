"""A federation: a dataset split over clients, each client's edges perturbed by itself, all padded to one size and
stacked along a leading client axis, so one `vmap` trains every sampled client at once.

Node classification (one graph: karate, SBM, Drosophila, the Planetoid citation graphs): nodes are drawn into train /
validation / test by the data seed (or, with `item_split='public'`, take the split the dataset ships in its
`node_split`: Planetoid's public split), assigned to clients by the split, and each client holds the subgraph induced
by its nodes (edges between clients are lost, as in subgraph-federated learning). Graph classification (the mice):
graphs are drawn into train / validation / test and assigned to clients; node features are standardised per column
over the dataset, and `strongest_edges` keeps that fraction of each graph's heaviest edges (the connectomes are
two-thirds dense).

Then each client applies the edge-level DP mechanism (`privacy`) with `epsilon` to each of its graphs, before any
training: the guarantee holds per client graph (`privacy.guarantee`). A client whose true graph has no edge is refused
with the reason, since neither message passing nor edge-level privacy means anything there.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax
import jax
import jax.numpy as jnp
import jraph
import numpy as np

from jaxgen.projects.fedgcl import data as data_lib
from jaxgen.projects.fedgcl import graphs, privacy
from jaxgen.projects.fedgcl.federated import IID
from jaxgen.projects.fedgcl.graphs import EmptyGraphError
from jaxgen.projects.fedgcl.model import LEVELS


@flax.struct.dataclass
class Clients:
    """Stacked client data, leading axis = client. Node tasks: `labels` and the masks are per node `[K, N]`; graph
    tasks: per graph slot `[K, G]`. `node_mask` marks real nodes `[K, N]` and `item_mask` the real items (nodes or
    graphs: what the contrastive loss contrasts); `weight` is each client's number of training items, the FedAvg
    weight."""

    graph: jraph.GraphsTuple
    node_mask: jax.Array
    item_mask: jax.Array
    labels: jax.Array
    train_mask: jax.Array
    val_mask: jax.Array
    test_mask: jax.Array
    weight: jax.Array

    @property
    def num_clients(self) -> int:
        return self.weight.shape[0]


@dataclasses.dataclass(eq=False)
class Federation:
    clients: Clients
    level: str
    num_classes: int
    description: dict[str, Any]
    guarantee: str


def _split_items(labels: np.ndarray, train_fraction: float, val_fraction: float, rng) -> tuple[np.ndarray, ...]:
    """Boolean train / validation / test masks over the labelled items (label >= 0), drawn at random."""
    if not (0 < train_fraction and 0 <= val_fraction and train_fraction + val_fraction < 1):
        raise ValueError(f"Need 0 < train_fraction, 0 <= val_fraction, and their sum < 1 (the rest is the test set); "
                         f"got {train_fraction} and {val_fraction}")
    labelled = rng.permutation(np.flatnonzero(labels >= 0))
    if not len(labelled):
        raise ValueError("The dataset has no labelled item to train on")
    train_end = int(round(train_fraction * len(labelled)))
    val_end = train_end + int(round(val_fraction * len(labelled)))
    masks = [np.zeros(len(labels), bool) for _ in range(3)]
    for mask, part in zip(masks, np.split(labelled, [train_end, val_end])):
        mask[part] = True
    return tuple(masks)


def _public_split(graph: dict[str, np.ndarray], name: str) -> tuple[np.ndarray, ...]:
    """The train / validation / test masks a dataset ships (`node_split`: 0, 1, 2; -1 none)."""
    if "node_split" not in graph:
        raise ValueError(f"{name} ships no public split (no `node_split`); use item_split='random'")
    roles = graph["node_split"]
    return tuple((roles == role) & (graph["node_labels"] >= 0) for role in (0, 1, 2))


def row_normalized(features: np.ndarray) -> np.ndarray:
    """Each node's features divided by their sum (GCN's preprocessing of bag-of-words rows); all-zero rows stay."""
    sums = features.sum(1, keepdims=True)
    return np.where(sums != 0, features / np.where(sums != 0, sums, 1.0), 0.0).astype(np.float32)


def _perturb(adjacency: np.ndarray, mechanism: str | None, epsilon: float | None, key) -> np.ndarray:
    if mechanism is None or epsilon is None:
        return adjacency
    return np.asarray(privacy.MECHANISMS[mechanism](adjacency, epsilon, key))


def _check_privacy(mechanism: str | None, epsilon: float | None) -> None:
    if mechanism is not None and mechanism not in privacy.MECHANISMS:
        raise ValueError(f"Unknown privacy mechanism {mechanism!r}; known: {sorted(privacy.MECHANISMS)} (None: no "
                         "perturbation)")
    if mechanism is not None and epsilon is not None and not epsilon > 0:
        raise ValueError(f"epsilon must be > 0 (None: no perturbation); got {epsilon}")


def _stack(client_graphs: list[jraph.GraphsTuple], real_graphs: list[int]):
    sizes = graphs.padded_sizes(client_graphs)
    padded = [graphs.pad(g, sizes) for g in client_graphs]
    masks = np.stack([graphs.node_mask(g, r) for g, r in zip(padded, real_graphs)]).astype(np.float32)
    return graphs.stack(padded), masks, sizes


def _pad_rows(rows: list[np.ndarray], width: int, dtype) -> np.ndarray:
    out = np.zeros((len(rows), width), dtype)
    for i, row in enumerate(rows):
        out[i, :len(row)] = row
    return out


def node_federation(graph: dict[str, np.ndarray], *, num_clients: int, split, mechanism: str | None,
                    epsilon: float | None, train_fraction: float, val_fraction: float, seed: int,
                    item_split: str = "random", row_normalize: bool = False, name: str = "graph") -> Federation:
    """Clients of one graph given as `data.load_graphs` returns it (see the module docstring)."""
    features, labels = graph["node_features"], graph["node_labels"]
    if row_normalize:
        features = row_normalized(features)
    n = len(labels)
    senders, receivers = graphs.undirected_edges(graph["senders"], graph["receivers"], n)
    if item_split == "public":
        train, val, test = _public_split(graph, name)
    elif item_split == "random":
        train, val, test = _split_items(labels, train_fraction, val_fraction, np.random.default_rng([seed, 0]))
    else:
        raise ValueError(f"item_split must be 'random' or 'public'; got {item_split!r}")
    assignment = split.assign(labels, num_clients, np.random.default_rng([seed, 1]), edges=(senders, receivers))
    key = jax.random.key(int(np.random.default_rng([seed, 2]).integers(2**31)))
    client_graphs, members, true_edges, kept_edges = [], [], [], []
    for k in range(num_clients):
        nodes = np.flatnonzero(assignment == k)
        local = np.full(n, -1)
        local[nodes] = np.arange(len(nodes))
        inside = (local[senders] >= 0) & (local[receivers] >= 0)
        if not inside.any():
            raise EmptyGraphError(f"Client {k} of {name} holds {len(nodes)} nodes and no edge between them: it has "
                                  "no graph to learn from or to protect. Use fewer clients or another split")
        adjacency = np.zeros((len(nodes), len(nodes)), np.float32)
        adjacency[local[receivers[inside]], local[senders[inside]]] = 1.0
        perturbed = _perturb(adjacency, mechanism, epsilon, jax.random.fold_in(key, k))
        client_graphs.append(graphs.from_adjacency(features[nodes], perturbed, name=f"client {k} of {name}"))
        members.append(nodes)
        true_edges.append(int(inside.sum()) // 2)
        kept_edges.append(int(perturbed.sum()) // 2)
    stacked, node_mask, sizes = _stack(client_graphs, [1] * num_clients)
    width = sizes[0]
    clients = Clients(
        graph=jax.tree.map(jnp.asarray, stacked), node_mask=jnp.asarray(node_mask), item_mask=jnp.asarray(node_mask),
        labels=jnp.asarray(_pad_rows([np.maximum(labels[m], 0) for m in members], width, np.int32)),
        train_mask=jnp.asarray(_pad_rows([train[m] for m in members], width, np.float32)),
        val_mask=jnp.asarray(_pad_rows([val[m] for m in members], width, np.float32)),
        test_mask=jnp.asarray(_pad_rows([test[m] for m in members], width, np.float32)),
        weight=jnp.asarray([float(train[m].sum()) for m in members]))
    description = {"level": "node", "nodes_per_client": [len(m) for m in members], "edges_per_client": true_edges,
                   "perturbed_edges_per_client": kept_edges, "train_nodes": int(train.sum()),
                   "val_nodes": int(val.sum()), "test_nodes": int(test.sum()), "padded_sizes": list(sizes)}
    return Federation(clients, "node", int(labels.max()) + 1, description, privacy.guarantee(mechanism, epsilon))


def _weighted_adjacency(graph: dict[str, np.ndarray], strongest: float | None) -> np.ndarray:
    """The symmetric 0/1 adjacency of a weighted graph: every pair joined by an edge, or only the `strongest`
    fraction of those pairs by weight (a pair's weight: its heaviest edge in either direction)."""
    n = len(graph["node_features"])
    weights = np.zeros((n, n))
    off_diagonal = graph["senders"] != graph["receivers"]
    s, r, w = graph["senders"][off_diagonal], graph["receivers"][off_diagonal], graph["edge_weights"][off_diagonal]
    np.maximum.at(weights, (r, s), w)
    weights = np.maximum(weights, weights.T)
    if strongest is not None:
        if not 0 < strongest <= 1:
            raise ValueError(f"strongest_edges must be in (0, 1]; got {strongest}")
        upper = weights[np.triu_indices(n, 1)]
        present = upper[upper > 0]
        if present.size:
            cut = np.sort(present)[::-1][max(0, int(round(strongest * present.size)) - 1)]
            weights = np.where(weights >= cut, weights, 0.0)
    return (weights > 0).astype(np.float32)


def graph_federation(dataset_graphs: list[dict[str, np.ndarray]], *, num_clients: int, split, mechanism: str | None,
                     epsilon: float | None, train_fraction: float, val_fraction: float, seed: int,
                     strongest_edges: float | None = None, name: str = "dataset") -> Federation:
    """Clients of a graph-classification dataset (see the module docstring)."""
    if any("label" not in g for g in dataset_graphs):
        raise ValueError(f"{name} has no graph labels: it is a node-classification dataset (level='node')")
    labels = np.array([int(g["label"]) for g in dataset_graphs])
    train, val, test = _split_items(labels, train_fraction, val_fraction, np.random.default_rng([seed, 0]))
    assignment = split.assign(labels, num_clients, np.random.default_rng([seed, 1]))
    key = jax.random.key(int(np.random.default_rng([seed, 2]).integers(2**31)))
    every_node = np.concatenate([g["node_features"] for g in dataset_graphs])
    mean, std = every_node.mean(0), np.maximum(every_node.std(0), 1e-8)
    client_graphs, members, true_edges, kept_edges = [], [], [], []
    for k in range(num_clients):
        mine = np.flatnonzero(assignment == k)
        parts, true_count, kept_count = [], 0, 0
        for j in mine:
            adjacency = _weighted_adjacency(dataset_graphs[j], strongest_edges)
            perturbed = _perturb(adjacency, mechanism, epsilon, jax.random.fold_in(jax.random.fold_in(key, k), j))
            features = (dataset_graphs[j]["node_features"] - mean) / std
            parts.append(graphs.from_adjacency(features, perturbed, name=f"graph {j} of {name}"))
            true_count += int(adjacency.sum()) // 2
            kept_count += int(perturbed.sum()) // 2
        if true_count == 0:
            raise EmptyGraphError(f"Client {k} of {name} holds {len(mine)} graphs without a single edge: it has no "
                                  "structure to learn from or to protect")
        client_graphs.append(graphs.batch(parts))
        members.append(mine)
        true_edges.append(true_count)
        kept_edges.append(kept_count)
    stacked, node_mask, sizes = _stack(client_graphs, [len(m) for m in members])
    width = sizes[2]
    clients = Clients(
        graph=jax.tree.map(jnp.asarray, stacked), node_mask=jnp.asarray(node_mask),
        item_mask=jnp.asarray(_pad_rows([np.ones(len(m)) for m in members], width, np.float32)),
        labels=jnp.asarray(_pad_rows([labels[m] for m in members], width, np.int32)),
        train_mask=jnp.asarray(_pad_rows([train[m] for m in members], width, np.float32)),
        val_mask=jnp.asarray(_pad_rows([val[m] for m in members], width, np.float32)),
        test_mask=jnp.asarray(_pad_rows([test[m] for m in members], width, np.float32)),
        weight=jnp.asarray([float(train[m].sum()) for m in members]))
    description = {"level": "graph", "graphs_per_client": [len(m) for m in members], "edges_per_client": true_edges,
                   "perturbed_edges_per_client": kept_edges, "train_graphs": int(train.sum()),
                   "val_graphs": int(val.sum()), "test_graphs": int(test.sum()), "padded_sizes": list(sizes)}
    return Federation(clients, "graph", int(labels.max()) + 1, description, privacy.guarantee(mechanism, epsilon))


def federate(dataset: str, *, level: str = "node", num_clients: int = 4, split=IID(), privacy: str | None = None,
             epsilon: float | None = None, train_fraction: float = 0.2, val_fraction: float = 0.2, seed: int = 0,
             strongest_edges: float | None = None, item_split: str = "random", row_normalize: bool = False,
             data_dir: str | None = None) -> Federation:
    """A registered dataset (`fedgcl_karate`, `fedgcl_sbm/small`, `fedgcl_drosophila`, `fedgcl_mice`,
    `fedgcl_planetoid/cora`, ...) as a federation. `privacy` names a mechanism of `privacy.MECHANISMS` (None, or
    `epsilon=None`: no perturbation, epsilon = inf); `seed` draws the item split (`item_split='random'`, by the
    fractions; 'public': the dataset's own, node tasks only), the client assignment and the privacy noise;
    `row_normalize` divides each node's features by their sum (node tasks)."""
    if level not in LEVELS:
        raise ValueError(f"level must be one of {LEVELS}; got {level!r}")
    _check_privacy(privacy, epsilon)
    dataset_graphs = data_lib.load_graphs(dataset, data_dir)
    common = dict(num_clients=num_clients, split=split, mechanism=privacy, epsilon=epsilon,
                  train_fraction=train_fraction, val_fraction=val_fraction, seed=seed)
    if level == "node":
        if len(dataset_graphs) != 1:
            raise ValueError(f"Node classification needs one graph; {dataset} has {len(dataset_graphs)} "
                             "(level='graph' classifies whole graphs)")
        federation = node_federation(dataset_graphs[0], name=dataset, item_split=item_split,
                                     row_normalize=row_normalize, **common)
    else:
        if item_split != "random" or row_normalize:
            raise ValueError("item_split='public' and row_normalize are for node tasks; graph tasks draw their split "
                             "at random and standardise node features per column")
        federation = graph_federation(dataset_graphs, name=dataset, strongest_edges=strongest_edges, **common)
    federation.description.update(dataset=dataset, num_clients=num_clients, split=repr(split), privacy=privacy,
                                  epsilon=epsilon, seed=seed, train_fraction=train_fraction, val_fraction=val_fraction,
                                  item_split=item_split, row_normalize=row_normalize)
    return federation
