"""Ray executor: a pool of Ray actors, each running chunks of jobs with a serial or vmap executor.

``--executor ray`` runs on a fresh local Ray instance (``--workers N`` actors, default: CPU
count / threads per actor) or on an existing cluster (``--ray-address auto|host:port``).

Design
------
- **Actors.** Each actor keeps the task and the resident model for the whole run; each actor
  uses ``executor.threads`` torch threads (default 1) and reserves that many Ray CPUs, so actors
  do not oversubscribe the machine. ``executor.gpus_per_client`` > 0 makes actors request that
  fraction of a GPU and train on ``cuda``. Actors are created with the ``SPREAD`` scheduling
  strategy, so on a multi-node cluster they are spread over the nodes; all are created before
  the executor waits for any, so they start in parallel.
- **Chunks.** One remote call runs a *chunk* of jobs with the actor's inner executor
  (``executor.ray_inner``): ``vmap`` trains the chunk batched (:class:`VmapExecutor`, whose
  per-client results do not depend on which jobs share a chunk, so they equal the vmap
  executor's bit for bit), ``serial`` runs its jobs one after another on a :class:`Worker`
  (bit-identical to the serial executor). ``auto`` decides on the first call by the same
  measured crossovers as ``executor.name: auto`` (``fedsim.executors.auto.why_serial``: can
  the clients batch, jobs per actor call, model size, convolutions, compile) and logs one
  line saying which and why. A ``run(jobs)`` call is split
  into chunks of an even share per actor (vmap) or one job (serial), capped by
  ``executor.chunk_size``. ``executor.compile`` applies to every actor's vmap inner.
  ``calls``/``jobs_sent`` (and each actor's ``calls``/``jobs`` in :meth:`RayExecutor.actor_stats`)
  count remote calls and the jobs they carried.
- **Data.** When the driver's task holds its data in memory (:class:`ArrayFederatedData` on
  the CPU), the driver puts the task without its data and the data's arrays in the object store once;
  each actor maps the arrays zero-copy from its node's object store instead of generating the
  data again (the same arrays, so the same data as a locally built task). Lazily generated data,
  GPU-resident data or a task that does not pickle: each actor builds the task from the spec, and
  so does an actor that Ray restarts after a death (the data is deterministic: the same).
  ``startup_s`` (logged, and ``ray_startup_s`` in :meth:`RayExecutor.timings`) is the time from
  creation to all actors ready, Ray's own start included: it is not part of any round.
- **Transfers.** The global model of each version is ``ray.put`` once (ObjectRefs cached by
  version, keyed by the very params tensor the engine shares between the jobs of a version);
  jobs carry the ref, not the tensor. An actor fetches a version once and reuses one params
  tensor for all its jobs of that version. ``puts`` counts the ``ray.put`` calls. The server's
  per-version broadcast (``job.broadcast``, e.g. SCAFFOLD's c) travels the same way: one put per
  version, one fetch per actor; per-client state is per job and travels with it, its tensors (and
  a result's state and extras) as numpy arrays, which Ray moves far faster than torch tensors.
- **Scheduling.** Chunks form one queue; each actor has at most ``pipeline`` calls in flight,
  every actor gets a call before any gets a second, and an actor gets the next chunk as soon as
  one finishes (load balancing). Results come back in job order. Every job's inputs were fixed
  at dispatch, so results do not depend on the number of actors or the chunks, provided the
  same torch thread count (``executor.threads``, default 1 everywhere: intra-op parallelism
  may change the order of float reductions).
- **Failures.** A client that raises is a result with ``error`` (the inner executors never
  raise for it; :data:`CLIENT_BUG_ERRORS` do propagate and stop the run).
  An actor *process* that dies mid-chunk (segfault, OOM kill, ``os._exit``) is restarted by Ray
  (``max_restarts=-1``; the executor polls it until it answers). Every job that was unfinished
  on it is retried once, *alone* on a worker (which job of its chunks killed the process is
  unknown, and a finished call's reply can die with it); a job whose solo retry kills its worker
  again is a dropout (result with ``error``), so an innocent job is never dropped. Deaths are
  logged on the "fedsim" logger. An actor that is not back within ``restart_timeout`` seconds
  (or cannot restart, e.g. its constructor raises) leaves the pool; with none left the run
  fails with a clear error.
- **Connecting.** Without ``ray_address`` the executor always starts a *fresh* local instance
  with ``ray.init(address="local")``: a ``RAY_ADDRESS`` variable or a stale
  ``/tmp/ray/ray_current_cluster`` file (left by a killed ``ray start --head``) is ignored,
  where a bare ``ray.init()`` would try to join that dead cluster. With ``ray_address``
  ("auto" resolves ``RAY_ADDRESS``, then that file) the address is probed with a plain TCP
  connect first, so a dead or stale address fails in seconds with a one-line error instead of
  ``ray.init`` retrying for minutes. If Ray is already initialised in this process (e.g. by a
  caller or a test), the executor uses that session and does not shut it down.
- **Code on the cluster.** When it connects to an existing cluster, the executor passes
  ``runtime_env={"py_modules": [fedsim, strategies, clients, ...]}`` to ``ray.init`` (Ray
  uploads local directories only for a job-level runtime_env), so cluster nodes do not need
  fedsim installed (they do need torch and the other dependencies). Modules that register a
  custom client algorithm or task outside these packages are imported in every actor before
  its Worker is built, and shipped too unless installed in site-packages. (If the caller
  initialised Ray itself, shipping code is the caller's business.)
- ``close()`` kills the actors and calls ``ray.shutdown()`` only if this executor called
  ``ray.init``. Ray is started quietly (no dashboard, warnings only, worker output not
  forwarded: debug client code with the serial executor).

Only this module imports ray, and only when a Ray executor is created.
"""

