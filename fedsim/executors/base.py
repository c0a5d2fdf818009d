"""Executor protocol and registry: how a batch of client jobs gets computed.

``run(jobs)`` returns one result per job, in job order. Every job's inputs (model version,
config, seed) were fixed at dispatch, so how the executor batches or parallelises the jobs
cannot change any result.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

from fedsim.registry import Registry
from fedsim.types import ClientJob, ClientResult

__all__ = ["Executor", "EXECUTORS", "ExecutorFactory"]


class Executor(Protocol):
    def run(self, jobs: Sequence[ClientJob]) -> list[ClientResult]: ...

    def close(self) -> None: ...


# factory(executor config, worker spec, task already built in this process) -> Executor
ExecutorFactory = Callable[[Any, Any, Any], Executor]
EXECUTORS: Registry[ExecutorFactory] = Registry("executor")
