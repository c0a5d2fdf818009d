"""Shared fixtures: small, fast configs for engine-level tests."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from types import ModuleType
from typing import Any

# Keep every Ray process the tests start on loopback: by default Ray replaces 127.0.0.1 with
# the machine's interface address; this switch (read when ray is imported, inherited by the
# `ray start` subprocesses of the cluster test) makes it use 127.0.0.1.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

import pytest

from fedsim.config import deep_merge, load_config

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"


@pytest.fixture
def load_experiment(monkeypatch):
    """``load(path)``: the script at ``experiments/<path>`` as a module, loaded as ``python
    experiments/<path>`` runs it: its folder first on ``sys.path``, so it finds its sibling
    modules (``grid.py``) whatever other test modules did before."""

    def load(relative: str) -> ModuleType:
        path = EXPERIMENTS / relative
        monkeypatch.syspath_prepend(str(path.parent))
        spec = importlib.util.spec_from_file_location(path.stem, path)
        assert spec is not None and spec.loader is not None, path
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    return load


@pytest.fixture(scope="session")
def session_inductor_cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("inductor"))


@pytest.fixture(autouse=True)
def own_compile_cache(tmp_path_factory, monkeypatch, session_inductor_cache):
    """Each test its own fedsim cache (measured compile costs): never ~/.cache, and no test's
    recorded costs steer another's compile: auto. Inductor's cache is one per session (a
    compiled graph is the same whatever test compiles it; sharing it keeps compiling tests fast)."""
    monkeypatch.setenv("FEDSIM_CACHE_DIR", str(tmp_path_factory.mktemp("fedsim-cache")))
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", session_inductor_cache)


def small_values(**overrides: Any) -> dict[str, Any]:
    base = {
        "seed": 1,
        "rounds": 3,
        "task": {"name": "synthetic"},
        "data": {"num_clients": 20},
        "population": {"participation": "uniform", "clients_per_round": 5},
        "client": {"lr": 0.05, "local_epochs": 1, "batch_size": 10},
        "eval": {"every": 1},
        # exact comparisons against hand-run local training need the serial path (the default,
        # "auto", takes vmap, which is equal only within float tolerance)
        "executor": {"name": "serial"},
        "output": {"progress": False, "tensorboard": False},
    }
    return deep_merge(base, overrides)


@pytest.fixture
def small_config():
    def make(**overrides: Any):
        return load_config(values=small_values(**overrides))

    return make


@pytest.fixture
def one_torch_thread():
    """Tiny models: intra-op threads only add contention (and change float reduction order)."""
    import torch  # noqa: PLC0415

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
