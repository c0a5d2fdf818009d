"""The engine: one event loop on a virtual clock, shared by every scheduling mode.

The loop pops events in (virtual time, priority, sequence) order. At equal times, job
finishes come before scheduler timers, timers before dispatches and dispatches before
evaluations, so a client that finishes at the instant a buffer flushes or a window closes
is counted in it, and clients restarted at that instant get the new model (as in FLSim).

- ``dispatch`` fixes a job's inputs (client, model version, config, seed, client state),
  asks the population how long it takes, and schedules its ``finish`` event. Nothing is
  computed yet. The seed derives from (experiment seed, client, model version, that
  client's dispatch count), so adding a client never reseeds the others' jobs.
- When the loop pops a ``finish`` event whose result is unknown, it hands EVERY dispatched
  but uncomputed job to the executor in one ``run(jobs)`` call. Inputs were fixed at
  dispatch, so batching cannot change any result: runs are deterministic whatever the
  executor, and vmap/Ray get many clients at once (also jobs on different model versions).
- A result is delivered at its finish time: staleness (server version now minus the
  version it started from) is set, over-stale updates are refused, the client's new state
  is stored, and the scheduler decides what to do with it. Schedulers
  (:mod:`fedsim.schedulers`) decide when to dispatch and when the strategy aggregates.

The engine is the loop only: what a run measures or guards (evaluation records, history,
time to accuracy, the divergence guard, checkpoints, the privacy accountant, the recorder)
are callbacks (:mod:`fedsim.callbacks`) that return ``(stop, metrics)`` after each server
update and each evaluation.

Run state lives in three explicit places: :class:`RunState` (clock, event queue with the
jobs in flight, counters), the strategy's ``ServerState`` and the client state store; the
scheduler keeps its own small state. Each holds plain data, so a run can be snapshotted.
"""

from __future__ import annotations

import heapq
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

import numpy as np
import torch

from fedsim.callbacks import Callback, Evaluation, History, TimeToAccuracy, notify, weighted_train_loss
from fedsim.checkpoint import checkpointable
from fedsim.communication import DOWNLINK_NOISE_KEY
from fedsim.evaluation import Evaluator
from fedsim.executors.worker import failed_result
from fedsim.population import Population
from fedsim.rng import derive_seed
from fedsim.state import ClientStateStore
from fedsim.types import ClientJob, ClientResult

__all__ = ["Engine", "Event", "RunState", "Scheduler", "Callback", "FINISH", "TIMER", "DISPATCH", "EVAL"]

log = logging.getLogger("fedsim")

# Event kinds, in the order they are processed at equal virtual times.
FINISH, TIMER, DISPATCH, EVAL = "finish", "timer", "dispatch", "eval"
_PRIORITY = {FINISH: 0, TIMER: 1, DISPATCH: 2, EVAL: 3}
_FINISH_PRIORITY = _PRIORITY[FINISH]


@checkpointable
class Event(NamedTuple):
    """Ordered as a tuple: (time, priority, seq) decide; seq is unique, so kind/payload never compare."""

    time: float
    priority: int
    seq: int
    kind: str
    payload: Any = None  # FINISH: job id; others: the scheduler's


@dataclass
class RunState:
    """Everything the loop changes besides the strategy's and the clients' state."""

    now: float = 0.0
    next_seq: int = 0
    next_job_id: int = 0
    selections: int = 0  # counter seeding each sample of idle clients
    queue: list[Event] = field(default_factory=list)  # a heap
    jobs: dict[int, ClientJob] = field(default_factory=dict)  # in flight, by job id
    uncomputed: dict[int, None] = field(default_factory=dict)  # job ids not yet computed (insertion order)
    results: dict[int, ClientResult] = field(default_factory=dict)  # computed, not yet delivered
    failing: dict[int, str] = field(default_factory=dict)  # job id -> why it drops out (decided at dispatch)
    durations: dict[int, float] = field(default_factory=dict)  # job id -> virtual seconds
    busy: dict[int, int] = field(default_factory=dict)  # client id -> jobs in flight
    dispatch_counts: dict[int, int] = field(default_factory=dict)  # client id -> jobs dispatched so far
    dropouts: int = 0  # failed jobs and deadline stragglers
    stale_refused: int = 0  # results older than max_staleness
    executor_calls: int = 0
    executor_jobs: int = 0
    bytes_up: float = 0.0  # uploaded so far (results that arrived)
    bytes_down: float = 0.0  # downloaded so far (every dispatched job)
    stopped: bool = False


