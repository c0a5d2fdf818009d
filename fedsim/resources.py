"""What a run needs in memory, estimated before it starts, and the check that refuses what cannot fit.

The estimate counts model-sized float32 vectors (``P`` = the model's parameters and float
buffers, counted on the meta device: nothing is allocated) and the data the run will hold:

- server: the global model, its evaluation copy and the aggregated update (3), the server
  optimizer's state (adam / adagrad / yogi: 2 moments; sgd with momentum: 1), the strategy's
  server part (SCAFFOLD's c, the FedCM momentum, FedDyn's h: 1), and for weightings that keep
  every client's latest update (``STORING_WEIGHTINGS``) one vector per client seen;
- clients: per-client state of algorithms that keep it (the algorithm's ``state_vectors``)
  for every client seen, up to ``client_state.memory_limit_mb`` (the rest spills to disk);
- updates waiting for aggregation (a round's clients, ``buffer_size``, or ``concurrency``),
  and for asynchronous schedulers the model versions jobs in flight started from
  (``scheduler.concurrency``);
- the executor's working set: ``WORKING_VECTORS`` per client training at once (serial: 1;
  vmap: the clients of one call, as many as its memory budget allows; ray: per actor, plus its
  cache of model versions), plus each of those clients' data;
- lazily generated data (the synthetic task): the global test set it generates.

"Clients seen" is at most min(data.num_clients, rounds x clients per update). A run whose
estimate exceeds ``MEMORY_FRACTION`` of the memory available now (``MemAvailable`` in
/proc/meminfo) is refused with one line naming the options that drive it, unless forced
(``fedsim run --force``). The estimate is deliberately rough (activations, allocator
overhead and Python objects are not counted): it catches runs that cannot fit, not ones
that barely do.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any

import torch

__all__ = ["Estimate", "Term", "MEMORY_FRACTION", "estimate", "check_resources", "model_size", "available_memory"]

MEMORY_FRACTION = 0.8  # of the memory available when the run starts
BYTES_PER_FLOAT = 4
WORKING_VECTORS = 6  # per training client: local model + start point (carry) + 4 step temporaries (gradients)
VMAP_BUDGET = 1 << 30  # the vmap executor sizes its calls to this working memory (executors/vmap.py DEFAULT_CPU_BUDGET)
RAY_ACTOR_CACHE = 4  # model versions a Ray actor keeps (executors/ray/actor.py ACTOR_CACHE)
STORING_WEIGHTINGS = (
    "mifa",
    "fedvarp",
)  # keep every client's latest update: one model per client seen (+ a float64 sum)
MOMENT_OPTIMIZERS = ("adam", "adagrad", "yogi")  # server optimizers with two moment vectors


@dataclass(frozen=True)
class Term:
    """``copies`` model-sized vectors (or ``bytes`` of data) for one reason, and the options driving it."""

    what: str
    copies: float = 0.0
    options: tuple[str, ...] = ()
    bytes: float = 0.0


@dataclass
class Estimate:
    num_params: int
    terms: list[Term] = field(default_factory=list)
    model_options: tuple[str, ...] = ()  # options the model size depends on (task.*)

    @property
    def copies(self) -> float:
        return sum(t.copies for t in self.terms)

    @property
    def total_bytes(self) -> float:
        return sum(t.copies * self.num_params * BYTES_PER_FLOAT + t.bytes for t in self.terms)

    def drivers(self) -> list[str]:
        """The options behind the largest terms, largest first (the model size's options first)."""
        sized = sorted(self.terms, key=lambda t: t.copies * self.num_params * BYTES_PER_FLOAT + t.bytes, reverse=True)
        names: list[str] = list(self.model_options)
        for term in sized[:3]:
            names += [o for o in term.options if o not in names]
        return names

    def describe(self) -> str:
        """One line: the total, the model size, and the largest terms."""
        sized = sorted(self.terms, key=lambda t: t.copies * self.num_params * BYTES_PER_FLOAT + t.bytes, reverse=True)
        parts = [f"{t.what} {_gib(t.copies * self.num_params * BYTES_PER_FLOAT + t.bytes)}" for t in sized[:3]]
        return (
            f"about {_gib(self.total_bytes)} (a model of {self.num_params:,} parameters x {self.copies:.4g} "
            f"copies, plus data; largest: {', '.join(parts)})"
        )


def _gib(n: float) -> str:
    """Bytes in the largest binary unit that keeps the number >= 1 (3 significant digits)."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024:
            return f"{n:.3g} {unit}"
        n /= 1024
    return f"{n:,.3g} TiB" if n < 1000 else f"{n:,.0f} TiB"


def model_size(task: Any) -> int:
    """Parameters plus float buffers of ``task.build_model()``, built on the meta device (no memory)."""
    with torch.device("meta"), torch.random.fork_rng(devices=[]):
        model = task.build_model()
    tensors = [*model.parameters(), *(b for b in model.buffers() if b.is_floating_point())]
    return int(sum(t.numel() for t in tensors))


def available_memory() -> int | None:
    """Bytes of memory available now: ``MemAvailable`` from /proc/meminfo, else free pages (None: unknown)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (OSError, ValueError, AttributeError):
        return None


def _per_update(config: Any, num_clients: int) -> tuple[float, tuple[str, ...]]:
    """Client updates the server holds before aggregating, and the option that sets it."""
    scheduler = config.scheduler
    if scheduler.name == "buffered":
        return float(scheduler.buffer_size), ("scheduler.buffer_size",)
    if scheduler.name != "sync":
        return float(scheduler.concurrency), ("scheduler.concurrency",)
    population = config.population
    if population.participation == "uniform":
        per_round = population.clients_per_round * (1.0 + scheduler.over_selection)
        return float(min(math.ceil(per_round), num_clients)), ("population.clients_per_round",)
    if population.participation == "always":
        return float(num_clients), ("data.num_clients",)
    mean = population.mean_prob if population.mean_prob is not None else 1.0
    return float(min(num_clients, math.ceil(mean * num_clients))), ("population.mean_prob", "data.num_clients")


def estimate(
    config: Any,
    num_params: int,
    *,
    state_vectors: int = 0,
    server_part: str | None = None,
    weighting: str | None = None,
    server_optimizer: str | None = None,
    server_momentum: float = 0.0,
    sample_numel: int = 0,
    largest_client: int = 0,
    lazy_test_samples: int = 0,
    model_options: tuple[str, ...] = (),
) -> Estimate:
    """The memory a run of ``config`` needs, with a model of ``num_params`` floats (see the module docstring).

    ``sample_numel``: floats per input sample; ``largest_client``: samples of the largest client;
    ``lazy_test_samples``: samples a lazily generated dataset generates for its global test set.
    """
    n = config.data.num_clients
    per_update, update_options = _per_update(config, n)
    seen = float(min(n, config.rounds * per_update))
    seen_options = ("data.num_clients", "rounds", *update_options)
    terms = [Term("server model, evaluation copy and update", 3.0)]
    if server_optimizer in MOMENT_OPTIMIZERS:
        terms.append(Term(f"server optimizer {server_optimizer}", 2.0, ("strategy.server_optimizer",)))
    elif server_momentum:
        terms.append(Term("server momentum", 1.0, ("strategy.momentum",)))
    if server_part is not None:
        terms.append(Term(f"strategy server part ({server_part})", 1.0, ("strategy.name",)))
    if weighting in STORING_WEIGHTINGS:
        terms.append(
            Term(
                f"weighting {weighting}: one stored update per client seen",
                seen + 2.0,
                ("strategy.weighting", *seen_options),
            )
        )
    if state_vectors:
        copies = state_vectors * seen
        limit = config.client_state.memory_limit_mb
        if limit is not None:  # past the limit, client state spills to disk
            copies = min(copies, limit * 2**20 / (BYTES_PER_FLOAT * max(num_params, 1)))
        terms.append(
            Term(
                f"client state of {config.client.algorithm}",
                copies,
                ("client.algorithm", *seen_options, "client_state.memory_limit_mb"),
            )
        )
    terms.append(Term("updates awaiting aggregation", per_update * (1 + state_vectors), update_options))
    if config.scheduler.name != "sync":
        terms.append(
            Term("model versions of jobs in flight", float(config.scheduler.concurrency), ("scheduler.concurrency",))
        )
    training, options = _training_clients(config, num_params, per_update, update_options, sample_numel * largest_client)
    extra = RAY_ACTOR_CACHE if config.executor.name == "ray" else 0
    terms.append(
        Term(
            f"clients training at once ({training:g})",
            training * (WORKING_VECTORS + extra),
            options,
            bytes=training * BYTES_PER_FLOAT * sample_numel * largest_client,
        )
    )
    if lazy_test_samples:
        terms.append(
            Term(
                "generated global test set",
                bytes=BYTES_PER_FLOAT * sample_numel * lazy_test_samples,
                options=model_options,
            )
        )
    return Estimate(num_params, terms, model_options)


def _training_clients(
    config: Any, num_params: int, per_update: float, update_options: tuple[str, ...], client_floats: int
) -> tuple[float, tuple[str, ...]]:
    """Clients whose working set is in memory at once, and the options behind that number."""
    executor = config.executor
    if executor.name == "serial":
        return 1.0, ("executor.name",)
    if executor.name == "ray":
        if executor.ray_address is not None:  # a remote cluster: its memory is not this machine's
            return 0.0, ("executor.ray_address",)
        return float(executor.workers or os.cpu_count() or 1), ("executor.workers",)
    per_client = BYTES_PER_FLOAT * (WORKING_VECTORS * num_params + client_floats)
    fits = max(1, VMAP_BUDGET // max(per_client, 1))  # vmap / auto: calls sized to the executor's budget
    return float(min(per_update, fits)), ("executor.name", *update_options)


def check_resources(config: Any, task: Any, algorithm: Any, force: bool = False) -> Estimate | None:
    """Estimate ``config``'s memory; raise ValueError (one line) if it cannot fit, unless ``force``.

    Returns the estimate (None when the model cannot be built on the meta device, e.g. a
    plugin model that reads its weights while being built).
    """
    from strategies.fedopt import resolved_options, server_part  # noqa: PLC0415

    try:
        num_params = model_size(task)
    except Exception:  # noqa: BLE001  (a model that cannot be built without memory is not estimated)
        return None
    strategy = resolved_options(config.strategy)
    data = task.data
    sizes = getattr(data, "num_samples", ())
    largest = int(max(sizes)) if len(sizes) else 0
    lazy_test = 0
    if hasattr(data, "global_test_clients"):  # generated on demand: the global test set is made at start
        test_fraction = config.data.test_fraction
        train = float(sum(int(sizes[c]) for c in data.global_test_clients())) if len(sizes) else 0.0
        lazy_test = int(train * test_fraction / max(1e-9, 1.0 - test_fraction))
    model_options = tuple(f"task.{key}" for key in sorted(config.task.options)) or ("task.name",)
    result = estimate(
        config,
        num_params,
        state_vectors=int(getattr(algorithm, "state_vectors", 0)),
        server_part=server_part(config.strategy),
        weighting=strategy.get("weighting"),
        server_optimizer=strategy.get("server_optimizer"),
        server_momentum=float(strategy.get("momentum") or 0.0),
        sample_numel=int(math.prod(task.input_shape)),
        largest_client=largest,
        lazy_test_samples=lazy_test,
        model_options=model_options,
    )
    available = available_memory()
    if force or available is None:
        return result
    limit = MEMORY_FRACTION * available
    if result.total_bytes > limit:
        raise ValueError(
            f"resources: this run needs {result.describe()}, more than {MEMORY_FRACTION:.0%} of the "
            f"{_gib(available)} available; it grows with {', '.join(result.drivers())} (pass --force to run anyway)"
        )
    return result
