"""The SSL data streams: a fixed, seeded labeled subset (N labels per class) and the unlabeled pool, as two `Loader`s.

`split_labeled(labels, per_class, seed)` picks the labeled indices (the same for a given seed on every machine); as
in USB, the unlabeled pool is the whole train split (the labeled examples included) and keeps each example's true
label under `label` only so the trainer can measure pseudo-label accuracy — the loss never reads it. `index` is the
example's position in the pool (FlexMatch remembers a prediction per unlabeled example).

Step s reads labeled batch s and unlabeled batch s (`uratio` times larger) from two independently shuffled Loaders,
so both streams stay pure functions of (seed, step) and resume exactly.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np

from jaxgen.data import ArraySource, Loader
from jaxgen.data import sources as sources_lib


def split_labeled(labels: np.ndarray, per_class: int, seed: int) -> np.ndarray:
    """Sorted indices of `per_class` examples of every class, drawn without replacement by `seed`."""
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"labels must be 1-d; got shape {labels.shape}")
    if per_class <= 0:
        raise ValueError(f"per_class must be positive; got {per_class}")
    rng = np.random.default_rng([seed, per_class])
    chosen = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        if len(members) < per_class:
            raise ValueError(f"class {c} has {len(members)} examples; cannot take {per_class} labels per class")
        chosen.append(rng.choice(members, per_class, replace=False))
    return np.sort(np.concatenate(chosen))


@functools.lru_cache(maxsize=4)
def read_split(name: str, split: str, data_dir: str | None = None) -> ArraySource:
    """A whole split in memory, read once per process: comparing algorithms in one notebook or test session
    otherwise re-reads the same TFDS files for every run."""
    source = sources_lib.source(name, split, data_dir)
    return ArraySource(sources_lib.read_batch(source, np.arange(len(source))))


@dataclasses.dataclass(eq=False)
class SSLData:
    """Labeled and unlabeled loaders over one dataset's train split, plus the test split for evaluation.

    `dataset` is a source name (`"digits"`, `"mnist5k"`, `"fashion_mnist_offline"`, or a TFDS name such as
    `"cifar10"` where the internet exists) or an in-memory `ArraySource` with `image` and `label`.
    """

    dataset: str | ArraySource
    labels_per_class: int
    batch_size: int
    uratio: int = 7
    split_seed: int = 0
    seed: int = 0
    eval_batch_size: int = 256
    eval_split: str = "test"
    eval_dataset: ArraySource | None = None
    data_dir: str | None = None

    def __post_init__(self):
        if self.uratio <= 0 or self.batch_size <= 0:
            raise ValueError(f"batch_size and uratio must be positive; got {self.batch_size}, {self.uratio}")

    @functools.cached_property
    def train(self) -> ArraySource:
        source = self.dataset if isinstance(self.dataset, ArraySource) else \
            read_split(self.dataset, "train", self.data_dir)
        missing = {"image", "label"} - set(source.arrays)
        if missing:
            raise KeyError(f"SSL data needs 'image' and 'label' features; {self.dataset!r} lacks {sorted(missing)}")
        return ArraySource({"image": source.arrays["image"], "label": source.arrays["label"].astype(np.int32)})

    @functools.cached_property
    def labeled_indices(self) -> np.ndarray:
        return split_labeled(self.train.arrays["label"], self.labels_per_class, self.split_seed)

    @property
    def num_classes(self) -> int:
        return int(self.train.arrays["label"].max()) + 1

    @property
    def num_unlabeled(self) -> int:
        return len(self.train)

    @functools.cached_property
    def labeled(self) -> Loader:
        picked = {k: v[self.labeled_indices] for k, v in self.train.arrays.items()}
        return Loader(ArraySource(picked), batch_size=self.batch_size, seed=self.seed)

    @functools.cached_property
    def unlabeled(self) -> Loader:
        pool = {**self.train.arrays, "index": np.arange(len(self.train), dtype=np.int32)}
        return Loader(ArraySource(pool), batch_size=self.batch_size * self.uratio, seed=self.seed + 1)

    @functools.cached_property
    def evaluation(self) -> Loader:
        """The held-out split, in order: `eval_dataset` when given (required for in-memory data), else the
        dataset's `eval_split`."""
        if self.eval_dataset is not None:
            source = self.eval_dataset
        elif isinstance(self.dataset, ArraySource):
            raise ValueError("An in-memory SSLData.dataset needs an eval_dataset (an ArraySource of the test split)")
        else:
            source = read_split(self.dataset, self.eval_split, self.data_dir)
        return Loader(source, batch_size=self.eval_batch_size, shuffle=False, features=("image", "label"))

    def batch(self, step: int, labeled_rows: np.ndarray | None = None,
              unlabeled_rows: np.ndarray | None = None) -> dict[str, dict[str, np.ndarray]]:
        """One step's host batch: `{"labeled": {image, label}, "unlabeled": {image, label (hidden), index}}`."""
        return {"labeled": self.labeled.batch(step, labeled_rows),
                "unlabeled": self.unlabeled.batch(step, unlabeled_rows)}

    def state(self, next_step: int) -> dict:
        return {"next_step": int(next_step), "labeled": self.labeled.state(next_step),
                "unlabeled": self.unlabeled.state(next_step), "labels_per_class": self.labels_per_class,
                "split_seed": self.split_seed, "labeled_indices_head": self.labeled_indices[:20].tolist()}
