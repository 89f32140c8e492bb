"""The SVG block benchmark runs end to end on CPU (`--small`: tiny shape, Pallas interpret), so it cannot rot
between GPU sessions; its density-1.0 check (SVG equals dense attention) must pass."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]


@pytest.mark.slow  # a benchmark's CPU run: `python -m pytest -m slow` (not in the default run)
def test_svg_block_bench_small_runs_and_checks_itself(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, str(REPO / "experiments" / "bench" / "svg_block.py"), "--small", "--reps",
                           "1", "--out", str(tmp_path)], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    result = json.loads((tmp_path / "svg_block.json").read_text())
    assert result["correctness"]["ok"] and result["correctness"]["svg_d1_vs_dense"] < 2e-2
    assert set(result["goals"]) == {"block_speedup_at_0_25", "profiling_pct", "transform_pct"}
    for density in ("0.25", "0.15"):
        assert result["timings_ms"][f"block_svg_{density}"] > 0
