"""The run's folder: `config.gin`, `run_info.json`, `metrics.jsonl`, `tensorboard/`, `checkpoints/`, `eval/<step>/`.

A workdir is the record of how its checkpoints came to be, so nothing here overwrites history:
- `config.gin` is the config in effect. A config that changes in a workdir that already holds a run is refused unless
  asked for (`jaxgen run --allow-config-change`); then the old one is kept as `config.<n>.gin` and the change, with the
  step it took effect, is appended to `config_history.jsonl`.
- `run_info.json` describes the latest start that trained; each earlier start's is appended to
  `run_info.history.jsonl`.
- One run at a time: `.jaxgen.lock` is held (fcntl) by the process that writes the workdir, and names it.
- A start that fails before saving a checkpoint or a record is undone (`Claim.abandon`): no half-made workdir.
"""

from __future__ import annotations

import datetime
import difflib
import fcntl
import importlib.metadata
import json
import logging
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

CONFIG_FILE = "config.gin"
CONFIG_HISTORY_FILE = "config_history.jsonl"
RUN_INFO_FILE = "run_info.json"
RUN_INFO_HISTORY_FILE = "run_info.history.jsonl"
LOCK_FILE = ".jaxgen.lock"

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


class WorkdirError(RuntimeError):
    """The workdir cannot be used as asked (a file, in use by another run, a run of another config); the message says
    what to do instead."""


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def run_info(mesh_summary: dict, extra: dict | None = None) -> dict:
    import jax  # here, so that the command line reaches its checks without importing jax

    devices = jax.devices()
    return {
        "started": _now(),
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


def _append_json_line(path: Path, value: dict) -> None:
    with path.open("a") as f:
        f.write(json.dumps(value, sort_keys=True, default=str) + "\n")


def record_start(workdir: Path, info: dict) -> None:
    """Writes this start's `run_info.json`; the previous start's is appended to `run_info.history.jsonl` first."""
    path = Path(workdir) / RUN_INFO_FILE
    if path.exists():
        _append_json_line(path.with_name(RUN_INFO_HISTORY_FILE), json.loads(path.read_text()))
    write_json(path, info)


def checkpoint_steps(workdir: Path) -> list[int]:
    """Steps of the finalised checkpoints (orbax names a step's folder by its number only once it is complete)."""
    folder = Path(workdir) / "checkpoints"
    return sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit()) if folder.is_dir() else []


def _results(workdir: Path) -> tuple[tuple[int, ...], int]:
    """What runs have saved in `workdir`: its checkpoint steps and the size of metrics.jsonl."""
    metrics = Path(workdir) / "metrics.jsonl"
    return tuple(checkpoint_steps(workdir)), metrics.stat().st_size if metrics.exists() else 0


def holds_results(workdir: Path) -> bool:
    """Whether a run got as far as a checkpoint or a metrics record in `workdir` (a start that failed before either,
    on a bad setting or missing data say, leaves nothing worth keeping)."""
    return _results(workdir) != ((), 0)


def config_change(workdir: Path, text: str) -> list[str]:
    """How `text` differs from the workdir's `config.gin`, one entry per changed line (`'SEED = 0' -> 'SEED = 1'`);
    empty when it is the same or there is none."""
    path = Path(workdir) / CONFIG_FILE
    if not path.exists():
        return []
    old, new = path.read_text().splitlines(), text.splitlines()
    changes = []
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(None, old, new, autojunk=False).get_opcodes():
        if tag == "replace" and i2 - i1 == j2 - j1:
            changes += [f"{a!r} -> {b!r}" for a, b in zip(old[i1:i2], new[j1:j2])]
        elif tag != "equal":
            changes += [f"removed {a!r}" for a in old[i1:i2]] + [f"added {b!r}" for b in new[j1:j2]]
    return changes


def write_config(workdir: Path, text: str, *, step: int) -> str | None:
    """Makes `text` the workdir's `config.gin`. A different one already there is kept as `config.<n>.gin` (whose name
    is returned) and the change recorded in `config_history.jsonl` with `step`, the checkpoint the new config
    continues from."""
    workdir = Path(workdir)
    path = workdir / CONFIG_FILE
    archived = None
    if path.exists():
        if path.read_text() == text:
            return None
        n = 1
        while (workdir / f"config.{n}.gin").exists():
            n += 1
        archived = f"config.{n}.gin"
        path.rename(workdir / archived)
        _append_json_line(workdir / CONFIG_HISTORY_FILE,
                          {"time": _now(), "from_step": step, "previous": archived, "argv": sys.argv})
    path.write_text(text)
    return archived


