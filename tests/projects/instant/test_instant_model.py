"""WRN-28-2 has the SSL benchmarks' size and shapes (checked on abstract shapes: nothing is computed)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest

from jaxgen.projects.instant.model import WideResNet


def test_wrn_28_2_matches_the_benchmark_backbone():
    model = WideResNet(num_classes=10)
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((2, 32, 32, 3))))
    assert sum(x.size for x in jax.tree.leaves(variables["params"])) == 1_467_610  # USB's wrn_28_2: 1.47M
    assert "batch_stats" in variables
    logits = jax.eval_shape(lambda v: model.apply(v, jnp.zeros((2, 32, 32, 3))), variables)
    assert logits.shape == (2, 10)
    with pytest.raises(ValueError, match="6n \\+ 4; got 27"):
        WideResNet(depth=27).init(jax.random.key(0), jnp.zeros((1, 8, 8, 1)))
