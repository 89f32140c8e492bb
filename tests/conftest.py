"""Shared fixtures: one prepared-data folder per test session, small in-memory datasets and a tiny task; float32
matmuls at full precision on every backend."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import jax
import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

# The Mosaic GPU interpreter runs each simulated warpgroup as a CPU computation that blocks in barrier waits; with the
# CPU client's thread pool sized to the cores (2 on CI) the fourth of them never got a thread and interpreted tests
# hung (seen 2026-12-07). PJRT_NPROC sizes that pool; it is read when the CPU backend starts, so set it before any test.
os.environ.setdefault("PJRT_NPROC", str(max(8, os.cpu_count() or 1)))

# The suite's programs are tiny, so XLA compiling them is most of its CPU time: LLVM at -O0 compiles about twice as
# fast and cut a smoke run plus a resume test from 56 to 37 s of CPU (2026-12-07). It changes code generation, not
# the HLO, so every comparison between two programs of a test is made at the same level. Read when a backend starts;
# notebook kernels and the multi-process tests' children inherit it through the environment.
if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} --xla_backend_optimization_level=0".strip()

# Float32 references must be float32: on a GPU, XLA's default precision runs f32 matmuls in TF32 (10-bit mantissa),
# the likely cause of the f32 kernel and reference test failures seen there (2026-11-26). CPU results are unchanged.
jax.config.update("jax_default_matmul_precision", "highest")


@pytest.fixture(scope="session", autouse=True)
def data_dir(tmp_path_factory) -> Path:
    """Offline datasets are prepared once per test run into a private folder (never the user's ~/tensorflow_datasets).
    pytest-xdist's workers share it (their temporary folders sit side by side in the run's): preparing takes turns on
    a lock file (`jaxgen.data.sources`), so shape_classes/32's 55,000 images are drawn once, not once per worker."""
    if os.environ.get("JAXGEN_TEST_DATA_DIR"):
        path = Path(os.environ["JAXGEN_TEST_DATA_DIR"])
    elif os.environ.get("PYTEST_XDIST_WORKER"):
        path = tmp_path_factory.getbasetemp().parent / "tfds"
        path.mkdir(exist_ok=True)
    else:
        path = tmp_path_factory.mktemp("tfds")
    os.environ["JAXGEN_DATA_DIR"] = str(path)
    return path


@pytest.fixture
def repo() -> Path:
    return REPO
