"""Graphs (edge lists, adjacency, padding to buckets, stacking) and the four registered graph datasets; the two
connectomes are read from a stand-in graspologic wheel with the real file layout, and from the real wheel too."""

from __future__ import annotations

import subprocess
import sys
import zipfile

import numpy as np
import pytest

from jaxgen.data import registered_datasets, source
from jaxgen.data.sources import DatasetMissingError
from jaxgen.projects.fedgcl import data, graphs


def test_undirected_edges_drop_self_loops_and_duplicates_and_store_both_directions():
    senders, receivers = graphs.undirected_edges([0, 1, 2, 2, 3], [1, 0, 2, 3, 2], num_nodes=4)
    assert list(zip(senders.tolist(), receivers.tolist())) == [(0, 1), (1, 0), (2, 3), (3, 2)]


def test_from_edges_refuses_empty_graphs_and_out_of_range_edges():
    with pytest.raises(graphs.EmptyGraphError, match="no nodes"):
        graphs.from_edges(np.zeros((0, 3)), [], [])
    with pytest.raises(ValueError, match=r"\[0, 2\)"):
        graphs.from_edges(np.zeros((2, 3)), [0], [2])
    with pytest.raises(graphs.EmptyGraphError):
        graphs.batch([])


def test_adjacency_round_trip_and_padding_to_buckets_keeps_the_graph():
    rng = np.random.default_rng(0)
    a = np.triu(rng.random((9, 9)) < 0.4, 1)
    a = (a | a.T).astype(np.float32)
    g = graphs.from_adjacency(rng.normal(size=(9, 2)), a)
    np.testing.assert_array_equal(graphs.adjacency(g), a)
    sizes = graphs.padded_sizes([g])
    assert sizes[0] == 16 and sizes[1] == graphs.bucket(int(a.sum())) and sizes[1] >= a.sum()
    padded = graphs.pad(g, sizes)
    real = int(a.sum())
    assert padded.nodes.shape == (16, 2) and padded.senders.shape == (sizes[1],)
    np.testing.assert_array_equal(padded.nodes[:9], g.nodes)
    assert (padded.edges[real:] == 0).all() and (padded.edges[:real] == 1).all()
    assert (padded.senders[real:] >= 9).all() and (padded.receivers[real:] >= 9).all()  # padding joins padding nodes
    assert graphs.node_mask(padded, 1).tolist() == [True] * 9 + [False] * 7
    other = graphs.pad(graphs.from_adjacency(np.ones((3, 2)), np.ones((3, 3)) - np.eye(3)), sizes)
    stacked = graphs.stack([padded, other])
    assert stacked.nodes.shape == (2, 16, 2) and stacked.n_node.tolist() == [[9, 7], [3, 13]]
    with pytest.raises(ValueError, match="one size"):
        graphs.stack([padded, graphs.pad(g, (32, sizes[1], 2))])


def test_bucket_is_the_next_power_of_two_above_a_floor():
    assert [graphs.bucket(n) for n in (0, 1, 16, 17, 100, 1024, 1025)] == [16, 16, 16, 32, 128, 1024, 2048]


def test_contextual_sbm_has_its_block_densities_and_separated_feature_means():
    g = data.contextual_sbm([150, 150], p_in=0.1, p_out=0.02, num_features=8, signal=3.0, seed=1)
    a = graphs.adjacency(graphs.from_edges(g["node_features"], g["senders"], g["receivers"]))
    assert (g["senders"] < g["receivers"]).all() and a.sum() == len(g["senders"])  # each pair at most once
    a = a + a.T  # stored once, sender < receiver: the receiver's row holds it
    inside, across = a[:150, :150], a[:150, 150:]
    p_in_hat, p_out_hat = inside.sum() / 2 / (150 * 149 / 2), across.sum() / 150**2
    assert abs(p_in_hat - 0.1) < 4 * np.sqrt(0.1 * 0.9 / (150 * 149 / 2))
    assert abs(p_out_hat - 0.02) < 4 * np.sqrt(0.02 * 0.98 / 150**2)
    means = [g["node_features"][g["node_labels"] == c].mean(0) for c in (0, 1)]
    assert 2.0 < np.linalg.norm(means[0] - means[1]) < 6.0  # 3 * |unit - unit|, up to noise


