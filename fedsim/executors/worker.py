"""A worker: one task, one resident model, one client algorithm; runs jobs one after another.

The serial executor owns one Worker; each Ray actor owns one too. A client that raises, or
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
from dataclasses import dataclass
from typing import Iterator

import torch

from clients import CLIENTS, TrainContext
from fedsim.params import ResidentModel
from fedsim.rng import derive_seed
from fedsim.tasks import Task, TaskSpec, build_task
from fedsim.types import ClientJob, ClientResult

__all__ = ["WorkerSpec", "Worker", "resolve_device", "check_result", "failed_result", "CLIENT_BUG_ERRORS",
           "torch_threads", "job_rng"]

# Exceptions that mean the client code is wrong, not that one client failed: they stop the run.
CLIENT_BUG_ERRORS = (AttributeError, TypeError, NameError, ImportError, SyntaxError, NotImplementedError)


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


def failed_result(job: ClientJob, error: str, trace: str | None = None) -> ClientResult:
    """The result of a job that produced no update (a dropout); never aggregated."""
    return ClientResult(
        client_id=job.client_id, base_version=job.version, delta=torch.empty(0),
        num_samples=0, num_steps=0, error=error, traceback=trace,
    )


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
        torch.manual_seed(derive_seed(seed, "torch-global"))
        yield


def check_result(result: ClientResult, numel: int) -> ClientResult:
    """Mark mis-shaped or non-finite updates as failures; they are never aggregated."""
    if result.error is not None:
        return result
    delta = result.delta
    if not isinstance(delta, torch.Tensor) or delta.shape != (numel,):
        shape = tuple(delta.shape) if isinstance(delta, torch.Tensor) else type(delta).__name__
        result.error = f"update has shape {shape}, expected ({numel},)"
    elif not bool(torch.isfinite(delta).all()):
        result.error = "update is not finite (NaN or inf)"
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

    @property
    def numel(self) -> int:
        return self.model.layout.numel

    def run(self, job: ClientJob) -> ClientResult:
        try:
            with torch_threads(self.spec.threads), job_rng(job.seed, self.device):
                x, y = self.task.data.train(job.client_id)
                data = (x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True))
                rng = torch.Generator(device=self.device)
                rng.manual_seed(job.seed)
                params = job.params.to(self.device, non_blocking=True)
                result = self.algorithm.train(self.context, params, data, job.config, job.state, rng)
                result.delta = result.delta.detach().to("cpu", torch.float32)
        except CLIENT_BUG_ERRORS:
            raise  # a bug in the client code, not a dropout
        except Exception as exc:  # a failing client is a dropout, not a crash
            result = failed_result(job, f"{type(exc).__name__}: {exc}", traceback.format_exc())
        result.client_id = job.client_id
        result.base_version = job.version
        return check_result(result, self.numel)
