"""Shipping code to a cluster: fedsim, strategies, clients and plugin modules as ``py_modules``."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fedsim.executors.worker import WorkerSpec

CODE_PACKAGES = ("fedsim", "strategies", "clients")  # shipped to cluster nodes via py_modules


def plugin_modules(spec: WorkerSpec) -> list[str]:
    """Modules (outside fedsim/strategies/clients) that register the client algorithm or task,
    after the plugins this process imported (``--plugin``, ``plugins:``, entry points)."""
    from clients import CLIENTS  # noqa: PLC0415
    from fedsim.plugins import loaded_plugins  # noqa: PLC0415
    from fedsim.tasks import TASKS  # noqa: PLC0415

    names = loaded_plugins()
    for obj in (CLIENTS.get(spec.client), TASKS.get(spec.task.name)):
        name = getattr(obj, "__module__", None) or ""
        if name and name != "__main__" and name.split(".")[0] not in CODE_PACKAGES and name not in names:
            names.append(name)
    return names


def module_root(name: str) -> str | None:
    """The sys.path entry from which ``name`` was imported (None if unknown)."""
    module = sys.modules.get(name)
    file = getattr(module, "__file__", None)
    if not file:
        return None
    path = Path(file).resolve()
    depth = name.count(".") + (1 if path.name == "__init__.py" else 0)
    return str(path.parents[depth])


def _is_installed(path: str) -> bool:
    return "site-packages" in path or "dist-packages" in path


def _module_path(module: Any) -> str:
    """A package's directory or a single-file module's file, as ``py_modules`` wants it."""
    paths = list(getattr(module, "__path__", []))
    return str(paths[0] if len(paths) == 1 else module.__file__)


def runtime_env(plugins: Sequence[str]) -> dict[str, Any]:
    """``py_modules`` shipping fedsim, strategies, clients and plugin modules to cluster nodes."""
    modules = [_module_path(importlib.import_module(name)) for name in CODE_PACKAGES]
    for name in plugins:
        top = sys.modules.get(name.split(".")[0])
        path = _module_path(top) if top is not None and getattr(top, "__file__", None) else None
        if path and not _is_installed(path) and path not in modules:
            modules.append(path)
    return {"py_modules": modules, "excludes": ["__pycache__", "*.pyc"]}