class Lock:
    """An exclusive lock on a workdir for one process: held while the run writes it, released at exit (also by a crash
    or kill -9: the kernel drops fcntl locks of a dead process). The lock file names the holder for whoever is
    refused; it is never deleted, since deleting a lock file races with the next process that opens it."""

    def __init__(self, workdir: Path):
        self.path = Path(workdir) / LOCK_FILE
        self._file = None

    def acquire(self) -> None:
        file = self.path.open("a+")
        try:
            fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            file.seek(0)
            holder = file.read().strip() or "another process"
            file.close()
            raise WorkdirError(f"{self.path.parent} is in use by {holder}; wait for that run to end (or stop it), or "
                               "use another --workdir.") from None
        except OSError as e:  # a file system without locks (some FUSE mounts of object stores)
            file.close()
            logging.warning("%s cannot be locked (%s): a second run started on this workdir would not be stopped",
                            self.path.parent, e.strerror)
            return
        file.seek(0)
        file.truncate()
        file.write(f"process {os.getpid()} on host {platform.node()} (started {_now()}: {' '.join(sys.argv)})\n")
        file.flush()
        self._file = file

    def release(self) -> None:
        if self._file is not None:
            fcntl.flock(self._file, fcntl.LOCK_UN)
            self._file.close()
            self._file = None


class Claim:
    """A run's hold on its workdir, from `claim`: `release()` when the run ends; `abandon()` before, when it failed.

    Abandoning undoes what the start wrote, if the run saved nothing since (no new checkpoint, no new record): a
    workdir it created is removed, a config it changed is put back (its history line dropped), a config.gin it added
    is removed. A failed start thus leaves no half-made workdir and no history of a config that never trained.
    """

    def __init__(self, workdir: Path, lock: Lock, *, created: bool, had_config: bool, archived: str | None):
        self.workdir, self.lock = workdir, lock
        self.created, self.had_config, self.archived = created, had_config, archived
        self._results = _results(workdir)

    def abandon(self) -> None:
        if _results(self.workdir) != self._results:
            return
        if self.created:
            shutil.rmtree(self.workdir, ignore_errors=True)
        elif self.archived:
            (self.workdir / self.archived).replace(self.workdir / CONFIG_FILE)
            history = self.workdir / CONFIG_HISTORY_FILE
            earlier = "".join(history.read_text().splitlines(keepends=True)[:-1])
            if earlier:
                history.write_text(earlier)
            else:
                history.unlink()
        elif not self.had_config:
            (self.workdir / CONFIG_FILE).unlink(missing_ok=True)

    def release(self) -> None:
        self.lock.release()


def claim(workdir: Path, config_text: str, *, allow_config_change: bool = False,
          restore_step: int | None = None) -> Claim:
    """The checks before a run writes anything (process 0 only): the path can be a folder, no other run holds it, and
    the run in it, if it got as far as a checkpoint or a record, has this config unless a change is asked for. Then
    the workdir is locked and config.gin written (a change taking effect at `restore_step`, else the latest
    checkpoint)."""
    workdir = Path(workdir)
    if workdir.exists() and not workdir.is_dir():
        raise WorkdirError(f"--workdir {workdir} is a file, not a folder; give a folder's path.")
    created = not workdir.exists()
    try:
        workdir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise WorkdirError(f"--workdir {workdir} cannot be created: {e.strerror} ({e.filename})") from e
    lock = Lock(workdir)
    lock.acquire()
    try:
        steps = checkpoint_steps(workdir)
        changes = config_change(workdir, config_text)
        if changes and holds_results(workdir) and not allow_config_change:
            shown = "; ".join(changes[:3]) + (f"; and {len(changes) - 3} more" if len(changes) > 3 else "")
            trained = f"trained up to step {steps[-1]}" if steps else "with records but no checkpoint yet"
            raise WorkdirError(
                f"{workdir} holds a run of another config ({trained}); this command changes {shown}. Nothing was "
                "changed. Use a new --workdir, or add --allow-config-change to continue this run with the new "
                "config (the old one is kept as config.<n>.gin, the change logged in config_history.jsonl).")
        had_config = (workdir / CONFIG_FILE).exists()
        start = restore_step if restore_step is not None else (steps[-1] if steps else 0)
        archived = write_config(workdir, config_text, step=start)
    except BaseException:
        lock.release()
        raise
    return Claim(workdir, lock, created=created, had_config=had_config, archived=archived)
