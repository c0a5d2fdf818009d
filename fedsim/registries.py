"""One place that maps each selectable kind to its registry, for config validation and ``fedsim list``.

Imports are lazy so that importing the config module stays cheap and cycle-free.
"""

from __future__ import annotations

import importlib
from typing import Any

from fedsim.registry import Registry

__all__ = ["KINDS", "get", "strategy_config_defaults"]

# kind -> (module, attribute, heading for `fedsim list`)
KINDS: dict[str, tuple[str, str, str]] = {
    "strategy": ("strategies", "STRATEGIES", "strategies"),
    "weighting": ("strategies", "WEIGHTINGS", "weightings (strategy.weighting)"),
    "server_optimizer": ("strategies", "SERVER_OPTIMIZERS", "server optimizers (strategy.server_optimizer)"),
    "client": ("clients", "CLIENTS", "client algorithms (client.algorithm)"),
    "optimizer": ("clients", "LOCAL_OPTIMIZERS", "local optimizers (client.optimizer)"),
    "task": ("fedsim.tasks", "TASKS", "tasks (task.name)"),
    "partitioner": ("fedsim.data", "PARTITIONERS", "partitioners (data.partition)"),
    "participation": ("fedsim.population", "PARTICIPATION", "participation models (population.participation)"),
    "speed": ("fedsim.population", "SPEEDS", "client speed models (population.speed)"),
    "executor": ("fedsim.executors", "EXECUTORS", "executors (executor.name)"),
    "scheduler": ("fedsim.schedulers", "SCHEDULERS", "schedulers (scheduler.name)"),
    "arrivals": ("fedsim.schedulers", "ARRIVALS", "arrival processes (scheduler.arrivals)"),
    "staleness": ("strategies", "STALENESS", "staleness weightings (strategy.staleness)"),
    "attack": ("fedsim.attacks", "ATTACKS", "Byzantine attacks (population.byzantine_attack)"),
    "compressor": ("clients.transforms.compress", "COMPRESSORS", "update compressors (communication.compressor)"),
}


def get(kind: str) -> Registry[Any]:
    module, attr, _ = KINDS[kind]
    return getattr(importlib.import_module(module), attr)


def strategy_config_defaults(name: str) -> dict[str, Any]:
    """Config values a strategy preset suggests (e.g. FedAU defaults to heterogeneous participation)."""
    return get("strategy").get(name).config_defaults
