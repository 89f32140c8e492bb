"""How data is split over clients, and how the server combines their updates.

Splits assign items (nodes of one graph, or whole graphs) to `num_clients` clients:
- `IID`: a uniformly random assignment of equal shares.
- `Dirichlet(alpha)`: label skew, the common non-IID benchmark: for each class, client shares drawn from
  Dirichlet(alpha) (small alpha: each client sees few classes).
- `Community`: a graph partition (FedSage+'s and FedGCN's setting: each client holds a community of one graph):
  spectral clustering of the undirected graph into `num_clients` parts. Node tasks only.

Algorithms run the same local loop and differ in the local objective:
- `FedAvg` (McMahan et al. 2017): local epochs on the client's loss; the server takes the mean of the returned
  parameters weighted by the clients' numbers of training items.
- `FedProx(mu)` (Li et al. 2020): the local loss plus mu / 2 * ||w - w_global||^2, which keeps local models near the
  global one when clients differ; same weighted mean.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax


def _check_every_client_has_items(assignment: np.ndarray, num_clients: int, what: str) -> np.ndarray:
    counts = np.bincount(assignment, minlength=num_clients)
    if (counts == 0).any():
        raise ValueError(f"The {what} split left clients {np.flatnonzero(counts == 0).tolist()} without any item "
                         f"({len(assignment)} items over {num_clients} clients); use fewer clients or another split")
    return assignment


def _check_clients(num_clients: int, num_items: int) -> None:
    if num_clients < 1:
        raise ValueError(f"num_clients must be >= 1; got {num_clients}")
    if num_items < num_clients:
        raise ValueError(f"{num_items} items cannot be split over {num_clients} clients")


@dataclasses.dataclass(frozen=True)
class IID:
    def assign(self, labels: np.ndarray, num_clients: int, rng: np.random.Generator, edges=None) -> np.ndarray:
        """Client of each item: a random permutation cut into equal shares."""
        _check_clients(num_clients, len(labels))
        assignment = np.empty(len(labels), np.int64)
        assignment[rng.permutation(len(labels))] = np.arange(len(labels)) % num_clients
        return assignment


@dataclasses.dataclass(frozen=True)
class Dirichlet:
    alpha: float = 0.5

    def assign(self, labels: np.ndarray, num_clients: int, rng: np.random.Generator, edges=None) -> np.ndarray:
        """Client of each item: each class's items shuffled and cut by Dirichlet(alpha) shares. Items without a label
        (-1) form a class of their own."""
        if not self.alpha > 0:
            raise ValueError(f"Dirichlet alpha must be > 0; got {self.alpha}")
        _check_clients(num_clients, len(labels))
        assignment = np.empty(len(labels), np.int64)
        for c in np.unique(labels):
            members = rng.permutation(np.flatnonzero(labels == c))
            shares = rng.dirichlet(np.full(num_clients, self.alpha))
            cuts = (np.cumsum(shares)[:-1] * len(members)).astype(int)
            for client, part in enumerate(np.split(members, cuts)):
                assignment[part] = client
        return _check_every_client_has_items(assignment, num_clients, f"Dirichlet(alpha={self.alpha})")


@dataclasses.dataclass(frozen=True)
class Community:
    def assign(self, labels: np.ndarray, num_clients: int, rng: np.random.Generator, edges=None) -> np.ndarray:
        """Client of each node: spectral clustering of the undirected graph `edges = (senders, receivers)`."""
        if edges is None:
            raise ValueError("The community split partitions the nodes of one graph; a graph-classification dataset "
                             "is split by whole graphs: use IID or Dirichlet")
        _check_clients(num_clients, len(labels))
        if num_clients == 1:
            return np.zeros(len(labels), np.int64)
        from sklearn.cluster import SpectralClustering

        n = len(labels)
        affinity = np.zeros((n, n))
        affinity[edges[1], edges[0]] = 1.0
        affinity = np.maximum(affinity, affinity.T) + 1e-6  # isolated nodes and components stay clusterable
        clustering = SpectralClustering(num_clients, affinity="precomputed",
                                        random_state=int(rng.integers(2**31)), assign_labels="cluster_qr")
        assignment = clustering.fit_predict(affinity).astype(np.int64)
        return _check_every_client_has_items(assignment, num_clients, "community")


@dataclasses.dataclass(frozen=True)
class FedAvg:
    def penalty(self, params, global_params) -> jax.Array:
        """The term added to each client's local loss: none."""
        return jnp.zeros(())


@dataclasses.dataclass(frozen=True)
class FedProx(FedAvg):
    mu: float = 0.01

    def penalty(self, params, global_params) -> jax.Array:
        """mu / 2 * ||params - global_params||^2."""
        return 0.5 * self.mu * optax.tree.norm(jax.tree.map(jnp.subtract, params, global_params), squared=True)


def weighted_average(stacked, weights: jax.Array):
    """The mean of a tree stacked along a leading client axis, weighted by `weights` [clients]."""
    share = weights / jnp.sum(weights)
    return jax.tree.map(lambda leaf: jnp.tensordot(share, leaf, axes=1), stacked)
