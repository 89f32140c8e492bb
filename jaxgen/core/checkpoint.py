"""Orbax checkpoints that refuse to load damaged data.

Each checkpoint `checkpoints/<step>/` holds two items: `state` (the train state, restored straight into its
shardings) and `data` (the data iterator's JSON state). Once orbax has finalised a step, a manifest
(`jaxgen_manifest.json`: size and CRC32 of every file) is written beside the items; restoring verifies it first. A
truncated or altered file is then refused with a `CheckpointError` naming the checkpoint and the file — a run never
silently restarts from scratch, and the older checkpoints stay untouched and restorable.

Resume order (decided in `jaxgen.train`): the run's own workdir > `resume_from` (another run's full state) >
`init_from` (parameters only) > scratch.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import zlib
from collections.abc import Mapping
from typing import Any

import jax
import orbax.checkpoint as ocp
from etils import epath

MANIFEST_NAME = "jaxgen_manifest.json"
STATE_ITEM = "state"
DATA_ITEM = "data"
_CHUNK = 1 << 22


class CheckpointError(RuntimeError):
    """A checkpoint is missing, incomplete or corrupt. The message names it and says what to do."""


def _crc32(path: epath.Path) -> int:
    crc = 0
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            crc = zlib.crc32(chunk, crc)
    return crc


def _files(step_dir: epath.Path) -> list[epath.Path]:
    """Every file under `step_dir` but the manifest (an explicit walk: epath has no recursive glob)."""
    found, folders = [], [step_dir]
    while folders:
        for path in folders.pop().iterdir():
            if path.is_dir():
                folders.append(path)
            elif path.name != MANIFEST_NAME:
                found.append(path)
    return sorted(found)


def write_manifest(step_dir: epath.Path) -> None:
    step_dir = epath.Path(step_dir)
    entries = {str(p.relative_to(step_dir)): {"bytes": p.stat().length, "crc32": _crc32(p)} for p in _files(step_dir)}
    tmp = step_dir / (MANIFEST_NAME + ".tmp")
    tmp.write_text(json.dumps({"files": entries}, indent=1, sort_keys=True))
    tmp.rename(step_dir / MANIFEST_NAME)


def verify_manifest(step_dir: epath.Path) -> bool:
    """Checks every file against the manifest; returns False when the step has no manifest yet."""
    step_dir = epath.Path(step_dir)
    manifest_path = step_dir / MANIFEST_NAME
    if not manifest_path.exists():
        return False
    try:
        entries = json.loads(manifest_path.read_text())["files"]
    except (ValueError, KeyError) as e:
        raise CheckpointError(f"Checkpoint {step_dir} is corrupt: its manifest {manifest_path} is unreadable ({e})")
    for name, expected in entries.items():
        path = step_dir / name
        if not path.exists():
            raise CheckpointError(f"Checkpoint {step_dir} is incomplete: {name} is missing")
        size = path.stat().length
        if size != expected["bytes"]:
            raise CheckpointError(
                f"Checkpoint {step_dir} is corrupt: {name} has {size} bytes, the manifest recorded {expected['bytes']}"
            )
        if _crc32(path) != expected["crc32"]:
            raise CheckpointError(f"Checkpoint {step_dir} is corrupt: {name} fails its CRC32 check")
    return True


class _Manager(ocp.CheckpointManager):
    def reached_preemption(self, step: int) -> bool:
        """Never asks jax's preemption sync point. Every call moves the protocol's counter, and orbax calls it with
        absolute steps, some from its finalize thread after the loop has moved on; `jaxgen.core.preemption` alone
        counts, from the run's first step, so that all processes agree where to stop."""
        return False


