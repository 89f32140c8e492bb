"""The graph datasets of DP-FedGCL, offline: four registered TFDS builders (one example per graph) and their reader.

- `fedgcl_karate`: Zachary's karate club as networkx ships it (34 members, 78 friendships weighted by interaction
  count, label = the club each member joined). Features: one-hot node ids (the graph has none).
- `fedgcl_sbm/small`, `fedgcl_sbm/large`: contextual stochastic block models, procedural and seeded: 4 blocks (the
  labels), edges with probability `p_in` inside a block and `p_out` across, and 16 Gaussian features around a
  random mean per block (unit noise, means at distance ~`FEATURE_SIGNAL`). small: 400 nodes, expected degree ~11;
  large: 10,000 nodes, expected degree ~14.
- `fedgcl_drosophila`: the larval Drosophila mushroom-body connectome (Eichler et al., Nature 2017) as graspologic
  3.4.4 ships it: left (209 neurons) and right (213) hemispheres as one graph of two components, directed edges
  weighted by synapse count, and each neuron's cell type (4 classes: I input, K Kenyon cell, O output, P projection
  neuron) as its label. Features: one-hot node ids (the connectome has none).
- `fedgcl_mice`: 32 mouse connectomes from diffusion MRI (Wang et al., NeuroImage 2020), 332 regions each,
  undirected edges weighted by tract count; label = genotype (B6, BTBR, CAST, DBA2; 8 mice each); node features =
  the 9 anatomical statistics of each region graspologic ships (voxels, volume, ADC, DWI, e1-e3, FA, RD). Node `i`
  is atlas region `i + 1` for `i < 166` and `1001 + (i - 166)` after (the order of graspologic's `blocks.csv`:
  166 regions per hemisphere); this mapping is our reading of the files, graspologic states none.
- `fedgcl_planetoid/{cora,citeseer,pubmed}`: the three citation graphs of Yang et al. (ICML 2016) in the raw files of
  their Planetoid release (`ind.<name>.{x,tx,allx,y,ty,ally,graph,test.index}`: pickled scipy sparse matrices, numpy
  arrays and a dict of adjacency lists), with the public split of Kipf & Welling's GCN and PyG (20 training nodes per
  class, the next 500 for validation, the 1,000 listed test nodes) stored as `node_split` (0 train, 1 validation,
  2 test, -1 none). Not bundled and not downloadable here: the 24 files go by hand into
  `<data dir>/downloads/manual/planetoid/` (`PLANETOID_URL`). Features: the bag-of-words rows as given (row
  normalisation, as GCN does, is `clients.federate(row_normalize=True)`).

A foreign TFDS dataset is converted too: `ogbg_molpcba` (OGB's 437,929 molecules, 128 binary assays with missing
labels) elements become graphs of one assay (`molpcba_graphs`) and jraph `GraphsTuple`s (`molpcba_graphs_tuples`). It
needs the internet once (`jaxgen data prepare ogbg_molpcba`); the federated trainer does not run on it (see the
project README).

The two connectomes are read out of graspologic's wheel with `zipfile` (graspologic 3.4.4 does not install on numpy 2,
and nothing of it is needed but these files): `pip download --no-deps graspologic==3.4.4 -d ~/.cache/jaxgen/wheels`
(or into TFDS's manual folder, `<data dir>/downloads/manual/`). Nothing of the data is committed here.

Every example stores `node_features [N, F]`, `node_labels [N]` (-1: none), `senders`, `receivers` and `edge_weights`
`[E]`; the mice also store `label`. `load_graphs(name)` reads them back as numpy dicts.
"""

from __future__ import annotations

import functools
import io
import os
import pickle
import zipfile
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds

from jaxgen.data import sources as sources_lib
from jaxgen.data.sources import DatasetMissingError
from jaxgen.projects.fedgcl import graphs as graphs_lib
from jaxgen.projects.fedgcl.graphs import EmptyGraphError

GRASPOLOGIC_WHEEL = "graspologic-3.4.4-py3-none-any.whl"
WHEEL_CACHE = Path("~/.cache/jaxgen/wheels")
DROSOPHILA = "graspologic/datasets/drosophila/{side}_{what}.csv"
MICE = "graspologic/datasets/mice/"
DROSOPHILA_CELL_TYPES = ("I", "K", "O", "P")
MICE_GENOTYPES = ("B6", "BTBR", "CAST", "DBA2")
MICE_FEATURES = ("voxels", "volume_mm3", "adc", "dwi", "e1", "e2", "e3", "fa", "rd")
MICE_REGIONS_PER_HEMISPHERE = 166
PLANETOID_URL = "https://github.com/kimiyoung/planetoid/tree/master/data"
PLANETOID_PARTS = ("x", "tx", "allx", "y", "ty", "ally", "graph", "test.index")
PLANETOID_VAL_NODES = 500
SPLIT_ROLES = {"train": 0, "val": 1, "test": 2}


