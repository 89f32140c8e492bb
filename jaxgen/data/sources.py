"""Named datasets behind one interface: a random-access source of numpy examples, read through TFDS.

- Registered names (`register_dataset`) are TFDS builders defined in a module of ours, prepared on first use from data
  that ships inside Python packages or is generated from a seed. No internet needed. The built-in ones live in
  `jaxgen.data.builders`; a paper registers its own from its package's `__init__.py`
  (`register_dataset("ml100k", f"{__name__}.data")`), so a new dataset never edits this file.
  `registered_datasets()` imports the papers' packages first (`jaxgen.core.plugins`), so `jaxgen data list` and a
  name looked up before its project was imported see every registration.
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

from jaxgen.core import plugins

_REGISTRY: dict[str, str] = {}

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


def _base_name(name: str) -> str:
    return name.split(":")[0].split("/")[0]


def register_dataset(name: str, builder_module: str) -> None:
    """Makes `name` an offline dataset whose TFDS builder is defined in `builder_module` (imported on first use, so
    registering costs nothing). The builder class must register with TFDS under `name` (class `Ml100k` -> "ml100k").
    Registering one name twice with the same module is harmless; with another module it is an error."""
    if not name or _base_name(name) != name:
        raise ValueError(f"A dataset name is a plain TFDS name without config or version; got {name!r}")
    existing = _REGISTRY.get(name)
    if existing is not None and existing != builder_module:
        raise ValueError(f"Dataset {name!r} is already registered with builder module {existing!r}; refusing to "
                         f"re-register it with {builder_module!r}")
    _REGISTRY[name] = builder_module


def registered_datasets() -> dict[str, str]:
    """{name: builder module} of every registered dataset, the projects' included."""
    plugins.import_projects()
    return dict(sorted(_REGISTRY.items()))


def _registered_module(base: str) -> str | None:
    if base not in _REGISTRY:
        plugins.import_projects()
    return _REGISTRY.get(base)


for _name, _module in (("digits", "digits"), ("mnist5k", "mnist5k"), ("shapes", "shapes"),
                       ("moving_objects", "moving_objects"), ("fashion_mnist_offline", "fashion_mnist"),
                       ("shape_classes", "shape_classes"), ("skimage_photos", "skimage_photos")):
    register_dataset(_name, f"jaxgen.data.builders.{_module}")


def data_dir(override: str | os.PathLike | None = None) -> Path:
    """`override` > $JAXGEN_DATA_DIR > $TFDS_DATA_DIR > ~/tensorflow_datasets."""
    for candidate in (override, os.environ.get("JAXGEN_DATA_DIR"), os.environ.get("TFDS_DATA_DIR")):
        if candidate:
            return Path(candidate).expanduser()
    return Path("~/tensorflow_datasets").expanduser()


def builder(name: str, data_dir_override: str | None = None, *, prepare_offline: bool = True):
    """The TFDS builder for `name`; offline builders are prepared here if needed."""
    import tensorflow_datasets as tfds

    root = data_dir(data_dir_override)
    base = _base_name(name)
    module = _registered_module(base)
    if module is not None:
        importlib.import_module(module)
        b = tfds.builder(name, data_dir=str(root), file_format="array_record")
        if prepare_offline and not b.is_prepared():
            _prepare_once_per_filesystem(b, root)
            b = tfds.builder(name, data_dir=str(root), file_format="array_record")  # re-read what was written
        return b
    b = _tfds_builder(name, root)
    if not b.is_prepared():
        raise DatasetMissingError(
            f"TFDS dataset {name!r} is not prepared in {root}. It needs the internet once: run "
            f"`jaxgen data prepare {name} --data-dir {root}` on a machine that has it (or copy a prepared "
            f"{b.name}/ folder from one into {root}); set $JAXGEN_DATA_DIR to use another folder. Offline datasets "
            f"that need nothing: {sorted(_REGISTRY)}."
        )
    return b


