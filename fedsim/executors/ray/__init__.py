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

Modules, one concern each: :mod:`.connect` (start Ray or probe and join a cluster),
:mod:`.code` (ship fedsim's and plugins' code to cluster nodes), :mod:`.objects` (what travels
through the object store: params/broadcast refs, shared task data, numpy wire format),
:mod:`.actor` (what each actor runs), :mod:`.scheduling` (chunks over actors, retries after a
death, probes of restarting actors) and :mod:`.executor` (the pool: start, run, close).

Only this package imports ray, and only when a Ray executor is created.
"""

from fedsim.executors.ray.connect import init_local_ray, resolve_ray_address
from fedsim.executors.ray.executor import RayExecutor, ray_executor  # registers "ray"

__all__ = ["RayExecutor", "init_local_ray", "resolve_ray_address", "ray_executor"]