class Checkpointer:
    """Keep-N, optionally asynchronous checkpoints of (train state, data-iterator state) in one directory."""

    def __init__(
        self,
        directory: str | epath.Path,
        *,
        max_to_keep: int | None = 3,
        async_save: bool = True,
        read_only: bool = False,
    ):
        self.directory = epath.Path(directory)
        self.read_only = read_only
        self._manifest_lock = threading.Lock()
        self._async = async_save and not read_only
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep,
            create=not read_only,
            read_only=read_only,
            enable_async_checkpointing=self._async,
            async_options=ocp.AsyncOptions(post_finalization_callback=self._write_missing_manifests)
            if self._async else None,
        )
        self._manager = _Manager(self.directory, options=options, item_names=(STATE_ITEM, DATA_ITEM))

    def all_steps(self) -> list[int]:
        self._manager.reload()
        return sorted(self._manager.all_steps())

    def latest_step(self) -> int | None:
        steps = self.all_steps()
        return steps[-1] if steps else None

    def step_dir(self, step: int) -> epath.Path:
        return self.directory / str(step)

    def save(self, step: int, state: Any, data_state: Mapping[str, Any]) -> None:
        args = ocp.args.Composite(
            **{STATE_ITEM: ocp.args.StandardSave(state), DATA_ITEM: ocp.args.JsonSave(dict(data_state))}
        )
        self._manager.save(step, args=args, force=True)
        if not self._async:
            self._write_missing_manifests()

    def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict]:
        """Restores `step` into the shardings of `abstract_state` (a tree of `jax.ShapeDtypeStruct`)."""
        step_dir = self._verified_step_dir(step)
        args = ocp.args.Composite(
            **{STATE_ITEM: ocp.args.StandardRestore(abstract_state), DATA_ITEM: ocp.args.JsonRestore()}
        )
        try:
            restored = self._manager.restore(step, args=args)
        except Exception as e:  # orbax/tensorstore raise many types; all mean the same to the user
            raise CheckpointError(f"Checkpoint {step_dir} could not be restored: {type(e).__name__}: {e}") from e
        return restored[STATE_ITEM], dict(restored[DATA_ITEM] or {})

    def restore_subtree(self, step: int, abstract_subtree: Mapping[str, Any]) -> Any:
        """Restores only some top-level fields of the saved state (e.g. `{"params": ...}` for `init_from`)."""
        step_dir = self._verified_step_dir(step)
        restore_args = jax.tree.map(
            lambda x: ocp.ArrayRestoreArgs(sharding=x.sharding, global_shape=x.shape, dtype=x.dtype), abstract_subtree
        )
        args = ocp.args.Composite(
            **{STATE_ITEM: ocp.args.PyTreeRestore(item=abstract_subtree, restore_args=restore_args, partial_restore=True)}
        )
        try:
            return self._manager.restore(step, args=args)[STATE_ITEM]
        except Exception as e:
            raise CheckpointError(f"Checkpoint {step_dir} could not be restored: {type(e).__name__}: {e}") from e

    def set_aside_after(self, step: int, destination: str | epath.Path) -> list[int]:
        """Moves checkpoints later than `step` into `destination` (kept, not deleted) so training can redo them."""
        if self.read_only:
            raise CheckpointError(f"{self.directory} is open read-only: its checkpoints are not moved")
        later = [s for s in self.all_steps() if s > step]
        if later and jax.process_index() == 0:
            destination = epath.Path(destination)
            destination.mkdir(parents=True, exist_ok=True)
            for s in later:
                target = destination / str(s)
                suffix = 1
                while target.exists():
                    target = destination / f"{s}.{suffix}"
                    suffix += 1
                self.step_dir(s).rename(target)
        self._manager.reload()
        return later

    def wait(self) -> None:
        self._manager.wait_until_finished()
        self._write_missing_manifests()

    def close(self) -> None:
        self.wait()
        self._manager.close()

    def _verified_step_dir(self, step: int) -> epath.Path:
        step_dir = self.step_dir(step)
        if step not in self.all_steps():
            raise CheckpointError(f"No finalised checkpoint for step {step} in {self.directory}: found {self.all_steps()}")
        if not verify_manifest(step_dir):
            logging.warning("Checkpoint %s has no manifest yet (killed before it was written); restoring unverified", step_dir)
        return step_dir

    def _write_missing_manifests(self) -> None:
        if jax.process_index() != 0 or self.read_only:
            return
        with self._manifest_lock:
            for step_dir in self.directory.iterdir():
                if not step_dir.name.isdigit() or (step_dir / MANIFEST_NAME).exists():
                    continue
                try:
                    write_manifest(step_dir)
                except FileNotFoundError:  # deleted by keep-N while we looked at it
                    continue


