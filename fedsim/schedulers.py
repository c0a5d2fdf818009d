"""Schedulers decide when clients are dispatched and when the strategy aggregates.

One engine loop serves every mode; a scheduler is chosen by name (``scheduler.name``):

- ``sync``: rounds. At each round start the population names the participants among the
  clients available now; all are dispatched on the current model and the strategy
  aggregates when the last one finishes, or at ``round_deadline`` (stragglers dropped), or,
  with over-selection, when the first ``clients_per_round`` have arrived (the rest are
  cancelled). With time-varying availability (bernoulli, markov, cyclic, trace) rounds are
  paced by the availability slots: round r starts at the first slot boundary after round
  r-1 ended, so round r reads slot r whenever rounds are shorter than ``round_length``.
- ``buffered``: asynchronous, aggregate every ``buffer_size`` = K arrivals (FedAsync: K = 1,
  FedBuff: K = 10, AFA: K = m). Results older than ``max_staleness`` are refused by the engine.
- ``periodic``: FedFix (Fraboni et al., arXiv 2206.10189): every ``interval`` = Δt virtual
  seconds aggregate what arrived since the last tick (possibly nothing: a zero update);
  clients that finished restart at the tick, unfinished ones keep training and arrive stale.

Who trains when is an arrival process (``scheduler.arrivals``) shared by the asynchronous
schedulers, after FLSim (``flsim/utils/async_trainer/training_event_generator.py``) and
FedScale (``fedscale/cloud/aggregation/async_aggregator.py``):

- ``concurrency``: keep C clients training; a freed slot is refilled at the same instant
  (after the other arrivals of that instant), with a client drawn uniformly from those
  available and idle. C = N with equal speeds reproduces Fraboni et al.'s schedules.
- ``rate``: an open process, one start every 1/r seconds (``constant``) or exponential gaps
  (``poisson``); the starting client is drawn uniformly from those available and idle (FLSim
  draws with replacement and lets a client train twice at once; fedsim does not).
- ``anarchic`` (Yang et al., "Anarchic Federated Learning", arXiv 2108.09875): each client
  decides when it joins (exponential idle gaps with a per-client mean, lognormal across
  clients, so some join far more often than others) and how many local steps it runs
  (uniform in [min_steps, max_steps]); a client offline when it wants to join tries again
  after another idle gap.

A client already training is never dispatched again. If no client is available, arrival
processes wait for the next availability slot.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
from scipy.special import ndtri

from fedsim.engine import DISPATCH, TIMER, Engine, Event
from fedsim.population.base import slot_of
from fedsim.registry import Registry
from fedsim.rng import uniform, uniform_per_client
from fedsim.types import ClientJob, ClientResult

__all__ = [
    "SCHEDULERS",
    "ARRIVALS",
    "SyncRounds",
    "Buffered",
    "Periodic",
    "Concurrency",
    "OpenArrivals",
    "Anarchic",
    "build_scheduler",
]

# factory(RunConfig) -> scheduler / arrival process
SCHEDULERS: Registry[Callable[..., Any]] = Registry("scheduler")
ARRIVALS: Registry[Callable[..., Any]] = Registry("arrival process")


# --------------------------------------------------------------------------- synchronous rounds


class SyncRounds:
    def __init__(self, deadline: float | None = None, over_selection: float = 0.0):
        self.deadline = deadline
        self.over_selection = over_selection
        self.round = 0
        self.next_slot = 0  # first availability slot the next round may start in (paced rounds)
        self.target: int | None = None  # over-selection: aggregate once this many succeeded
        self.waiting: dict[int, ClientJob] = {}
        self.results: list[ClientResult] = []

    def start(self, engine: Engine) -> None:
        engine.schedule(0.0, DISPATCH)

    def on_event(self, engine: Engine, event: Event) -> None:
        if event.kind == DISPATCH:
            self._start_round(engine)
        elif event.payload == ("deadline", self.round) and self.waiting:
            stragglers = list(self.waiting.values())
            engine.cancel(stragglers)
            self.waiting.clear()
            self._close_round(engine, dropped=len(stragglers))

    def on_result(self, engine: Engine, job: ClientJob, result: ClientResult) -> None:
        if self.waiting.pop(job.job_id, None) is None:
            return
        self.results.append(result)
        if self.target is not None and sum(r.ok for r in self.results) >= self.target:
            engine.cancel(list(self.waiting.values()))  # over-selected, not needed
            self.waiting.clear()
        if not self.waiting:
            self._close_round(engine)

    def _start_round(self, engine: Engine) -> None:
        population = engine.population
        if population.participation.time_varying:
            slot = max(self.next_slot, math.ceil(engine.now / population.round_length - 1e-9))
            wait = slot * population.round_length - engine.now
            if wait > 1e-9:
                engine.schedule(wait, DISPATCH)
                return
            self.next_slot = slot + 1
        ids = population.round_participants(self.round, engine.now, engine.busy, self.over_selection)
        jobs = engine.dispatch(ids)
        self.waiting = {job.job_id: job for job in jobs}
        self.results = []
        self.target = None
        if self.over_selection > 0:
            self.target = getattr(population.participation, "per_round", len(jobs))
        if not jobs:
            self._close_round(engine)
        elif self.deadline is not None:
            engine.schedule(self.deadline, TIMER, ("deadline", self.round))

    def _close_round(self, engine: Engine, dropped: int = 0) -> None:
        results = sorted(self.results, key=lambda r: r.client_id)  # arrival order must not matter
        engine.aggregate(results, dropped=dropped)
        self.round += 1
        engine.schedule(0.0, DISPATCH)


# --------------------------------------------------------------------------- arrival processes


class Concurrency:
    """Keep ``limit`` clients training; refill freed slots at the same instant (or at ticks)."""

    def __init__(self, limit: int, refill_on_finish: bool = True):
        self.limit = limit
        self.refill_on_finish = refill_on_finish
        self.fill_pending = False

    def start(self, engine: Engine) -> None:
        self.fill(engine)

    def fill(self, engine: Engine) -> None:
        self.fill_pending = False
        free = self.limit - engine.in_flight
        if free <= 0:
            return
        engine.dispatch(engine.sample_idle(free))
        if engine.in_flight < self.limit and engine.population.participation.time_varying:
            self._request(engine, _next_slot_delay(engine))  # nobody else available: try next slot

    def on_event(self, engine: Engine, event: Event) -> None:
        self.fill(engine)

    def on_finish(self, engine: Engine, job: ClientJob) -> None:
        if self.refill_on_finish:
            self._request(engine, 0.0)

    def on_tick(self, engine: Engine) -> None:
        self.fill(engine)

    def _request(self, engine: Engine, delay: float) -> None:
        if not self.fill_pending:  # one pending fill covers every slot freed at this instant
            self.fill_pending = True
            engine.schedule(delay, DISPATCH)


class OpenArrivals:
    """One start every 1/rate virtual seconds (constant gaps) or Exp(rate) gaps (poisson)."""

    def __init__(self, rate: float, process: str, seed: int):
        if rate <= 0:
            raise ValueError(f"scheduler.arrival_rate must be positive, got {rate}")
        self.rate, self.poisson, self.seed = rate, process == "poisson", seed
        self.arrivals = 0
        self.missed = 0  # starts that found no available idle client

    def _gap(self) -> float:
        if not self.poisson:
            return 1.0 / self.rate
        u = float(uniform(self.seed, "arrival-gap", np.zeros(1, dtype=np.int64), self.arrivals)[0])
        return -math.log1p(-u) / self.rate

    def start(self, engine: Engine) -> None:
        engine.schedule(0.0, DISPATCH)

    def on_event(self, engine: Engine, event: Event) -> None:
        ids = engine.sample_idle(1)
        if len(ids):
            engine.dispatch(ids)
        else:
            self.missed += 1
        gap = self._gap()
        self.arrivals += 1
        engine.schedule(gap, DISPATCH)

    def on_finish(self, engine: Engine, job: ClientJob) -> None:
        pass

    def on_tick(self, engine: Engine) -> None:
        pass


class Anarchic:
    """Clients choose when to join (idle gaps) and how many local steps to run."""

    def __init__(self, idle_mean: float, idle_sigma: float, min_steps: int, max_steps: int, seed: int):
        if not 1 <= min_steps <= max_steps:
            raise ValueError(f"scheduler.anarchic: need 1 <= min_steps <= max_steps, got {min_steps}, {max_steps}")
        self.idle_mean, self.idle_sigma = idle_mean, idle_sigma
        self.min_steps, self.max_steps, self.seed = min_steps, max_steps, seed
        self.decisions: dict[int, int] = {}  # client -> decisions drawn so far (counter for its draws)

    def mean_idle(self, ids: np.ndarray) -> np.ndarray:
        """Each client's own mean idle time (fixed per client)."""
        z = ndtri(np.clip(uniform(self.seed, "anarchic-idle-mean", ids, 0), 1e-12, 1 - 1e-12))
        return self.idle_mean * np.exp(self.idle_sigma * z)

    def _draw(self, cid: int, purpose: str) -> float:
        count = self.decisions.get(cid, 0)
        return float(uniform_per_client(self.seed, purpose, np.array([cid]), np.array([count]))[0])

    def _schedule_join(self, engine: Engine, cid: int) -> None:
        gap = -math.log1p(-self._draw(cid, "anarchic-idle")) * float(self.mean_idle(np.array([cid]))[0])
        self.decisions[cid] = self.decisions.get(cid, 0) + 1
        engine.schedule(gap, DISPATCH, cid)

    def start(self, engine: Engine) -> None:
        for cid in range(engine.population.num_clients):
            self._schedule_join(engine, cid)

    def on_event(self, engine: Engine, event: Event) -> None:
        cid = int(event.payload)
        ids = np.array([cid], dtype=np.int64)
        if cid in engine.busy or not engine.population.available(ids, engine.now)[0]:
            self._schedule_join(engine, cid)
            return
        span = self.max_steps - self.min_steps + 1
        steps = self.min_steps + min(int(self._draw(cid, "anarchic-steps") * span), span - 1)
        engine.dispatch(ids, overrides=[{"local_steps": steps}])

    def on_finish(self, engine: Engine, job: ClientJob) -> None:
        self._schedule_join(engine, job.client_id)

    def on_tick(self, engine: Engine) -> None:
        pass