# ======================================================================================================================
# Readers: plain numpy graphs (dicts of the stored features).
# ======================================================================================================================


def _graph(features, labels, senders, receivers, weights, **extra) -> dict[str, np.ndarray]:
    features = np.asarray(features, np.float32)
    if features.ndim != 2 or features.shape[0] == 0:
        raise EmptyGraphError(f"A graph needs at least one node; got node features of shape {features.shape}")
    return {"node_features": features, "node_labels": np.asarray(labels, np.int32),
            "senders": np.asarray(senders, np.int32), "receivers": np.asarray(receivers, np.int32),
            "edge_weights": np.asarray(weights, np.float32), **extra}


def karate() -> dict[str, np.ndarray]:
    import networkx as nx

    g = nx.karate_club_graph()
    n = g.number_of_nodes()
    clubs = sorted({g.nodes[i]["club"] for i in range(n)})
    edges = np.array([(u, v, d.get("weight", 1)) for u, v, d in g.edges(data=True)])
    return _graph(np.eye(n), [clubs.index(g.nodes[i]["club"]) for i in range(n)], edges[:, 0], edges[:, 1],
                  edges[:, 2])


def contextual_sbm(block_sizes, p_in: float, p_out: float, num_features: int, signal: float, seed: int
                   ) -> dict[str, np.ndarray]:
    """A stochastic block model with Gaussian node features: each unordered pair of distinct nodes is an edge with
    probability `p_in` (same block) or `p_out`; features are `signal * mean[block] + N(0, I)` with random unit-norm
    block means. Edges are sampled per block pair (a binomial count of distinct pairs), so 10^4 nodes need no dense
    matrix. Each undirected edge is stored once (sender < receiver)."""
    rng = np.random.default_rng(seed)
    sizes = np.asarray(block_sizes)
    starts = np.concatenate([[0], np.cumsum(sizes)])
    labels = np.repeat(np.arange(len(sizes)), sizes)
    means = rng.normal(size=(len(sizes), num_features))
    means /= np.linalg.norm(means, axis=1, keepdims=True)
    features = signal * means[labels] + rng.normal(size=(len(labels), num_features))
    senders, receivers = [], []
    for a in range(len(sizes)):
        for b in range(a, len(sizes)):
            pairs = sizes[a] * (sizes[a] - 1) // 2 if a == b else sizes[a] * sizes[b]
            count = rng.binomial(pairs, p_in if a == b else p_out)
            chosen = rng.choice(pairs, size=count, replace=False)
            if a == b:  # pair index -> (i < j) inside the block, through the triangular numbering
                j = (np.floor((1 + np.sqrt(1 + 8 * chosen)) / 2)).astype(np.int64)
                i = chosen - j * (j - 1) // 2
            else:
                i, j = chosen // sizes[b], chosen % sizes[b]
            senders.append(starts[a] + i)
            receivers.append(starts[b] + j)
    senders, receivers = np.concatenate(senders), np.concatenate(receivers)
    return _graph(features, labels, senders, receivers, np.ones(len(senders)))


def find_wheel(manual_dir: Path | None = None) -> Path:
    """graspologic's wheel in TFDS's manual folder or `~/.cache/jaxgen/wheels`; a clear error when in neither."""
    places = ([manual_dir] if manual_dir else []) + [WHEEL_CACHE.expanduser()]
    for place in places:
        if (Path(place) / GRASPOLOGIC_WHEEL).is_file():
            return Path(place) / GRASPOLOGIC_WHEEL
    raise DatasetMissingError(
        f"The connectomes are read from graspologic's wheel, which is not in {' or '.join(map(str, places))}. Fetch it "
        f"(no install, no dependencies) with `pip download --no-deps graspologic==3.4.4 -d {WHEEL_CACHE}` and prepare "
        "again.")


