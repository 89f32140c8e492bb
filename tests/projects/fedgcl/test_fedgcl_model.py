"""Each GNN layer against its dense-matrix formula (weighted edges, a zero-weight edge, padding), the readouts, and
the GNN's node- and graph-level heads on padded batches."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgen.projects.fedgcl import graphs, model

N, D, OUT = 7, 5, 6


def weighted_graph():
    """A 7-node graph (no multi-edges) with weights in (0.5, 1.5), one edge of weight 0, padded to a bucket."""
    rng = np.random.default_rng(0)
    a = np.triu(rng.random((N, N)) < 0.45, 1)
    senders, receivers = graphs.undirected_edges(*np.nonzero(a), num_nodes=N)
    g = graphs.from_edges(rng.normal(size=(N, D)), senders, receivers)
    weights = rng.uniform(0.5, 1.5, size=len(senders)).astype(np.float32)
    weights[3] = 0.0
    g = g._replace(edges=weights)
    padded = graphs.pad(g, graphs.padded_sizes([g]))
    dense = np.zeros((N, N), np.float32)
    dense[receivers, senders] = weights  # A[r, s]
    return padded, dense


def init_apply(layer, graph):
    params = layer.init(jax.random.key(1), jnp.asarray(graph.nodes), graph)
    params = jax.tree.map(lambda p: p + 0.1 * jax.random.normal(jax.random.key(2), p.shape), params)  # nonzero biases
    return params["params"], np.asarray(layer.apply(params, jnp.asarray(graph.nodes), graph))[:N]


def test_gcn_layer_is_the_normalised_dense_propagation():
    graph, a = weighted_graph()
    params, out = init_apply(model.GCNLayer(OUT), graph)
    a_hat = a + np.eye(N)
    d = a_hat.sum(1)
    propagation = a_hat / np.sqrt(d[:, None] * d[None, :])
    expected = propagation @ graph.nodes[:N] @ params["linear"]["kernel"] + params["bias"]
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


def test_gat_layer_is_masked_softmax_attention_per_head():
    graph, a = weighted_graph()
    heads, per_head = 3, 2
    params, out = init_apply(model.GATLayer(per_head, heads=heads), graph)
    hw = (graph.nodes[:N] @ params["linear"]["kernel"]).reshape(N, heads, per_head)
    neighbours = (a > 0) | np.eye(N, dtype=bool)  # the zero-weight edge is absent, every node attends to itself
    expected = []
    for k in range(heads):
        dst = hw[:, k] @ params["attention_dst"][k]
        src = hw[:, k] @ params["attention_src"][k]
        logits = dst[:, None] + src[None, :]
        logits = np.where(logits > 0, logits, 0.2 * logits)
        logits = np.where(neighbours, logits, -np.inf)
        alpha = np.exp(logits - logits.max(1, keepdims=True))
        alpha /= alpha.sum(1, keepdims=True)
        expected.append(alpha @ hw[:, k])
    expected = np.concatenate(expected, axis=1) + params["bias"]
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


def test_sage_layer_is_self_plus_weighted_neighbour_mean():
    graph, a = weighted_graph()
    a[0] = 0.0  # node 0 also gets a version without neighbours: its mean is 0
    keep = ~np.isin(np.asarray(graph.receivers), [0])
    graph = graph._replace(edges=np.where(keep, graph.edges, 0.0).astype(np.float32))
    params, out = init_apply(model.SAGELayer(OUT), graph)
    rowsum = a.sum(1, keepdims=True)
    mean = np.where(rowsum > 0, a @ graph.nodes[:N] / np.where(rowsum > 0, rowsum, 1), 0.0)
    expected = (graph.nodes[:N] @ params["self"]["kernel"] + params["self"]["bias"]
                + mean @ params["neighbours"]["kernel"])  # averaged first, then transformed
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


def test_gin_layer_is_an_mlp_of_self_plus_neighbour_sum():
    graph, a = weighted_graph()
    params, out = init_apply(model.GINLayer(OUT), graph)
    combined = (1 + params["eps"]) * graph.nodes[:N] + a @ graph.nodes[:N]
    hidden = np.maximum(combined @ params["mlp_in"]["kernel"] + params["mlp_in_bias"], 0)  # summed first
    expected = hidden @ params["mlp_out"]["kernel"] + params["mlp_out"]["bias"]
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


def test_readouts_pool_each_graph_over_its_masked_nodes():
    g1 = graphs.from_edges(np.arange(6, dtype=np.float32).reshape(3, 2), [0], [1])
    g2 = graphs.from_edges(np.full((2, 2), 10.0), [], [])
    batch = graphs.batch([g1, g2])
    padded = graphs.pad(batch, graphs.padded_sizes([batch]))
    mask = graphs.node_mask(padded, 2).astype(np.float32)
    mask[1] = 0.0  # a dropped node
    h = jnp.asarray(padded.nodes)
    mean = np.asarray(model.mean_readout(h, padded, jnp.asarray(mask)))
    total = np.asarray(model.sum_readout(h, padded, jnp.asarray(mask)))
    np.testing.assert_allclose(mean[:2], [[2.0, 3.0], [10.0, 10.0]])  # nodes (0, 1) and (4, 5): mean (2, 3)
    np.testing.assert_allclose(total[:2], [[4.0, 6.0], [20.0, 20.0]])
    np.testing.assert_allclose(mean[2:], 0.0)  # padding graphs


@pytest.mark.parametrize("layer", sorted(model.LAYERS))
def test_gnn_heads_give_per_node_and_per_graph_logits_unchanged_by_padding(layer):
    graph, _ = weighted_graph()
    mask = jnp.asarray(graphs.node_mask(graph, 1), jnp.float32)
    for level, rows in (("node", N), ("graph", 1)):
        gnn = model.GNN(layer, num_classes=3, hidden=8, heads=2, level=level, projection=4)
        variables = gnn.init(jax.random.key(0), graph, mask)
        logits, embeddings = gnn.apply(variables, graph, mask)
        assert logits.shape[1] == 3 and embeddings.shape[1] == 8
        bigger = graphs.pad(graphs.from_edges(graph.nodes[:N], graph.senders[:graph.n_edge[0]],
                                              graph.receivers[:graph.n_edge[0]])._replace(
                                                  edges=graph.edges[:graph.n_edge[0]]), (64, 128, 3))
        bigger_logits, _ = gnn.apply(variables, bigger, jnp.asarray(graphs.node_mask(bigger, 1), jnp.float32))
        np.testing.assert_allclose(bigger_logits[:rows], logits[:rows], rtol=1e-5, atol=1e-5)
        assert gnn.apply(variables, embeddings, method=gnn.project).shape == (embeddings.shape[0], 4)


def test_gnn_names_unknown_layers_and_levels():
    graph, _ = weighted_graph()
    mask = jnp.ones(graph.nodes.shape[0])
    with pytest.raises(ValueError, match="Unknown GNN layer 'gcnn'"):
        model.GNN("gcnn", num_classes=2).init(jax.random.key(0), graph, mask)
    with pytest.raises(ValueError, match="level must be one of"):
        model.GNN("gcn", num_classes=2, level="edge").init(jax.random.key(0), graph, mask)
