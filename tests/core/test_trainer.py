"""The shared trainer end to end on a tiny task: workdir contents, exact resume, NaN guard, damaged checkpoints,
restore order (workdir > resume_from > init_from > scratch), frozen parameters, eval mode."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest

from jaxgen import train
from jaxgen.core import checkpoint as ckpt_lib
from jaxgen.core import metrics as metrics_lib
from jaxgen.core.optim import OptimizerConfig
from jaxgen.data import Loader
from support.tiny import RegressionTask, regression_source

TIMING_KEYS = {"steps_per_sec"}


def run_tiny(workdir, train_steps=12, *, source=None, shuffle=True, **kwargs):
    source = source or regression_source()
    defaults = dict(log_every=1, checkpoint_every=4, eval_every=0, optimizer=OptimizerConfig(learning_rate=3e-2, schedule="constant"),
                    progress=False, async_checkpointing=False)
    defaults.update(kwargs)
    return train.run(task=RegressionTask(), workdir=workdir,
                     train_data=Loader(source, batch_size=8, seed=3, shuffle=shuffle),
                     eval_data=Loader(source, batch_size=16, split="eval", shuffle=False),
                     train_steps=train_steps, **defaults)


def training_records(workdir):
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS}
            for r in metrics_lib.read_records(workdir) if "loss" in r]


def test_run_writes_the_workdir_and_learns(tmp_path):
    result = run_tiny(tmp_path, train_steps=40, checkpoint_every=20, eval_every=20)
    for name in ("metrics.jsonl", "run_info.json", "curves.png", "tensorboard", "eval/20/metrics.json",
                 "eval/40/metrics.json", "checkpoints/20/jaxgen_manifest.json", "checkpoints/40/state"):
        assert (tmp_path / name).exists(), name
    records = training_records(tmp_path)
    assert [r["step"] for r in records] == list(range(1, 41))
    assert records[-1]["loss"] < 0.5 * records[0]["loss"]
    info = json.loads((tmp_path / "run_info.json").read_text())
    assert info["devices"]["count"] == jax.device_count() and info["mesh"]["axes"]["data"] == jax.device_count()
    assert result.eval_results["mse"]["examples"] == 64
    assert list((tmp_path / "tensorboard").iterdir()), "no TensorBoard event file"


def test_resume_continues_bit_for_bit(tmp_path):
    run_tiny(tmp_path / "straight", train_steps=12)
    run_tiny(tmp_path / "resumed", train_steps=6)  # checkpoints at 4 and 6
    run_tiny(tmp_path / "resumed", train_steps=12)
    assert training_records(tmp_path / "resumed") == training_records(tmp_path / "straight")


def test_nan_stops_the_run_naming_the_step_and_keeps_the_last_good_checkpoint(tmp_path):
    # Without shuffling, example 29 sits in the batch of update 4 (rows 24..31); checkpoints every 2 updates.
    source = regression_source(nan_index=29)
    with pytest.raises(train.NonFiniteLossError, match=r"at step 4;.*checkpoints/2"):
        run_tiny(tmp_path, source=source, shuffle=False, checkpoint_every=2)
    checkpointer = ckpt_lib.Checkpointer(tmp_path / "checkpoints", read_only=True)
    assert checkpointer.all_steps() == [2]
    result = run_tiny(tmp_path, train_steps=2, source=source, shuffle=False)  # restores step 2, nothing to do
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(result.state.params))


def _corrupt(step_dir, mode):
    files = sorted((p for p in (step_dir / "state").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    target = files[-1]
    data = bytearray(target.read_bytes())
    if mode == "truncate":
        target.write_bytes(data[: len(data) // 2])
    else:
        data[len(data) // 2] ^= 0xFF
        target.write_bytes(bytes(data))
    return target


@pytest.mark.parametrize("mode", ["truncate", "flip"])
def test_damaged_checkpoint_is_refused_and_the_previous_one_restores(tmp_path, mode):
    run_tiny(tmp_path, train_steps=8)
    damaged = _corrupt(tmp_path / "checkpoints" / "8", mode)
    with pytest.raises(ckpt_lib.CheckpointError) as error:
        run_tiny(tmp_path, train_steps=12)
    message = str(error.value)
    assert "checkpoints/8" in message and damaged.name in message and "--restore-step 4" in message
    assert damaged.exists(), "the damaged checkpoint must not be deleted"
    result = run_tiny(tmp_path, train_steps=12, restore_step=4)
    assert result.step == 12
    assert (tmp_path / "superseded_checkpoints" / "8").is_dir()
    run_tiny(tmp_path / "straight", train_steps=12)
    assert training_records(tmp_path) == training_records(tmp_path / "straight")


def test_resume_from_continues_another_run_and_init_from_copies_parameters(tmp_path):
    first = run_tiny(tmp_path / "first", train_steps=8)
    resumed = run_tiny(tmp_path / "resumed", train_steps=12, resume_from=str(tmp_path / "first"))
    assert training_records(tmp_path / "resumed")[0]["step"] == 9
    initialised = run_tiny(tmp_path / "finetune", train_steps=1, init_from=str(tmp_path / "first" / "checkpoints" / "4"),
                           optimizer=OptimizerConfig(learning_rate=0.0))
    assert training_records(tmp_path / "finetune")[0]["step"] == 1
    restored4 = ckpt_lib.Checkpointer(tmp_path / "first" / "checkpoints", read_only=True).restore(
        4, jax.eval_shape(lambda: first.state))[0]
    for a, b in zip(jax.tree.leaves(initialised.state.params), jax.tree.leaves(restored4.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert resumed.step == 12


def test_frozen_parameters_do_not_move(tmp_path):
    result = run_tiny(tmp_path, train_steps=5, optimizer=OptimizerConfig(learning_rate=1e-2, frozen=("Dense_0/.*",)))
    initial = run_tiny(tmp_path / "init", train_steps=1, optimizer=OptimizerConfig(learning_rate=0.0))
    frozen, moved = result.state.params["Dense_0"]["kernel"], result.state.params["Dense_1"]["kernel"]
    np.testing.assert_array_equal(np.asarray(frozen), np.asarray(initial.state.params["Dense_0"]["kernel"]))
    assert not np.allclose(np.asarray(moved), np.asarray(initial.state.params["Dense_1"]["kernel"]))


def test_eval_mode_evaluates_the_latest_checkpoint_and_needs_one(tmp_path):
    with pytest.raises(ckpt_lib.CheckpointError, match="Nothing to evaluate"):
        run_tiny(tmp_path / "empty", mode="eval")
    run_tiny(tmp_path, train_steps=8)
    result = run_tiny(tmp_path, mode="eval")
    assert result.step == 8 and (tmp_path / "eval" / "8" / "metrics.json").exists()
    assert result.eval_results["mse"]["examples"] == 64


@pytest.mark.parametrize("bad", [dict(train_steps=0), dict(log_every=0), dict(eval_every=-1), dict(mode="serve")])
def test_bad_arguments_fail_before_compute(tmp_path, bad):
    with pytest.raises(ValueError):
        run_tiny(tmp_path, **bad)
    assert not (tmp_path / "checkpoints").exists()


def test_resuming_with_other_data_settings_warns(tmp_path, caplog):
    run_tiny(tmp_path, train_steps=4)
    source = regression_source()
    train.run(task=RegressionTask(), workdir=tmp_path, train_data=Loader(source, batch_size=16, seed=3),
              eval_data=Loader(source, batch_size=16, shuffle=False), train_steps=6, log_every=1, eval_every=0,
              progress=False, async_checkpointing=False)
    assert "batch_size" in caplog.text and "(8, 16)" in caplog.text
