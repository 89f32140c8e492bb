"""The notebooks under experiments/notebooks/: each opens in Colab from its badge, sets itself up with no variable to
set, carries the outputs of a run (a reader sees results without running it), and executes on CPU here.

Here the kernel runs with `JAXGEN_NOTEBOOK_CI=1`: a notebook whose full run takes minutes (diffusion.ipynb trains for
about one) may shorten its loop when that is set, saying so in the cell; its saved outputs are those of the full run."""

from __future__ import annotations

import tomllib
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

REPO = Path(__file__).resolve().parents[2]
NOTEBOOKS = sorted((REPO / "experiments" / "notebooks").glob("*.ipynb"))
REPOSITORY = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["urls"]["Repository"]
MAX_BYTES = 1_000_000


def test_there_are_notebooks():
    assert NOTEBOOKS


def _code_cells(notebook):
    return [cell for cell in notebook.cells if cell.cell_type == "code"]


def _errors(notebook):
    return [o for cell in _code_cells(notebook) for o in cell.get("outputs", []) if o.get("output_type") == "error"]


def _images(notebook):
    return [o for cell in _code_cells(notebook) for o in cell.get("outputs", []) if "image/png" in o.get("data", {})]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_opens_in_colab_and_installs_itself(path):
    notebook = nbformat.read(path, as_version=4)
    badge = (f"https://colab.research.google.com/github/{REPOSITORY.removeprefix('https://github.com/')}/blob/main/"
             f"{path.relative_to(REPO)}")
    assert badge in notebook.cells[0].source, f"the first cell should carry the Open-in-Colab badge {badge}"
    setup = _code_cells(notebook)[0].source
    assert f'REPOSITORY = "{REPOSITORY}"' in setup and "pip" in setup, "the first code cell installs jaxgen"
    assert "os.environ" not in setup and "JAXGEN_REPO" not in setup, "no variable to set"
    assert not any("plt.show()" in cell.source for cell in _code_cells(notebook)), "figures go out as PNG images"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_carries_the_outputs_of_a_run(path):
    notebook = nbformat.read(path, as_version=4)
    assert path.stat().st_size < MAX_BYTES
    assert all(cell.get("outputs") for cell in _code_cells(notebook)), "execute it and save the outputs"
    assert not _errors(notebook) and _images(notebook)


def execute(path, monkeypatch):
    """Runs the notebook in a fresh kernel with `JAXGEN_NOTEBOOK_CI=1`; it must finish without an error and draw a
    picture. Called from `test_execute_notebooks_*.py`: the executions take minutes in all, and pytest-xdist's
    `--dist loadfile` keeps a file on one worker, so they are split over two files to run on both."""
    monkeypatch.setenv("JAXGEN_NOTEBOOK_CI", "1")  # the kernel inherits it
    notebook = nbformat.read(path, as_version=4)
    NotebookClient(notebook, timeout=280, kernel_name="python3", resources={"metadata": {"path": str(REPO)}}).execute()
    assert not _errors(notebook)
    assert _images(notebook), "a notebook should show at least one picture"
