"""A project adds datasets and batches examples of different sizes from its own package: `register_dataset`,
discovery for `jaxgen data list`, and the Loader's `collate` hook (padded sequences, packed graphs)."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from jaxgen.core import plugins
from jaxgen.data import Loader, register_dataset, registered_datasets, source, sources
from jaxgen.data.inspect import describe, list_text
from support.toy_project import data as toy_data


def test_a_project_registers_datasets_that_data_list_shows():
    names = registered_datasets()
    assert names["toy_sequences"] == "support.toy_project.data"
    assert names["digits"] == "jaxgen.data.builders.digits"  # the built-in ones stay registered
    text = list_text()
    assert "toy_graphs: " in text and "support.toy_project.data" in text
    assert len(source("toy_sequences", "train")) == toy_data.NUM_EXAMPLES["train"]
    assert "tokens: shapes (4,) .. (20,) (varying) dtype int32" in describe("toy_sequences", "train", count=48)


def test_registered_datasets_imports_the_project_packages_to_find_their_registrations(monkeypatch):
    monkeypatch.setattr(sources, "_REGISTRY", {k: v for k, v in sources._REGISTRY.items() if not k.startswith("toy_")})
    for module in [m for m in sys.modules if m.startswith("support.toy_project")]:
        monkeypatch.delitem(sys.modules, module)
    monkeypatch.setattr(plugins, "PROJECTS_PACKAGE", "support")  # stands in for jaxgen.projects
    assert "toy_graphs" in registered_datasets()


def test_a_project_that_does_not_import_is_named_and_the_others_still_register(tmp_path, monkeypatch, caplog):
    root = tmp_path / "fake_projects"
    good = "from jaxgen.data import register_dataset\nregister_dataset('good_set', 'good.data')\n"
    for package, body in (("", ""), ("broken", "import a_module_that_is_not_installed\n"), ("good", good)):
        (root / package).mkdir(parents=True, exist_ok=True)
        (root / package / "__init__.py").write_text(body)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(sources, "_REGISTRY", dict(sources._REGISTRY))
    monkeypatch.setattr(plugins, "PROJECTS_PACKAGE", "fake_projects")
    assert registered_datasets()["good_set"] == "good.data"
    assert "fake_projects.broken does not import (No module named 'a_module_that_is_not_installed')" in caplog.text


def test_registering_a_name_twice_with_another_module_is_refused():
    register_dataset("toy_sequences", "support.toy_project.data")  # the same registration again is harmless
    with pytest.raises(ValueError, match="'toy_sequences' is already registered"):
        register_dataset("toy_sequences", "somewhere.else")
    with pytest.raises(ValueError, match="plain TFDS name"):
        register_dataset("toy_sequences/config", "support.toy_project.data")


def test_padded_sequence_batches_are_pure_functions_of_seed_and_step():
    loader = Loader("toy_sequences", batch_size=8, seed=5, collate=toy_data.pad_sequences)
    src = loader.source
    batch = loader.batch(3)
    assert batch["tokens"].shape[1] in (8, 16, 32) and batch["mask"].dtype == bool
    order = np.random.default_rng([5, 0]).permutation(len(src))  # step 3 of epoch 0: positions 24..31
    for row, index in enumerate(order[24:32]):
        tokens = src[int(index)]["tokens"]
        np.testing.assert_array_equal(batch["tokens"][row, :len(tokens)], tokens)
        assert batch["mask"][row].sum() == len(tokens)
    again = Loader("toy_sequences", batch_size=8, seed=5, collate=toy_data.pad_sequences)
    rows = np.arange(4, 8)  # another process's half of the same global batch
    np.testing.assert_array_equal(again.batch(3, rows)["label"], batch["label"][4:])


def test_eval_batches_pass_valid_through_collate():
    loader = Loader("toy_graphs", batch_size=8, split="test", shuffle=False, collate=toy_data.GraphCollate(2))
    masks = [b["graph_mask"] for b in loader.eval_batches()]
    assert len(masks) == 3 and all(m.shape == (2, 5) for m in masks)
    assert sum(int(m.sum()) for m in masks) == toy_data.NUM_EXAMPLES["test"]  # 20 real graphs, 4 padding examples
    graph = next(Loader("toy_graphs", 8, split="test", shuffle=False, collate=toy_data.GraphCollate(2)).iterate(0))
    assert graph["graph"].n_node.shape == (2, 5) and int(graph["graph"].n_node[0, :4].sum()) > 0
