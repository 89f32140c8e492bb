"""The datasets that need files or the internet, read from tiny stand-ins in their exact formats: Planetoid's raw
citation files (pickled scipy sparse matrices, numpy arrays, a dict of lists, latin1) and TFDS's `ogbg_molpcba`
elements. Nothing is downloaded."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import scipy.sparse as sp

from jaxgen.data import registered_datasets, source
from jaxgen.data.sources import DatasetMissingError
from jaxgen.projects.fedgcl import clients, data, federated, graphs


def _write_planetoid(folder, name, parts):
    folder.mkdir(parents=True, exist_ok=True)
    for part, value in parts.items():
        path = folder / f"ind.{name}.{part}"
        if part == "test.index":
            path.write_text("".join(f"{i}\n" for i in value))
        else:
            with open(path, "wb") as f:
                pickle.dump(value, f, protocol=2)  # Planetoid's files are Python 2 pickles


def _citeseer_like():
    """7 nodes, 3 features, 3 classes: allx holds nodes 0-3 (0, 1 train; 2 validation; 3 unsplit), test.index lists
    6 then 4 (tx / ty rows in that order) and skips 5, CiteSeer's gap: node 5 has no features and no label."""
    allx = np.array([[1, 0, 0], [0, 2, 0], [0, 0, 3], [1, 1, 0]], np.float32)
    ally = np.eye(3, dtype=np.float32)[[0, 1, 2, 1]]
    tx = np.array([[0, 5, 5], [4, 0, 0]], np.float32)  # node 6, node 4
    ty = np.eye(3, dtype=np.float32)[[2, 0]]
    graph = {0: [1], 1: [0, 2, 2], 2: [1], 3: [4], 4: [3, 6], 5: [], 6: [6, 4]}  # duplicates, a self-loop
    return {"x": sp.csr_matrix(allx[:2]), "y": ally[:2], "allx": sp.csr_matrix(allx), "ally": ally,
            "tx": sp.csr_matrix(tx), "ty": ty, "graph": graph, "test.index": [6, 4]}


def test_planetoid_reader_places_test_rows_by_test_index_and_leaves_citeseers_gap_unlabelled(tmp_path):
    _write_planetoid(tmp_path, "citeseer", _citeseer_like())
    g = data.planetoid(tmp_path, "citeseer", val_nodes=1)
    expected_features = [[1, 0, 0], [0, 2, 0], [0, 0, 3], [1, 1, 0], [4, 0, 0], [0, 0, 0], [0, 5, 5]]
    np.testing.assert_array_equal(g["node_features"], expected_features)
    assert g["node_labels"].tolist() == [0, 1, 2, 1, 0, -1, 2]
    assert g["node_split"].tolist() == [0, 0, 1, -1, 2, -1, 2]  # train 0-1, validation 2, test 4 and 6
    senders, receivers = graphs.undirected_edges(g["senders"], g["receivers"], 7)
    assert sorted(zip(senders.tolist(), receivers.tolist())) == [(0, 1), (1, 0), (1, 2), (2, 1), (3, 4), (4, 3),
                                                                 (4, 6), (6, 4)]


def test_public_split_and_row_normalisation_reach_the_clients(tmp_path):
    _write_planetoid(tmp_path, "citeseer", _citeseer_like())
    g = data.planetoid(tmp_path, "citeseer", val_nodes=1)
    fed = clients.node_federation(g, num_clients=1, split=federated.IID(), mechanism=None, epsilon=None,
                                  train_fraction=0.2, val_fraction=0.2, seed=0, item_split="public",
                                  row_normalize=True)
    c = fed.clients
    assert np.asarray(c.train_mask[0, :7]).tolist() == [1, 1, 0, 0, 0, 0, 0]
    assert np.asarray(c.val_mask[0, :7]).tolist() == [0, 0, 1, 0, 0, 0, 0]
    assert np.asarray(c.test_mask[0, :7]).tolist() == [0, 0, 0, 0, 1, 0, 1]
    np.testing.assert_allclose(np.asarray(c.graph.nodes[0, [3, 5, 6]]), [[0.5, 0.5, 0], [0, 0, 0], [0, 0.5, 0.5]])
    with pytest.raises(ValueError, match="ships no public split"):
        clients.node_federation(data.karate(), num_clients=1, split=federated.IID(), mechanism=None, epsilon=None,
                                train_fraction=0.2, val_fraction=0.2, seed=0, item_split="public")


def test_missing_planetoid_files_are_named_with_their_folder_and_url(tmp_path):
    assert registered_datasets()["fedgcl_planetoid"] == "jaxgen.projects.fedgcl.data"
    folder = tmp_path / "downloads" / "manual" / "planetoid"
    parts = _citeseer_like()
    del parts["graph"], parts["ty"]
    _write_planetoid(folder, "cora", parts)
    with pytest.raises(DatasetMissingError) as error:
        source("fedgcl_planetoid/cora", "train", str(tmp_path))
    message = str(error.value)
    assert "ind.cora.ty, ind.cora.graph are not in" in message and str(folder) in message
    assert data.PLANETOID_URL in message


def _molpcba_element(num_nodes, edges, labels):
    """One element as TFDS's ogbg_molpcba yields it."""
    edges = np.asarray(edges, np.int64).reshape(-1, 2)
    return {"num_nodes": np.array([num_nodes], np.int64), "node_feat": np.arange(num_nodes * 9, dtype=np.float32
                                                                                  ).reshape(num_nodes, 9),
            "num_edges": np.array([len(edges)], np.int64), "edge_feat": np.zeros((len(edges), 3), np.float32),
            "edge_index": edges, "labels": np.asarray(labels, np.float32)}


def test_molpcba_elements_become_graphs_of_one_assay(tmp_path):
    labels = np.full(128, np.nan)
    untested = _molpcba_element(2, [[0, 1]], labels)
    labels_a, labels_b = labels.copy(), labels.copy()
    labels_a[5], labels_b[5] = 1.0, 0.0
    elements = [_molpcba_element(3, [[0, 1], [1, 2]], labels_a), untested, _molpcba_element(2, [[1, 0]], labels_b)]
    out = data.molpcba_graphs(elements, task=5)
    assert [int(g["label"]) for g in out] == [1, 0]  # the molecule assay 5 did not test is left out
    assert out[0]["senders"].tolist() == [0, 1] and out[0]["receivers"].tolist() == [1, 2]
    assert out[0]["node_features"].shape == (3, 9) and out[0]["node_labels"].tolist() == [-1, -1, -1]
    with pytest.raises(ValueError, match="128 assays"):
        data.molpcba_graphs(elements, task=128)
    with pytest.raises(DatasetMissingError):  # TFDS's dataset, not prepared in an empty folder (no download tried)
        data.molpcba_graphs_tuples(task=0, data_dir=tmp_path)
