"""GRACE's InfoNCE and NT-Xent against hand computations (padding masked out), and the views: edge dropping, feature
masking, node dropping, edge perturbation, attribute masking, subgraph."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from jaxgen.projects.fedgcl import contrastive, graphs

Z1 = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
Z2 = np.array([[1.0, 0.5], [0.2, 1.0], [-1.0, 1.0]])


def cos(a, b):
    return float(np.dot(a, b) / np.linalg.norm(a) / np.linalg.norm(b))


def hand_grace_side(u, v, tau):
    losses = []
    for i in range(len(u)):
        positive = math.exp(cos(u[i], v[i]) / tau)
        denominator = sum(math.exp(cos(u[i], v[k]) / tau) for k in range(len(u)))
        denominator += sum(math.exp(cos(u[i], u[k]) / tau) for k in range(len(u)) if k != i)
        losses.append(-math.log(positive / denominator))
    return losses


def with_padding(z):
    return jnp.asarray(np.concatenate([z, [[5.0, -3.0]]]), jnp.float32)  # a padding row that must not count


def test_grace_loss_is_the_symmetric_infonce_of_the_paper():
    tau = 0.5
    expected = np.mean([(a + b) / 2 for a, b in zip(hand_grace_side(Z1, Z2, tau), hand_grace_side(Z2, Z1, tau))])
    mask = jnp.array([1.0, 1.0, 1.0, 0.0])
    got = contrastive.grace_loss(with_padding(Z1), with_padding(Z2), mask, tau)
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    grads = jax.grad(lambda z: contrastive.grace_loss(z, with_padding(Z2), mask, tau))(with_padding(Z1))
    assert np.isfinite(grads).all() and not np.asarray(grads[3]).any()


def test_nt_xent_is_simclr_over_both_views():
    tau = 0.3
    z = np.concatenate([Z1, Z2])
    b = len(Z1)
    losses = []
    for i in range(2 * b):
        j = (i + b) % (2 * b)
        denominator = sum(math.exp(cos(z[i], z[k]) / tau) for k in range(2 * b) if k != i)
        losses.append(-math.log(math.exp(cos(z[i], z[j]) / tau) / denominator))
    got = contrastive.nt_xent(with_padding(Z1), with_padding(Z2), jnp.array([1.0, 1.0, 1.0, 0.0]), tau)
    np.testing.assert_allclose(got, np.mean(losses), rtol=1e-5)


def path_batch():
    """Two path graphs (5 and 3 nodes, both directions), batched and padded."""
    paths = [graphs.from_edges(np.ones((n, 4)) * (k + 1),
                               *graphs.undirected_edges(np.arange(n - 1), np.arange(1, n), n))
             for k, n in enumerate((5, 3))]
    batch = graphs.batch(paths)
    padded = graphs.pad(batch, graphs.padded_sizes([batch]))
    return jax.tree.map(jnp.asarray, padded), jnp.asarray(graphs.node_mask(padded, 2), jnp.float32)


def test_edge_dropping_and_feature_masking_rates():
    g = graphs.from_edges(np.ones((4, 2000)), np.zeros(20000, int), np.ones(20000, int))
    dropped = contrastive.drop_edges(g, 0.3, jax.random.key(0)).edges
    assert abs(float(1 - dropped.mean()) - 0.3) < 3 * math.sqrt(0.21 / 20000)
    masked = np.asarray(contrastive.mask_feature_columns(g, 0.4, jax.random.key(1)).nodes)
    assert (masked == masked[0]).all()  # whole columns
    assert abs((masked[0] == 0).mean() - 0.4) < 3 * math.sqrt(0.24 / 2000)
    np.testing.assert_array_equal(contrastive.drop_edges(g, 0.0, jax.random.key(2)).edges, g.edges)


def test_node_dropping_removes_the_nodes_edges_and_attribute_masking_only_features():
    g, mask = path_batch()
    view, view_mask = contrastive.drop_nodes(g, mask, 0.5, jax.random.key(3))
    kept = np.asarray(view_mask) > 0
    assert kept.sum() < mask.sum() and not kept[~np.asarray(mask, bool)].any()
    live = np.asarray(view.edges) > 0
    assert (kept[np.asarray(g.senders)[live]] & kept[np.asarray(g.receivers)[live]]).all()
    assert live.sum() == (kept[np.asarray(g.senders)] & kept[np.asarray(g.receivers)] & (np.asarray(g.edges) > 0)).sum()
    assert not np.asarray(view.nodes)[~kept].any()
    masked, same_mask = contrastive.mask_attributes(g, mask, 0.5, jax.random.key(4))
    np.testing.assert_array_equal(same_mask, mask)
    np.testing.assert_array_equal(masked.edges, g.edges)
    assert 0 < (np.asarray(masked.nodes)[:8, 0] == 0).sum() < 8


def test_edge_perturbation_rewires_inside_each_graph():
    g, mask = path_batch()
    view, _ = contrastive.perturb_edges(g, mask, 1.0, jax.random.key(5))
    senders, receivers = np.asarray(view.senders), np.asarray(view.receivers)
    graph_of = np.repeat(np.arange(len(g.n_node)), np.asarray(g.n_node))
    assert (graph_of[senders] == graph_of[receivers]).all()
    assert (receivers != np.asarray(g.receivers)).any()
    unchanged, _ = contrastive.perturb_edges(g, mask, 0.0, jax.random.key(5))
    np.testing.assert_array_equal(unchanged.receivers, g.receivers)


def test_subgraph_keeps_a_seed_and_its_neighbourhood_in_each_graph():
    g, mask = path_batch()
    for seed in range(5):
        _, kept = contrastive.subgraph(g, mask, 1, jax.random.key(seed))
        kept = np.flatnonzero(np.asarray(kept))
        first, second = kept[kept < 5], kept[(kept >= 5) & (kept < 8)]
        for part, ends in ((first, {0, 4}), (second, {5, 7})):
            assert 2 <= len(part) <= 3 and (np.diff(part) == 1).all()  # seed + its path neighbours, contiguous
            assert len(part) == 3 or ends & set(part.tolist())  # only a seed at an end of its path has one neighbour
    _, everything = contrastive.subgraph(g, mask, 4, jax.random.key(0))
    np.testing.assert_array_equal(everything, mask)


def test_objectives_wire_views_to_their_losses():
    g, mask = path_batch()
    identity_views = contrastive.Grace(edge_drop=(0.0, 0.0), feature_mask=(0.0, 0.0), temperature=0.5)
    noise = jax.random.normal(jax.random.key(0), g.nodes.shape)

    def encode(graph, node_mask):
        return graph.nodes + noise

    np.testing.assert_allclose(identity_views.loss(encode, g, mask, jax.random.key(1), mask),
                               contrastive.grace_loss(g.nodes + noise, g.nodes + noise, mask, 0.5), rtol=1e-6)
    graph_mask = jnp.array([1.0, 1.0, 0.0])
    graphcl = contrastive.GraphCL(rate=0.0, subgraph_hops=8)  # every augmentation is the identity at rate 0 / 8 hops
    readout = lambda graph, node_mask: jax.ops.segment_sum(  # noqa: E731
        graph.nodes * node_mask[:, None], jnp.repeat(jnp.arange(3), graph.n_node, total_repeat_length=16), 3)
    z = readout(g, mask)
    np.testing.assert_allclose(graphcl.loss(readout, g, mask, jax.random.key(2), graph_mask),
                               contrastive.nt_xent(z, z, graph_mask, 0.5), rtol=1e-6)
