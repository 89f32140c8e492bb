"""A tiny regression task and in-memory data for trainer tests: fast to compile, deterministic, NaN-injectable."""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from jaxgen.core.task import EvalContext
from jaxgen.data import ArraySource


def regression_source(n: int = 64, dim: int = 8, seed: int = 0, nan_index: int | None = None) -> ArraySource:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, dim)).astype(np.float32)
    y = (x @ rng.normal(size=(dim, 1)) / np.sqrt(dim) + 0.1 * rng.normal(size=(n, 1))).astype(np.float32)
    if nan_index is not None:
        x[nan_index] = np.nan
    return ArraySource({"x": x, "y": y})


class TinyMLP(nn.Module):
    width: int = 16

    @nn.compact
    def __call__(self, x):
        h = nn.Dense(self.width, kernel_init=nn.with_logical_partitioning(nn.initializers.lecun_normal(),
                                                                          ("embed", "mlp")))(x)
        return nn.Dense(1)(nn.tanh(h))


class RegressionTask:
    """Mean squared error; dropout-free but uses the step key (noise on the targets) so key handling is tested."""

    partition_rules = ()

    def __init__(self, width: int = 16, target_noise: float = 0.01):
        self.model = TinyMLP(width)
        self.target_noise = target_noise

    def init(self, rng, batch):
        return self.model.init(rng, batch["x"])

    def loss(self, variables, batch, rng):
        import jax

        noise = self.target_noise * jax.random.normal(rng, batch["y"].shape)
        error = self.model.apply(variables, batch["x"]) - (batch["y"] + noise)
        loss = jnp.mean(error**2)
        return loss, {"mae": jnp.mean(jnp.abs(error))}

    def evaluators(self):
        return {"mse": self.evaluate}

    def evaluate(self, variables, context: EvalContext):
        total, count = 0.0, 0
        for batch in context.batches():
            error = self.model.apply(variables, batch["x"]) - batch["y"]
            valid = np.asarray(batch["valid"])
            total += float(jnp.sum(jnp.where(batch["valid"][:, None], error**2, 0.0)))
            count += int(valid.sum())
        return {"mse": total / count, "examples": count}


class TinyBatchNormMLP(nn.Module):
    width: int = 16

    @nn.compact
    def __call__(self, x, train: bool):
        h = nn.Dense(self.width)(x)
        h = nn.BatchNorm(use_running_average=not train, momentum=0.8)(h)
        return nn.Dense(1)(nn.tanh(h))


class BatchNormRegressionTask(RegressionTask):
    """RegressionTask through BatchNorm: `loss` returns the updated `batch_stats` as its third output."""

    def __init__(self, width: int = 16, target_noise: float = 0.01):
        super().__init__(width, target_noise)
        self.model = TinyBatchNormMLP(width)

    def init(self, rng, batch):
        return self.model.init(rng, batch["x"], train=False)

    def loss(self, variables, batch, rng):
        import jax

        noise = self.target_noise * jax.random.normal(rng, batch["y"].shape)
        prediction, updated = self.model.apply(variables, batch["x"], train=True, mutable=["batch_stats"])
        error = prediction - (batch["y"] + noise)
        return jnp.mean(error**2), {"mae": jnp.mean(jnp.abs(error))}, updated

    def evaluators(self):
        return {}
