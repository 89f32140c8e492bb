"""The error a user sees as one line: a setting of the run is wrong.

It lives here, not in `jaxgen.config`, because both the gin edge (a misspelled binding) and the gin-free trainers (a
trainer argument such as `train_steps=-5`) raise it, and `jaxgen.cli` reports it without a traceback.
"""

from __future__ import annotations


class ConfigError(ValueError):
    """A config file, binding or run setting is wrong; raised before anything is computed."""


def require_positive(**values: int) -> None:
    """`train_steps=-5` -> ConfigError("train_steps must be positive; got -5")."""
    for name, value in values.items():
        if value <= 0:
            raise ConfigError(f"{name} must be positive; got {value}")
