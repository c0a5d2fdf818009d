"""The Ray executor: a pool of actors (started here), fed chunks of jobs, closed at the end."""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Sequence
from typing import Any

import torch

from fedsim.config import RAY_INNERS
from fedsim.executors.base import EXECUTORS
from fedsim.executors.ray.actor import ActorBody
from fedsim.executors.ray.code import module_root, plugin_modules, runtime_env
from fedsim.executors.ray.connect import describe_error, first_line, init_local_ray, ray_init, resolve_ray_address
from fedsim.executors.ray.objects import VersionRefs, broadcast_payload, light_job, params_payload, share_task
from fedsim.executors.ray.scheduling import ChunkRun, Restarts
from fedsim.executors.worker import WorkerSpec
from fedsim.tasks import Task, build_task
from fedsim.types import ClientJob, ClientResult

log = logging.getLogger("fedsim")


class RayExecutor:
    """Computes client jobs on a pool of Ray actors; see the module docstring."""

    def __init__(
        self,
        spec: WorkerSpec,
        task: Task | None = None,
        *,
        inner: str = "auto",
        chunk_size: int | None = None,
        compile: bool = False,
        workers: int | None = None,
        address: str | None = None,
        gpus_per_client: float = 0.0,
        threads: int | None = None,
        pipeline: int = 2,
        startup_timeout: float = 300.0,
        restart_timeout: float = 300.0,
        ship_code: bool = True,
    ):
        started = time.monotonic()
        if inner not in RAY_INNERS:
            raise ValueError(f"executor.ray_inner={inner!r}: expected one of {', '.join(RAY_INNERS)}")
        if chunk_size is not None and chunk_size < 1:
            raise ValueError(f"executor.chunk_size={chunk_size}: expected >= 1 (or None: automatic)")
        self.inner: str | None = None if inner == "auto" else inner  # "auto" is resolved by the first run()
        self.chunk_size = chunk_size
        self.compile = compile  # torch.compile the vmap inner's batched step in every actor
        self.startup_s: float | None = None  # seconds from creation to all actors ready (Ray start included)
        self.calls = 0  # remote run_chunk calls
        self.jobs_sent = 0  # jobs in those calls (retries included)
        self.run_s = 0.0  # driver wall time inside run()
        self.deaths = 0  # actor process deaths seen while running jobs
        self.retries = 0  # jobs retried after such a death
        self.actor_nodes: list[str] = []  # Ray node id of each actor (at start)
        self.actor_pids: list[int] = []
        self.actor_py_modules: list[list[str]] = []
        self.pipeline = max(1, int(pipeline))
        self.restart_timeout = restart_timeout
        self._owns_ray = False
        self._actors: list[Any] = []
        self._shared: list[Any] | None = None  # object refs of the task's shell and data arrays
        self._closed = False

        threads = int(threads or spec.threads or 1)
        gpus = float(gpus_per_client or 0.0)
        if gpus < 0 or gpus > 1:
            raise ValueError(f"executor.gpus_per_client={gpus_per_client}: expected a fraction in [0, 1]")
        if workers is not None and workers < 1:
            raise ValueError(f"executor.workers={workers}: expected >= 1")
        wants_cuda = spec.device.startswith("cuda")

        import ray  # noqa: PLC0415  (lazy: importing fedsim never imports ray)

        self._ray = ray
        self._params_refs = VersionRefs(ray, params_payload)
        self._broadcast_refs = VersionRefs(ray, broadcast_payload)
        self._restarts = Restarts(ray, self._actors, restart_timeout)
        if not ray.is_initialized():
            if address is None:
                if (gpus > 0 or wants_cuda) and not torch.cuda.is_available():
                    # fail before spending seconds on starting Ray
                    what = f"executor.gpus_per_client={gpus:g}" if gpus > 0 else f"executor.device={spec.device}"
                    raise ValueError(
                        f"{what} but the Ray cluster has no GPUs (local machine, torch sees no CUDA device)"
                    )
                local_cpus = os.cpu_count() or 1
                init_local_ray(num_cpus=max(local_cpus, (workers or 0) * threads))
            else:
                target = resolve_ray_address(address)
                # code for the cluster's workers; only a job-level runtime_env may upload local dirs
                env = runtime_env(plugin_modules(spec)) if ship_code else None
                log.info("ray: connecting to the cluster at %s (shipping fedsim's code)...", target)
                try:
                    ray_init(address=target, runtime_env=env)
                except Exception as exc:  # noqa: BLE001  (connection problems: one line)
                    raise ValueError(f"executor.ray_address={address}: could not connect: {first_line(exc)}") from exc
            self._owns_ray = True
        self._spec = spec
        self._task = task if task is not None else build_task(spec.task)
        try:
            self._start(spec, workers, gpus, threads, wants_cuda, startup_timeout)
        except BaseException:
            self.close()
            raise
        self.startup_s = time.monotonic() - started
        log.info("ray executor: start-up %.1f s (Ray and workers; not part of any round)", self.startup_s)

    # ------------------------------------------------------------------ start

    def _start(self, spec, workers, gpus, threads, wants_cuda, startup_timeout) -> None:
        ray = self._ray
        resources = ray.cluster_resources()
        cluster_cpus = float(resources.get("CPU", 0))
        cluster_gpus = float(resources.get("GPU", 0))
        if wants_cuda and gpus == 0:
            if cluster_gpus == 0:
                raise ValueError(f"executor.device={spec.device} but the Ray cluster has no GPUs")
            n = workers or max(1, int(cluster_cpus // threads))
            gpus = min(1.0, cluster_gpus / n)
            log.info(
                "ray: executor.device=%s -> %.3g GPU per actor (set executor.gpus_per_client to choose)",
                spec.device,
                gpus,
            )
        if gpus > 0:
            if cluster_gpus == 0:
                raise ValueError(f"executor.gpus_per_client={gpus:g} but the Ray cluster has no GPUs")
            fit = int(cluster_gpus / gpus + 1e-9)
            if workers is not None and workers > fit:
                raise ValueError(
                    f"executor.workers={workers} x executor.gpus_per_client={gpus:g} needs {workers * gpus:g} GPUs "
                    f"but the Ray cluster has {cluster_gpus:g}"
                )
        if workers is None:
            workers = max(1, int(cluster_cpus // threads))
            if gpus > 0:
                workers = min(workers, int(cluster_gpus / gpus + 1e-9))
        self.workers = workers

        actor_spec = dataclasses.replace(spec, threads=threads, device="cuda" if gpus > 0 else spec.device)
        self._actor_device = actor_spec.device
        plugins = plugin_modules(spec)
        sys_paths = [root for root in (module_root(name) for name in plugins) if root]
        options: dict[str, Any] = {
            "num_cpus": threads,
            "num_gpus": gpus,
            "max_restarts": -1,  # Ray restarts a dead actor; retry-once is handled here
            "max_task_retries": 0,
            "scheduling_strategy": "SPREAD",
        }
        shared = self._shared = share_task(ray, self._task)  # kept alive while actors may still be loading it
        actor_class = ray.remote(ActorBody)
        self._actors[:] = [
            actor_class.options(**options).remote(actor_spec, plugins, sys_paths, self.compile) for _ in range(workers)
        ]
        if shared is not None:
            for actor in self._actors:  # runs before ready(): an actor runs one caller's calls in order
                actor.load_task.remote(shared)

        log.info(
            "ray: starting %d workers (each imports torch and %s)...",
            workers,
            "maps the task's data from the object store" if shared is not None else "builds the task",
        )
        started = time.monotonic()
        pending = {actor.ready.remote(): i for i, actor in enumerate(self._actors)}
        info: dict[int, dict[str, Any]] = {}
        deadline = time.monotonic() + startup_timeout
        while pending:
            done, _ = ray.wait(list(pending), num_returns=len(pending), timeout=max(0.0, deadline - time.monotonic()))
            if not done:
                raise RuntimeError(
                    f"ray executor: only {len(info)} of {workers} workers started within {startup_timeout:g}s "
                    f"(each needs {threads} CPU, {gpus:g} GPU; "
                    f"the cluster has {cluster_cpus:g} CPU, {cluster_gpus:g} GPU)"
                )
            for ref in done:
                i = pending.pop(ref)
                try:
                    info[i] = ray.get(ref)
                except ray.exceptions.RayError as exc:
                    raise RuntimeError(f"ray executor: a worker failed to start: {describe_error(exc)}") from None
        self.actor_nodes = [info[i]["node_id"] for i in range(workers)]
        self.actor_pids = [info[i]["pid"] for i in range(workers)]
        self.actor_py_modules = [info[i]["py_modules"] for i in range(workers)]  # code shipped to each actor
        self.actor_data = [info[i]["data"] for i in range(workers)]  # "shared" (object store) or "rebuilt"
        log.info(
            "ray executor: %d workers on %d node(s), %d thread(s) each%s, ready in %.1f s",
            workers,
            len(set(self.actor_nodes)),
            threads,
            f", {gpus:g} GPU each" if gpus else "",
            time.monotonic() - started,
        )

    def timings(self) -> dict[str, float]:
        """One-off costs apart from the rounds (the engine's summary lists them as executor_timings):
        Ray's start-up and, when the vmap inner compiles, the slowest actor's compile seconds."""
        timings = {"ray_startup_s": self.startup_s} if self.startup_s is not None else {}
        if self.compile and self.inner == "vmap" and not self._closed:
            try:
                timings["compile_s"] = max((s["compile_s"] for s in self.actor_stats()), default=0.0)
            except self._ray.exceptions.RayError:  # an actor died since: no figure rather than a crash
                pass
        return timings

    def actor_stats(self) -> list[dict[str, Any]]:
        """Per live actor: params versions fetched, remote calls and jobs run, pid, node id, wall and CPU
        seconds in calls, and where its data came from."""
        actors = [a for a in self._actors if a is not None]
        return self._ray.get([a.stats.remote() for a in actors])

    @property
    def puts(self) -> int:
        """ray.put calls of the model (one per model version)."""
        return self._params_refs.puts

    @property
    def broadcast_puts(self) -> int:
        """ray.put calls of server broadcasts (one per model version, if the strategy has one)."""
        return self._broadcast_refs.puts

    # ------------------------------------------------------------------ run

    def _choose_inner(self, jobs: list[ClientJob]) -> str:
        """Resolve ``ray_inner: auto`` from the first call's jobs (client config, jobs per actor),
        by the same measured crossovers as ``executor.name: auto``, with one log line."""
        from fedsim.executors.auto import why_serial  # noqa: PLC0415

        actors = max(1, sum(a is not None for a in self._actors))
        per_chunk = len(jobs) / actors if self.chunk_size is None else min(self.chunk_size, len(jobs) / actors)
        spec = dataclasses.replace(self._spec, device=self._actor_device)
        reason = why_serial(spec, self._task, jobs[0].config, per_chunk, self.compile)
        if reason is None:
            log.info(
                "ray executor: actors run chunks of ~%g jobs batched with vmap (client '%s' with this model "
                "batches; executor.ray_inner=serial to run them one by one)",
                per_chunk,
                self._spec.client,
            )
            return "vmap"
        log.info("ray executor: actors run jobs one by one on a serial worker (%s)", reason)
        return "serial"

    def _chunk_length(self, num_jobs: int, actors: int) -> int:
        """Jobs per remote call: ``chunk_size`` if set, else one chunk per actor for vmap and one job
        per call for serial (best load balance for the big jobs serial actors are for); never more
        than an even share, so every actor gets work."""
        even = -(-num_jobs // max(1, actors))
        if self.chunk_size is not None:
            return min(self.chunk_size, even)
        return even if self.inner == "vmap" else 1

    def run(self, jobs: Sequence[ClientJob]) -> list[ClientResult]:
        if self._closed:
            raise RuntimeError("ray executor is closed")
        jobs = list(jobs)
        if not jobs:
            return []
        started = time.perf_counter()
        try:
            return self._run(jobs)
        finally:
            self.run_s += time.perf_counter() - started

    def _run(self, jobs: list[ClientJob]) -> list[ClientResult]:
        if self.inner is None:
            self.inner = self._choose_inner(jobs)
        light = [light_job(job) for job in jobs]
        boxes = [
            [
                self._params_refs.ref(job.version, job.params),
                None if job.broadcast is None else self._broadcast_refs.ref(job.version, job.broadcast),
            ]
            for job in jobs
        ]
        return ChunkRun(self, jobs, light, boxes).run()

    # ------------------------------------------------------------------ close

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        ray = self._ray
        self._params_refs.clear()
        self._broadcast_refs.clear()
        self._shared = None
        self._restarts.clear()
        if ray.is_initialized():
            for actor in self._actors:
                if actor is not None:
                    try:
                        ray.kill(actor)
                    except Exception:  # noqa: BLE001
                        pass
        self._actors.clear()
        if self._owns_ray and ray.is_initialized():
            ray.shutdown()
        self._owns_ray = False


@EXECUTORS.register("ray", "Ray actors on this machine or a cluster (--workers, --ray-address, --gpus-per-client)")
def ray_executor(config: Any, spec: WorkerSpec, task: Any = None) -> RayExecutor:
    return RayExecutor(
        spec,
        task,
        inner=config.ray_inner,
        chunk_size=config.chunk_size,
        compile=getattr(config, "compile", "off") == "on",  # "auto" was resolved by build_executor
        workers=config.workers,
        address=config.ray_address,
        gpus_per_client=config.gpus_per_client,
        threads=config.threads,
    )
