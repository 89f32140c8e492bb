"""Run a grid of experiments — configs × extra tiers × seeds — as parallel `jaxgen run` processes, and collect them.

    jaxgen sweep --root runs/instant --configs configs/instant/fashion_mnist_4.gin configs/instant/mnist5k_4.gin \
        --tiers - configs/instant/algorithms/fixmatch.gin --seeds 0 1 2 --parallel 8

Each run gets the workdir `<root>/<config stem>/<tier stem, or 'base' for ->/s<seed>` and its own `log.txt`. A run
that finished (its `sweep_status.json` says exit code 0) is skipped, so a stopped sweep is resumed by the same
command; a run that was cut off resumes from its last checkpoint, as `jaxgen run` always does.

Why processes and not threads: each run is an ordinary, reproducible `jaxgen run` (its config.gin, metrics and
checkpoints are exactly what a single run writes), and several small models share one accelerator better as
separate processes than as one Python loop. With `parallel > 1` the runs allocate accelerator memory on demand
(`XLA_PYTHON_CLIENT_PREALLOCATE=false`) unless the caller set that variable.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

from tqdm import tqdm

from jaxgen.core import metrics as metrics_lib
from jaxgen.core import progress as progress_lib

STATUS_FILE = "sweep_status.json"
NO_TIER = "-"


@dataclasses.dataclass(frozen=True)
class Job:
    """One run of the grid: its workdir relative to the sweep root, gin files and overrides (`NAME=VALUE`)."""

    name: str
    configs: tuple[str, ...]
    bindings: tuple[str, ...]

    def command(self, root: Path) -> list[str]:
        return [sys.executable, "-m", "jaxgen.cli", "run", *self.configs, "--workdir", str(root / self.name),
                "--no-progress", *(f"--gin.{b}" for b in self.bindings)]


def grid(configs: Sequence[str], tiers: Sequence[str] = (NO_TIER,), seeds: Sequence[int] = (0,),
         bindings: Sequence[str] = ()) -> list[Job]:
    """Every (config, tier, seed), seed-major — a sweep stopped early has whole replicates rather than whole
    configs — and a tier of `-` adds nothing to the config."""
    for path in [*configs, *(t for t in tiers if t != NO_TIER)]:
        if not Path(path).is_file():
            raise FileNotFoundError(f"sweep: no config file {path}")
    config_names = [Path(c).stem for c in configs]
    if len(set(config_names)) != len(config_names):
        raise ValueError(f"sweep: config file names must be distinct (they name workdirs); got {config_names}")
    names = [Path(t).stem for t in tiers if t != NO_TIER]
    if len(set(names)) != len(names) or "base" in names:
        raise ValueError(f"sweep: tier file names must be distinct and not 'base' (they name workdirs); got {names}")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"sweep: seeds must be distinct; got {list(seeds)}")
    jobs = []
    for seed, config, tier in itertools.product(seeds, configs, tiers):
        tier_name = "base" if tier == NO_TIER else Path(tier).stem
        files = (config,) if tier == NO_TIER else (config, tier)
        jobs.append(Job(f"{Path(config).stem}/{tier_name}/s{seed}", files, (*bindings, f"SEED={seed}")))
    return jobs


def finished(workdir: Path) -> bool:
    path = Path(workdir) / STATUS_FILE
    return path.exists() and json.loads(path.read_text()).get("returncode") == 0


def _run_one(job: Job, root: Path, env: dict[str, str]) -> dict:
    workdir = root / job.name
    workdir.mkdir(parents=True, exist_ok=True)
    start = time.time()
    with open(workdir / "log.txt", "a") as log:
        log.write(f"$ {' '.join(job.command(root))}\n")
        log.flush()
        returncode = subprocess.run(job.command(root), stdout=log, stderr=subprocess.STDOUT, env=env).returncode
    status = {"name": job.name, "returncode": returncode, "seconds": round(time.time() - start, 1),
              "command": job.command(root)}
    (workdir / STATUS_FILE).write_text(json.dumps(status, indent=1))
    return status


def run_jobs(jobs: Sequence[Job], root: str | Path, parallel: int = 1, rerun: bool = False,
             progress: bool = True) -> list[dict]:
    """Runs the jobs not yet finished, `parallel` at a time; returns their statuses (failed runs included)."""
    if parallel < 1:
        raise ValueError(f"parallel must be >= 1; got {parallel}")
    root = Path(root)
    todo = [j for j in jobs if rerun or not finished(root / j.name)]
    env = dict(os.environ)
    if parallel > 1:
        env.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    package_root = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
    print(f"sweep: {len(jobs)} runs under {root}, {len(jobs) - len(todo)} already finished, "
          f"{len(todo)} to run, {parallel} at a time", flush=True)
    statuses = []
    terminal = progress and progress_lib.is_terminal(sys.stderr)  # elsewhere a bar is a line of redraws: plain lines
    bar = tqdm(total=len(todo), desc="sweep", unit="run", disable=not terminal)
    with ThreadPoolExecutor(max_workers=parallel) as pool:
        futures = [pool.submit(_run_one, job, root, env) for job in todo]
        for future in as_completed(futures):
            status = future.result()
            statuses.append(status)
            bar.update(1)
            if progress and not terminal:
                print(f"sweep: {len(statuses)}/{len(todo)} done, {status['name']} (exit {status['returncode']})",
                      flush=True)
            if status["returncode"] != 0:
                bar.write(f"sweep: {status['name']} failed (exit {status['returncode']}); "
                          f"see {root / status['name'] / 'log.txt'}")
    bar.close()
    return statuses


def collect(root: str | Path) -> dict[str, list[dict]]:
    """{run name relative to root: its metrics records} for every finished run under `root`."""
    root = Path(root)
    return {str(path.parent.relative_to(root)): metrics_lib.read_records(path.parent)
            for path in sorted(root.rglob(STATUS_FILE)) if finished(path.parent)}
