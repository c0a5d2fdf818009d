"""A worker: one task, one resident model, one client algorithm; runs jobs one after another.

The serial executor owns one Worker; each Ray actor owns one too. A step-based client
algorithm (clients/base.py) runs through :func:`clients.base.run_client`, the same step
function the vmap executor maps over many clients; the ``sgd`` client with another torch
optimizer trains the resident model through its ``train``. Client state and extras come
back on the CPU. A client that raises, or
returns a non-finite or mis-shaped update, comes back as a ClientResult with ``error`` set,
which the engine logs and drops (a dropout). A programming error in the client code
(:data:`CLIENT_BUG_ERRORS`: AttributeError, TypeError, NameError, ...) is not a dropout: it
propagates and stops the run.

A job leaves the process as it found it: its torch thread count (``WorkerSpec.threads``) is
set for the job only, and its random operations that cannot take a generator (dropout) draw
from torch's global generator seeded from the job's seed inside ``torch.random.fork_rng``,
so they are the same on every executor and the caller's global RNG state is untouched.
"""

from __future__ import annotations

import contextlib
import traceback
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from clients import CLIENTS, TrainContext, local_lr, resident_grad_fn, run_client
from clients.transforms import ClientTransformSpec, algorithm_state, apply_client_transforms, build_client_transforms
from fedsim.attacks import client_train_data
from fedsim.params import ResidentModel, all_finite
from fedsim.rng import derive_seed
from fedsim.tasks import Task, TaskSpec, build_task
from fedsim.types import ClientJob, ClientResult

__all__ = [
    "WorkerSpec",
    "Worker",
    "resolve_device",
    "check_result",
    "failed_result",
    "CLIENT_BUG_ERRORS",
    "torch_threads",
    "job_rng",
    "to_cpu",
    "train_one",
]

# Exceptions that mean the client code is wrong, not that one client failed: they stop the run.
CLIENT_BUG_ERRORS = (AttributeError, TypeError, NameError, ImportError, SyntaxError, NotImplementedError)


@dataclass(frozen=True)
class WorkerSpec:
    """Everything a worker process needs to rebuild the task and client (picklable)."""

    task: TaskSpec
    client: str  # client algorithm name
    device: str = "cpu"
    threads: int | None = None  # torch intra-op threads in this worker (None: leave as is)
    client_transforms: tuple[ClientTransformSpec, ...] = ()  # the update pipeline's client stage, (name, options)


def resolve_device(device: str) -> torch.device:
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"executor.device: cuda requested but not available (torch {torch.__version__})")
    return torch.device(device)


def failed_result(job: ClientJob, error: str, trace: str | None = None) -> ClientResult:
    """The result of a job that produced no update (a dropout); never aggregated."""
    return ClientResult(
        client_id=job.client_id,
        base_version=job.version,
        delta=torch.empty(0),
        num_samples=0,
        num_steps=0,
        error=error,
        traceback=trace,
    )


def _shape_error(name: str, value: Any, numel: int) -> str | None:
    if not isinstance(value, torch.Tensor) or value.shape != (numel,):
        shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
        return f"{name} has shape {shape}, expected ({numel},)"
    if not all_finite(value):
        return f"{name} is not finite (NaN or inf)"
    return None


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Run with ``threads`` torch intra-op threads, then restore the caller's count."""
    before = torch.get_num_threads()
    if threads is None or threads == before:
        yield
        return
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextlib.contextmanager
def job_rng(seed: int, device: torch.device) -> Iterator[None]:
    """Seed torch's global generator from the job for the block; restore the caller's state after."""
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        # torch.manual_seed would also queue a seed for every lazy accelerator backend (formatting a
        # stack trace for each: 0.6 ms a job); seed just the generators this job uses
        job_seed = derive_seed(seed, "torch-global")
        torch.default_generator.manual_seed(job_seed)
        if device.type == "cuda":
            torch.cuda.manual_seed(job_seed)
        yield


def check_result(result: ClientResult, numel: int) -> ClientResult:
    """Mark failures: a mis-shaped or non-finite delta or extra (each must be a flat model-sized
    tensor), or a non-finite float tensor in the new client state. Such results are never aggregated."""
    if result.error is not None:
        return result
    error = _shape_error("update", result.delta, numel)
    for kind, tensors in (("extras", result.extras), ("client state", result.state)):
        if error is None and tensors is not None:
            if kind == "client state" and not isinstance(tensors, dict):
                continue  # a custom algorithm's own state (e.g. a counter): its business
            if not isinstance(tensors, dict):
                error = f"{kind} must be a dict of tensors, got {type(tensors).__name__}"
                break
            for key, value in tensors.items():
                if kind == "extras":
                    error = error or _shape_error(f"{kind}[{key!r}]", value, numel)
                elif isinstance(value, torch.Tensor) and value.is_floating_point() and not all_finite(value):
                    error = error or f"{kind}[{key!r}] is not finite (NaN or inf)"
    result.error = error
    return result


