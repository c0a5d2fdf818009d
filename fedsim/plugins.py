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

Ray actors import the same modules before building their worker, and modules that are not
installed in site-packages are shipped to cluster nodes with fedsim's own code.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from importlib import metadata
from pathlib import Path
from typing import Iterable

__all__ = ["ENTRY_POINT_GROUP", "PluginError", "import_plugins", "load_entry_points", "load_entry_points_once", "loaded_plugins", "check_shadowing"]

ENTRY_POINT_GROUP = "fedsim.plugins"
SHADOWABLE = ("strategies", "clients")  # fedsim's top-level packages with common names

_loaded: list[str] = []  # module names imported through this module, in order (shipped to Ray actors)


class PluginError(ValueError):
    """A plugin could not be imported; the message is one line."""


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
            raise PluginError(f"plugins: importing {name!r} failed: {type(exc).__name__}: {exc}") from exc
        except (ValueError, KeyError) as exc:  # e.g. a name registered twice
            raise PluginError(f"plugins: importing {name!r} failed: {exc}") from exc
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
        except Exception as exc:  # noqa: BLE001  (a broken third-party plugin: one line, then exit 2)
            raise PluginError(f"plugin entry point {entry.name!r} ({entry.value}) failed to load: {exc}") from exc
        if callable(obj) and entry.attr:
            obj()
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
