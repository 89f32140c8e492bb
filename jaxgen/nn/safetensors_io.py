"""Lazy reading of the safetensors files that `save_pretrained` writes (one file, or shards with an index).

Tensors are read one at a time from a memory map, so a port converts and places each parameter before reading the
next, and a large checkpoint never sits whole in host memory. The reader records which names were read, so a port
can fail on tensors its name table forgot instead of silently dropping them.

Why not the `safetensors` package: its numpy reader raises `TypeError: data type 'bfloat16' not understood` on bf16
tensors (safetensors 0.8.0, 2026-12), the dtype most recent diffusers checkpoints are saved in. The format is an
8-byte little-endian header length, a JSON header `{name: {dtype, shape, data_offsets: [begin, end]}}` and the raw
bytes; `ml_dtypes` (a jax dependency) supplies bf16 and fp8 for numpy.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import ml_dtypes
import numpy as np

DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
    "F8_E4M3": ml_dtypes.float8_e4m3fn, "F8_E5M2": ml_dtypes.float8_e5m2,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_,
}


def read_header(path: Path) -> tuple[dict, int]:
    """(tensor entries, byte offset where the data starts) of one .safetensors file."""
    with open(path, "rb") as f:
        (size,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(size))
    header.pop("__metadata__", None)
    return header, 8 + size


class Checkpoint:
    """`names` (every tensor), `get(name)` -> np.ndarray (a copy), `used` (names read so far)."""

    def __init__(self, files: list[Path]):
        self._entries: dict[str, tuple[Path, dict, int]] = {}
        self._maps: dict[Path, np.memmap] = {}
        for path in files:
            header, start = read_header(path)
            for name, entry in header.items():
                self._entries[name] = (path, entry, start)
        self.names = sorted(self._entries)
        self.used: set[str] = set()

    def get(self, name: str) -> np.ndarray:
        if name not in self._entries:
            raise KeyError(f"tensor {name!r} is not in the checkpoint ({len(self.names)} tensors, e.g. "
                           f"{self.names[:3]})")
        path, entry, start = self._entries[name]
        if entry["dtype"] not in DTYPES:
            raise ValueError(f"tensor {name!r} in {path} has dtype {entry['dtype']}; readable: {sorted(DTYPES)}")
        if path not in self._maps:
            self._maps[path] = np.memmap(path, dtype=np.uint8, mode="r")
        begin, end = entry["data_offsets"]
        raw = self._maps[path][start + begin:start + end]
        self.used.add(name)
        return np.array(raw.view(DTYPES[entry["dtype"]]).reshape(entry["shape"]))


def open_checkpoint(model_dir: str | Path, stem: str) -> Checkpoint:
    """`<stem>.safetensors` in `model_dir`, or the shards listed by `<stem>.safetensors.index.json`."""
    model_dir = Path(model_dir)
    single, index = model_dir / f"{stem}.safetensors", model_dir / f"{stem}.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
        return Checkpoint([model_dir / file for file in sorted(set(weight_map.values()))])
    if single.is_file():
        return Checkpoint([single])
    found = sorted(p.name for p in model_dir.iterdir()) if model_dir.is_dir() else "no such folder"
    raise FileNotFoundError(f"no {single.name} or {index.name} in {model_dir} (found: {found})")
