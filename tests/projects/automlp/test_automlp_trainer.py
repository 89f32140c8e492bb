"""AutoMLP's trainer: the bilevel search on procedural sequences whose next item depends on exactly the last 2 items
finds that window among (1, 2, 4), writes its choice and the alpha plot, and is not redone once finished."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from jaxgen.core import metrics
from jaxgen.core.errors import ConfigError
from jaxgen.core.optim import OptimizerConfig
from jaxgen.data import ArraySource, Loader
from jaxgen.projects.automlp import data, trainer
from jaxgen.projects.automlp.model import AutoMLP
from jaxgen.projects.automlp.task import NextItemTask

K_TRUE = 2
WINDOWS = (1, 2, 4)
STEPS = 400


def _search(task, workdir, splits):
    def loader(split):
        return Loader(ArraySource(splits[split]), 64, features=("history", "target"))

    return trainer.search(
        task, workdir, train_data=loader("train"), valid_data=loader("valid"), search_steps=STEPS,
        weights_optimizer=OptimizerConfig(learning_rate=1e-2, schedule="constant"),
        architecture_optimizer=dataclasses.replace(trainer.ARCHITECTURE_OPTIMIZER, learning_rate=0.05),
        log_every=25, checkpoint_every=STEPS, async_checkpointing=False, progress=False)


def test_the_search_recovers_the_planted_short_term_length(tmp_path):
    # 12 items, so the 144 contexts of 2 items are each seen often: the window-2 branch can learn the planted table,
    # window 1 cannot, and window 4 adds two positions of noise to fit.
    splits, num_items = data.examples(*data.planted_interactions(300, 12, K_TRUE, noise=0.2, seed=0), max_len=12)
    task = NextItemTask(AutoMLP(num_items, features=16, depth=1, windows=WINDOWS, sequence_hidden=16),
                        exclude_history=False)
    result = _search(task, tmp_path, splits)
    weights = dict(zip(WINDOWS, result["weights"]))
    assert result["chosen_window"] == K_TRUE, weights
    assert weights[K_TRUE] > 0.45, weights  # uniform is 1/3
    assert json.loads((tmp_path / trainer.SEARCH_FILE).read_text()) == result
    assert (tmp_path / trainer.ALPHA_PLOT).stat().st_size > 0
    steps, trajectory = trainer.alpha_trajectory(metrics.read_records(tmp_path / trainer.SEARCH_DIR), WINDOWS)
    assert steps[-1] == STEPS and np.allclose(trajectory.sum(1), 1.0, atol=1e-5)
    np.testing.assert_allclose(trajectory[-1], result["weights"], rtol=1e-5)
    # finished: a second call reads the result instead of searching again (it would fail: no valid_data batches)
    assert _search(task, tmp_path, {"train": splits["train"], "valid": {k: v[:0] for k, v in splits["valid"].items()}})\
        == result


def test_a_model_with_one_window_has_nothing_to_search(tmp_path):
    task = NextItemTask(AutoMLP(10, windows=(2,)))
    with pytest.raises(ConfigError, match="nothing to search"):
        trainer.run(task=task, workdir=tmp_path, train_data=None, valid_data=None, search_steps=1, retrain=None)
