"""A stand-in for a paper's forked trainer: records how the CLI called it."""

from pathlib import Path

from jaxgen.train import RunResult

CALLS = []


def run(*, workdir, restore_step=None, progress=True, mode="train", label="unset"):
    CALLS.append({"workdir": Path(workdir), "restore_step": restore_step, "mode": mode, "label": label})
    return RunResult(Path(workdir), 0, None, None, {})
