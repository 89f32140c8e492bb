"""Deterministic, resumable, per-host batches.

The batch of step `s` is a pure function of (seed, s): epoch `e` visits the examples in the order of a permutation
drawn from `(seed, e)`, and step `s` takes the global positions `[s·B, (s+1)·B)` of that endless sequence. Each process
reads only its own rows of that global batch (`jaxgen.core.sharding.process_rows`), so the global batch is the same on
one host or many, and the iterator state that goes into a checkpoint is just the next step.

Examples of different sizes (graphs, variable-length sequences) go through a `collate` hook: it receives this process's
examples of the step, in global-row order, and returns the batch (a dict of numpy arrays or of pytrees of them, such
as a jraph `GraphsTuple`). Resume stays exact as long as `collate` is a pure function of its examples. Two layouts:

- padded sequences: pad to a length bucket, add a mask; the leading axis stays the examples (`batch_size` rows in
  the global batch), so the batch shards like any other;
- packed graphs: pack each device's share of the examples into one padded `GraphsTuple` and stack those, so the
  leading axis is one entry per batch shard (device), not per example; `jaxgen.core.sharding.to_global` infers the
  global leading size from the local one, so such a batch shards one packed graph per device.

Pad to size buckets (e.g. powers of two), so jit compiles once per bucket, not once per step. With several processes,
every process must pick the same padded shape for a step: derive it from the dataset (its largest example) or from
something every process knows, never from its local examples alone. In `eval_batches` each example carries a boolean
`"valid"` (False for the padding examples of the last batch) that `collate` must pass on into the batch.

Why not grain (decided 2026-12-07, grain 0.2.18; wheels exist for Python 3.11 and 3.12, and it installs and runs
beside jax 0.12 on 3.12). grain keeps the resume guarantee too (`MapDataset[step]` is a pure function of the step,
and `mp_prefetch` iterators restore exactly from `get_state()`), but it was slower here:
`experiments/bench/loader_throughput.py` (512 CIFAR-sized examples per step = InstanT's 64 + 448, augmented per
example on the host: crop, flip, Cutout; 2 CPU cores under load from other jobs) measured this Loader at 28-40
steps/s, grain's `MapDataset` at 12-14 and `mp_prefetch` with 2 worker processes at 14-15; the Loader without a
host transform (InstanT's path: it augments on the device) reads 1,300 steps/s, so the loader is not what held
InstanT near 100 steps/s. A thread pool over per-example numpy work did not help (24-35 steps/s: the GIL); writing
the augmentation over the whole batch did (47-56 steps/s). So: keep host transforms batched (or on the device), and
revisit grain where per-example Python work is unavoidable and the host has many cores (rerun the benchmark with
`--workers 16` on a 16-core GPU host). Numbers: `experiments/bench/loader_throughput.json`.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import queue
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from jaxgen.data import sources

Transform = Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]
Collate = Callable[[list[dict[str, Any]]], dict[str, Any]]


@dataclasses.dataclass(eq=False)
class Loader:
    """A dataset split read in global batches of `batch_size`.

    `dataset` is a registered/TFDS name or any object with `__len__` and `__getitem__` (e.g. `ArraySource`).
    `features` keeps only those features (all when None); `collate` turns a list of examples into a batch (default:
    stack each feature; see the module docstring for examples of different sizes); `transform` maps that batch to a
    batch on the host.
    """

    dataset: str | sources.Source
    batch_size: int
    split: str = "train"
    seed: int = 0
    shuffle: bool = True
    features: Sequence[str] | None = None
    transform: Transform | None = None
    collate: Collate | None = None
    data_dir: str | None = None

    def __post_init__(self):
        if self.batch_size <= 0:
            raise ValueError(f"batch_size must be positive; got {self.batch_size}")

    @functools.cached_property
    def source(self) -> sources.Source:
        if isinstance(self.dataset, str):
            return sources.source(self.dataset, self.split, self.data_dir)
        return self.dataset

    @property
    def name(self) -> str:
        return self.dataset if isinstance(self.dataset, str) else type(self.dataset).__name__

    def __len__(self) -> int:
        return len(self.source)

    @functools.lru_cache(maxsize=2)
    def _order(self, epoch: int) -> np.ndarray:
        if not self.shuffle:
            return np.arange(len(self))
        return np.random.default_rng([self.seed, epoch]).permutation(len(self))

    def _select(self, features: Mapping[str, Any]) -> dict[str, Any]:
        if self.features is None:
            return dict(features)
        missing = sorted(set(self.features) - set(features))
        if missing:
            raise KeyError(f"Dataset {self.name!r} has no features {missing}; it has {sorted(features)}")
        return {k: features[k] for k in self.features}

    def _read(self, indices: np.ndarray, valid: np.ndarray | None = None) -> dict[str, Any]:
        """The batch of the examples at `indices`; `valid` (eval only) goes into the batch, through `collate` when
        there is one (each example carries its flag) and beside the stacked features otherwise."""
        if self.collate is None:
            batch = self._select(sources.read_batch(self.source, indices))
        else:
            examples = [self._select(self.source[int(i)]) for i in indices]
            if valid is not None:
                for example, is_valid in zip(examples, valid):
                    example["valid"] = np.bool_(is_valid)
            batch = self.collate(examples)
        batch = self.transform(batch) if self.transform else batch
        if valid is not None and self.collate is None:
            batch["valid"] = valid
        return batch

    def batch(self, step: int, rows: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """This process's `rows` (default: all) of the global batch of `step`."""
        rows = np.arange(self.batch_size) if rows is None else np.asarray(rows)
        positions = step * self.batch_size + rows
        epochs, offsets = np.divmod(positions, len(self))
        indices = np.empty_like(positions)
        for epoch in np.unique(epochs):
            selected = epochs == epoch
            indices[selected] = self._order(int(epoch))[offsets[selected]]
        return self._read(indices)

    def iterate(self, start_step: int, rows: np.ndarray | None = None) -> Iterator[dict[str, np.ndarray]]:
        step = start_step
        while True:
            yield self.batch(step, rows)
            step += 1

    def num_eval_batches(self) -> int:
        return math.ceil(len(self) / self.batch_size)

    def eval_batches(self, rows: np.ndarray | None = None) -> Iterator[dict[str, np.ndarray]]:
        """One pass in dataset order; the last batch is padded and `valid` marks the real rows."""
        rows = np.arange(self.batch_size) if rows is None else np.asarray(rows)
        for b in range(self.num_eval_batches()):
            positions = b * self.batch_size + rows
            valid = positions < len(self)
            yield self._read(np.where(valid, positions, 0), valid)

    def state(self, next_step: int) -> dict[str, Any]:
        """What a checkpoint stores about the data stream (the step is enough to continue it exactly)."""
        return {"next_step": int(next_step), "dataset": self.name, "split": self.split, "seed": self.seed,
                "batch_size": self.batch_size, "num_examples": len(self)}


def prefetch(iterator: Iterator[Any], size: int = 2, convert: Callable[[Any], Any] | None = None) -> Iterator[Any]:
    """Runs `iterator` (and `convert`, e.g. host-to-device assembly) `size` items ahead in a background thread."""
    done = object()
    items: queue.Queue = queue.Queue(maxsize=size)
    stop = threading.Event()

    def produce():
        try:
            for item in iterator:
                if stop.is_set():
                    return
                items.put(convert(item) if convert else item)
            items.put(done)
        except BaseException as e:  # surfaced in the consumer, not lost in the thread
            items.put(e)

    thread = threading.Thread(target=produce, daemon=True)
    thread.start()
    try:
        while True:
            item = items.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while thread.is_alive():
            try:
                items.get_nowait()
            except queue.Empty:
                thread.join(timeout=0.05)