def drosophila(wheel: Path) -> dict[str, np.ndarray]:
    """Both hemispheres as one graph (left nodes first); edge i -> j weighted by the synapse count A[i, j]."""
    adjacencies, labels = [], []
    with zipfile.ZipFile(wheel) as z:
        for side in ("left", "right"):
            adjacencies.append(np.loadtxt(z.open(DROSOPHILA.format(side=side, what="adjacency")), dtype=np.int64))
            names = np.loadtxt(z.open(DROSOPHILA.format(side=side, what="cell_labels")), dtype=str)
            labels.append([DROSOPHILA_CELL_TYPES.index(str(name)) for name in names])
    offset = adjacencies[0].shape[0]
    senders, receivers, weights = [], [], []
    for start, a in zip((0, offset), adjacencies):
        i, j = np.nonzero(a)
        senders.append(i + start)
        receivers.append(j + start)
        weights.append(a[i, j])
    n = offset + adjacencies[1].shape[0]
    return _graph(np.eye(n), np.concatenate(labels), np.concatenate(senders), np.concatenate(receivers),
                  np.concatenate(weights))


def _mice_region(node: np.ndarray) -> np.ndarray:
    return np.where(node < MICE_REGIONS_PER_HEMISPHERE, node + 1, 1001 + node - MICE_REGIONS_PER_HEMISPHERE)


def mice(wheel: Path) -> list[dict[str, np.ndarray]]:
    """The 32 connectomes in participants.csv order, each with its genotype label and region features."""
    with zipfile.ZipFile(wheel) as z:
        participants = np.loadtxt(z.open(MICE + "participants.csv"), dtype=str, delimiter=",", skiprows=1)
        graphs = []
        for subject, genotype, _sex in participants:
            edges = np.loadtxt(z.open(f"{MICE}edgelists/{subject}_ses-1_dti.edgelist"), ndmin=2)
            table = np.loadtxt(io.TextIOWrapper(z.open(f"{MICE}features/{subject.removeprefix('sub-')}.csv")),
                               delimiter=",", skiprows=3, ndmin=2)
            rows = {int(region): values for region, *values in table}
            num_nodes = 2 * MICE_REGIONS_PER_HEMISPHERE
            features = np.stack([rows[int(r)] for r in _mice_region(np.arange(num_nodes))])
            graphs.append(_graph(features, np.full(num_nodes, -1), edges[:, 0], edges[:, 1], edges[:, 2],
                                 label=np.int32(MICE_GENOTYPES.index(genotype))))
    return graphs


def planetoid_files(folder: Path, name: str) -> dict[str, Path]:
    """The eight raw files of `name` in `folder`; a clear error naming the missing ones, the folder and the URL."""
    files = {part: Path(folder) / f"ind.{name}.{part}" for part in PLANETOID_PARTS}
    missing = [path.name for path in files.values() if not path.is_file()]
    if missing:
        raise DatasetMissingError(
            f"{name} is read from Planetoid's raw files, and {', '.join(missing)} "
            f"{'is' if len(missing) == 1 else 'are'} not in {folder}/. Download ind.{name}."
            f"{{{','.join(PLANETOID_PARTS)}}} from {PLANETOID_URL} (the data/ folder of kimiyoung/planetoid) where the "
            f"internet is, put them in {folder}/ and prepare again.")
    return files


def planetoid(folder: Path, name: str, val_nodes: int = PLANETOID_VAL_NODES) -> dict[str, np.ndarray]:
    """One Planetoid citation graph with its public split, read as Kipf & Welling's GCN code and PyG read it.

    `allx`/`ally` hold the features / one-hot labels of the nodes 0 .. len(allx) - 1 (the first len(y) of them are
    the training nodes; the next `val_nodes` are the validation nodes); `tx`/`ty` hold the test nodes, in the order
    of `test.index`, which says which node id each row is. The ids in `test.index` run from len(allx) to the last node
    with gaps in CiteSeer (15 nodes absent from the test files, isolated in the citation graph): those nodes get
    zero features and no label (-1) and are in no split. `graph` maps each node to its cited / citing nodes; edges are
    stored once per listed pair (directions and duplicates are resolved by `graphs.undirected_edges`)."""
    files = planetoid_files(folder, name)
    parts = {}
    for part, path in files.items():
        if part == "test.index":
            parts[part] = np.loadtxt(path, dtype=np.int64, ndmin=1)
        else:
            with open(path, "rb") as f:
                parts[part] = pickle.load(f, encoding="latin1")
    dense = {part: np.asarray(parts[part].todense() if hasattr(parts[part], "todense") else parts[part], np.float32)
             for part in ("x", "tx", "allx", "y", "ty", "ally")}
    test_index = parts["test.index"]
    first, num_known = len(dense["allx"]), len(dense["allx"])
    if len(test_index) != len(dense["tx"]) or len(dense["tx"]) != len(dense["ty"]):
        raise ValueError(f"{name}: test.index lists {len(test_index)} nodes but tx / ty hold {len(dense['tx'])} / "
                         f"{len(dense['ty'])} rows")
    if test_index.min() < first:
        raise ValueError(f"{name}: test.index lists node {test_index.min()}, which allx ({first} rows) already holds")
    n = int(test_index.max()) + 1
    features = np.zeros((n, dense["allx"].shape[1]), np.float32)
    one_hot = np.zeros((n, dense["ally"].shape[1]), np.float32)
    features[:num_known], one_hot[:num_known] = dense["allx"], dense["ally"]
    features[test_index], one_hot[test_index] = dense["tx"], dense["ty"]
    labels = np.where(one_hot.any(1), one_hot.argmax(1), -1)
    num_train = len(dense["y"])
    if num_train + val_nodes > num_known:
        raise ValueError(f"{name}: {num_train} training + {val_nodes} validation nodes exceed allx's {num_known} rows")
    node_split = np.full(n, -1, np.int32)
    node_split[:num_train] = SPLIT_ROLES["train"]
    node_split[num_train:num_train + val_nodes] = SPLIT_ROLES["val"]
    node_split[test_index] = SPLIT_ROLES["test"]
    senders, receivers = [], []
    for node, neighbours in parts["graph"].items():
        senders.extend([node] * len(neighbours))
        receivers.extend(neighbours)
    senders, receivers = np.asarray(senders, np.int64), np.asarray(receivers, np.int64)
    if len(senders) and max(senders.max(), receivers.max()) >= n:
        raise ValueError(f"{name}: the graph names node {max(senders.max(), receivers.max())}, but the features end "
                         f"at node {n - 1}")
    return _graph(features, labels, senders, receivers, np.ones(len(senders)), node_split=node_split)


