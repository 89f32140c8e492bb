"""The AutoMLP-vs-SASRec step-time benchmark runs end to end on CPU at tiny sizes, so it cannot rot between GPU
sessions, and its JSON holds what the README table is copied from (the search's supernet, the same class with more
windows, is left out to save a compile); it imports no gin, TFDS or jraph (the device image may lack them)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
BENCH = REPO / "experiments" / "bench" / "automlp.py"


@pytest.mark.slow  # a benchmark's CPU run: `python -m pytest -m slow` (not in the default run)
def test_automlp_bench_small_runs_and_reports_both_models(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, str(BENCH), "--lengths", "4", "--models", "automlp", "sasrec", "--batch", "2", "--reps", "1", "--inner",
                           "1", "--features", "8", "--items", "20", "--out", str(tmp_path)],
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    report = json.loads((tmp_path / "automlp.json").read_text())
    assert {(r["model"], r["length"]) for r in report["results"]} == {("automlp", 4), ("sasrec", 4)}
    assert all(r["ms_per_step"] > 0 for r in report["results"])
    assert report["sasrec_over"]["automlp"].keys() == {"4"} and report["device"]["backend"] == "cpu"
    assert "| 4 |" in done.stdout


def test_automlp_bench_imports_no_gin_tfds_or_jraph():
    probe = ("import runpy, sys; runpy.run_path(sys.argv[1], run_name='bench'); "
             "print(sorted(m for m in sys.modules if m.split('.')[0] in ('gin', 'tensorflow_datasets', 'jraph')))")
    done = subprocess.run([sys.executable, "-c", probe, str(BENCH)], env={**os.environ, "PYTHONPATH": str(REPO)},
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "[]"
