"""The AutoMLP recipes parse (gin checks every binding against its configurable), and each model tier builds the
model it names on the planted data, sized by the dataset's recorded item count."""

from __future__ import annotations

from pathlib import Path

import jax
import numpy as np
import pytest

from jaxgen import config
from jaxgen.data import source
from jaxgen.projects.automlp import baselines, data, model, task

REPO = Path(__file__).resolve().parents[3]
RECIPES = sorted(p for p in (REPO / "configs" / "automlp").glob("*.gin") if config.read_recipe(p).get("Recipe"))
TIERS = {"automlp": (model.AutoMLP, ["WINDOWS=(1, 2)"]), "sasrec": (baselines.SASRec, []),
         "gru4rec": (baselines.GRU4Rec, [])}


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.name)
def test_recipe_parses(recipe):
    assert config.parse([str(recipe)]) == [recipe]
    assert set(config.RECIPE_FIELDS) <= set(config.read_recipe(recipe)), f"{recipe.name}: header lines missing"


@pytest.mark.parametrize("tier", sorted(TIERS))
def test_model_tier_builds_its_model_on_the_planted_data(tier):
    cls, bindings = TIERS[tier]
    config.parse(["automlp/run.gin", "automlp/data/planted.gin", f"automlp/model/{tier}.gin"],
                 ["TRAIN_STEPS=1", *bindings])
    built = config.configured(task.NextItemTask)()
    assert isinstance(built.model, cls) and not built.exclude_history
    assert built.model.num_items == data.num_items("automlp_planted") == data.AutomlpPlanted.NUM_ITEMS
    history = source("automlp_planted", "valid").get_batch(np.arange(2))["history"]
    variables = built.init(jax.random.key(0), {"history": history})
    assert built.scores(variables, history).shape == (2, built.model.num_items + 1)