from __future__ import annotations

import collections
import dataclasses
import importlib
import logging
import os
import socket
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from fedsim.config import RAY_INNERS
from fedsim.data import ArrayFederatedData
from fedsim.executors.base import EXECUTORS
from fedsim.executors.worker import CLIENT_BUG_ERRORS, WorkerSpec, failed_result, resolve_device
from fedsim.tasks import Task, build_task
from fedsim.types import ClientJob, ClientResult

__all__ = ["RayExecutor", "init_local_ray", "resolve_ray_address"]

log = logging.getLogger("fedsim")

CODE_PACKAGES = ("fedsim", "strategies", "clients")  # shipped to cluster nodes via py_modules
_PARAMS_CACHE = 8  # ObjectRefs of this many recent versions are kept (async modes reuse versions)
_PROBE_EVERY = 0.25  # seconds between "are you back?" calls to a restarting actor
_ACTOR_CACHE = 4  # params versions (and broadcasts) an actor keeps (a chunk may span a few versions)
SHARED_ARRAYS = ("x_train", "y_train", "x_test", "y_test")  # an ArrayFederatedData's tensors, shared via the object store


# ----------------------------------------------------------------------------- starting Ray


def _ray_init(**kwargs: Any) -> None:
    import ray  # noqa: PLC0415

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # offline simulator: no usage reporting
    with warnings.catch_warnings():
        # Ray 2.x warns at every init that a future version will stop hiding GPUs from actors
        # with num_gpus=0; fedsim relies on neither behaviour (CPU actors never touch cuda).
        warnings.filterwarnings("ignore", message=".*no longer override accelerator", category=FutureWarning)
        ray.init(include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False, **kwargs)


def init_local_ray(num_cpus: int | None = None, **kwargs: Any) -> None:
    """Start a fresh, quiet local Ray instance in this process.

    Always ``address="local"``: never joins whatever ``RAY_ADDRESS`` or a (possibly stale)
    ``ray_current_cluster`` file points to.
    """
    log.info("ray: starting a local Ray instance (%s CPUs; usually 5-30 s)...", num_cpus or "all")
    start = time.monotonic()
    _ray_init(address="local", num_cpus=num_cpus, **kwargs)
    log.info("ray: local instance up in %.1f s", time.monotonic() - start)


