"""What papers plug into the shared trainer without editing it: updated non-param collections (BatchNorm statistics)
returned by `Task.loss`, and variable-size batches from a project's own dataset and `collate` (padded sequences, packed
graphs) — each resuming bit for bit."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from jaxgen import train
from jaxgen.core import metrics as metrics_lib
from jaxgen.core.optim import OptimizerConfig
from jaxgen.data import Loader
from support.tiny import BatchNormRegressionTask, regression_source
from support.toy_project import data as toy_data
from support.toy_project import tasks as toy_tasks


REPO = Path(__file__).resolve().parents[2]
OPTIMIZER = OptimizerConfig(learning_rate=3e-2, schedule="constant")


def records(workdir):
    return [{k: v for k, v in r.items() if k != "steps_per_sec"}
            for r in metrics_lib.read_records(workdir) if "loss" in r]


def run(task, loader, workdir, train_steps):
    return train.run(task=task, workdir=workdir, train_data=loader, train_steps=train_steps, log_every=1,
                     checkpoint_every=3, eval_every=0, progress=False, async_checkpointing=False,
                     optimizer=OPTIMIZER)


def straight_and_resumed(tmp_path, make_task, make_loader, steps=6):
    straight = run(make_task(), make_loader(), tmp_path / "straight", steps)
    run(make_task(), make_loader(), tmp_path / "resumed", steps // 2)
    resumed = run(make_task(), make_loader(), tmp_path / "resumed", steps)
    assert records(tmp_path / "resumed") == records(tmp_path / "straight")
    return straight, resumed


def test_batch_statistics_returned_by_loss_train_and_resume_bit_for_bit(tmp_path):
    source = regression_source()
    make_loader = lambda: Loader(source, batch_size=8, seed=3)  # noqa: E731
    straight, resumed = straight_and_resumed(tmp_path, BatchNormRegressionTask, make_loader)
    initial = BatchNormRegressionTask().init(jax.random.key(0), {"x": source.arrays["x"][:8]})["batch_stats"]
    stats = straight.state.extra_variables["batch_stats"]
    moved = jax.tree.map(lambda a, b: float(np.abs(np.asarray(a) - np.asarray(b)).max()), stats, initial)
    assert min(jax.tree.leaves(moved)) > 1e-3, moved  # mean and var both moved away from 0 / 1
    # The resumed run restored the statistics of step 3 from its checkpoint and continued to the same values.
    jax.tree.map(np.testing.assert_array_equal, resumed.state.extra_variables, straight.state.extra_variables)


def test_loss_may_not_invent_a_collection(tmp_path):
    class Inventing(BatchNormRegressionTask):
        def loss(self, variables, batch, rng):
            loss, metrics, updated = super().loss(variables, batch, rng)
            return loss, metrics, {**updated, "ema": {"x": loss}}

    with pytest.raises(ValueError, match=r"returned collections \['ema'\] that Task.init did not create"):
        run(Inventing(), Loader(regression_source(), batch_size=8), tmp_path, 2)


def test_padded_sequences_from_a_project_dataset_train_and_resume_bit_for_bit(tmp_path):
    straight, _ = straight_and_resumed(
        tmp_path, toy_tasks.SequenceTask, lambda: Loader("toy_sequences", 8, seed=1, collate=toy_data.pad_sequences))
    assert len(records(tmp_path / "straight")) == 6 and np.isfinite(records(tmp_path / "straight")[-1]["loss"])


def test_packed_graphs_from_a_project_dataset_train_and_resume_bit_for_bit(tmp_path):
    groups = jax.local_device_count()
    make_loader = lambda: Loader("toy_graphs", 4 * groups, seed=2, collate=toy_data.GraphCollate(groups))  # noqa: E731
    straight_and_resumed(tmp_path, toy_tasks.GraphTask, make_loader)
    shapes = {make_loader().batch(step)["graph"].nodes.shape for step in range(24)}
    assert 1 <= len(shapes) <= 3, shapes  # padded to power-of-two buckets: a few compilations, not one per step


TWO_DEVICE_GRAPHS = """
import sys
from support.toy_project import data, tasks
from jaxgen import train
from jaxgen.core.mesh import MeshConfig
from jaxgen.core.optim import OptimizerConfig
from jaxgen.data import Loader
train.run(task=tasks.GraphTask(), workdir=sys.argv[1], train_steps=4, log_every=1, checkpoint_every=4, eval_every=0,
          train_data=Loader("toy_graphs", 8, seed=2, collate=data.GraphCollate(2)), mesh=MeshConfig(data=2),
          optimizer=OptimizerConfig(learning_rate=3e-2, schedule="constant"), progress=False, async_checkpointing=False)
"""


def test_packed_graphs_shard_one_graph_batch_per_device(tmp_path):
    """Two devices each hold one of the two packed graph batches and train like one device holding both."""
    run(toy_tasks.GraphTask(), Loader("toy_graphs", 8, seed=2, collate=toy_data.GraphCollate(2)), tmp_path / "one", 4)
    environment = {**os.environ, "XLA_FLAGS": f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=2", "JAX_PLATFORMS": "cpu",
                   "PYTHONPATH": os.pathsep.join([str(REPO / "tests"), str(REPO), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", TWO_DEVICE_GRAPHS, str(tmp_path / "two")], cwd=REPO, env=environment,
                          capture_output=True, text=True, timeout=280)
    assert done.returncode == 0, done.stderr[-3000:]
    one, two = records(tmp_path / "one"), records(tmp_path / "two")
    assert [r["step"] for r in two] == [1, 2, 3, 4]
    for key in ("loss", "grad_norm", "accuracy"):
        np.testing.assert_allclose([r[key] for r in two], [r[key] for r in one], rtol=2e-5, atol=1e-6, err_msg=key)