def _next_slot_delay(engine: Engine) -> float:
    length = engine.population.round_length
    return (slot_of(engine.now, length) + 1) * length - engine.now


# --------------------------------------------------------------------------- asynchronous schedulers


class Buffered:
    """Aggregate every ``buffer_size`` accepted arrivals, in client-id order within the buffer."""

    def __init__(self, arrivals: Any, buffer_size: int):
        if buffer_size < 1:
            raise ValueError(f"scheduler.buffer_size must be >= 1, got {buffer_size}")
        self.arrivals = arrivals
        self.buffer_size = buffer_size
        self.buffer: list[ClientResult] = []

    def start(self, engine: Engine) -> None:
        self.arrivals.start(engine)

    def on_event(self, engine: Engine, event: Event) -> None:
        self.arrivals.on_event(engine, event)

    def on_result(self, engine: Engine, job: ClientJob, result: ClientResult) -> None:
        self.arrivals.on_finish(engine, job)
        if not result.ok:
            return
        self.buffer.append(result)
        if len(self.buffer) >= self.buffer_size:
            buffer, self.buffer = _by_client(self.buffer), []
            engine.aggregate(buffer)


class Periodic:
    """FedFix: aggregate at every tick of ``interval`` virtual seconds; clients restart at ticks."""

    def __init__(self, arrivals: Any, interval: float):
        if not interval > 0:
            raise ValueError(f"scheduler.interval must be positive, got {interval}")
        self.arrivals = arrivals
        self.interval = interval
        self.buffer: list[ClientResult] = []

    def start(self, engine: Engine) -> None:
        self.arrivals.start(engine)
        engine.schedule(self.interval, TIMER, "tick")

    def on_event(self, engine: Engine, event: Event) -> None:
        if event.kind != TIMER:
            self.arrivals.on_event(engine, event)
            return
        buffer, self.buffer = _by_client(self.buffer), []
        engine.aggregate(buffer)
        self.arrivals.on_tick(engine)
        engine.schedule(self.interval, TIMER, "tick")

    def on_result(self, engine: Engine, job: ClientJob, result: ClientResult) -> None:
        self.arrivals.on_finish(engine, job)
        if result.ok:
            self.buffer.append(result)