class Scheduler(Protocol):
    def start(self, engine: Engine) -> None: ...

    def on_event(self, engine: Engine, event: Event) -> None: ...  # TIMER and DISPATCH events

    def on_result(self, engine: Engine, job: ClientJob, result: ClientResult) -> None: ...


class Engine:
    def __init__(
        self,
        *,
        strategy: Any,
        algorithm: Any,
        client_config: dict[str, Any],
        population: Population,
        executor: Any,
        evaluator: Evaluator,
        params: torch.Tensor,
        seed: int,
        max_updates: int,
        max_time: float | None = None,
        max_staleness: int | None = None,
        eval_every: int | None = 1,
        eval_every_time: float | None = None,
        target_accuracy: float | None = None,
        callbacks: Sequence[Callback] = (),
        payload: Any = None,
    ):
        self.strategy = strategy
        self.algorithm = algorithm
        self.client_config = dict(client_config)
        self.population = population
        self.executor = executor
        self.seed = seed
        self.max_updates = max_updates
        self.max_time = max_time
        self.max_staleness = max_staleness
        self.eval_every = eval_every
        self.eval_every_time = eval_every_time
        self.target_accuracy = target_accuracy
        # bytes each job moves, known at dispatch (fedsim.communication.Payload): dense fp32 by default
        self.payload = payload if payload is not None else _DensePayload(params.numel())
        # built-in measurements first: an evaluation record is in the history before the guard,
        # the accountant or the recorder see it
        self.evaluation = Evaluation(evaluator)
        self._history = History()
        self._time_to_accuracy = TimeToAccuracy(target_accuracy)
        self.callbacks: list[Any] = [self.evaluation, self._history, self._time_to_accuracy, *callbacks]
        self.state = strategy.init(params, population.info())
        self.client_states = ClientStateStore()
        self.run_state = RunState()
        # True exactly for the clients in run_state.busy: idle clients are found by one vectorised pass
        self._busy_mask = np.zeros(population.num_clients, dtype=bool)
        self.status = "running"  # -> completed | diverged | failed | interrupted (the first stop() wins)
        self.last_results: list[ClientResult] = []  # the successful results of the last server update
        self._start_wall = 0.0
        self._wall_before = 0.0  # wall seconds spent before a resume
        self._resumed = False

    # ------------------------------------------------------------------ read-only views

    @property
    def now(self) -> float:
        return self.run_state.now

    @property
    def busy(self) -> dict[int, int]:
        """Clients with a job in flight (client id -> number of jobs)."""
        return self.run_state.busy

    @property
    def in_flight(self) -> int:
        return len(self.run_state.jobs)

    @property
    def dropouts(self) -> int:
        return self.run_state.dropouts

    @property
    def evaluator(self) -> Evaluator:
        return self.evaluation.evaluator

    @property
    def history(self) -> list[dict[str, Any]]:
        """The evaluation records so far (the :class:`~fedsim.callbacks.History` callback's)."""
        return self._history.records

    @property
    def time_to_accuracy(self) -> dict[str, Any] | None:
        return self._time_to_accuracy.reached

    def elapsed(self) -> float:
        """Wall seconds of this run so far (those before a resume included)."""
        return time.perf_counter() - self._start_wall

    # ------------------------------------------------------------------ scheduling

    def schedule(self, delay: float, kind: str, payload: Any = None) -> None:
        rs = self.run_state
        heapq.heappush(rs.queue, Event(rs.now + delay, _PRIORITY[kind], rs.next_seq, kind, payload))
        rs.next_seq += 1

    def sample_idle(self, k: int) -> np.ndarray:
        """Up to k clients, uniformly among those available now and not training."""
        rs = self.run_state
        rs.selections += 1
        return self.population.sample(k, rs.now, rs.busy, self.seed, rs.selections - 1, self._busy_mask)

    def dispatch(
        self, client_ids: Sequence[int] | np.ndarray, overrides: Sequence[dict[str, Any]] | None = None
    ) -> list[ClientJob]:
        """Fix the inputs of one job per client on the current model and schedule their finishes.

        ``overrides`` (one dict per client) change that job's local config, e.g. the local
        steps an anarchic client chose; they win over the strategy's instructions.
        """
        rs = self.run_state
        ids = np.asarray(client_ids, dtype=np.int64).reshape(-1)
        if len(ids) == 0:
            return []
        state, payload = self.state, self.payload
        version, params = state.version, state.params
        # per-version payload (SCAFFOLD's c); None for strategies without one
        broadcast = getattr(self.strategy, "broadcast", _no_broadcast)(state)
        configure, client_config, noisy = (
            self.strategy.configure,
            self.client_config,
            payload.downlink_snr_db is not None,
        )
        num_samples, num_steps, dispatch_counts = (
            self.population.num_samples,
            self.algorithm.num_steps,
            rs.dispatch_counts,
        )
        jobs, steps, counts = [], [], []
        for i, cid in enumerate(ids.tolist()):
            config = client_config | configure(state, cid, rs.now)
            if overrides is not None:
                config |= overrides[i]
            count = dispatch_counts.get(cid, 0)
            dispatch_counts[cid] = count + 1
            seed = derive_seed(self.seed, "client-train", cid, version, count)
            job_params = params
            if noisy:  # a noisy download: this job's own copy
                job_params, noted = payload.receive(params, seed)
                config = config | noted
            job = ClientJob(
                rs.next_job_id, cid, version, job_params, config, seed, self.client_states.get(cid), broadcast
            )
            rs.next_job_id += 1
            jobs.append(job)
            counts.append(count)
            steps.append(num_steps(config, int(num_samples[cid])))
        up = [payload.up_bytes(job) for job in jobs]
        down = [payload.down_bytes(job) for job in jobs]
        rs.bytes_down += float(down[0]) if len(down) == 1 else float(np.array(down, dtype=np.float64).sum())
        timing = self.population.timing(
            ids, steps, counts, up_bits=[8.0 * b for b in up], down_bits=[8.0 * b for b in down], now=rs.now
        )
        busy, queue, now = rs.busy, rs.queue, rs.now
        for job, duration, dropped in zip(jobs, timing.durations.tolist(), timing.dropped.tolist()):
            job_id, cid = job.job_id, job.client_id
            rs.jobs[job_id] = job
            rs.durations[job_id] = duration
            busy[cid] = busy.get(cid, 0) + 1
            if dropped:
                rs.failing[job_id] = "dropped out mid-training (population.dropout_prob)"
            else:
                rs.uncomputed[job_id] = None
            heapq.heappush(queue, Event(now + duration, _FINISH_PRIORITY, rs.next_seq, FINISH, job_id))
            rs.next_seq += 1
        self._busy_mask[ids] = True
        return jobs

    def cancel(self, jobs: Sequence[ClientJob]) -> None:
        """Forget jobs whose results are no longer wanted (stragglers, unneeded over-selected clients)."""
        for job in jobs:
            if self._release(job.job_id) is not None:
                self.run_state.results.pop(job.job_id, None)

    def stop(self, status: str = "completed") -> None:
        if self.status == "running":
            self.status = status
        self.run_state.stopped = True

    # ------------------------------------------------------------------ the loop

    def run(self, scheduler: Scheduler) -> dict[str, Any]:
        rs = self.run_state
        self._start_wall = time.perf_counter() - self._wall_before
        if not self._resumed:  # a resumed run's queue already holds what start() scheduled
            scheduler.start(self)
            if self.eval_every_time:
                self.schedule(self.eval_every_time, EVAL)
        after_event = [cb.after_event for cb in self.callbacks if hasattr(cb, "after_event")]  # e.g. checkpoints
        while rs.queue and not rs.stopped:
            event = heapq.heappop(rs.queue)
            if self.max_time is not None and event.time > self.max_time:
                rs.now = self.max_time
                break
            rs.now = event.time
            if event.kind == FINISH:
                self._deliver(scheduler, event.payload)
            elif event.kind == EVAL:
                self.evaluate()
                if rs.queue and self.eval_every_time:  # only while something else can still happen
                    self.schedule(self.eval_every_time, EVAL)
            else:
                scheduler.on_event(self, event)
            for hook in after_event:
                hook(self)
        if self.status == "running":
            self.status = "completed"
        if self.status == "completed" and (self.evaluation.last_version != self.state.version or not self.history):
            self.evaluate()
        summary = self.summary()
        for cb in self.callbacks:
            cb.on_end(self, summary)
        return summary

    def _deliver(self, scheduler: Scheduler, job_id: int) -> None:
        rs = self.run_state
        if job_id not in rs.jobs:
            return  # cancelled
        if job_id in rs.uncomputed:
            self._compute_pending()
        job = rs.jobs[job_id]
        duration = rs.durations[job_id]
        reason = rs.failing.get(job_id)
        result = failed_result(job, reason) if reason is not None else rs.results.pop(job_id)
        self._release(job_id)
        result.duration = duration
        result.staleness = self.state.version - job.version
        result.base_params = job.params
        noise = self.payload.received_noise(job, result.delta) if result.ok else None
        if noise is not None:  # the download noise stays in the model the client sends: delta = local - clean model
            result.delta = result.delta + noise
            result.base_params = job.params - noise.to(job.params)
            result.metrics["downlink_noise_std"] = float(job.config[DOWNLINK_NOISE_KEY])
        if result.ok:  # it was uploaded (even if refused as too stale below)
            result.metrics["bytes_up"] = self.payload.up_bytes(job)
            result.metrics["bytes_down"] = self.payload.down_bytes(job)
            rs.bytes_up += result.metrics["bytes_up"]
        if not result.ok:
            rs.dropouts += 1
            level = logging.INFO if reason is not None else logging.WARNING  # simulated dropouts are expected
            log.log(level, "client %d dropped at version %d: %s", job.client_id, job.version, result.error)
        elif self.max_staleness is not None and result.staleness > self.max_staleness:
            rs.stale_refused += 1
            result.error = f"staleness {result.staleness} > max_staleness {self.max_staleness}"
        elif result.state is not None:
            self.client_states.put(job.client_id, result.state)  # on arrival: a re-dispatch gets it at once
        scheduler.on_result(self, job, result)

    def _release(self, job_id: int) -> ClientJob | None:
        rs = self.run_state
        job = rs.jobs.pop(job_id, None)
        if job is None:
            return None
        rs.uncomputed.pop(job_id, None)
        rs.failing.pop(job_id, None)
        rs.durations.pop(job_id, None)
        left = rs.busy[job.client_id] - 1
        if left:
            rs.busy[job.client_id] = left
        else:
            del rs.busy[job.client_id]
            self._busy_mask[job.client_id] = False
        return job

    def _compute_pending(self) -> None:
        rs = self.run_state
        jobs = [rs.jobs[j] for j in rs.uncomputed]
        rs.uncomputed.clear()
        results = self.executor.run(jobs)
        if len(results) != len(jobs):
            raise RuntimeError(f"executor returned {len(results)} results for {len(jobs)} jobs")
        rs.executor_calls += 1
        rs.executor_jobs += len(jobs)
        for job, result in zip(jobs, results):
            rs.results[job.job_id] = result

    # ------------------------------------------------------------------ snapshots

    def state_dict(self) -> dict[str, Any]:
        """The loop's state between two events (see :mod:`fedsim.checkpoint` for how it is stored)."""
        run_state = dict(vars(self.run_state), stopped=False)
        return {
            "run_state": run_state,
            "server_state": self.state,
            "client_states": dict(self.client_states.items()),
            "history": self.history,
            "time_to_accuracy": self.time_to_accuracy,
            "since_eval": self.evaluation.since_eval,
            "last_eval_version": self.evaluation.last_version,
            "last_participants": self.evaluation.last_participants,
            "wall_time": self.elapsed(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from ``state_dict()``; ``run`` then goes on without starting the scheduler again."""
        self.run_state = RunState(**state["run_state"])
        self._busy_mask[:] = False
        self._busy_mask[list(self.run_state.busy)] = True
        self.state = state["server_state"]
        for cid, client_state in state["client_states"].items():  # into the store build() configured (spilling)
            self.client_states.put(cid, client_state)
        self._history.records = list(state["history"])
        self._time_to_accuracy.reached = state["time_to_accuracy"]
        self.evaluation.since_eval = list(state["since_eval"])
        self.evaluation.last_version = state["last_eval_version"]
        self.evaluation.last_participants = state["last_participants"]
        self._wall_before = state["wall_time"]
        self._resumed = True

    # ------------------------------------------------------------------ server side

    def aggregate(self, results: Sequence[ClientResult], dropped: int = 0) -> None:
        """Hand successful results to the strategy (one server update) and record it."""
        ok = [r for r in results if r.ok]
        if dropped:
            self.run_state.dropouts += dropped
            log.info("version %d: %d straggler(s) missed the deadline and were dropped", self.state.version, dropped)
        self.state = self.strategy.aggregate(self.state, ok, self.now)
        self.last_results = ok
        record = {
            "round": self.state.version,
            "virtual_time": self.now,
            "participants": len(ok),
            "dropouts": len(results) - len(ok) + dropped,
            "train_loss": weighted_train_loss(ok),
            "staleness": float(np.mean([r.staleness for r in ok])) if ok else None,
            "bytes_up": self.run_state.bytes_up,
            "bytes_down": self.run_state.bytes_down,
        }
        if notify(self.callbacks, "on_round", self, record):
            self.stop()
        if self.status in ("running", "interrupted") and self.eval_every and self.state.version % self.eval_every == 0:
            # not after a stop callback ended the run (e.g. on a non-finite model); a signal's stop lets the
            # step finish, so the state a checkpoint saves then is the one an uninterrupted run passes through
            self.evaluate()
        if self.state.version >= self.max_updates:
            self.stop()

    def evaluate(self) -> dict[str, Any]:
        """Evaluate the global model now and hand the record to the callbacks."""
        record = self.evaluation.record(self)
        if notify(self.callbacks, "on_eval", self, record):
            self.stop()
        return record

    def summary(self) -> dict[str, Any]:
        rs = self.run_state
        history = self._history.summary()
        return {
            "status": self.status,
            "rounds": self.state.version,
            "virtual_time": self.now,
            "wall_time": self.elapsed(),
            "final": history["final"],
            "best_test_accuracy": history["best_test_accuracy"],
            "dropouts": rs.dropouts,
            "stale_refused": rs.stale_refused,
            "jobs_dispatched": rs.next_job_id,
            "bytes_up": rs.bytes_up,
            "bytes_down": rs.bytes_down,
            "executor_batch_mean": rs.executor_jobs / rs.executor_calls if rs.executor_calls else None,
            # one-off executor costs (torch.compile, Ray start-up), apart from the time per round
            "executor_timings": _executor_timings(self.executor),
            "time_to_accuracy": self._time_to_accuracy.summary(),
        }


def _executor_timings(executor: Any) -> dict[str, float]:
    timings = getattr(executor, "timings", None)
    return {k: round(v, 3) for k, v in timings().items()} if timings is not None else {}


class _DensePayload:
    """Every job downloads and uploads the dense fp32 model."""

    def __init__(self, numel: int):
        self.bytes = 4.0 * numel

    def up_bytes(self, job: Any) -> float:
        return self.bytes

    def down_bytes(self, job: Any) -> float:
        return self.bytes

    downlink_snr_db = None  # a clean downlink

    def receive(self, params: torch.Tensor, seed: int) -> tuple[torch.Tensor, dict[str, float]]:
        return params, {}

    def received_noise(self, job: Any, like: torch.Tensor) -> torch.Tensor | None:
        return None


def _no_broadcast(state: Any) -> None:  # algos: strategies without a server -> client payload
    return None
