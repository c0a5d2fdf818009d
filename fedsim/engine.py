"""The engine: one event loop on a virtual clock, shared by every scheduling mode.

It owns the clock, a priority queue of events ordered by (virtual time, sequence number),
the strategy's ServerState (model version + parameters), and the jobs in flight.

- ``dispatch`` fixes a job's inputs (client, model version, config, seed, client state),
  asks the population how long it takes, and schedules its ``finish`` event. Nothing is
  computed yet.
- When the loop pops a ``finish`` event whose result is unknown, it hands EVERY dispatched
  but uncomputed job to the executor in one ``run(jobs)`` call. Inputs were fixed at
  dispatch, so batching cannot change any result: runs are deterministic whatever the
  executor, and vmap/Ray get many clients at once.
- A scheduler (sync rounds now; asynchronous and anarchic modes later) decides when to
  dispatch and when the strategy aggregates; the engine does the bookkeeping.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Protocol, Sequence

import numpy as np
import torch

from fedsim.evaluation import Evaluator
from fedsim.population import Population
from fedsim.rng import derive_seed
from fedsim.state import ClientStateStore
from fedsim.types import ClientJob, ClientResult

__all__ = ["Engine", "Event", "Scheduler", "Callback"]

log = logging.getLogger("fedsim")


@dataclass(order=True)
class Event:
    time: float
    seq: int
    kind: str = field(compare=False)
    payload: Any = field(compare=False, default=None)


class Scheduler(Protocol):
    def start(self, engine: "Engine") -> None: ...

    def on_event(self, engine: "Engine", event: Event) -> None: ...

    def on_result(self, engine: "Engine", job: ClientJob, result: ClientResult) -> None: ...


class Callback(Protocol):
    def on_round(self, engine: "Engine", record: dict[str, Any]) -> None: ...

    def on_eval(self, engine: "Engine", record: dict[str, Any]) -> None: ...

    def on_end(self, engine: "Engine", summary: dict[str, Any]) -> None: ...


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
        eval_every: int = 1,
        callbacks: Sequence[Callback] = (),
    ):
        self.strategy = strategy
        self.algorithm = algorithm
        self.client_config = dict(client_config)
        self.population = population
        self.executor = executor
        self.evaluator = evaluator
        self.seed = seed
        self.eval_every = eval_every
        self.callbacks = list(callbacks)
        self.state = strategy.init(params, population.info())
        self.client_states = ClientStateStore()
        self.now = 0.0
        self._queue: list[Event] = []
        self._seq = itertools.count()
        self._job_ids = itertools.count()
        self._uncomputed: dict[int, ClientJob] = {}
        self._results: dict[int, ClientResult] = {}
        self._cancelled: set[int] = set()
        self._stopped = False
        self._since_eval: list[ClientResult] = []
        self._last_eval_version = -1
        self._last_participants = 0
        self._start_wall = 0.0
        self.dropouts = 0
        self.history: list[dict[str, Any]] = []

    # ------------------------------------------------------------------ scheduling

    def schedule(self, delay: float, kind: str, payload: Any = None) -> None:
        heapq.heappush(self._queue, Event(self.now + delay, next(self._seq), kind, payload))

    def dispatch(self, client_ids: np.ndarray) -> list[ClientJob]:
        """Fix the inputs of one job per client (on the current model) and schedule their finishes."""
        client_ids = np.asarray(client_ids, dtype=np.int64)
        jobs, steps = [], []
        broadcast = getattr(self.strategy, "broadcast", _no_broadcast)(self.state)  # algos: per-version payload (SCAFFOLD's c)
        for cid in client_ids.tolist():
            config = self.client_config | self.strategy.configure(self.state, cid, self.now)
            job_id = next(self._job_ids)
            job = ClientJob(
                job_id=job_id,
                client_id=cid,
                version=self.state.version,
                params=self.state.params,
                config=config,
                seed=derive_seed(self.seed, "client-train", cid, self.state.version, job_id),
                state=self.client_states.get(cid),
                broadcast=broadcast,
            )
            jobs.append(job)
            steps.append(self.algorithm.num_steps(config, int(self.population.num_samples[cid])))
        durations = self.population.durations(client_ids, np.asarray(steps)) if jobs else []
        for job, duration in zip(jobs, durations):
            self._uncomputed[job.job_id] = job
            self.schedule(float(duration), "finish", (job, float(duration)))
        return jobs

    def cancel(self, jobs: Sequence[ClientJob]) -> None:
        """Forget jobs whose results are no longer wanted (e.g. stragglers past a deadline)."""
        for job in jobs:
            self._cancelled.add(job.job_id)
            self._uncomputed.pop(job.job_id, None)
            self._results.pop(job.job_id, None)

    def stop(self) -> None:
        self._stopped = True

    # ------------------------------------------------------------------ the loop

    def run(self, scheduler: Scheduler) -> dict[str, Any]:
        self._start_wall = time.perf_counter()
        scheduler.start(self)
        while self._queue and not self._stopped:
            event = heapq.heappop(self._queue)
            self.now = event.time
            if event.kind != "finish":
                scheduler.on_event(self, event)
                continue
            job, duration = event.payload
            if job.job_id in self._cancelled:
                self._cancelled.discard(job.job_id)
                continue
            if job.job_id not in self._results:
                self._compute_all_pending()
            result = self._results.pop(job.job_id)
            result.duration = duration
            result.staleness = self.state.version - job.version
            if not result.ok:
                self.dropouts += 1
                log.warning("client %d dropped at version %d: %s", job.client_id, job.version, result.error)
            scheduler.on_result(self, job, result)
        if self._last_eval_version != self.state.version:
            self.evaluate()
        summary = self.summary()
        for cb in self.callbacks:
            cb.on_end(self, summary)
        return summary

    def _compute_all_pending(self) -> None:
        jobs = sorted(self._uncomputed.values(), key=lambda j: j.job_id)
        self._uncomputed.clear()
        results = self.executor.run(jobs)
        if len(results) != len(jobs):
            raise RuntimeError(f"executor returned {len(results)} results for {len(jobs)} jobs")
        for job, result in zip(jobs, results):
            self._results[job.job_id] = result

    # ------------------------------------------------------------------ server side

    def aggregate(self, results: Sequence[ClientResult], dropped: int = 0) -> None:
        """Hand successful results to the strategy; store new client states; record the round."""
        ok = [r for r in results if r.ok]
        if dropped:
            self.dropouts += dropped
            log.info("version %d: %d straggler(s) missed the deadline and were dropped", self.state.version, dropped)
        self.state = self.strategy.aggregate(self.state, ok, self.now)
        for r in ok:
            if r.state is not None:
                self.client_states.put(r.client_id, r.state)
        self._since_eval.extend(ok)
        self._last_participants = len(ok)
        record = {
            "round": self.state.version,
            "virtual_time": self.now,
            "participants": len(ok),
            "dropouts": len(results) - len(ok) + dropped,
            "train_loss": _weighted_train_loss(ok),
        }
        for cb in self.callbacks:
            cb.on_round(self, record)
        if self.state.version % self.eval_every == 0:
            self.evaluate()

    def evaluate(self) -> dict[str, Any]:
        metrics = self.evaluator.evaluate(self.state.params)
        record = {
            "round": self.state.version,
            "virtual_time": self.now,
            "wall_time": time.perf_counter() - self._start_wall,
            "train_loss": _weighted_train_loss(self._since_eval),
            **metrics,
            "participants": self._last_participants,
            "updates": len(self._since_eval),
            "dropouts": self.dropouts,
        }
        self._since_eval = []
        self._last_eval_version = self.state.version
        self.history.append(record)
        for cb in self.callbacks:
            cb.on_eval(self, record)
        return record

    def summary(self) -> dict[str, Any]:
        last = self.history[-1] if self.history else {}
        accuracies = [h["test_accuracy"] for h in self.history if "test_accuracy" in h]
        return {
            "rounds": self.state.version,
            "virtual_time": self.now,
            "wall_time": time.perf_counter() - self._start_wall,
            "final": last,
            "best_test_accuracy": max(accuracies) if accuracies else None,
            "dropouts": self.dropouts,
        }


def _no_broadcast(state: Any) -> None:  # algos: strategies without a server -> client payload
    return None


def _weighted_train_loss(results: Sequence[ClientResult]) -> float | None:
    pairs = [(r.metrics["train_loss"], r.num_samples) for r in results if "train_loss" in r.metrics]
    total = sum(n for _, n in pairs)
    if not pairs or total == 0:
        return None
    return sum(loss * n for loss, n in pairs) / total
