"""EMA of the parameters in the shared trainer: the average by hand, in the checkpoints, bit-identical resume,
evaluators see it, and a run without it keeps the plain state (so existing checkpoints still restore)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgen.core import checkpoint as ckpt_lib
from jaxgen.core import metrics as metrics_lib
from jaxgen.core.optim import EmaConfig, EmaTrainState, OptimizerConfig, TrainState
from support.tiny import RegressionTask
from test_trainer import run_tiny, training_records


def test_update_by_hand_before_and_after_the_start_step():
    ema = EmaConfig(decay=0.75, start_step=1)
    params = [{"w": jnp.array([4.0, -8.0])}, {"w": jnp.array([0.0, 8.0])}, {"w": jnp.array([2.0, 0.0])}]
    average = {"w": jnp.array([100.0, 100.0])}  # the initial copy; update 1 is not averaged, so it is replaced
    for step, p in enumerate(params, start=1):
        average = ema.update(average, p, jnp.asarray(step))
        if step == 1:
            np.testing.assert_array_equal(average["w"], [4.0, -8.0])
    second = 0.75 * np.array([4.0, -8.0]) + 0.25 * np.array([0.0, 8.0])  # [3, -4]
    np.testing.assert_array_equal(average["w"], 0.75 * second + 0.25 * np.array([2.0, 0.0]))  # [2.75, -3]


@pytest.mark.parametrize("bad", [dict(decay=1.5), dict(decay=-0.1), dict(start_step=-1)])
def test_bad_settings_name_the_field(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        EmaConfig(**bad)


def _checkpointed(workdir, step, like):
    checkpointer = ckpt_lib.Checkpointer(workdir / "checkpoints", read_only=True)
    return checkpointer.restore(step, jax.eval_shape(lambda: like))[0]


def test_trainer_keeps_the_average_of_its_checkpointed_parameters(tmp_path):
    result = run_tiny(tmp_path, train_steps=4, checkpoint_every=1, keep_checkpoints=10,
                      ema=EmaConfig(decay=0.5, start_step=2))
    assert isinstance(result.state, EmaTrainState)
    saved = {step: _checkpointed(tmp_path, step, result.state) for step in (2, 3, 4)}
    for step in (2, 3, 4):  # each checkpoint carries its own average
        assert int(saved[step].step) == step
    expected = jax.tree.map(lambda p2, p3, p4: 0.5 * (0.5 * p2 + 0.5 * p3) + 0.5 * p4,
                            saved[2].params, saved[3].params, saved[4].params)
    for got, want in zip(jax.tree.leaves(result.state.ema_params), jax.tree.leaves(expected)):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-6, atol=1e-7)
    for got, want in zip(jax.tree.leaves(saved[2].ema_params), jax.tree.leaves(saved[2].params)):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))  # not averaged before start_step


def test_resume_with_ema_is_bit_identical(tmp_path):
    ema = EmaConfig(decay=0.9, start_step=3)
    straight = run_tiny(tmp_path / "straight", train_steps=12, ema=ema)
    run_tiny(tmp_path / "resumed", train_steps=6, ema=ema)  # checkpoints at 4 and 6
    resumed = run_tiny(tmp_path / "resumed", train_steps=12, ema=ema)
    assert training_records(tmp_path / "resumed") == training_records(tmp_path / "straight")
    for a, b in zip(jax.tree.leaves(resumed.state), jax.tree.leaves(straight.state)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_evaluators_receive_the_average_which_init_from_starts_at_the_copied_parameters(tmp_path):
    """decay 1 freezes the average where it starts: at the parameters `init_from` copied (not the run's own init,
    which seed 1 makes differ), so the evaluation equals that of the untrained source run."""
    untrained = run_tiny(tmp_path / "untrained", train_steps=1, optimizer=OptimizerConfig(learning_rate=0.0))
    assert type(untrained.state) is TrainState  # without EMA the state (and checkpoint tree) is the plain one
    frozen_average = run_tiny(tmp_path / "ema", train_steps=5, seed=1, ema=EmaConfig(decay=1.0),
                              init_from=str(tmp_path / "untrained"))
    for a, b in zip(jax.tree.leaves(frozen_average.state.ema_params), jax.tree.leaves(untrained.state.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert frozen_average.eval_results["mse"]["mse"] == pytest.approx(untrained.eval_results["mse"]["mse"], rel=1e-6)
    trained = RegressionTask().model.apply(frozen_average.state.variables, jnp.ones((1, 8)))
    initial = RegressionTask().model.apply(untrained.state.variables, jnp.ones((1, 8)))
    assert not np.allclose(np.asarray(trained), np.asarray(initial))  # the parameters themselves did train


def test_warmup_follows_the_parameters_early_then_takes_the_full_decay():
    """decay_k = min(decay, (1 + k) / (10 + k)) at the k-th averaged update (start_step 2: update 3 is k = 1)."""
    ema = EmaConfig(decay=0.5, start_step=2, warmup=True)
    average = {"w": jnp.array([10.0])}
    expected = 10.0
    for step, value in zip(range(3, 13), range(10)):
        k = step - 2
        decay_k = min(0.5, (1 + k) / (10 + k))  # 2/11, 3/12, ... until (1 + k) / (10 + k) >= 0.5 at k = 8
        average = ema.update(average, {"w": jnp.array([float(value)])}, jnp.asarray(step))
        expected = decay_k * expected + (1 - decay_k) * value
        np.testing.assert_allclose(average["w"], [expected], rtol=1e-6)
    assert (1 + 8) / (10 + 8) == 0.5  # the last two updates ran at the configured decay


def test_warmup_off_keeps_the_starting_copy_at_weight_decay_to_the_k():
    average = {"w": jnp.array([1.0])}
    for step in range(1, 11):
        average = EmaConfig(decay=0.9).update(average, {"w": jnp.array([0.0])}, jnp.asarray(step))
    np.testing.assert_allclose(average["w"], [0.9 ** 10], rtol=1e-6)


def test_eval_of_the_trained_weights_goes_beside_the_averages_evaluation(tmp_path):
    """mode="eval" with eval_weights="trained": the evaluators see `params`, not `ema_params`, and write to
    eval/<step>-trained/ and eval-trained/ records; the average's own evaluation stays as it was."""
    ema = EmaConfig(decay=1.0)  # the average stays at the initial weights: far from the trained ones
    trained = run_tiny(tmp_path, train_steps=8, ema=ema)
    average_metrics = (tmp_path / "eval" / "8" / "metrics.json").read_bytes()
    result = run_tiny(tmp_path, train_steps=8, ema=ema, mode="eval", eval_weights="trained")
    assert (tmp_path / "eval" / "8" / "metrics.json").read_bytes() == average_metrics
    assert (tmp_path / "eval" / "8-trained" / "metrics.json").is_file()
    # The run's own evaluation (of the average, frozen at the initial weights) against this one's:
    assert result.eval_results["mse"]["mse"] < 0.5 * trained.eval_results["mse"]["mse"]
    [record] = [r for r in metrics_lib.read_records(tmp_path) if r.get("source") == "eval"]
    assert record["eval-trained/mse/mse"] == pytest.approx(result.eval_results["mse"]["mse"])
    with pytest.raises(ValueError, match="eval_weights"):
        run_tiny(tmp_path, train_steps=8, ema=ema, mode="eval", eval_weights="best")