def test_karate_club_is_registered_with_its_two_clubs():
    assert registered_datasets()["fedgcl_karate"] == "jaxgen.projects.fedgcl.data"
    (g,) = data.load_graphs("fedgcl_karate")
    assert g["node_features"].shape == (34, 34) and len(g["senders"]) == 78
    assert np.bincount(g["node_labels"]).tolist() == [17, 17]
    assert g["node_labels"][0] != g["node_labels"][33]  # the instructor and the president lead the two clubs


def _stand_in_wheel(path):
    """graspologic's member names with tiny contents: hemispheres of 3 and 2 neurons, 2 mice."""
    rng = np.random.default_rng(0)
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as z:
        hemispheres = {"left": ([[0, 2, 0], [1, 0, 0], [0, 5, 0]], "K\nP\nI\n"), "right": ([[0, 3], [0, 0]], "O\nK\n")}
        for side, (a, labels) in hemispheres.items():
            z.writestr(data.DROSOPHILA.format(side=side, what="adjacency"),
                       "\n".join(" ".join(map(str, row)) for row in a) + "\n")
            z.writestr(data.DROSOPHILA.format(side=side, what="cell_labels"), labels)
        z.writestr(data.MICE + "participants.csv", "participant_id,genotype,sex\nsub-1,CAST,male\nsub-2,B6,female\n")
        regions = [0, *range(1, 167), *range(1001, 1167)]
        for subject in ("1", "2"):
            z.writestr(f"{data.MICE}edgelists/sub-{subject}_ses-1_dti.edgelist", "0 1 3.0\n1 331 7.0\n")
            rows = "".join(f"{r},{r * 10},{rng.random()},1,2,3,4,5,6,7\n" for r in regions)
            header = ",runno:,x\n\nROI,voxels,volume_mm3,adc,dwi,e1,e2,e3,fa,rd\n"
            z.writestr(f"{data.MICE}features/{subject}.csv", header + rows)


def test_connectomes_are_read_from_the_wheel_and_its_absence_names_the_pip_command(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "WHEEL_CACHE", tmp_path / "no_cache")
    with pytest.raises(DatasetMissingError, match=r"pip download --no-deps graspologic==3\.4\.4"):
        source("fedgcl_drosophila", "train", str(tmp_path / "empty"))
    wheel = tmp_path / "data" / "downloads" / "manual" / data.GRASPOLOGIC_WHEEL
    _stand_in_wheel(wheel)
    fly = data.drosophila(wheel)
    assert fly["node_labels"].tolist() == [1, 3, 0, 2, 1]  # K P I | O K
    edges = sorted(zip(fly["senders"].tolist(), fly["receivers"].tolist(), fly["edge_weights"].tolist()))
    assert edges == [(0, 1, 2.0), (1, 0, 1.0), (2, 1, 5.0), (3, 4, 3.0)]  # right hemisphere after the left one
    assert fly["node_features"].shape == (5, 5)
    mice = data.mice(wheel)
    assert [int(m["label"]) for m in mice] == [data.MICE_GENOTYPES.index("CAST"), data.MICE_GENOTYPES.index("B6")]
    assert mice[0]["node_features"].shape == (332, 9)
    assert mice[0]["node_features"][0, 0] == 10 and mice[0]["node_features"][166, 0] == 10010  # regions 1 and 1001
    assert mice[0]["senders"].tolist() == [0, 1] and mice[0]["edge_weights"].tolist() == [3.0, 7.0]
    prepared = source("fedgcl_mice", "train", str(tmp_path / "data"))
    assert len(prepared) == 2 and prepared[0]["node_features"].shape == (332, 9)


def test_the_real_connectomes_have_their_published_sizes(tmp_path):
    """The real wheel (5 MB), from the cache or fetched from PyPI as the README says; skipped only where PyPI cannot
    be reached."""
    try:
        wheel = data.find_wheel()
    except DatasetMissingError:
        fetched = subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "graspologic==3.4.4",
                                  "-d", str(tmp_path)], capture_output=True, text=True, timeout=240)
        if fetched.returncode:
            pytest.skip(f"graspologic's wheel is not cached and PyPI could not be reached: {fetched.stderr[-300:]}")
        wheel = data.find_wheel(tmp_path)
    fly = data.drosophila(wheel)
    assert fly["node_features"].shape[0] == 209 + 213
    assert np.bincount(fly["node_labels"]).tolist() == [42, 201, 58, 121]  # I, K, O, P over both hemispheres
    mice = data.mice(wheel)
    assert len(mice) == 32 and np.bincount([int(m["label"]) for m in mice]).tolist() == [8, 8, 8, 8]
