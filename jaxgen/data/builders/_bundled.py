"""Locating data files that ship inside installed wheels, with an error that says how to get them."""

from __future__ import annotations

import importlib.util
from pathlib import Path


def package_file(package: str, relative: str, install_hint: str) -> Path:
    """The path of `relative` inside the installed `package`, found without importing the package."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"Package {package!r} is not installed; it ships this dataset. Install it: {install_hint}")
    path = Path(next(iter(spec.submodule_search_locations))) / relative
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing from the installed {package!r}; reinstall it: {install_hint}")
    return path
