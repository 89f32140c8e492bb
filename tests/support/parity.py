"""The reference packages of the `[parity]` extra (torch, diffusers, torchvision, pytorch-fid, lpips) and semilearn for
`*_vs_reference_test.py` files.

The README's test command installs them, so in CI (`CI` set, as `.ci/run` does) a missing one fails the test module:
a parity test that skips itself in CI proves nothing. In a checkout installed with `[dev]` only, the module is
skipped with the install command in the reason. docs/parity.md says how the packages are installed and why.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from types import ModuleType

import pytest

INSTALL = 'pip install -e ".[dev,parity]" && pip install --no-deps semilearn==0.3.2'


def require(name: str) -> ModuleType:
    """Import a reference package: an ImportError in CI, a module-level skip elsewhere."""
    try:
        return importlib.import_module(name)
    except ImportError as error:
        _missing(name, error)


def require_installed(name: str) -> None:
    """Like `require` for a package whose own `__init__` must not run (its modules are imported one by one)."""
    if importlib.util.find_spec(name) is None:
        _missing(name, ModuleNotFoundError(f"No module named {name!r}"))


def _missing(name: str, error: ImportError):
    if os.environ.get("CI"):
        raise ImportError(f"{name!r} is missing; CI installs it with the README's test command ({INSTALL}). "
                          f"Cause: {error}") from error
    pytest.skip(f"{name} not installed; parity tests need: {INSTALL}", allow_module_level=True)