def molpcba_graphs(elements: Iterable[Mapping[str, np.ndarray]], task: int) -> list[dict[str, np.ndarray]]:
    """`ogbg_molpcba` elements (TFDS's format: `num_nodes [1]`, `node_feat [N, 9]`, `num_edges [1]`, `edge_feat
    [E, 3]`, `edge_index [E, 2]` with each bond once, `labels [128]` with NaN where an assay did not test the molecule)
    as graphs labelled by assay `task` (0 inactive, 1 active); molecules that assay did not test are left out. Node
    features are OGB's 9 atom descriptors as numbers; bond features are not used (the GNNs here take none)."""
    if not 0 <= task < 128:
        raise ValueError(f"ogbg_molpcba has 128 assays (tasks 0..127); got task {task}")
    out = []
    for element in elements:
        label = float(np.asarray(element["labels"])[task])
        if np.isnan(label):
            continue
        num_nodes = int(np.asarray(element["num_nodes"]).reshape(-1)[0])
        features = np.asarray(element["node_feat"], np.float32)
        if features.shape[0] != num_nodes:
            raise ValueError(f"A molpcba element says num_nodes={num_nodes} but holds {features.shape[0]} node rows")
        edges = np.asarray(element["edge_index"], np.int64).reshape(-1, 2)
        out.append(_graph(features, np.full(num_nodes, -1), edges[:, 0], edges[:, 1], np.ones(len(edges)),
                          label=np.int32(label)))
    return out


def molpcba_graphs_tuples(task: int, split: str = "train", data_dir: str | os.PathLike | None = None, *,
                          limit: int | None = None) -> tuple[list, np.ndarray]:
    """TFDS's `ogbg_molpcba` split (prepared once where the internet is) as undirected jraph `GraphsTuple`s of one
    assay, and their 0/1 labels; `limit` reads only the first elements."""
    source = sources_lib.source("ogbg_molpcba", split, None if data_dir is None else str(data_dir))
    count = len(source) if limit is None else min(limit, len(source))
    tuples, labels = [], []
    for g in molpcba_graphs((source[i] for i in range(count)), task):
        n = len(g["node_features"])
        tuples.append(graphs_lib.from_edges(g["node_features"], *graphs_lib.undirected_edges(g["senders"],
                                                                                             g["receivers"], n)))
        labels.append(int(g["label"]))
    return tuples, np.asarray(labels, np.int32)


# ======================================================================================================================
# TFDS builders.
# ======================================================================================================================


def _graph_features(num_features: int, graph_label: bool = False, node_split: bool = False
                    ) -> tfds.features.FeaturesDict:
    features = {
        "node_features": tfds.features.Tensor(shape=(None, num_features), dtype=np.float32),
        "node_labels": tfds.features.Tensor(shape=(None,), dtype=np.int32),
        "senders": tfds.features.Tensor(shape=(None,), dtype=np.int32),
        "receivers": tfds.features.Tensor(shape=(None,), dtype=np.int32),
        "edge_weights": tfds.features.Tensor(shape=(None,), dtype=np.float32),
    }
    if graph_label:
        features["label"] = tfds.features.Tensor(shape=(), dtype=np.int32)
    if node_split:
        features["node_split"] = tfds.features.Tensor(shape=(None,), dtype=np.int32)
    return tfds.features.FeaturesDict(features)


