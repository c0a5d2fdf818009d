"""A worker: one task, one resident model, one client algorithm; runs jobs one after another.

The serial executor owns one Worker; each Ray actor owns one too. A step-based client
algorithm (clients/base.py) runs through :func:`clients.base.run_client`, the same step
function the vmap executor maps over many clients; the ``sgd`` client with another torch
optimizer trains the resident model through its ``train``. Failures never escape: a client
that raises, or returns a non-finite or mis-shaped update, comes back as a ClientResult with
``error`` set, which the engine logs and drops. Client state and extras come back on the CPU.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from clients import CLIENTS, TrainContext, local_lr, resident_grad_fn, run_client
from fedsim.params import ResidentModel
from fedsim.tasks import Task, TaskSpec, build_task
from fedsim.types import ClientJob, ClientResult

__all__ = ["WorkerSpec", "Worker", "resolve_device", "check_result", "failed_result", "to_cpu"]


@dataclass(frozen=True)
class WorkerSpec:
    """Everything a worker process needs to rebuild the task and client (picklable)."""

    task: TaskSpec
    client: str  # client algorithm name
    device: str = "cpu"
    threads: int | None = None  # torch intra-op threads in this worker (None: leave as is)


def resolve_device(device: str) -> torch.device:
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"executor.device: cuda requested but not available (torch {torch.__version__})")
    return torch.device(device)


def failed_result(job: ClientJob, error: str) -> ClientResult:
    """The result of a job that produced no update (a dropout); never aggregated."""
    return ClientResult(
        client_id=job.client_id, base_version=job.version, delta=torch.empty(0),
        num_samples=0, num_steps=0, error=error,
    )


def _shape_error(name: str, value: Any, numel: int) -> str | None:
    if not isinstance(value, torch.Tensor) or value.shape != (numel,):
        shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
        return f"{name} has shape {shape}, expected ({numel},)"
    if not bool(torch.isfinite(value).all()):
        return f"{name} is not finite (NaN or inf)"
    return None


def check_result(result: ClientResult, numel: int) -> ClientResult:
    """Mark mis-shaped or non-finite updates (delta, extras, new state) as failures; never aggregated."""
    if result.error is not None:
        return result
    error = _shape_error("update", result.delta, numel)
    for kind, tensors in (("extras", result.extras), ("client state", result.state)):
        if error is None and tensors is not None:
            if not isinstance(tensors, dict):
                error = f"{kind} must be a dict of flat tensors, got {type(tensors).__name__}"
                break
            for key, value in tensors.items():
                error = error or _shape_error(f"{kind}[{key!r}]", value, numel)
    result.error = error
    return result


def to_cpu(tensors: dict[str, Any] | None) -> dict[str, Any] | None:
    if tensors is None:
        return None
    return {k: v.detach().to("cpu", torch.float32) if isinstance(v, torch.Tensor) else v for k, v in tensors.items()}


class Worker:
    def __init__(self, spec: WorkerSpec, task: Task | None = None):
        if spec.threads is not None:
            torch.set_num_threads(spec.threads)
        self.spec = spec
        self.device = resolve_device(spec.device)
        self.task = task if task is not None else build_task(spec.task)
        self.algorithm = CLIENTS.get(spec.client)()
        self.model = ResidentModel(self.task.build_model(), self.device)
        self.context = TrainContext(self.model, self.task.loss_fn, self.device)
        self.grad = resident_grad_fn(self.model, self.task.loss_fn)
        # float buffers (BatchNorm statistics) are not updated by a step function: torch.optim path only
        self.steps_ok = not any(self.model.layout.is_buffer)

    @property
    def numel(self) -> int:
        return self.model.layout.numel

    def run(self, job: ClientJob) -> ClientResult:
        try:
            x, y = self.task.data.train(job.client_id)
            data = (x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True))
            rng = torch.Generator(device=self.device)
            rng.manual_seed(job.seed)
            params = job.params.to(self.device, non_blocking=True)
            options = self.algorithm.options(job.config)
            if options is not None and self.steps_ok:
                state = _to_device(job.state, self.device)
                broadcast = _to_device(job.broadcast, self.device)
                result = run_client(self.algorithm, options, self.grad, params, data, job.config, state, broadcast,
                                    rng, job.version)
            elif hasattr(self.algorithm, "train"):
                config = job.config | {"lr": local_lr(job.config, job.version)}
                result = self.algorithm.train(self.context, params, data, config, job.state, rng)
            else:
                raise ValueError(f"client algorithm '{self.spec.client}' needs a model without float buffers")
            result.delta = result.delta.detach().to("cpu", torch.float32)
            result.state, result.extras = to_cpu(result.state), to_cpu(result.extras)
        except Exception as exc:  # a failing client is a dropout, not a crash
            result = failed_result(job, f"{type(exc).__name__}: {exc}")
        result.client_id = job.client_id
        result.base_version = job.version
        return check_result(result, self.numel)


def _to_device(tensors: dict[str, Any] | None, device: torch.device) -> dict[str, Any] | None:
    if tensors is None:
        return None
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in tensors.items()}


