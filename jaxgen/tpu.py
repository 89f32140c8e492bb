"""The gcloud commands that run one experiment on every worker of a TPU VM or pod (`jaxgen tpu`).

Every worker needs the package, the recipe and the same command, started together (`--multihost` lets
`jax.distributed` find the others). So `launch_commands` gives three commands, each for `--worker=all`:

1. make the run folder and pip-install jaxgen (`git+` the repository named in pyproject.toml's `[project.urls]`)
   together with `jax[tpu]`;
2. copy the recipe there: the whole `configs/` folder (experiment files `include` their tiers) and any experiment
   file from outside it;
3. start `python3 -m jaxgen.cli run ... --multihost` in the background (nohup, output to `run.log`, its process id
   to `run.pid`), so the run outlives the ssh session.

`follow_command` and `stop_command` are for later: `tail -f` of worker 0's log, and a SIGTERM to every worker's
run (the trainer saves a checkpoint and exits; starting step 3 again resumes).

On the workers, paths live under `$HOME` and are written `"$HOME"/...` inside the remote command: a quoted `~` is
never expanded, and the command is quoted once more for the local shell. `python3 -m jaxgen.cli` rather than
`jaxgen`, since pip's user scripts folder is not on the PATH of a non-interactive ssh command.
"""

from __future__ import annotations

import dataclasses
import shlex
import tomllib
from importlib import metadata
from pathlib import Path

LOG, PID = "run.log", "run.pid"


def repository_url() -> str:
    """The repository's address from pyproject.toml (a checkout), else from the installed package's metadata."""
    pyproject = Path(__file__).resolve().parents[1] / "pyproject.toml"
    if pyproject.is_file():
        return tomllib.loads(pyproject.read_text())["project"]["urls"]["Repository"]
    for entry in metadata.metadata("jaxgen").get_all("Project-URL") or []:
        label, _, url = entry.partition(",")
        if label.strip() == "Repository":
            return url.strip()
    raise LookupError("jaxgen's metadata names no Repository URL; pass --install with a pip requirement")


@dataclasses.dataclass(frozen=True)
class Pod:
    name: str
    zone: str
    project: str | None = None
    remote_dir: str = "jaxgen_run"  # relative paths are under the workers' $HOME

    def _flags(self, worker: str) -> list[str]:
        flags = [f"--zone={self.zone}", f"--worker={worker}"]
        return flags + ([f"--project={self.project}"] if self.project else [])

    def ssh(self, remote_command: str, worker: str = "all") -> str:
        return shlex.join(["gcloud", "compute", "tpus", "tpu-vm", "ssh", self.name, *self._flags(worker),
                           "--command", remote_command])

    def scp(self, local_paths: list[str]) -> str:
        """Copies into the run folder; scp reads a relative remote path from the home folder, as `remote()` does."""
        return shlex.join(["gcloud", "compute", "tpus", "tpu-vm", "scp", "--recurse", *self._flags("all"),
                           *local_paths, f"{self.name}:{self.remote_dir.rstrip('/')}/"])

    def shown(self, name: str) -> str:
        return f"{self.remote_dir.rstrip('/')}/{name}" if self.remote_dir.startswith("/") else \
            f"~/{self.remote_dir.rstrip('/')}/{name}"

    def remote(self, name: str = "") -> str:
        """A path in the run folder as the workers' shell must read it ($HOME expanded there, the rest quoted)."""
        path = f"{self.remote_dir.rstrip('/')}/{name}".rstrip("/")
        return shlex.quote(path) if path.startswith("/") else '"$HOME"/' + shlex.quote(path)


def _shown(path: Path) -> str:
    """A local path as short as it can be written: relative to the current folder when under it."""
    path = path.resolve()
    return str(path.relative_to(Path.cwd())) if path.is_relative_to(Path.cwd()) else str(path)


def _remote_config_args(config_files: list[str], configs_root: Path) -> tuple[list[str], list[str]]:
    """(local paths to copy, the experiment arguments as the run folder sees them)."""
    copies, args = [_shown(configs_root)], []
    for name in config_files:
        path = next((p for p in (Path(name), configs_root / name) if p.is_file()), None)
        if path is None:
            raise FileNotFoundError(f"Config file {name!r} does not exist (`jaxgen list` shows every experiment)")
        path = path.resolve()
        if path.is_relative_to(configs_root.resolve()):
            args.append(f"configs/{path.relative_to(configs_root.resolve())}")
        else:
            copies.append(_shown(path))
            args.append(path.name)
    return copies, args


def launch_commands(pod: Pod, config_files: list[str], workdir: str, bindings: list[str], *, configs_root: Path,
                    install: str) -> list[tuple[str, str]]:
    """[(what it does, command)] for steps 1-3 of the module docstring."""
    copies, args = _remote_config_args(config_files, configs_root)
    setup = f'mkdir -p {pod.remote()} && python3 -m pip install -q {shlex.quote(install)} "jax[tpu]"'
    run = shlex.join(["python3", "-m", "jaxgen.cli", "run", *args, "--workdir", workdir, "--multihost",
                      "--no-progress", *(f"--gin.{b}" for b in bindings)])
    # The braces make `$!` the run's own process id (not a subshell's), which the stop command signals.
    start = f"cd {pod.remote()} && {{ nohup {run} > {LOG} 2>&1 < /dev/null & echo $! > {PID}; }}"
    return [
        ("install jaxgen and jax[tpu] on every worker", pod.ssh(setup)),
        ("copy the recipe (configs/ and the experiment files) to every worker", pod.scp(copies)),
        (f"start the run on every worker, in the background (output: {pod.shown(LOG)} on each)",
         pod.ssh(start)),
    ]


def follow_command(pod: Pod) -> str:
    return pod.ssh(f"tail -n 50 -f {pod.remote(LOG)}", worker="0")


def stop_command(pod: Pod) -> str:
    return pod.ssh(f"kill $(cat {pod.remote(PID)})")