class _Graphs(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """One `train` split holding `_graphs(dl_manager)`, one example per graph."""

    VERSION = tfds.core.Version("1.0.0")

    def _graphs(self, dl_manager) -> list[dict[str, np.ndarray]]:
        raise NotImplementedError

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples(self._graphs(dl_manager))}

    def _generate_examples(self, graphs):
        for i, graph in enumerate(graphs):
            yield i, graph


class FedgclKarate(_Graphs):
    """Zachary's karate club (see the module docstring)."""

    def _info(self):
        return self.dataset_info_from_configs(features=_graph_features(34))

    def _graphs(self, dl_manager):
        return [karate()]


class SbmConfig(tfds.core.BuilderConfig):
    def __init__(self, *, block_size: int, p_in: float, p_out: float, **kwargs):
        super().__init__(**kwargs)
        self.block_size, self.p_in, self.p_out = block_size, p_in, p_out


class FedgclSbm(_Graphs):
    """Contextual SBM graphs (see the module docstring)."""

    NUM_BLOCKS, NUM_FEATURES, FEATURE_SIGNAL = 4, 16, 1.5
    BUILDER_CONFIGS = [
        SbmConfig(name="small", block_size=100, p_in=0.08, p_out=0.01, description="4 x 100 nodes"),
        SbmConfig(name="large", block_size=2500, p_in=0.004, p_out=0.0005, description="4 x 2,500 nodes"),
    ]

    def _info(self):
        return self.dataset_info_from_configs(features=_graph_features(self.NUM_FEATURES))

    def _graphs(self, dl_manager):
        c = self.builder_config
        return [contextual_sbm([c.block_size] * self.NUM_BLOCKS, c.p_in, c.p_out, self.NUM_FEATURES,
                               self.FEATURE_SIGNAL, seed=0)]


class _FromWheel(_Graphs, skip_registration=True):
    def _wheel(self, dl_manager) -> Path:
        # TFDS's manual folder found by hand: `dl_manager.manual_dir` fails first with TFDS's own message.
        return find_wheel(Path(dl_manager.download_dir) / "manual")


class FedgclDrosophila(_FromWheel):
    """The Drosophila larva mushroom-body connectome (see the module docstring)."""

    def _info(self):
        return self.dataset_info_from_configs(features=_graph_features(422))

    def _graphs(self, dl_manager):
        return [drosophila(self._wheel(dl_manager))]


class FedgclMice(_FromWheel):
    """32 mouse connectomes labelled by genotype (see the module docstring)."""

    def _info(self):
        return self.dataset_info_from_configs(features=_graph_features(len(MICE_FEATURES), graph_label=True))

    def _graphs(self, dl_manager):
        return mice(self._wheel(dl_manager))


class PlanetoidConfig(tfds.core.BuilderConfig):
    def __init__(self, *, num_features: int, **kwargs):
        super().__init__(**kwargs)
        self.num_features = num_features


class FedgclPlanetoid(_Graphs):
    """Cora, CiteSeer and PubMed from Planetoid's raw files, public split (see the module docstring)."""

    BUILDER_CONFIGS = [
        PlanetoidConfig(name="cora", num_features=1433, description="2,708 papers, 7 classes"),
        PlanetoidConfig(name="citeseer", num_features=3703, description="3,327 papers, 6 classes"),
        PlanetoidConfig(name="pubmed", num_features=500, description="19,717 papers, 3 classes"),
    ]

    def _info(self):
        return self.dataset_info_from_configs(features=_graph_features(self.builder_config.num_features,
                                                                       node_split=True))

    def _graphs(self, dl_manager):
        return [planetoid(Path(dl_manager.download_dir) / "manual" / "planetoid", self.builder_config.name)]


# ======================================================================================================================
# Reading them back.
# ======================================================================================================================


@functools.lru_cache(maxsize=8)
def _load(name: str, data_dir: str | None) -> tuple[dict[str, np.ndarray], ...]:
    source = sources_lib.source(name, "train", data_dir)
    return tuple({k: np.asarray(v) for k, v in source[i].items()} for i in range(len(source)))


def load_graphs(name: str, data_dir: str | os.PathLike | None = None) -> list[dict[str, np.ndarray]]:
    """Every graph of a registered dataset as a dict of numpy arrays (read once per process; copies returned)."""
    return [{k: v.copy() for k, v in g.items()} for g in _load(name, None if data_dir is None else str(data_dir))]