def restore_run_state(checkpointer: Checkpointer, abstract_state: Any, restore_step: int | None = None, *,
                      step_flag: str = "--restore-step") -> tuple[Any, dict, int] | None:
    """The checkpoint a run continues from in its own folder: `restore_step`, else the latest; None when there is none.

    A damaged checkpoint is refused with what to do instead (never a silent restart), naming `step_flag`, the option
    of the running command that picks another step. Training from an earlier step moves the later checkpoints to
    `superseded_checkpoints/` beside the checkpoint folder: kept, while training redoes them. A read-only
    checkpointer (evaluation) moves nothing.
    """
    steps = checkpointer.all_steps()
    if restore_step is not None and restore_step not in steps:
        raise CheckpointError(f"{step_flag} {restore_step}: no such checkpoint in {checkpointer.directory}; "
                              f"available: {steps}")
    if not steps:
        return None
    step = restore_step if restore_step is not None else steps[-1]
    try:
        state, data_state = checkpointer.restore(step, abstract_state)
    except CheckpointError as e:
        earlier = [s for s in steps if s < step]
        raise CheckpointError(
            f"{e}\nRefusing to start from scratch over a damaged checkpoint. Nothing was deleted. "
            + (f"To use an earlier one, rerun with {step_flag} {earlier[-1]} "
               f"(available: {earlier}), or move {checkpointer.step_dir(step)} aside." if earlier else
               f"No earlier checkpoint exists; move {checkpointer.step_dir(step)} aside to start over.")
        ) from e
    if step < steps[-1] and not checkpointer.read_only:
        set_aside = checkpointer.directory.parent / "superseded_checkpoints"
        moved = checkpointer.set_aside_after(step, set_aside)
        logging.warning("Restored step %d; later checkpoints %s were moved to %s", step, moved, set_aside)
    return state, data_state, step


def warn_if_data_changed(saved: Mapping[str, Any], current: Mapping[str, Any]) -> None:
    """A checkpointed data stream continues exactly only if its settings are unchanged; say so when they are not."""
    changed = {k: (saved[k], v) for k, v in current.items() if k != "next_step" and k in saved and saved[k] != v}
    if changed:
        logging.warning("Data settings differ from the checkpoint's (saved, now): %s; the run continues, but its "
                        "batches no longer match an uninterrupted run", changed)


def open_source(path: str | epath.Path, purpose: str) -> tuple[Checkpointer, int]:
    """A read-only Checkpointer on another run's checkpoints and the step to take (the one named, else the latest).

    `purpose` names the setting in errors, e.g. "resume_from='runs/a'".
    """
    directory, step = resolve(path)
    source = Checkpointer(directory, read_only=True)
    step = step if step is not None else source.latest_step()
    if step is None:
        raise CheckpointError(f"{purpose}: no checkpoint in {directory}")
    return source, step


def resolve(path: str | epath.Path) -> tuple[epath.Path, int | None]:
    """Accepts a workdir, its `checkpoints/` folder or one `checkpoints/<step>/`; returns (directory, step or None).
    A relative local path is taken from the current directory and returned absolute: orbax refuses relative paths."""
    path = epath.Path(path)
    if "://" not in str(path):
        path = epath.Path(os.path.abspath(path))
    if not path.exists():
        raise CheckpointError(f"Checkpoint path {path} does not exist")
    if (path / "checkpoints").is_dir():
        return path / "checkpoints", None
    if path.name.isdigit() and (path / STATE_ITEM).exists():
        return path.parent, int(path.name)
    return path, None
