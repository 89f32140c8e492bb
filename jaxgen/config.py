"""Gin at the edge: finding experiment files, parsing them with command-line overrides, and failing early and clearly.

Everything here runs before any compute. A missing config file, an unknown configurable, a misspelled parameter or
an override of a macro that no config defines raises `ConfigError` naming the offending text, with the closest
known name when there is one. (Gin itself accepts `--gin.TRAIN_STEP=5` silently as a new, unused macro; we do not.)
"""

from __future__ import annotations

import difflib
import inspect
import logging
import re
import sys
import tokenize
from collections.abc import Sequence
from pathlib import Path

import gin

from jaxgen.core.errors import ConfigError  # noqa: F401  (public here: what every config error raises)

RECIPE_FIELDS = ("Recipe", "Command", "Hardware", "Wall time", "Expected")
_GIN_CALL_SUFFIX = re.compile(r"\n  In call to configurable '[^']*' \(.*?\)(?: in scope '[^']*')?")


def configs_root() -> Path:
    """`./configs` when run from a checkout, else the `configs/` next to the installed package."""
    local = Path.cwd() / "configs"
    if local.is_dir():
        return local
    return Path(__file__).resolve().parents[1] / "configs"


def all_config_files(root: Path | None = None) -> list[Path]:
    root = root or configs_root()
    return sorted(root.rglob("*.gin")) if root.is_dir() else []


def _resolve_file(name: str) -> Path:
    path = Path(name)
    for candidate in (path, configs_root() / path):
        if candidate.is_file():
            return candidate
    known = [str(p.relative_to(configs_root().parent)) for p in all_config_files()]
    close = difflib.get_close_matches(str(name), known, n=3, cutoff=0.5)
    hint = f" Did you mean {', '.join(map(repr, close))}?" if close else " `jaxgen list` shows every experiment."
    raise ConfigError(f"Config file {name!r} does not exist.{hint}")


def _macros() -> set[str]:
    return {name for (name, selector) in gin.config._CONFIG if selector == "gin.macro"}


def _module_for_alias(alias: str):
    return next((m for n, m in list(sys.modules.items()) if m is not None and (n == alias or n.endswith("." + alias))),
                None)


def _suggest(message: str) -> str:
    """A ' Did you mean ...?' hint for gin's unknown-configurable and unknown-parameter errors."""
    match = re.search(r"Configurable '([\w.]+)' doesn't have a parameter named '(\w+)'", message)
    if match:
        configurable = gin.config._REGISTRY.get_match(match.group(1))
        if configurable is not None:
            params = list(inspect.signature(configurable.wrapped).parameters)
            close = difflib.get_close_matches(match.group(2), params, n=1)
            if close:
                return f" Did you mean '{match.group(1)}.{close[0]}'?"
            return f" Its parameters: {params}."
    match = re.search(r"No configurable matching '([\w.]+)'", message)
    if match:
        name = match.group(1)
        candidates = list(gin.config._REGISTRY.matching_selectors(""))
        alias = name.rpartition(".")[0]
        module = _module_for_alias(alias) if alias else None
        if module is not None:
            candidates += [f"{alias}.{a}" for a in dir(module) if not a.startswith("_")]
        close = difflib.get_close_matches(name, candidates, n=1)
        if close:
            return f" Did you mean '{close[0]}'?"
    return ""


def _value_of(binding: str) -> str:
    return binding.partition("=")[2].strip()


def _split_binding(binding: str) -> tuple[str, str]:
    name, sep, value = binding.partition("=")
    if not sep or not name.strip():
        raise ConfigError(f"Override {binding!r} is not of the form NAME=VALUE")
    return name.strip(), value.strip()


