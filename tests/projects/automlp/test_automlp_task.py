"""The next-item task's full-ranking evaluator against the same metrics worked out in numpy, split by split, with and
without the history taken out of the ranking."""

from __future__ import annotations

from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgen.core.task import EvalContext
from jaxgen.projects.automlp.task import NextItemTask

NUM_ITEMS = 6


class LastItemTable(nn.Module):
    """Scores are a table row chosen by the newest item: known scores for the evaluator to rank."""

    @nn.compact
    def __call__(self, history, mask=None, train=False):
        table = self.param("table", nn.initializers.normal(1.0), (NUM_ITEMS + 1, NUM_ITEMS + 1))
        return table[history[:, -1]].at[:, 0].set(-jnp.inf)


def _numpy_metrics(scores, targets, history, exclude_history):
    rows = {}
    for s, t, h in zip(scores, targets, history):
        others = [i for i in range(1, NUM_ITEMS + 1) if i != t and not (exclude_history and i in h)]
        rank = sum(s[i] >= s[t] for i in others)
        for k in (1, 3):
            rows.setdefault(f"hr@{k}", []).append(float(rank < k))
            rows.setdefault(f"ndcg@{k}", []).append(1 / np.log2(rank + 2) if rank < k else 0.0)
            rows.setdefault(f"mrr@{k}", []).append(1 / (rank + 1) if rank < k else 0.0)
    return {name: np.mean(values) for name, values in rows.items()}


@pytest.mark.parametrize("exclude_history", [True, False])
def test_ranking_evaluator_matches_numpy_per_split(exclude_history):
    rng = np.random.default_rng(0)
    history = rng.integers(0, NUM_ITEMS + 1, (10, 4)).astype(np.int32)
    history[:, -1] = rng.integers(1, NUM_ITEMS + 1, 10)
    targets = rng.integers(1, NUM_ITEMS + 1, 10).astype(np.int32)
    split = np.array([0, 1] * 5, np.int32)
    task = NextItemTask(LastItemTable(), ks=(1, 3), exclude_history=exclude_history)
    variables = task.init(jax.random.key(0), {"history": history})
    scores = np.asarray(task.scores(variables, history))

    def batches():  # two batches of 6, the last two rows padding (garbage that must not count)
        padded = {"history": np.concatenate([history, history[:2]]), "target": np.concatenate([targets, targets[:2]]),
                  "split": np.concatenate([split, split[:2]]), "valid": np.arange(12) < 10}
        for start in (0, 6):
            yield {k: v[start:start + 6] for k, v in padded.items()}

    results = task.evaluate(variables, EvalContext(step=0, rng=jax.random.key(0), outdir=Path("."), batches=batches))
    for index, name in enumerate(("valid", "test")):
        rows = split == index
        expected = _numpy_metrics(scores[rows], targets[rows], history[rows], exclude_history)
        assert results[f"{name}/users"] == 5
        for metric, value in expected.items():
            np.testing.assert_allclose(results[f"{name}/{metric}"], value, rtol=1e-6, err_msg=f"{name}/{metric}")


def test_an_eval_split_without_examples_is_an_error():
    task = NextItemTask(LastItemTable(), ks=(1,))
    history = np.ones((2, 3), np.int32)
    variables = task.init(jax.random.key(0), {"history": history})
    batch = {"history": history, "target": np.ones(2, np.int32), "split": np.zeros(2, np.int32),
             "valid": np.ones(2, bool)}
    with pytest.raises(ValueError, match=r"no examples of splits \['test'\]"):
        task.evaluate(variables, EvalContext(step=0, rng=jax.random.key(0), outdir=Path("."), batches=lambda: [batch]))
