"""The run's folder: `config.gin`, `run_info.json`, `metrics.jsonl`, `tensorboard/`, `checkpoints/`, `eval/<step>/`."""

from __future__ import annotations

import datetime
import importlib.metadata
import json
import platform
import subprocess
import sys
from pathlib import Path

import jax

PACKAGES = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy", "gin-config", "tensorflow-datasets", "jraph")


def git_sha(path: Path) -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=path, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode:
        return None
    dirty = subprocess.run(["git", "status", "--porcelain"], cwd=path, capture_output=True, text=True, timeout=10)
    return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def versions() -> dict[str, str | None]:
    found = {}
    for name in PACKAGES:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = None
    return found


def run_info(mesh_summary: dict, extra: dict | None = None) -> dict:
    devices = jax.devices()
    return {
        "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "argv": sys.argv,
        "python": platform.python_version(),
        "host": platform.node(),
        "versions": versions(),
        "git_sha": git_sha(Path(__file__).resolve().parent),
        "backend": jax.default_backend(),
        "devices": {"count": len(devices), "kind": devices[0].device_kind, "local_count": jax.local_device_count()},
        "mesh": mesh_summary,
        **(extra or {}),
    }


def write_json(path: Path, value: dict) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(value, indent=2, sort_keys=True, default=str) + "\n")
    tmp.replace(path)
