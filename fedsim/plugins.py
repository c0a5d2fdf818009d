"""Plugins: modules outside fedsim that register weightings, server optimizers, client
algorithms, tasks, participation models, ... by importing fedsim's registries.

Two ways in:

- ``python -m fedsim run --plugin my_pkg.my_weighting`` (repeatable), or ``plugins: [...]`` in
  a YAML config: the module is imported (from the current folder too, as ``python -m`` does)
  before the config is validated, so the names it registers are valid config values. The
  resolved config records the list, so ``--config runs/x/config.yaml`` imports them again.
- An installed distribution declares an entry point in the ``fedsim.plugins`` group::

      [project.entry-points."fedsim.plugins"]
      my_plugin = "my_pkg.fedsim_plugin"

  Every such module is imported when the CLI starts (an entry point naming a function,
  ``"my_pkg:register"``, has the function called with no arguments).

A plugin that fails to import (an exception, a syntax error, even ``sys.exit()``) is the one-line
error ``plugin MODULE failed to import: <the error's first line> (<file>:<line>)``, exit status 2;
its traceback goes to the log at debug level, and into ``log.txt`` when resuming a run folder.

Ray actors import the same modules before building their worker, and modules that are not
installed in site-packages are shipped to cluster nodes with fedsim's own code.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import sys
import traceback
from collections.abc import Iterable
from importlib import metadata
from pathlib import Path

__all__ = [
    "ENTRY_POINT_GROUP",
    "PluginError",
    "import_plugins",
    "load_entry_points",
    "load_entry_points_once",
    "loaded_plugins",
    "check_shadowing",
    "take_failure_traceback",
]

log = logging.getLogger("fedsim")

ENTRY_POINT_GROUP = "fedsim.plugins"
SHADOWABLE = ("strategies", "clients")  # fedsim's top-level packages with common names

_loaded: list[str] = []  # module names imported through this module, in order (shipped to Ray actors)
_failure_traceback: str | None = None  # the last failed plugin import's traceback (for a run folder's log.txt)


class PluginError(ValueError):
    """A plugin could not be imported; the message is one line."""


def _failed(what: str, exc: BaseException) -> PluginError:
    """``"<what>: <first line of the error> (<file>:<line>)"`` as a PluginError; the traceback is logged
    at debug level and kept for :func:`take_failure_traceback`."""
    global _failure_traceback
    _failure_traceback = "".join(traceback.format_exception(exc))
    log.debug("%s; traceback:\n%s", what, _failure_traceback.rstrip())
    if isinstance(exc, SystemExit):
        reason = f"it called sys.exit({exc.code!r})"
    else:
        text = (exc.msg if isinstance(exc, SyntaxError) and exc.msg else str(exc)).strip()
        reason = f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__
    where = None
    if isinstance(exc, SyntaxError) and exc.filename:
        where = (exc.filename, exc.lineno)
    else:  # the innermost frame outside importlib and fedsim: the plugin's own line, not the registry's
        fedsim_dir = str(Path(__file__).resolve().parent)
        frames = [
            f
            for f in traceback.extract_tb(exc.__traceback__)
            if not f.filename.startswith("<") and not str(Path(f.filename).resolve()).startswith(fedsim_dir)
        ]
        if frames:
            where = (frames[-1].filename, frames[-1].lineno)
    return PluginError(f"{what}: {reason}" + (f" ({where[0]}:{where[1]})" if where else ""))


def take_failure_traceback() -> str | None:
    """The traceback of the last plugin that failed to import (then forgotten), or None."""
    global _failure_traceback
    text, _failure_traceback = _failure_traceback, None
    return text


def _ensure_cwd_importable() -> None:
    """``python -m`` puts the current folder on sys.path, the ``fedsim`` script does not: make both
    find a plugin module in the current folder. Appended, so it never shadows installed packages."""
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.append(cwd)


def import_plugins(names: Iterable[str]) -> list[str]:
    """Import each module by name (idempotent); a missing or failing module is a one-line PluginError."""
    _ensure_cwd_importable()
    imported = []
    for name in names:
        if not isinstance(name, str) or not name.strip():
            raise PluginError(f"plugins: expected a module name like my_pkg.my_weighting, got {name!r}")
        name = name.strip()
        if name.endswith(".py") or "/" in name or os.sep in name:
            raise PluginError(
                f"plugins: {name!r} is a path; give a module name importable from the current folder "
                f"or an installed package (e.g. {Path(name).stem})"
            )
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name and (name == exc.name or name.startswith(exc.name + ".")):
                raise PluginError(
                    f"plugins: no module named {name!r} (looked in the current folder {os.getcwd()} and on sys.path)"
                ) from None
            raise _failed(f"plugin {name} failed to import", exc) from None
        except (Exception, SystemExit) as exc:  # noqa: BLE001  (whatever a plugin raises, sys.exit(0) too: one line, exit 2)
            raise _failed(f"plugin {name} failed to import", exc) from None
        if name not in _loaded:
            _loaded.append(name)
        imported.append(name)
    return imported


def load_entry_points() -> list[str]:
    """Import every installed ``fedsim.plugins`` entry point; returns their module names."""
    names = []
    for entry in metadata.entry_points(group=ENTRY_POINT_GROUP):
        try:
            obj = entry.load()
            if callable(obj) and entry.attr:
                obj()
        except (Exception, SystemExit) as exc:  # noqa: BLE001  (a broken third-party plugin: one line, then exit 2)
            raise _failed(f"plugin entry point {entry.name!r} ({entry.value}) failed to load", exc) from None
        module = entry.module
        if module not in _loaded:
            _loaded.append(module)
        names.append(module)
    return names


_entry_points_loaded = False


def load_entry_points_once() -> None:
    """:func:`load_entry_points` the first time it is called in this process (config loading calls it)."""
    global _entry_points_loaded
    if not _entry_points_loaded:
        _entry_points_loaded = True
        load_entry_points()


def loaded_plugins() -> list[str]:
    """Modules imported as plugins in this process, in order (what a Ray actor must import too)."""
    return list(_loaded)


def check_shadowing() -> str | None:
    """A one-line explanation if a user's ``clients.py``/``strategies/`` would be imported instead of fedsim's.

    fedsim ships top-level ``strategies`` and ``clients`` packages; ``python -m`` puts the current
    folder first on sys.path, so a file or folder of the same name there wins.
    """
    expected_root = Path(__file__).resolve().parent.parent
    for name in SHADOWABLE:
        module = sys.modules.get(name)
        origin = getattr(module, "__file__", None) if module is not None else None
        if origin is None:
            try:
                spec = importlib.util.find_spec(name)
            except (ImportError, ValueError):
                spec = None
            origin = spec.origin if spec is not None else None
        if origin is None:
            continue
        path = Path(origin).resolve()
        found_root = path.parent.parent if path.name == "__init__.py" else path.parent
        if found_root != expected_root:
            shown = path.parent if path.name == "__init__.py" else path
            return (
                f"{shown} shadows fedsim's '{name}' package (Python imports the current folder first); "
                f"rename it or run fedsim from another folder"
            )
    return None
