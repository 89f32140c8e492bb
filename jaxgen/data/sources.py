"""Named datasets behind one interface: a random-access source of numpy examples, read through TFDS.

- Offline names (`OFFLINE_BUILDERS`) are TFDS builders in `jaxgen.data.builders`, prepared on first use from data
  that ships inside Python packages or is generated from a seed. No internet needed.
- Any other name is passed to TFDS as is (`"cifar10"`, `"imagenet2012:5.1.0"`), which works where the internet
  (or a copied, prepared folder) exists. A missing one fails with a message saying how to obtain it.

TFDS without TensorFlow: builders prepare `array_record` files, read back through `as_data_source` (random access),
so jaxgen never needs tf.data.
"""

from __future__ import annotations

import contextlib
import difflib
import importlib
import io
import logging
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

OFFLINE_BUILDERS: dict[str, str] = {
    "digits": "jaxgen.data.builders.digits",
    "mnist5k": "jaxgen.data.builders.mnist5k",
    "shapes": "jaxgen.data.builders.shapes",
    "moving_objects": "jaxgen.data.builders.moving_objects",
    "fashion_mnist_offline": "jaxgen.data.builders.fashion_mnist",
}

IN_MEMORY_LIMIT_BYTES = 1 << 30


class _HideRoutineTfdsWarnings(logging.Filter):
    """TFDS (through absl) warns "Variant folder ... has no dataset_info.json" each time it looks at a dataset that
    is not prepared yet, which is every first use of an offline dataset: routine here, not the user's concern."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Variant folder")


logging.getLogger("absl").addFilter(_HideRoutineTfdsWarnings())


class DatasetMissingError(FileNotFoundError):
    """A dataset is unknown or not prepared; the message says how to obtain it."""


class Source(Protocol):
    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> Mapping[str, Any]: ...


class ArraySource:
    """Examples held as stacked numpy arrays (small datasets, procedural data, tests)."""

    def __init__(self, arrays: Mapping[str, np.ndarray]):
        lengths = {k: len(v) for k, v in arrays.items()}
        if len(set(lengths.values())) != 1:
            raise ValueError(f"All features need the same number of examples; got {lengths}")
        self.arrays = {k: np.asarray(v) for k, v in arrays.items()}
        self._length = next(iter(lengths.values()))

    def __len__(self) -> int:
        return self._length

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        return {k: v[index] for k, v in self.arrays.items()}

    def get_batch(self, indices: np.ndarray) -> dict[str, np.ndarray]:
        return {k: v[indices] for k, v in self.arrays.items()}


def read_batch(source: Source, indices: Sequence[int] | np.ndarray) -> dict[str, np.ndarray]:
    """Stacks the examples at `indices` into arrays, one per feature."""
    if hasattr(source, "get_batch"):
        return source.get_batch(np.asarray(indices))
    examples = [source[int(i)] for i in indices]
    return {k: np.stack([np.asarray(e[k]) for e in examples]) for k in examples[0]}


def data_dir(override: str | os.PathLike | None = None) -> Path:
    """`override` > $JAXGEN_DATA_DIR > $TFDS_DATA_DIR > ~/tensorflow_datasets."""
    for candidate in (override, os.environ.get("JAXGEN_DATA_DIR"), os.environ.get("TFDS_DATA_DIR")):
        if candidate:
            return Path(candidate).expanduser()
    return Path("~/tensorflow_datasets").expanduser()


def _base_name(name: str) -> str:
    return name.split(":")[0].split("/")[0]


def builder(name: str, data_dir_override: str | None = None, *, prepare_offline: bool = True):
    """The TFDS builder for `name`; offline builders are prepared here if needed."""
    import tensorflow_datasets as tfds

    root = data_dir(data_dir_override)
    base = _base_name(name)
    if base in OFFLINE_BUILDERS:
        importlib.import_module(OFFLINE_BUILDERS[base])
        b = tfds.builder(name, data_dir=str(root), file_format="array_record")
        if prepare_offline and not b.is_prepared():
            _prepare_once_per_filesystem(b, root)
            b = tfds.builder(name, data_dir=str(root), file_format="array_record")  # re-read what was written
        return b
    try:
        b = tfds.builder(name, data_dir=str(root))
    except Exception as e:  # tfds raises DatasetNotFoundError / DatasetVariantBlockedError / config errors
        known = list(OFFLINE_BUILDERS) + list(tfds.list_builders(with_community_datasets=False))
        close = difflib.get_close_matches(base, known, n=3)
        hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
        raise DatasetMissingError(f"Unknown dataset {name!r}: {e}.{hint} Offline datasets: {sorted(OFFLINE_BUILDERS)}") from e
    if not b.is_prepared():
        raise DatasetMissingError(
            f"TFDS dataset {name!r} is not prepared in {root}. It needs the internet once: run "
            f"`jaxgen data prepare {name} --data-dir {root}` on a machine that has it (or copy a prepared "
            f"{b.name}/ folder from one into {root}); set $JAXGEN_DATA_DIR to use another folder. Offline datasets "
            f"that need nothing: {sorted(OFFLINE_BUILDERS)}."
        )
    return b


def _prepare_once_per_filesystem(b, root: Path) -> None:
    """Several processes of one run: process 0 prepares first while the others wait, so a shared folder is written
    once; a process whose folder is still empty afterwards (a disk of its own) then prepares its copy."""
    import jax

    if jax.process_count() == 1:
        _prepare_locked(b, root)
        return
    from jax.experimental import multihost_utils

    if jax.process_index() == 0:
        _prepare_locked(b, root)
    multihost_utils.sync_global_devices(f"jaxgen prepared {b.name}")
    if not b.is_prepared():
        _prepare_locked(b, root)


def _prepare_locked(b, root: Path) -> None:
    """Independent runs on one machine (a sweep) take turns on a lock file: the first prepares, the rest find the
    dataset prepared instead of writing it again at the same time."""
    import fcntl

    root.mkdir(parents=True, exist_ok=True)
    with open(root / f".{b.name}.prepare.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if not b.is_prepared():
                _prepare_quietly(b, root)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _prepare_quietly(b, root: Path) -> None:
    """One line instead of TFDS's "Downloading and preparing dataset Unknown size (download: Unknown size, ...)",
    its closing message and its progress bars: an offline dataset downloads nothing and takes seconds."""
    import tensorflow_datasets as tfds

    print(f"Preparing dataset {b.name} in {root} (first use only; offline, a few seconds)", file=sys.stderr,
          flush=True)
    tfds.display_progress_bar(False)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            b.download_and_prepare()
    finally:
        tfds.display_progress_bar(True)


def source(name: str, split: str, data_dir_override: str | None = None) -> Source:
    """A random-access source of one split; small datasets are read into memory once."""
    b = builder(name, data_dir_override)
    if split not in b.info.splits:
        raise DatasetMissingError(f"Dataset {name!r} has no split {split!r}; splits: {sorted(b.info.splits)}")
    data_source = b.as_data_source(split=split)
    if len(data_source) == 0:
        raise DatasetMissingError(f"Split {split!r} of dataset {name!r} is empty")
    first = data_source[0]
    example_bytes = sum(np.asarray(v).nbytes for v in first.values())
    if example_bytes * len(data_source) <= IN_MEMORY_LIMIT_BYTES:
        return ArraySource(read_batch(data_source, np.arange(len(data_source))))
    return data_source


def prepare(name: str, data_dir_override: str | None = None):
    """Prepares any dataset: offline builders locally, others through TFDS's download (needs the internet)."""
    import tensorflow_datasets as tfds

    base = _base_name(name)
    if base in OFFLINE_BUILDERS:
        return builder(name, data_dir_override)
    b = tfds.builder(name, data_dir=str(data_dir(data_dir_override)), file_format="array_record")
    b.download_and_prepare()
    return b
