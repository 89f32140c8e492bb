"""Executes every other notebook under experiments/notebooks/ (the first half of the split that
`tests/notebooks/test_notebooks.py`'s `execute` explains)."""

from __future__ import annotations

import pytest

from tests.notebooks.test_notebooks import NOTEBOOKS, execute


@pytest.mark.parametrize("path", NOTEBOOKS[0::2], ids=lambda p: p.name)
def test_notebook_executes(path, monkeypatch):
    execute(path, monkeypatch)