def _address_file() -> Path:
    """Where ``ray start`` records the last cluster it started (what ``address="auto"`` reads)."""
    try:
        from ray._common.utils import get_ray_address_file  # noqa: PLC0415  (Ray-internal, may move)

        return Path(get_ray_address_file(None))
    except ImportError:
        root = os.environ.get("RAY_TMPDIR") or os.environ.get("TMPDIR") or "/tmp"
        return Path(root) / "ray" / "ray_current_cluster"


def resolve_ray_address(address: str, probe_timeout: float = 5.0) -> str:
    """Return a connectable ``host:port`` (or ``ray://...``); ValueError with one line if none answers.

    "auto" means ``RAY_ADDRESS``, else the address Ray's last ``ray start`` wrote to
    ``/tmp/ray/ray_current_cluster``. The address is probed with a TCP connect, because
    ``ray.init`` keeps retrying a dead address for minutes.
    """
    source = f"executor.ray_address={address}"
    if address == "auto":
        env = os.environ.get("RAY_ADDRESS", "").strip()
        file = _address_file()
        if env and env not in ("auto", "local"):
            address, source = env, f"executor.ray_address=auto (RAY_ADDRESS={env})"
        elif file.is_file() and file.read_text().strip():
            address = file.read_text().strip()
            source = f"executor.ray_address=auto ({file} says {address}; stale after a killed head?)"
        else:
            raise ValueError(
                "executor.ray_address=auto but no running Ray cluster was found (RAY_ADDRESS unset, "
                f"no {file}); start one with `ray start --head` or pass host:port"
            )
    hostport = address.split("://", 1)[1] if "://" in address else address
    host, sep, port = hostport.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"{source}: expected 'auto' or host:port")
    try:
        with socket.create_connection((host, int(port)), timeout=probe_timeout):
            pass
    except OSError as exc:
        raise ValueError(f"{source}: no Ray cluster reachable at {host}:{port} ({exc.strerror or exc})") from None
    return address


# ----------------------------------------------------------------------------- plugins / code


def _plugin_modules(spec: WorkerSpec) -> list[str]:
    """Modules (outside fedsim/strategies/clients) that register the client algorithm or task,
    after the plugins this process imported (``--plugin``, ``plugins:``, entry points)."""
    from clients import CLIENTS  # noqa: PLC0415
    from fedsim.plugins import loaded_plugins  # noqa: PLC0415
    from fedsim.tasks import TASKS  # noqa: PLC0415

    names = loaded_plugins()
    for obj in (CLIENTS.get(spec.client), TASKS.get(spec.task.name)):
        name = getattr(obj, "__module__", None) or ""
        if name and name != "__main__" and name.split(".")[0] not in CODE_PACKAGES and name not in names:
            names.append(name)
    return names


def _module_root(name: str) -> str | None:
    """The sys.path entry from which ``name`` was imported (None if unknown)."""
    module = sys.modules.get(name)
    file = getattr(module, "__file__", None)
    if not file:
        return None
    path = Path(file).resolve()
    depth = name.count(".") + (1 if path.name == "__init__.py" else 0)
    return str(path.parents[depth])


def _is_installed(path: str) -> bool:
    return "site-packages" in path or "dist-packages" in path


def _module_path(module: Any) -> str:
    """A package's directory or a single-file module's file, as ``py_modules`` wants it."""
    paths = list(getattr(module, "__path__", []))
    return paths[0] if len(paths) == 1 else module.__file__


def _runtime_env(plugins: Sequence[str]) -> dict[str, Any]:
    """``py_modules`` shipping fedsim, strategies, clients and plugin modules to cluster nodes."""
    modules = [_module_path(importlib.import_module(name)) for name in CODE_PACKAGES]
    for name in plugins:
        top = sys.modules.get(name.split(".")[0])
        path = _module_path(top) if top is not None and getattr(top, "__file__", None) else None
        if path and not _is_installed(path) and path not in modules:
            modules.append(path)
    return {"py_modules": modules, "excludes": ["__pycache__", "*.pyc"]}


