"""Finding what the papers register: every package under `jaxgen.projects`, imported on demand.

A paper adds datasets (`jaxgen.data.register_dataset`) and attention backends (`jaxgen.nn.attention.register_backend`)
from its own package, so shared code never names a paper. A recipe imports its paper through gin anyway; a name
looked up before that (`jaxgen data list`, `backend="svg"` in plain Python) triggers `import_projects()`, which
imports each paper package once. This module is the one place that knows where the papers live.
"""

from __future__ import annotations

import importlib
import logging
import pkgutil

PROJECTS_PACKAGE = "jaxgen.projects"


def import_projects(package: str | None = None) -> None:
    """Imports every subpackage of `package` (default: the papers). One that fails to import (a missing optional
    dependency) is named in a warning; the others' registrations stay usable."""
    package = package or PROJECTS_PACKAGE
    root = importlib.import_module(package)
    for info in pkgutil.iter_modules(root.__path__, prefix=f"{package}."):
        if info.ispkg:
            try:
                importlib.import_module(info.name)
            except ImportError as e:
                logging.warning("Project package %s does not import (%s): what it registers is not available",
                                info.name, e)
