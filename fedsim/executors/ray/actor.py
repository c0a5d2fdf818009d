"""What each Ray actor runs: a resident task and inner executor, fed chunks of jobs by reference."""

from __future__ import annotations

import collections
import dataclasses
import importlib
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from fedsim.executors.ray.objects import from_wire, shared_task, to_wire
from fedsim.executors.worker import WorkerSpec, resolve_device
from fedsim.tasks import Task, build_task
from fedsim.types import ClientJob, ClientResult

ACTOR_CACHE = 4  # params versions (and broadcasts) an actor keeps (a chunk may span a few versions)


def _warm_up() -> None:
    """Pay torch's one-off lazy imports (the first optimizer step imports torch._dynamo, ~2 s)
    while the actor starts, not inside the first round."""
    p = torch.zeros(1, requires_grad=True)
    p.sum().backward()
    torch.optim.SGD([p], lr=0.0).step()


class ActorBody:
    """What each Ray actor runs (wrapped with ``ray.remote`` at executor start).

    The task comes from the driver through :meth:`load_task` (its first call) or, if none came
    (the driver shares nothing, or Ray restarted this actor after a death: a restart replays only
    the constructor), is built from the spec by :meth:`ready`. The constructor takes no object
    refs, so Ray has nothing to pin for restarts.
    """

    def __init__(self, spec: WorkerSpec, plugins: Sequence[str], sys_paths: Sequence[str], compile: bool = False):
        for path in sys_paths:
            if path and os.path.isdir(path) and path not in sys.path:
                sys.path.append(path)
        for name in plugins:
            importlib.import_module(name)
        self.spec = spec
        self.device = resolve_device(spec.device)
        self.compile = compile  # torch.compile the vmap inner's batched step
        self.task: Task | None = None
        self.data_source = ""  # "shared" (mapped from the object store) or "rebuilt" (built from the spec)
        self._inners: dict[str, Any] = {}  # "serial" / "vmap" -> executor over this actor's task, built on first use
        self._params: collections.OrderedDict[str, torch.Tensor] = collections.OrderedDict()
        self._broadcasts: collections.OrderedDict[str, dict[str, torch.Tensor]] = collections.OrderedDict()
        self.fetches = 0  # params versions (and broadcasts) fetched from the object store
        self.calls = 0  # run_chunk calls
        self.jobs = 0
        self.busy_s = 0.0  # wall time inside run_chunk()
        self.cpu_s = 0.0  # CPU time of this process inside run_chunk()
        _warm_up()

    def stats(self) -> dict[str, Any]:
        vmap = self._inners.get("vmap")
        compile_s = vmap.timings().get("compile_s", 0.0) if vmap is not None else 0.0
        return {
            "fetches": self.fetches,
            "calls": self.calls,
            "jobs": self.jobs,
            "pid": os.getpid(),
            "busy_s": self.busy_s,
            "cpu_s": self.cpu_s,
            "node_id": self._node_id(),
            "data": self.data_source,
            "compile_s": compile_s,
        }

    def _node_id(self) -> str:
        import ray  # noqa: PLC0415

        return ray.get_runtime_context().get_node_id()

    def load_task(self, shared: list[Any]) -> None:
        """``shared``: refs to the driver's task without its data and to the data's arrays (inside a
        list, so Ray does not resolve them for the call)."""
        import ray  # noqa: PLC0415

        self.task, self.data_source = shared_task(*ray.get(shared)), "shared"

    def ready(self) -> dict[str, Any]:
        import ray  # noqa: PLC0415

        if self.task is None:
            self.task, self.data_source = build_task(self.spec.task), "rebuilt"
        ctx = ray.get_runtime_context()
        return {
            "node_id": ctx.get_node_id(),
            "pid": os.getpid(),
            "threads": torch.get_num_threads(),
            "py_modules": list(ctx.runtime_env.get("py_modules") or []),
            "data": self.data_source,
        }

    def _inner(self, name: str) -> Any:
        if name not in self._inners:
            from fedsim.executors.serial import SerialExecutor  # noqa: PLC0415
            from fedsim.executors.vmap import VmapExecutor  # noqa: PLC0415

            if name == "vmap":
                self._inners[name] = VmapExecutor(self.spec, self.task, compile=self.compile)
            else:
                self._inners[name] = SerialExecutor(self.spec, self.task)
        return self._inners[name]

    def _fetch(self, ref: Any) -> torch.Tensor:
        import ray  # noqa: PLC0415

        key = ref.hex()
        tensor = self._params.get(key)
        if tensor is None:
            tensor = torch.from_numpy(np.array(ray.get(ref), copy=True)).to(self.device)
            self._params[key] = tensor
            self.fetches += 1
            while len(self._params) > ACTOR_CACHE:
                self._params.popitem(last=False)
        self._params.move_to_end(key)
        return tensor

    def _fetch_broadcast(self, ref: Any) -> dict[str, torch.Tensor] | None:
        import ray  # noqa: PLC0415

        if ref is None:
            return None
        key = ref.hex()
        payload = self._broadcasts.get(key)
        if payload is None:
            payload = {k: torch.from_numpy(np.array(v, copy=True)) for k, v in ray.get(ref).items()}
            self._broadcasts[key] = payload
            self.fetches += 1
            while len(self._broadcasts) > ACTOR_CACHE:
                self._broadcasts.popitem(last=False)
        self._broadcasts.move_to_end(key)
        return payload

    def run_chunk(self, inner: str, jobs: list[ClientJob], boxes: list[list]) -> list[ClientResult]:
        """Run ``jobs`` with the ``inner`` executor ("serial" or "vmap"); results in job order.

        ``boxes[k]`` holds job k's (params ref, broadcast ref): inside lists, Ray does not
        resolve them per call, so each version is fetched once per actor.
        """
        wall, cpu = time.perf_counter(), time.process_time()
        jobs = [
            dataclasses.replace(
                job, params=self._fetch(box[0]), broadcast=self._fetch_broadcast(box[1]), state=from_wire(job.state)
            )
            for job, box in zip(jobs, boxes)
        ]
        results = self._inner(inner).run(jobs)
        for result in results:
            result.delta = result.delta.numpy()
            result.state, result.extras = to_wire(result.state), to_wire(result.extras)
        self.calls += 1
        self.jobs += len(jobs)
        self.busy_s += time.perf_counter() - wall
        self.cpu_s += time.process_time() - cpu
        return results