class _QuietSearch(logging.Filter):
    """Gin logs an ERROR for every search path an `include` is not under before it finds the file; hide those."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Path not found:")


def _set_include_search_paths(folders: Sequence[Path]) -> None:
    """Where `include` looks: exactly these folders, as absolute paths, for this parse only.

    gin only ever appends search paths, so in one process (tests, notebooks) an earlier experiment's folder could
    shadow an include of the next one. The list holds no relative entry (gin's default ""): gin would then hand
    `include 'instant/smoke.gin'` to its package-resource reader, which imports `instant` and crashes (TypeError) when
    that name is a namespace package on sys.path (a `tests/projects/instant` folder under pytest, say). Joined to an
    absolute folder, an include is a plain file. gin has no public call to reset the list, hence the private one.
    """
    gin.config._LOCATION_PREFIXES[:] = []
    for folder in dict.fromkeys(f.resolve() for f in folders):
        gin.add_config_file_search_path(str(folder))


def parse(config_files: Sequence[str], bindings: Sequence[str] = ()) -> list[Path]:
    """Parses experiment files, then command-line bindings (`NAME=VALUE`), and finalizes; returns the files used."""
    gin.clear_config()
    files = [_resolve_file(f) for f in config_files]
    if not files:
        raise ConfigError("No config file given")
    _set_include_search_paths([configs_root(), *(f.parent for f in files)])
    quiet = _QuietSearch()
    logging.getLogger().addFilter(quiet)
    try:
        gin.parse_config_files_and_bindings([str(f.resolve()) for f in files], None, finalize_config=False)
        macros = _macros()
        for binding in bindings:
            name, _ = _split_binding(binding)
            if "." not in name and "/" not in name and name not in macros:
                close = difflib.get_close_matches(name, macros, n=1)
                hint = f" Did you mean {close[0]!r}?" if close else f" Known macros: {sorted(macros)}."
                raise ConfigError(f"Override {binding!r} sets macro {name!r}, which no config defines.{hint}")
        for binding in bindings:
            try:
                gin.parse_config(binding)
            except (SyntaxError, tokenize.TokenError) as e:  # not a literal, reference or macro
                raise ConfigError(f"Override {binding!r}: {_value_of(binding)!r} is not a value gin reads (a number, "
                                  "a 'quoted string', True/False/None, a [list], an @reference or a %MACRO)") from e
        gin.finalize()
    except ConfigError:
        raise
    except (ValueError, TypeError, SyntaxError, ImportError, AttributeError, OSError) as e:
        message = str(e)
        hint = _suggest(message)
        raise ConfigError(message + ("\n " + hint if hint else "")) from e
    finally:
        logging.getLogger().removeFilter(quiet)
    return files


def configured(fn):
    """The gin-configured version of a plain function (dynamic registration: the library never imports gin).

    A function the config never mentions has no bindings, and is returned as it is.
    """
    try:
        return gin.get_configurable(fn)
    except ValueError:
        return fn


def trainer(run=None):
    """The experiment's training entry point: `jaxgen.train.run`, unless a paper forks the trainer.

    A fork is chosen in its experiment file: `from jaxgen import config` and `config.trainer.run = @trainer.run`
    (it takes the same `workdir`, `restore_step`, `progress` and `mode` keywords and returns a `RunResult`).
    """
    if run is None:
        from jaxgen import train

        run = train.run
    return configured(run)


def requirements(backends: Sequence[str] = ()) -> None:
    """What an experiment needs of the machine, declared in its recipe and checked before anything is written.

    `config.requirements.backends = ['gpu']` in a recipe that only runs on a GPU (cuDNN attention, say): started on
    a machine whose JAX backend is another, `jaxgen run` stops at once with a one-line reason, before the workdir or
    any data is touched, instead of failing minutes later inside the first compiled step. A CPU tier that includes
    the recipe resets it (`config.requirements.backends = []`).
    """
    import jax

    backend = jax.default_backend()
    if backends and backend not in backends:
        devices = jax.devices()
        raise ConfigError(
            f"This experiment runs only on {' or '.join(b.upper() for b in backends)} "
            f"(config.requirements.backends = {list(backends)}); this machine runs JAX on {backend.upper()} "
            f"({len(devices)} {devices[0].device_kind} device{'s' if len(devices) > 1 else ''}). Run it where that "
            "backend is, or pick a tier made for this machine (`jaxgen list`)."
        )


def check_requirements() -> None:
    """Checks the parsed experiment's `requirements` (nothing when the experiment declares none)."""
    configured(requirements)()


def user_message(error: BaseException) -> str:
    """The error's message without gin's `In call to configurable ...` lines: our errors already say what is wrong,
    and gin appends one such line per configurable the error passed through."""
    return _GIN_CALL_SUFFIX.sub("", str(error))


def config_text() -> str:
    return gin.config_str()


def read_recipe(path: Path) -> dict[str, str]:
    """The header of an experiment file (empty for tier files without a recipe): `# Field: value` lines, each one
    continued by the indented `#   ...` lines under it. A qualifier after a field's name stays with its value:
    `# Expected (one run, seed 0): ...` gives Expected = "(one run, seed 0) ..."."""
    recipe: dict[str, str] = {}
    field = None
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        text = line[1:]
        if text.startswith("  ") and field:
            recipe[field] += " " + text.strip()
            continue
        name, sep, value = text.strip().partition(":")
        base, _, qualifier = name.partition(" (")
        field = base if sep and base in RECIPE_FIELDS else None
        if field:
            recipe[field] = f"({qualifier} {value.strip()}" if qualifier else value.strip()
    return recipe