def _by_client(results: list[ClientResult]) -> list[ClientResult]:
    """Client-id order (stable: a client's repeated arrivals stay in arrival order)."""
    return sorted(results, key=lambda r: r.client_id)


# --------------------------------------------------------------------------- registries


@ARRIVALS.register(
    "concurrency",
    "keep scheduler.concurrency clients training (FedScale, Fraboni et al.)",
    options=("scheduler.concurrency",),
)
def _concurrency(config: Any, periodic: bool = False) -> Concurrency:
    return Concurrency(config.scheduler.concurrency, refill_on_finish=not periodic)


@ARRIVALS.register(
    "rate",
    "open arrivals at scheduler.arrival_rate per virtual second, constant or poisson (FLSim)",
    options=("scheduler.arrival_rate", "scheduler.arrival_process"),
)
def _rate(config: Any, periodic: bool = False) -> OpenArrivals:
    return OpenArrivals(config.scheduler.arrival_rate, config.scheduler.arrival_process, config.seed)


@ARRIVALS.register(
    "anarchic",
    "clients pick their join times and local steps (scheduler.anarchic.*; AFA)",
    options=(
        "scheduler.anarchic.idle_mean",
        "scheduler.anarchic.idle_sigma",
        "scheduler.anarchic.min_steps",
        "scheduler.anarchic.max_steps",
    ),
)
def _anarchic(config: Any, periodic: bool = False) -> Anarchic:
    a = config.scheduler.anarchic
    return Anarchic(a.idle_mean, a.idle_sigma, a.min_steps, a.max_steps, config.seed)


