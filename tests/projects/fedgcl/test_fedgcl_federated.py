"""Client splits, the federation (subgraphs, edge privacy, padding, masks; clients without edges refused), FedAvg /
FedProx, and one round of FedAvg over identical clients against centralised training."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxgen.core.optim import OptimizerConfig
from jaxgen.projects.fedgcl import clients as clients_lib
from jaxgen.projects.fedgcl import federated, graphs, model, trainer
from jaxgen.projects.fedgcl.task import FedGraphTask


def two_cliques(size: int = 6):
    """Two cliques joined by one edge; labels = clique; features = a noisy one-hot of the clique."""
    a = np.zeros((2 * size, 2 * size))
    a[:size, :size] = a[size:, size:] = 1
    a[size - 1, size] = a[size, size - 1] = 1
    np.fill_diagonal(a, 0)
    receivers, senders = np.nonzero(a)
    labels = np.repeat([0, 1], size)
    features = np.eye(2)[labels] + 0.1 * np.random.default_rng(0).normal(size=(2 * size, 2))
    return {"node_features": features.astype(np.float32), "node_labels": labels.astype(np.int32),
            "senders": senders.astype(np.int32), "receivers": receivers.astype(np.int32),
            "edge_weights": np.ones(len(senders), np.float32)}


def test_iid_and_dirichlet_splits():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(4), 50)
    iid = federated.IID().assign(labels, 4, rng)
    assert np.bincount(iid).tolist() == [50] * 4
    skewed = federated.Dirichlet(alpha=0.1).assign(labels, 4, np.random.default_rng(1))
    assert set(skewed.tolist()) == {0, 1, 2, 3}
    # label skew: with alpha 0.1 a client's items are mostly one class, with IID they are mixed
    purity = lambda a: np.mean([np.bincount(labels[a == k]).max() / (a == k).sum() for k in range(4)])  # noqa: E731
    assert purity(skewed) > 0.5 and purity(iid) < 0.4
    with pytest.raises(ValueError, match="cannot be split over 5 clients"):
        federated.IID().assign(labels[:4], 5, rng)
    with pytest.raises(ValueError, match="without any item"):
        federated.Dirichlet(alpha=0.01).assign(np.zeros(6, int), 6, np.random.default_rng(2))


def test_community_split_finds_the_two_cliques_and_refuses_graph_datasets():
    g = two_cliques()
    senders, receivers = graphs.undirected_edges(g["senders"], g["receivers"], 12)
    assignment = federated.Community().assign(g["node_labels"], 2, np.random.default_rng(0), edges=(senders, receivers))
    assert len(set(assignment[:6])) == 1 and len(set(assignment[6:])) == 1 and assignment[0] != assignment[6]
    with pytest.raises(ValueError, match="use IID or Dirichlet"):
        federated.Community().assign(np.zeros(8, int), 2, np.random.default_rng(0))


def test_node_federation_keeps_each_clients_subgraph_perturbs_it_and_pads_all_alike():
    g = two_cliques()
    common = dict(num_clients=2, split=federated.Community(), train_fraction=0.5, val_fraction=0.25, seed=0)
    plain = clients_lib.node_federation(g, mechanism="edge_rand", epsilon=None, **common)
    c = plain.clients
    assert plain.description["edges_per_client"] == [15, 15]  # the bridge between the cliques is lost
    assert plain.description["perturbed_edges_per_client"] == [15, 15]
    assert c.graph.nodes.shape == (2, 16, 2) and c.node_mask.sum() == 12 and c.weight.tolist() == [3.0, 3.0]
    assert float((c.train_mask + c.val_mask + c.test_mask).sum()) == 12
    assert "epsilon = inf" in plain.guarantee
    noisy = clients_lib.node_federation(g, mechanism="edge_rand", epsilon=0.5, **common)
    assert noisy.description["perturbed_edges_per_client"] != [15, 15]
    assert noisy.guarantee.startswith("0.5-edge-DP")
    np.testing.assert_array_equal(noisy.clients.labels, c.labels)  # privacy changes edges only


def test_clients_without_edges_and_bad_settings_are_refused_by_name():
    g = two_cliques()
    lonely = {**g, "senders": np.array([0, 1], np.int32), "receivers": np.array([1, 0], np.int32)}
    with pytest.raises(graphs.EmptyGraphError, match="no edge between them"):
        clients_lib.node_federation(lonely, num_clients=3, split=federated.IID(), mechanism=None, epsilon=None,
                                    train_fraction=0.5, val_fraction=0.2, seed=0)
    with pytest.raises(ValueError, match="epsilon must be > 0"):
        clients_lib._check_privacy("edge_rand", 0.0)
    with pytest.raises(ValueError, match="Unknown privacy mechanism 'laplace'"):
        clients_lib._check_privacy("laplace", 1.0)
    with pytest.raises(ValueError, match="no graph labels"):
        clients_lib.graph_federation([g], num_clients=1, split=federated.IID(), mechanism=None, epsilon=None,
                                     train_fraction=0.5, val_fraction=0.2, seed=0)


def test_graph_federation_batches_each_clients_graphs():
    rng = np.random.default_rng(0)
    dataset = []
    for i in range(8):
        n = 5 + i
        upper = np.triu(rng.random((n, n)) < 0.5, 1)
        r, s = np.nonzero(upper)
        dataset.append({"node_features": rng.normal(size=(n, 3)).astype(np.float32), "senders": s, "receivers": r,
                        "edge_weights": rng.random(len(s)).astype(np.float32), "label": np.int32(i % 2)})
    fed = clients_lib.graph_federation(dataset, num_clients=2, split=federated.IID(), mechanism="lap_graph",
                                       epsilon=2.0, train_fraction=0.5, val_fraction=0.25, seed=0,
                                       strongest_edges=0.5)
    c = fed.clients
    assert fed.level == "graph" and fed.description["graphs_per_client"] == [4, 4]
    assert c.labels.shape == (2, 5) and c.item_mask.sum(1).tolist() == [4.0, 4.0]
    assert float((c.train_mask + c.val_mask + c.test_mask).sum()) == 8
    assert int(c.node_mask.sum()) == sum(5 + i for i in range(8))
    every = np.concatenate([d["node_features"] for d in dataset])
    real = np.asarray(c.graph.nodes)[np.asarray(c.node_mask) > 0]
    np.testing.assert_allclose(np.sort(real.ravel()), np.sort(((every - every.mean(0)) / every.std(0)).ravel()),
                               atol=1e-5)  # standardised features
    keeps_half = clients_lib._weighted_adjacency(dataset[7], 0.5)
    assert np.triu(keeps_half, 1).sum() == round(0.5 * len(dataset[7]["senders"]))


def test_fedavg_and_fedprox_pieces():
    stacked = {"w": jnp.array([[1.0, 2.0], [3.0, 6.0]])}
    np.testing.assert_allclose(federated.weighted_average(stacked, jnp.array([1.0, 3.0]))["w"], [2.5, 5.0])
    params, center = {"w": jnp.array([1.0, 2.0])}, {"w": jnp.array([0.0, 4.0])}
    assert float(federated.FedProx(mu=2.0).penalty(params, center)) == pytest.approx(5.0)
    assert float(federated.FedAvg().penalty(params, center)) == 0.0


def identical_clients(count: int):
    fed = clients_lib.node_federation(two_cliques(), num_clients=1, split=federated.IID(), mechanism=None,
                                      epsilon=None, train_fraction=0.5, val_fraction=0.2, seed=0)
    return jax.tree.map(lambda x: jnp.concatenate([x] * count), fed.clients)


def test_fedavg_over_identical_clients_is_one_centralised_step():
    clients = identical_clients(3)
    task = FedGraphTask(model.GNN("gcn", num_classes=2, hidden=8, dropout=0.0))
    params = task.init(jax.random.key(0), clients)
    tx = OptimizerConfig(name="sgd", learning_rate=0.5, schedule="constant", clip_grad_norm=None).build(1)
    round_step = trainer.make_round(task, federated.FedAvg(), tx, 1)
    state = trainer.ServerState(step=jnp.zeros((), jnp.int32), params=params)
    new_state, metrics = jax.jit(round_step)(state, {"clients": jnp.arange(3), "key": jax.random.key(1)}, clients)
    one = jax.tree.map(lambda x: x[0], clients)
    grads = jax.grad(lambda p: task.loss(p, one, jax.random.key(2))[0])(params)
    expected = optax.apply_updates(params, jax.tree.map(lambda g: -0.5 * g, grads))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), new_state.params, expected)
    assert int(new_state.step) == 1 and float(metrics["update_norm"]) > 0


def test_sampled_clients_are_a_pure_function_of_seed_and_round():
    first = trainer.sampled_clients(0, 5, 10, 3)
    assert first.tolist() == sorted(set(first.tolist())) and len(first) == 3
    np.testing.assert_array_equal(first, trainer.sampled_clients(0, 5, 10, 3))
    assert any((trainer.sampled_clients(0, r, 10, 3) != first).any() for r in range(6, 10))
    assert trainer.sampled_clients(0, 5, 4, 4).tolist() == [0, 1, 2, 3]


def test_run_resumes_exactly_and_names_a_class_count_mismatch(tmp_path):
    fed = clients_lib.federate("fedgcl_karate", num_clients=3, privacy="edge_rand", epsilon=2.0)
    task = FedGraphTask(model.GNN("sage", num_classes=2, hidden=8))
    common = dict(task=task, federation=fed, local_epochs=2, clients_per_round=2, eval_every=0,
                  async_checkpointing=False, progress=False)
    whole = trainer.run(workdir=tmp_path / "whole", rounds=4, **common)
    trainer.run(workdir=tmp_path / "split", rounds=2, checkpoint_every=2, **common)
    resumed = trainer.run(workdir=tmp_path / "split", rounds=4, **common)
    jax.tree.map(np.testing.assert_array_equal, resumed.state.params, whole.state.params)
    assert resumed.eval_results["accuracy"]["test_accuracy"] == whole.eval_results["accuracy"]["test_accuracy"]
    assert (tmp_path / "whole" / trainer.FEDERATION_FILE).is_file() and (tmp_path / "whole" / "curves.png").is_file()
    with pytest.raises(ValueError, match="set NUM_CLASSES to 2"):
        trainer.run(workdir=tmp_path / "bad", rounds=1, **{**common, "task": FedGraphTask(model.GNN("gcn", 3))})


def test_a_federated_gcn_learns_the_sbm():
    """Sanity of the whole loop: two IID clients of the small contextual SBM, 30 rounds of GCN, held-out accuracy
    > 0.75 (chance 0.25; 0.88 when written; a broken average or update stays far below)."""
    fed = clients_lib.federate("fedgcl_sbm/small", num_clients=2, train_fraction=0.2, val_fraction=0.1)
    task = FedGraphTask(model.GNN("gcn", num_classes=4, hidden=16, dropout=0.2))
    params = task.init(jax.random.key(0), fed.clients)
    tx = trainer.DEFAULT_LOCAL_OPTIMIZER.build(2)
    round_step = jax.jit(trainer.make_round(task, federated.FedAvg(), tx, 2))
    state = trainer.ServerState(step=jnp.zeros((), jnp.int32), params=params)
    for r in range(30):
        state, _ = round_step(state, {"clients": jnp.arange(2), "key": jax.random.key(r)}, fed.clients)
    counts = jax.device_get(trainer.make_evaluate(task)(state.params, fed.clients))
    assert trainer.accuracy_metrics(counts)["test_accuracy"] > 0.75