def _tfds_builder(name: str, root: Path, **kwargs):
    """`tfds.builder`, with a name it does not know answered by the closest known names (TFDS's own message lists
    its whole catalog)."""
    import tensorflow_datasets as tfds

    try:
        return tfds.builder(name, data_dir=str(root), **kwargs)
    except tfds.core.registered.DatasetNotFoundError as e:
        known = list(registered_datasets()) + list(tfds.list_builders(with_community_datasets=False))
        close = difflib.get_close_matches(_base_name(name), known, n=3, cutoff=0.7)
        hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
        raise DatasetMissingError(f"Unknown dataset {name!r}.{hint} Offline datasets: {sorted(registered_datasets())}; "
                                  "any TFDS name works where the internet is (`jaxgen data list`).") from e
    except Exception as e:  # a known name with a wrong version or config: TFDS's message says which exist
        raise DatasetMissingError(f"Dataset {name!r}: {str(e).splitlines()[0]}") from e


def _unreachable_downloads(b, manual: Path) -> list[str]:
    """The URLs of `b`'s source files that are neither in `manual` (TFDS's manual-download folder) nor reachable.

    Checked with one short connection per host, so a machine without the internet learns it in seconds rather than
    after TFDS's minutes of retries. Empty when TFDS does not list the files (it then tries itself)."""
    import socket
    from urllib.parse import urlsplit

    missing = [url for url, info in (b.url_infos or {}).items()
               if not (info.filename and (manual / info.filename).exists())]
    unreachable_hosts = set()
    addresses = {(u.hostname, u.port or (443 if u.scheme == "https" else 80)) for u in map(urlsplit, missing)}
    for host, port in addresses:
        try:
            socket.create_connection((host, port), timeout=5).close()
        except OSError:
            unreachable_hosts.add(host)
    return [url for url in missing if urlsplit(url).hostname in unreachable_hosts]


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
    if _has_ragged_features(b.info.features):
        return data_source  # examples of different shapes do not stack; a Loader with a `collate` reads them
    first = data_source[0]
    example_bytes = sum(np.asarray(v).nbytes for v in first.values())
    if example_bytes * len(data_source) <= IN_MEMORY_LIMIT_BYTES:
        return ArraySource(read_batch(data_source, np.arange(len(data_source))))
    return data_source


def _has_ragged_features(features) -> bool:
    """Whether any feature has an unknown dimension (variable-length sequences, graphs)."""
    import tensorflow_datasets as tfds

    return any(None in shape for shape in tfds.core.utils.flatten_nest_dict(features.shape).values())


def prepare(name: str, data_dir_override: str | None = None):
    """Prepares any dataset: offline builders locally, others through TFDS's download (needs the internet, or the
    source files in TFDS's manual-download folder)."""
    if _registered_module(_base_name(name)) is not None:
        return builder(name, data_dir_override)
    root = data_dir(data_dir_override)
    b = _tfds_builder(name, root, file_format="array_record")
    if b.is_prepared():
        return b
    manual = root / "downloads" / "manual"
    instructions = getattr(b, "MANUAL_DOWNLOAD_INSTRUCTIONS", None)
    if instructions and not (manual.is_dir() and any(manual.iterdir())):
        raise DatasetMissingError(f"{name!r} is downloaded by hand, into {manual}/: {' '.join(instructions.split())} "
                                  f"Then rerun `jaxgen data prepare {name}`.")
    unreachable = _unreachable_downloads(b, manual)
    if unreachable:
        files = ", ".join(f"{url} ({b.url_infos[url].size})" for url in unreachable)
        raise DatasetMissingError(
            f"{name!r} is built from files on the internet, which this machine cannot reach. Download {files} where "
            f"the internet is, put the file{'s' if len(unreachable) > 1 else ''} in {manual}/ and rerun "
            f"`jaxgen data prepare {name}`; or copy a prepared {b.name}/ folder into {root}.")
    b.download_and_prepare()
    return b