# ----------------------------------------------------------------------------- the actor


def _warm_up() -> None:
    """Pay torch's one-off lazy imports (the first optimizer step imports torch._dynamo, ~2 s)
    while the actor starts, not inside the first round."""
    p = torch.zeros(1, requires_grad=True)
    p.sum().backward()
    torch.optim.SGD([p], lr=0.0).step()


class _Wire:
    """A CPU tensor of a job's state or a result's state/extras in transit, as a numpy array: Ray
    moves numpy arrays zero-copy and about 10x faster than pickled torch tensors."""

    __slots__ = ("array",)

    def __init__(self, array: np.ndarray):
        self.array = array


_WIRE_DTYPES = (torch.float32, torch.float64, torch.float16, torch.int64, torch.int32, torch.int16, torch.int8,
                torch.uint8, torch.bool)


def _to_wire(tensors: Any) -> Any:
    """A state/extras dict with its CPU tensors as :class:`_Wire` (anything else unchanged)."""
    if not isinstance(tensors, dict):
        return tensors
    return {k: _Wire(v.detach().contiguous().numpy())
            if isinstance(v, torch.Tensor) and v.device.type == "cpu" and v.dtype in _WIRE_DTYPES else v
            for k, v in tensors.items()}


def _from_wire(tensors: Any) -> Any:
    """The inverse of :func:`_to_wire`; tensors own their memory (not views of the object store)."""
    if not isinstance(tensors, dict):
        return tensors
    return {k: torch.from_numpy(np.array(v.array, copy=True)) if isinstance(v, _Wire) else v for k, v in tensors.items()}


def _shared_task(shell: Task, arrays: dict[str, Any]) -> Task:
    """The driver's task, its data rebuilt around zero-copy views of the object store's arrays."""
    with warnings.catch_warnings():  # the views are read-only; training never writes its data
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        tensors = {name: torch.from_numpy(arrays[name]) for name in SHARED_ARRAYS}
    data = ArrayFederatedData(tensors["x_train"], tensors["y_train"], arrays["train_offsets"], tensors["x_test"],
                              tensors["y_test"], arrays["test_offsets"], arrays["num_classes"])
    return dataclasses.replace(shell, data=data)


class _ActorBody:
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
        return {"fetches": self.fetches, "calls": self.calls, "jobs": self.jobs, "pid": os.getpid(),
                "busy_s": self.busy_s, "cpu_s": self.cpu_s, "node_id": self._node_id(), "data": self.data_source,
                "compile_s": compile_s}

    def _node_id(self) -> str:
        import ray  # noqa: PLC0415

        return ray.get_runtime_context().get_node_id()

    def load_task(self, shared: list[Any]) -> None:
        """``shared``: refs to the driver's task without its data and to the data's arrays (inside a
        list, so Ray does not resolve them for the call)."""
        import ray  # noqa: PLC0415

        self.task, self.data_source = _shared_task(*ray.get(shared)), "shared"

    def ready(self) -> dict[str, Any]:
        import ray  # noqa: PLC0415

        if self.task is None:
            self.task, self.data_source = build_task(self.spec.task), "rebuilt"
        ctx = ray.get_runtime_context()
        return {"node_id": ctx.get_node_id(), "pid": os.getpid(), "threads": torch.get_num_threads(),
                "py_modules": list(ctx.runtime_env.get("py_modules") or []), "data": self.data_source}

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
            while len(self._params) > _ACTOR_CACHE:
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
            while len(self._broadcasts) > _ACTOR_CACHE:
                self._broadcasts.popitem(last=False)
        self._broadcasts.move_to_end(key)
        return payload

    def run_chunk(self, inner: str, jobs: list[ClientJob], boxes: list[list]) -> list[ClientResult]:
        """Run ``jobs`` with the ``inner`` executor ("serial" or "vmap"); results in job order.

        ``boxes[k]`` holds job k's (params ref, broadcast ref): inside lists, Ray does not
        resolve them per call, so each version is fetched once per actor.
        """
        wall, cpu = time.perf_counter(), time.process_time()
        jobs = [dataclasses.replace(job, params=self._fetch(box[0]), broadcast=self._fetch_broadcast(box[1]),
                                    state=_from_wire(job.state))
                for job, box in zip(jobs, boxes)]
        results = self._inner(inner).run(jobs)
        for result in results:
            result.delta = result.delta.numpy()
            result.state, result.extras = _to_wire(result.state), _to_wire(result.extras)
        self.calls += 1
        self.jobs += len(jobs)
        self.busy_s += time.perf_counter() - wall
        self.cpu_s += time.process_time() - cpu
        return results


