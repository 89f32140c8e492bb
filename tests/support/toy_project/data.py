"""Two seeded TFDS datasets whose examples differ in size, and the collate functions that batch them.

- `toy_sequences`: token sequences of length 3..20; the label is whether token 1 occurs more often than token 2.
- `toy_graphs`: random graphs of 3..12 nodes with 2 node features; the label is whether the graph has more edges
  than nodes.

`pad_sequences` pads to a power-of-two length (a mask marks real tokens); `GraphCollate` packs each device's share of
the examples into one jraph `GraphsTuple` padded to power-of-two node and edge counts, one entry per device.
"""

from __future__ import annotations

import dataclasses

import jraph
import numpy as np
import tensorflow_datasets as tfds

NUM_EXAMPLES = {"train": 48, "test": 20}


def _bucket(size: int, smallest: int = 8) -> int:
    """The next power of two >= size (at least `smallest`): few distinct shapes, so few compilations."""
    return max(smallest, 1 << max(size - 1, 0).bit_length())


class ToySequences(tfds.core.GeneratorBasedBuilder):
    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        return self.dataset_info_from_configs(features=tfds.features.FeaturesDict({
            "tokens": tfds.features.Tensor(shape=(None,), dtype=np.int32),
            "label": tfds.features.Tensor(shape=(), dtype=np.int32),
        }))

    def _split_generators(self, dl_manager):
        return {split: self._generate_examples(split, n) for split, n in NUM_EXAMPLES.items()}

    def _generate_examples(self, split, n):
        rng = np.random.default_rng([7, len(split)])
        for i in range(n):
            tokens = rng.integers(1, 5, size=rng.integers(3, 21)).astype(np.int32)
            yield i, {"tokens": tokens, "label": np.int32(np.sum(tokens == 1) > np.sum(tokens == 2))}


class ToyGraphs(tfds.core.GeneratorBasedBuilder):
    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        return self.dataset_info_from_configs(features=tfds.features.FeaturesDict({
            "nodes": tfds.features.Tensor(shape=(None, 2), dtype=np.float32),
            "senders": tfds.features.Tensor(shape=(None,), dtype=np.int32),
            "receivers": tfds.features.Tensor(shape=(None,), dtype=np.int32),
            "label": tfds.features.Tensor(shape=(), dtype=np.int32),
        }))

    def _split_generators(self, dl_manager):
        return {split: self._generate_examples(split, n) for split, n in NUM_EXAMPLES.items()}

    def _generate_examples(self, split, n):
        rng = np.random.default_rng([11, len(split)])
        for i in range(n):
            num_nodes = int(rng.integers(3, 13))
            num_edges = int(rng.integers(1, 2 * num_nodes))
            yield i, {"nodes": rng.normal(size=(num_nodes, 2)).astype(np.float32),
                      "senders": rng.integers(0, num_nodes, num_edges).astype(np.int32),
                      "receivers": rng.integers(0, num_nodes, num_edges).astype(np.int32),
                      "label": np.int32(num_edges > num_nodes)}


def pad_sequences(examples: list[dict]) -> dict[str, np.ndarray]:
    """[n, bucket] tokens (0 = padding) with a boolean mask; other features stacked."""
    length = _bucket(max(len(e["tokens"]) for e in examples))
    tokens = np.zeros((len(examples), length), np.int32)
    for row, example in enumerate(examples):
        tokens[row, :len(example["tokens"])] = example["tokens"]
    batch = {"tokens": tokens, "mask": tokens != 0}
    for key in examples[0].keys() - {"tokens"}:
        batch[key] = np.stack([np.asarray(e[key]) for e in examples])
    return batch


@dataclasses.dataclass(frozen=True)
class GraphCollate:
    """Packs the examples into `groups` padded GraphsTuples (one per local device), stacked on a leading axis.

    Every group has `len(examples) // groups` real graphs plus jraph's padding graph; node and edge counts are padded
    to the power of two that fits the largest group, so all groups share one shape. Graph labels (and the eval
    `valid` flags) ride as per-graph features beside the graph: {"graph", "label", "graph_mask"}, leading axis groups.
    """

    groups: int = 1

    def __call__(self, examples: list[dict]) -> dict:
        if len(examples) % self.groups:
            raise ValueError(f"{len(examples)} examples do not split into {self.groups} groups")
        size = len(examples) // self.groups
        chunks = [examples[i * size:(i + 1) * size] for i in range(self.groups)]
        graphs = [jraph.batch_np([self._graph(e) for e in chunk]) for chunk in chunks]
        nodes = _bucket(max(int(g.n_node.sum()) for g in graphs) + 1)
        edges = _bucket(max(int(g.n_edge.sum()) for g in graphs))
        padded = [jraph.pad_with_graphs(g, nodes, edges, size + 1) for g in graphs]
        label = np.stack([np.append([e["label"] for e in chunk], 0) for chunk in chunks]).astype(np.int32)
        graph_mask = np.stack([np.append([e.get("valid", True) for e in chunk], False) for chunk in chunks])
        stacked = jraph.GraphsTuple(*(None if parts[0] is None else np.stack(parts) for parts in zip(*padded)))
        return {"graph": stacked, "label": label, "graph_mask": graph_mask}

    @staticmethod
    def _graph(example: dict) -> jraph.GraphsTuple:
        return jraph.GraphsTuple(nodes=example["nodes"], edges=None, senders=example["senders"],
                                 receivers=example["receivers"], globals=None,
                                 n_node=np.array([len(example["nodes"])]), n_edge=np.array([len(example["senders"])]))
