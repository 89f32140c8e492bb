"""Every configs/svdquant experiment parses, makes `jaxgen run` call the SVDQuant driver, builds the DiT it says, and
its model's parameters fit the trained diffusion run it restores (same config, so same shapes), with every DiT rule
matching a layer of that model (from shapes: nothing is compiled or calibrated)."""

from __future__ import annotations

from pathlib import Path

import flax.linen as nn
import gin
import jax
import numpy as np
import pytest

from jaxgen import config
from jaxgen.nn.dit import DiT
from jaxgen.projects.svdquant import driver, model as sq_model

REPO = Path(__file__).resolve().parents[3]
EXPERIMENTS = sorted(p.name for p in (REPO / "configs/svdquant").glob("dit_*.gin"))
CPU_OVERRIDES = ["dit.DiT.attention_backend='dense'", "config.requirements.backends=[]"]
# The diffusion run each restores: the same DiT, so its trained parameters load.
TRAINED_BY = {"dit_tiny_shape_classes32.gin": "configs/diffusion/dit_tiny_shape_classes32.gin",
              "dit_cpu_p4_shape_classes32.gin": "configs/diffusion/dit_cpu_p4_shape_classes32.gin",
              "dit_s2_shape_classes32.gin": "configs/diffusion/dit_s2_shape_classes32.gin"}


def _dit_shapes(files, model_binding):
    config.parse(files, CPU_OVERRIDES)
    module = gin.query_parameter(model_binding).scoped_configurable_fn()
    assert isinstance(module, DiT)
    x = jax.ShapeDtypeStruct((1, 32, 32, 3), np.float32)
    t, y = jax.ShapeDtypeStruct((1,), np.float32), jax.ShapeDtypeStruct((1,), np.int32)
    return module, nn.unbox(jax.eval_shape(module.init, jax.random.key(0), x, t, y))


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_runs_the_driver_on_the_trained_dit(experiment, monkeypatch):
    monkeypatch.chdir(REPO)
    # The whole module path: SIGE has a `driver.run` too, and gin cannot tell them apart from "driver.run".
    _, shapes = _dit_shapes([f"configs/svdquant/{experiment}"], "jaxgen.projects.svdquant.driver.run.model")
    assert config.configured(config.trainer)().__wrapped__ is driver.run
    layers = {"/".join(k.key for k in path[1:-1]) for path, _ in jax.tree_util.tree_flatten_with_path(shapes)[0]
              if path[-1].key == "kernel"}
    for scheme in driver.SCHEMES:
        sq_model.assign_schemes(layers, sq_model.dit_rules(scheme))  # raises on a rule matching no layer
    if experiment in TRAINED_BY:
        gin.clear_config()
        _, trained = _dit_shapes([TRAINED_BY[experiment]], "task.ClassConditionalDiffusionTask.model")
        assert jax.tree.map(lambda a: a.shape, trained) == jax.tree.map(lambda a: a.shape, shapes)