def to_cpu(tensors: dict[str, Any] | None) -> dict[str, Any] | None:
    """Tensors moved to the CPU (float ones as float32), e.g. client state trained on a GPU."""
    if not isinstance(tensors, dict):
        return tensors
    return {
        k: (v.detach().to("cpu", torch.float32) if v.is_floating_point() else v.detach().cpu())
        if isinstance(v, torch.Tensor)
        else v
        for k, v in tensors.items()
    }


def train_one(
    algorithm: Any,
    context: TrainContext,
    params: torch.Tensor,
    data: tuple[torch.Tensor, torch.Tensor],
    config: dict[str, Any],
    state: dict[str, Any] | None,
    broadcast: dict[str, Any] | None,
    rng: torch.Generator,
    version: int,
    grad: Any = None,
) -> ClientResult:
    """One client's local training on a resident model, the way every worker runs it (also the
    Flower ClientApp): the algorithm's step loop when it is a step function and the model has no
    float buffers, else its ``train`` (torch.optim) with the job's decayed lr. Delta, state and
    extras come back on the CPU in float32."""
    options = algorithm.options(config) if hasattr(algorithm, "options") else None  # no options: train only
    data = (context.model.inputs(data[0]), data[1])  # channels-last for a CPU conv model (params.py)
    if options is not None and not any(context.model.layout.is_buffer):
        grad = grad if grad is not None else resident_grad_fn(context.model, context.loss_fn)
        result = run_client(
            algorithm,
            options,
            grad,
            params,
            data,
            config,
            _to_device(state, context.device),
            _to_device(broadcast, context.device),
            rng,
            version,
        )
    elif hasattr(algorithm, "train"):
        result = algorithm.train(context, params, data, config | {"lr": local_lr(config, version)}, state, rng)
    else:
        raise ValueError(f"client algorithm '{algorithm.name}' needs a model without float buffers")
    result.delta = result.delta.detach().to("cpu", torch.float32)
    result.state, result.extras = to_cpu(result.state), to_cpu(result.extras)
    return result


class Worker:
    def __init__(self, spec: WorkerSpec, task: Task | None = None):
        self.spec = spec
        self.device = resolve_device(spec.device)
        self.task = task if task is not None else build_task(spec.task)
        self.algorithm = CLIENTS.get(spec.client)()
        with torch.random.fork_rng(devices=[]):  # the values are overwritten by every job
            self.model = ResidentModel(self.task.build_model(), self.device)
        self.context = TrainContext(self.model, self.task.loss_fn, self.device)
        self.grad = resident_grad_fn(self.model, self.task.loss_fn)
        self.transforms = build_client_transforms(spec.client_transforms)

    @property
    def numel(self) -> int:
        return self.model.layout.numel

    def run(self, job: ClientJob) -> ClientResult:
        try:
            with torch_threads(self.spec.threads), job_rng(job.seed, self.device):
                x, y = client_train_data(self.task, job)  # the client's data (a data-side attack may change it)
                data = (x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True))
                rng = torch.Generator(device=self.device)
                rng.manual_seed(job.seed)
                params = job.params.to(self.device, non_blocking=True)
                result = train_one(
                    self.algorithm,
                    self.context,
                    params,
                    data,
                    job.config,
                    algorithm_state(job.state),
                    job.broadcast,
                    rng,
                    job.version,
                    self.grad,
                )
        except CLIENT_BUG_ERRORS:
            raise  # a bug in the client code, not a dropout
        except Exception as exc:  # noqa: BLE001  (a failing client is a dropout, not a crash)
            result = failed_result(job, f"{type(exc).__name__}: {exc}", traceback.format_exc())
        result.client_id = job.client_id
        result.base_version = job.version
        result = check_result(result, self.numel)
        apply_client_transforms(self.transforms, [result], [job], self.model.layout)  # before it leaves the client
        return result


def _to_device(tensors: dict[str, Any] | None, device: torch.device) -> dict[str, Any] | None:
    if tensors is None:
        return None
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in tensors.items()}
