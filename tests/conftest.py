"""Shared fixtures: small, fast configs for engine-level tests."""

from __future__ import annotations

from typing import Any

import pytest

from fedsim.config import deep_merge, load_config


def small_values(**overrides: Any) -> dict[str, Any]:
    base = {
        "seed": 1,
        "rounds": 3,
        "task": {"name": "synthetic"},
        "data": {"num_clients": 20},
        "population": {"participation": "uniform", "clients_per_round": 5},
        "client": {"lr": 0.05, "local_epochs": 1, "batch_size": 10},
        "eval": {"every": 1},
        "output": {"progress": False, "tensorboard": False},
    }
    return deep_merge(base, overrides)


@pytest.fixture
def small_config():
    def make(**overrides: Any):
        return load_config(values=small_values(**overrides))

    return make