# ----------------------------------------------------------------------------- the executor


def _first_line(exc: BaseException, limit: int = 300) -> str:
    text = str(exc).strip().splitlines()
    line = text[0] if text else type(exc).__name__
    return line[:limit]


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
        self.puts = 0  # ray.put calls (one per model version)
        self.broadcast_puts = 0  # ray.put calls of server broadcasts (one per model version, if the strategy has one)
        self.deaths = 0  # actor process deaths seen while running jobs
        self.retries = 0  # jobs retried after such a death
        self.actor_nodes: list[str] = []  # Ray node id of each actor (at start)
        self.actor_pids: list[int] = []
        self.actor_py_modules: list[list[str]] = []
        self.pipeline = max(1, int(pipeline))
        self.restart_timeout = restart_timeout
        self._owns_ray = False
        self._actors: list[Any] = []
        self._probes: dict[Any, tuple[int, float]] = {}  # ready() call on a restarting actor -> (index, since)
        self._reprobe: dict[int, tuple[float, float]] = {}  # actor index -> (probe again at, since)
        self._refs: collections.OrderedDict[int, tuple[torch.Tensor, Any]] = collections.OrderedDict()
        self._broadcast_refs: collections.OrderedDict[int, tuple[Any, Any]] = collections.OrderedDict()
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
                env = _runtime_env(_plugin_modules(spec)) if ship_code else None
                log.info("ray: connecting to the cluster at %s (shipping fedsim's code)...", target)
                try:
                    _ray_init(address=target, runtime_env=env)
                except Exception as exc:  # noqa: BLE001  (connection problems: one line)
                    raise ValueError(f"executor.ray_address={address}: could not connect: {_first_line(exc)}") from exc
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
            log.info("ray: executor.device=%s -> %.3g GPU per actor (set executor.gpus_per_client to choose)",
                     spec.device, gpus)
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
        plugins = _plugin_modules(spec)
        sys_paths = [root for root in (_module_root(name) for name in plugins) if root]
        options: dict[str, Any] = {
            "num_cpus": threads,
            "num_gpus": gpus,
            "max_restarts": -1,  # Ray restarts a dead actor; retry-once is handled here
            "max_task_retries": 0,
            "scheduling_strategy": "SPREAD",
        }
        shared = self._share_task()
        actor_class = ray.remote(_ActorBody)
        self._actors = [actor_class.options(**options).remote(actor_spec, plugins, sys_paths, self.compile)
                        for _ in range(workers)]
        if shared is not None:
            for actor in self._actors:  # runs before ready(): an actor runs one caller's calls in order
                actor.load_task.remote(shared)

        log.info("ray: starting %d workers (each imports torch and %s)...", workers,
                 "maps the task's data from the object store" if shared is not None else "builds the task")
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
                    raise RuntimeError(f"ray executor: a worker failed to start: {_describe_error(exc)}") from None
        self.actor_nodes = [info[i]["node_id"] for i in range(workers)]
        self.actor_pids = [info[i]["pid"] for i in range(workers)]
        self.actor_py_modules = [info[i]["py_modules"] for i in range(workers)]  # code shipped to each actor
        self.actor_data = [info[i]["data"] for i in range(workers)]  # "shared" (object store) or "rebuilt"
        log.info("ray executor: %d workers on %d node(s), %d thread(s) each%s, ready in %.1f s", workers,
                 len(set(self.actor_nodes)), threads, f", {gpus:g} GPU each" if gpus else "", time.monotonic() - started)

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

    def _share_task(self) -> list[Any] | None:
        """[ref to the task without its data, ref to the data's arrays], each ``ray.put`` once; None
        when actors must build the task themselves (lazily generated or GPU-resident data, or a task
        that does not pickle). Actors map the arrays zero-copy from the object store (one copy per node)."""
        ray, data = self._ray, self._task.data
        if not isinstance(data, ArrayFederatedData) or data.x_train.device.type != "cpu":
            return None
        try:
            shell = ray.put(dataclasses.replace(self._task, data=None))
        except Exception as exc:  # noqa: BLE001  (e.g. a plugin task whose model factory does not pickle)
            log.info("ray: workers build the task themselves (it does not pickle: %s)", _first_line(exc))
            return None
        arrays = {name: getattr(data, name).contiguous().numpy() for name in SHARED_ARRAYS}
        arrays |= {"train_offsets": data.train_offsets, "test_offsets": data.test_offsets,
                   "num_classes": data.num_classes}
        self._shared = [shell, ray.put(arrays)]  # kept alive while actors may still be loading them
        return self._shared

    def actor_stats(self) -> list[dict[str, Any]]:
        """Per live actor: params versions fetched, remote calls and jobs run, pid, node id, wall and CPU
        seconds in calls, and where its data came from."""
        actors = [a for a in self._actors if a is not None]
        return self._ray.get([a.stats.remote() for a in actors])

    # ------------------------------------------------------------------ params

    def _params_ref(self, job: ClientJob) -> Any:
        entry = self._refs.get(job.version)
        if entry is None or entry[0] is not job.params:
            ref = self._ray.put(job.params.detach().cpu().contiguous().numpy())
            self.puts += 1
            entry = (job.params, ref)
            self._refs[job.version] = entry
        self._refs.move_to_end(job.version)
        while len(self._refs) > _PARAMS_CACHE:
            self._refs.popitem(last=False)
        return entry[1]

    def _broadcast_ref(self, job: ClientJob) -> Any:
        """One ``ray.put`` per version's broadcast (the engine hands every job of a version the same dict)."""
        if job.broadcast is None:
            return None
        entry = self._broadcast_refs.get(job.version)
        if entry is None or entry[0] is not job.broadcast:
            payload = {k: v.detach().cpu().contiguous().numpy() for k, v in job.broadcast.items()}
            entry = (job.broadcast, self._ray.put(payload))
            self.broadcast_puts += 1
            self._broadcast_refs[job.version] = entry
        self._broadcast_refs.move_to_end(job.version)
        while len(self._broadcast_refs) > _PARAMS_CACHE:
            self._broadcast_refs.popitem(last=False)
        return entry[1]

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
            log.info("ray executor: actors run chunks of ~%g jobs batched with vmap (client '%s' with this model "
                     "batches; executor.ray_inner=serial to run them one by one)", per_chunk, self._spec.client)
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
        ray = self._ray
        if self.inner is None:
            self.inner = self._choose_inner(jobs)
        light = [dataclasses.replace(job, params=None, broadcast=None, state=_to_wire(job.state)) for job in jobs]
        boxes = [[self._params_ref(job), self._broadcast_ref(job)] for job in jobs]
        results: list[ClientResult | None] = [None] * len(jobs)
        attempts = [0] * len(jobs)
        solo: set[int] = set()  # jobs that were on a worker when it died: each now runs alone
        probing = {i for i, _ in self._probes.values()} | set(self._reprobe)
        alive = {i for i, actor in enumerate(self._actors) if actor is not None and i not in probing}
        size = self._chunk_length(len(jobs), len(alive))
        queue = collections.deque(list(range(start, min(start + size, len(jobs))))  # chunks of job indices
                                  for start in range(0, len(jobs), size))
        inflight: dict[Any, tuple[int, list[int]]] = {}  # call ref -> (actor index, job indices)
        per_actor: dict[int, list[Any]] = {i: [] for i in range(len(self._actors))}  # calls in submission order

        def alone(chunk: list[int]) -> bool:
            return len(chunk) == 1 and chunk[0] in solo

        while queue or inflight:
            self._tick_probes()
            for depth in range(self.pipeline):  # every actor gets a call before any gets a second one
                for i in sorted(alive, key=lambda k: len(per_actor[k])):  # least busy first
                    if not queue or len(per_actor[i]) > depth:
                        continue
                    chunk = queue[0]
                    if per_actor[i] and (alone(chunk) or alone(inflight[per_actor[i][0]][1])):
                        continue  # a job retried after a death runs alone: a second death is its own
                    queue.popleft()
                    call = self._actors[i].run_chunk.remote(self.inner, [light[j] for j in chunk],
                                                            [boxes[j] for j in chunk])
                    self.calls += 1
                    self.jobs_sent += len(chunk)
                    inflight[call] = (i, chunk)
                    per_actor[i].append(call)
            waiting = list(inflight) + list(self._probes)
            if not waiting:
                if not self._reprobe:
                    raise RuntimeError(f"ray executor: no workers left to run {sum(map(len, queue))} job(s)")
                time.sleep(self._probe_wait() or 0.0)
                continue
            done, _ = ray.wait(waiting, num_returns=1, timeout=self._probe_wait())
            if not done:
                continue
            ref = done[0]
            if ref in self._probes:
                back = self._finish_probe(ref)
                if back is not None:
                    alive.add(back)
                continue
            i, chunk = inflight.pop(ref)
            try:
                chunk_results = ray.get(ref)
            except ray.exceptions.RayActorError as exc:
                alive.discard(i)
                calls = [(call, chunk if call == ref else inflight.pop(call)[1]) for call in per_actor[i]]
                per_actor[i] = []
                self._on_death(i, calls, ref, exc, queue, attempts, solo, jobs, results)
                continue
            except ray.exceptions.RayError as exc:  # e.g. a result that could not be deserialised
                if isinstance(exc, CLIENT_BUG_ERRORS):  # raised by the client code (Ray re-raises as its class)
                    raise
                per_actor[i].remove(ref)
                if len(chunk) > 1:  # find the job it belongs to: each runs alone once more
                    queue.extendleft([j] for j in reversed(chunk))
                else:
                    results[chunk[0]] = failed_result(jobs[chunk[0]], _describe_error(exc))
                continue
            per_actor[i].remove(ref)
            for j, result in zip(chunk, chunk_results, strict=True):
                results[j] = self._unpack(result)
        return results  # type: ignore[return-value]

    def _unpack(self, result: ClientResult) -> ClientResult:
        if isinstance(result.delta, np.ndarray):  # read-only view of the object store: own a copy
            result.delta = torch.from_numpy(np.array(result.delta, copy=True))
        result.state, result.extras = _from_wire(result.state), _from_wire(result.extras)
        return result

    # ------------------------------------------------------------------ failures

    def _on_death(self, i, calls, failed, exc, queue, attempts, solo, jobs, results) -> None:
        """Actor ``i`` died with ``calls`` (each a chunk of jobs) unfinished on it, in submission order.

        Which job killed it is unknown (a chunk holds several, several calls may be in flight, and
        a finished call's reply can be lost with the process too), so each job of those calls is
        charged one attempt and re-queued to run *alone* on a worker: a job whose solo retry kills
        its worker again is a dropout, and an innocent job never dies twice. Calls that did finish
        are kept.
        """
        ray = self._ray
        self.deaths += 1
        cause = type(exc).__name__  # Ray's message is long and says no more than "the process died"
        suspects: list[int] = []
        for call, chunk in calls:
            if call != failed and ray.wait([call], timeout=0)[0]:
                try:  # it finished before the death: keep its results
                    for j, result in zip(chunk, ray.get(call), strict=True):
                        results[j] = self._unpack(result)
                    continue
                except ray.exceptions.RayError:
                    pass
            suspects.extend(chunk)
        retry: list[int] = []
        for j in suspects:
            attempts[j] += 1
            job = jobs[j]
            if attempts[j] >= 2:
                results[j] = failed_result(job, f"its ray worker process died twice running this client ({cause})")
                log.warning("ray worker process died (%s) again running client %d (version %d) alone; counting it as "
                            "a dropout", cause, job.client_id, job.version)
            else:
                retry.append(j)
        if retry:
            self.retries += len(retry)
            solo.update(retry)
            clients = ", ".join(f"{jobs[j].client_id} (version {jobs[j].version})" for j in retry)
            log.warning("ray worker process died (%s) with client(s) %s in flight; restarting it and retrying each "
                        "of these jobs once, alone on a worker", cause, clients)
        queue.extendleft([j] for j in reversed(retry))
        self._start_probe(i)

    def _start_probe(self, i: int, since: float | None = None) -> None:
        """Ask a dead actor's replacement whether it is up (Ray restarts it: max_restarts=-1)."""
        probe = self._actors[i].ready.remote()
        self._probes[probe] = (i, time.monotonic() if since is None else since)

    def _probe_wait(self) -> float | None:
        """Seconds until the next probe must be re-sent or given up (None: no probes)."""
        times = [since + self.restart_timeout for _, since in self._probes.values()]
        times += [at for at, _ in self._reprobe.values()]
        return max(0.0, min(times) - time.monotonic()) if times else None

    def _finish_probe(self, ref: Any) -> int | None:
        i, since = self._probes.pop(ref)
        try:
            self._ray.get(ref)
        except self._ray.exceptions.ActorUnavailableError:  # still restarting: ask again shortly
            self._reprobe[i] = (time.monotonic() + _PROBE_EVERY, since)
            return None
        except self._ray.exceptions.RayError as exc:  # gone for good (e.g. its constructor raised)
            self._drop_actor(i, _describe_error(exc))
            return None
        log.info("ray executor: worker %d restarted after %.1fs", i, time.monotonic() - since)
        return i

    def _tick_probes(self) -> None:
        now = time.monotonic()
        for i, (at, since) in list(self._reprobe.items()):
            if now - since >= self.restart_timeout:
                del self._reprobe[i]
                self._drop_actor(i, f"not back after {self.restart_timeout:g}s")
            elif now >= at:
                del self._reprobe[i]
                self._start_probe(i, since)
        for ref, (i, since) in list(self._probes.items()):
            if now - since >= self.restart_timeout:
                del self._probes[ref]
                self._drop_actor(i, f"not back after {self.restart_timeout:g}s")

    def _drop_actor(self, i: int, why: str) -> None:
        actor, self._actors[i] = self._actors[i], None
        left = sum(a is not None for a in self._actors)
        log.warning("ray executor: worker %d could not be restarted (%s); %d worker(s) left", i, why, left)
        try:
            self._ray.kill(actor)
        except Exception:  # noqa: BLE001
            pass

    # ------------------------------------------------------------------ close

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        ray = self._ray
        self._refs.clear()
        self._broadcast_refs.clear()
        self._shared = None
        self._probes.clear()
        self._reprobe.clear()
        if ray.is_initialized():
            for actor in self._actors:
                if actor is not None:
                    try:
                        ray.kill(actor)
                    except Exception:  # noqa: BLE001
                        pass
        self._actors = []
        if self._owns_ray and ray.is_initialized():
            ray.shutdown()
        self._owns_ray = False


def _describe_error(exc: BaseException) -> str:
    """One line: the underlying cause of a Ray error, without Ray's multi-line boilerplate."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, BaseException) and cause is not exc:
        return f"{type(cause).__name__}: {_first_line(cause)}"
    return f"{type(exc).__name__}: {_first_line(exc)}"


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
