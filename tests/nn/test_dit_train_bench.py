"""The DiT training benchmark (`experiments/bench/dit_train.py`): its FLOP formula against XLA's own count, and a
CPU run of both halves at tiny size, so the script cannot rot between GPU sessions."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import pytest

from jaxgen.nn import dit
from tests.support.parity import require_installed

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "experiments" / "bench" / "dit_train.py"


def load_bench():
    spec = importlib.util.spec_from_file_location("dit_train", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_flop_formula_matches_xla_count_of_one_block():
    """XLA counts one iteration of the block scan (so: one block plus the embeddings) and its elementwise work too;
    at DiT-XL width the matrix products are all but 0.3 % of it."""
    bench = load_bench()
    config = {**bench.DIT_XL2, "num_layers": 1}
    model = dit.module_from_config(config)
    size = config["sample_size"]
    inputs = (jnp.zeros((1, size, size, config["in_channels"])), jnp.zeros((1,)), jnp.zeros((1,), jnp.int32))
    params = jax.eval_shape(model.init, jax.random.key(0), *inputs)
    xla_flops = jax.jit(model.apply).lower(params, *inputs).cost_analysis()["flops"]
    assert 0.99 < bench.forward_flops_per_image(config) / xla_flops <= 1.0
    assert bench.forward_flops_per_image(bench.DIT_XL2) == pytest.approx(237.24e9, rel=1e-4)
    assert bench.peak_flops("NVIDIA H100 80GB HBM3") == 989e12 and bench.peak_flops("NVIDIA H100 PCIe") == 756e12
    assert bench.peak_flops("cpu") is None


@pytest.mark.slow
def test_tiny_run_of_both_frameworks(tmp_path):
    require_installed("torch")  # the PyTorch half runs in the script's own subprocess
    require_installed("diffusers")
    out = tmp_path / "dit_train.json"
    done = subprocess.run([sys.executable, str(SCRIPT), "--tiny", "--warmup", "1", "--windows", "1", "--steps", "1",
                           "--profile", str(tmp_path / "profile"), "--out", str(out)],
                          env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["jax"]["parameters"] == report["torch"]["parameters"]  # the same model on both sides
    assert report["norm_implementation"] == report["jax"]["norm_implementation"] == "xla"
    for framework in ("jax", "torch"):
        assert [row["batch"] for row in report[framework]["rows"]] == [2, 4]
        assert all(row["images_per_s"] > 0 and math.isfinite(row["loss"]) for row in report[framework]["rows"])
    assert set(report["speedup_at_batch"]) == {"2", "4"}
    assert {p.name for p in (tmp_path / "profile").iterdir()} >= {"jax_b4_kernels.txt", "torch_b4_kernels.txt"}
