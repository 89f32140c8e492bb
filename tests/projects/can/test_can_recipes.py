"""Every configs/can experiment, alone and with each method tier, builds the model it says (from shapes: nothing is
compiled or allocated), and its placement rules all match layers of that backbone."""

from __future__ import annotations

from pathlib import Path

import gin
import jax
import jax.numpy as jnp
import pytest

from jaxgen import config
from jaxgen.nn.dit import DiT
from jaxgen.nn.uvit import UViT
from jaxgen.projects.can import AKS, CAN, ConditionAwareModel
from jaxgen.projects.can.cat import CaTDiT

REPO = Path(__file__).resolve().parents[3]
EXPERIMENTS = {"dit_s2": DiT, "dit_tiny": DiT, "dit_cpu_p4": DiT, "uvit_s2": UViT, "uvit_tiny": UViT,
               "cat_s2": CaTDiT, "cat_tiny": CaTDiT}
CPU_OVERRIDES = {"dit_s2": ["dit.DiT.attention_backend='dense'"], "uvit_s2": ["uvit.UViT.attention_backend='dense'"]}
TIERS = {"-": None, "configs/can/method/can.gin": CAN, "configs/can/method/aks.gin": AKS}


def test_every_experiment_is_listed_here():
    found = {p.name.removesuffix("_shape_classes32.gin") for p in (REPO / "configs/can").glob("*_shape_classes32.gin")}
    assert found == set(EXPERIMENTS)


@pytest.mark.parametrize("tier", list(TIERS))
@pytest.mark.parametrize("experiment", list(EXPERIMENTS))
def test_experiment_with_tier_builds_its_model(experiment, tier, monkeypatch):
    monkeypatch.chdir(REPO)
    config.parse([f"configs/can/{experiment}_shape_classes32.gin", *([tier] if tier != "-" else [])],
                 CPU_OVERRIDES.get(experiment, []))
    model = gin.query_parameter("task.ClassConditionalDiffusionTask.model").scoped_configurable_fn()
    backbone = model.backbone if TIERS[tier] else model
    assert isinstance(backbone, EXPERIMENTS[experiment])
    if TIERS[tier]:
        assert isinstance(model, ConditionAwareModel) and isinstance(model.weights, TIERS[tier])
    x = jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32)
    t, y = jax.ShapeDtypeStruct((2,), jnp.float32), jax.ShapeDtypeStruct((2,), jnp.int32)
    jax.eval_shape(model.init, jax.random.key(0), x, t, y)  # raises if a rule matches no layer
