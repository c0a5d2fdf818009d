"""Serial executor: one resident model in this process, jobs one after another (debuggable)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fedsim.executors.base import EXECUTORS
from fedsim.executors.worker import Worker, WorkerSpec
from fedsim.tasks import Task
from fedsim.types import ClientJob, ClientResult

__all__ = ["SerialExecutor"]


class SerialExecutor:
    def __init__(self, spec: WorkerSpec, task: Task | None = None):
        self.worker = Worker(spec, task)

    def run(self, jobs: Sequence[ClientJob]) -> list[ClientResult]:
        return [self.worker.run(job) for job in jobs]

    def close(self) -> None:
        pass


@EXECUTORS.register("serial", "one process, one resident model, clients one after another")
def serial(config: Any, spec: WorkerSpec, task: Task | None = None) -> SerialExecutor:
    return SerialExecutor(spec, task)
