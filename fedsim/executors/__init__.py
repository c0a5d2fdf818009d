"""Executors compute client jobs: serial (this process), vmap (batched clients), ray (actors)."""

from fedsim.executors import auto as _auto  # noqa: F401  (registers "auto")
from fedsim.executors import ray as _ray  # noqa: F401  (registers "ray"; imports ray lazily)
from fedsim.executors import serial as _serial  # noqa: F401  (registers "serial")
from fedsim.executors import vmap as _vmap  # noqa: F401  (registers "vmap")
from fedsim.executors.auto import build_executor
from fedsim.executors.base import EXECUTORS, Executor
from fedsim.executors.serial import SerialExecutor
from fedsim.executors.worker import Worker, WorkerSpec, check_result, resolve_device

__all__ = [
    "build_executor",
    "EXECUTORS",
    "Executor",
    "SerialExecutor",
    "Worker",
    "WorkerSpec",
    "check_result",
    "resolve_device",
]
