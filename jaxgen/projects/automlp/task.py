"""Next-item prediction as a Task: any recommender mapping histories [batch, max_len] to scores [batch, items + 1].

The loss is the full-softmax cross-entropy of the target (dropout on in training). The `ranking` evaluator ranks
every item for every user (full ranking, no sampled negatives) and reports HR@k, NDCG@k and MRR@k for each split of
the eval data (`data.evaluation_source`: valid and test in one pass) as `<split>/<metric>@<k>`: the best step is
picked on valid, and the test metrics of that step are the result.

What leaves the ranking (`exclude_history`, on by default): PAD, and the items of the user's input history. In
MovieLens a user rates a film once, so an item already in the history cannot be the next one, and RecBole's full-sort
evaluation of general recommenders removes them too; the target itself is never removed
(`jaxgen.metrics.ranking.target_rank`), so leaving this on cannot inflate a score by hiding a repeated target, only
stop seen items from crowding out the rest. Only the visible window (the last `max_len` items) is known at
evaluation time, so an item seen before the window stays in the ranking. Datasets with repeat consumption (the
planted one draws favourites again and again) set it off.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxgen.core.task import EvalContext
from jaxgen.metrics import ranking
from jaxgen.projects.automlp.data import EVAL_SPLITS
from jaxgen.projects.automlp.model import cross_entropy


class NextItemTask:
    """`model(history, train=...)` -> scores; batches hold "history" [batch, max_len] and "target" [batch]."""

    partition_rules = ()

    def __init__(self, model: nn.Module, ks: Sequence[int] = (5, 10, 20), exclude_history: bool = True,
                 splits: Sequence[str] = EVAL_SPLITS):
        self.model = model
        self.ks = tuple(ks)
        self.exclude_history = exclude_history
        self.splits = tuple(splits)
        self._eval_sums = jax.jit(self._batch_sums)

    def with_model(self, model: nn.Module) -> "NextItemTask":
        """The same task and evaluation for another model (AutoMLP's retraining of the chosen window)."""
        return NextItemTask(model, self.ks, self.exclude_history, self.splits)

    def init(self, rng, batch):
        return self.model.init({"params": rng}, batch["history"])

    def loss(self, variables, batch, rng):
        scores = self.model.apply(variables, batch["history"], train=True, rngs={"dropout": rng})
        return cross_entropy(scores, batch["target"]), {}

    def scores(self, variables, history: jax.Array) -> jax.Array:
        return self.model.apply(variables, history)

    def _batch_sums(self, variables, batch):
        """{split: {metric: sum over the batch's valid rows of that split}} and the row counts per split."""
        scores = self.scores(variables, batch["history"])
        exclude = ranking.seen_items(batch["history"], scores.shape[1]) if self.exclude_history else None
        per_user = ranking.metrics_at(ranking.target_rank(scores, batch["target"], exclude), self.ks)
        valid = batch["valid"]
        in_split = [valid & (batch["split"] == i) for i in range(len(self.splits))]
        sums = {name: jnp.stack([jnp.sum(jnp.where(rows, values, 0.0)) for rows in in_split])
                for name, values in per_user.items()}
        return sums, jnp.stack([rows.sum() for rows in in_split])

    def evaluators(self):
        return {"ranking": self.evaluate}

    def evaluate(self, variables, context: EvalContext) -> Mapping[str, float]:
        totals, counts = None, np.zeros(len(self.splits), np.int64)
        for batch in context.batches():
            sums, batch_counts = jax.device_get(self._eval_sums(variables, batch))
            totals = sums if totals is None else {k: totals[k] + v for k, v in sums.items()}
            counts += batch_counts
        if totals is None or not counts.all():
            empty = [s for s, c in zip(self.splits, counts) if not c] if totals is not None else list(self.splits)
            raise ValueError(f"The eval data holds no examples of splits {empty}; it needs a 'split' feature indexing "
                             f"{self.splits} (data.evaluation_source)")
        results = {f"{split}/{name}": float(values[i] / counts[i])
                   for i, split in enumerate(self.splits) for name, values in totals.items()}
        results.update({f"{split}/users": int(counts[i]) for i, split in enumerate(self.splits)})
        return results
