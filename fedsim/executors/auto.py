"""``executor.name: auto`` (the default): the vmap executor when the client algorithm, its
optimizer and the model can be batched, the serial executor otherwise; one log line says which
and why. Ray is never chosen automatically (it pays off only for big models or many cores).
"""

from __future__ import annotations

import logging
from typing import Any, Mapping

from fedsim.executors.base import EXECUTORS, Executor
from fedsim.executors.worker import WorkerSpec
from fedsim.tasks import Task, build_task

__all__ = ["build_executor", "choose_executor", "why_not_vmap"]

log = logging.getLogger("fedsim")


def why_not_vmap(spec: WorkerSpec, task: Task, client_config: Mapping[str, Any]) -> str | None:
    """Why these clients cannot take the vmap executor's batched path (None: they can)."""
    from fedsim.executors import vmap  # noqa: PLC0415

    return vmap.why_not_batched(spec, task, client_config)


def choose_executor(spec: WorkerSpec, task: Task, client_config: Mapping[str, Any]) -> str:
    """"vmap" or "serial" for these clients, with one log line saying which and why."""
    reason = why_not_vmap(spec, task, client_config)
    if reason is None:
        log.info("executor auto: vmap (client '%s' with this model batches; --executor serial to debug)", spec.client)
        return "vmap"
    log.info("executor auto: serial (vmap cannot batch %s)", reason)
    return "serial"


def build_executor(config: Any, spec: WorkerSpec, task: Task | None, client_config: Mapping[str, Any]) -> Executor:
    """The executor ``config.name`` names, resolving ``auto`` against the client config first."""
    name = config.name
    if name == "auto":
        task = task if task is not None else build_task(spec.task)
        name = choose_executor(spec, task, client_config)
    return EXECUTORS.get(name)(config, spec, task)


@EXECUTORS.register("auto", "vmap when the client algorithm and model can be batched, else serial (one line says which)")
def auto(config: Any, spec: WorkerSpec, task: Task | None = None) -> Executor:
    """Registry entry for listing and validation; ``build_executor`` also sees the client config."""
    task = task if task is not None else build_task(spec.task)
    return EXECUTORS.get(choose_executor(spec, task, {}))(config, spec, task)