@SCHEDULERS.register(
    "sync",
    "synchronous rounds: select, wait for all (or deadline / first k), aggregate",
    options=("round_deadline", "scheduler.over_selection"),
)
def _sync(config: Any) -> SyncRounds:
    return SyncRounds(config.round_deadline, config.scheduler.over_selection)


@SCHEDULERS.register(
    "buffered",
    "asynchronous: aggregate every buffer_size arrivals (FedAsync K=1, FedBuff, AFA)",
    options=("scheduler.buffer_size", "scheduler.arrivals", "scheduler.max_staleness"),
)
def _buffered(config: Any) -> Buffered:
    return Buffered(ARRIVALS.get(config.scheduler.arrivals)(config), config.scheduler.buffer_size)


@SCHEDULERS.register(
    "periodic",
    "asynchronous: aggregate every interval virtual seconds (FedFix)",
    options=("scheduler.interval", "scheduler.arrivals", "scheduler.max_staleness"),
)
def _periodic(config: Any) -> Periodic:
    if config.scheduler.interval is None:
        raise ValueError(
            "scheduler.interval (virtual seconds between server updates) must be set for scheduler 'periodic'"
        )
    return Periodic(ARRIVALS.get(config.scheduler.arrivals)(config, periodic=True), config.scheduler.interval)


def build_scheduler(config: Any) -> Any:
    return SCHEDULERS.get(config.scheduler.name)(config)
