"""Schedulers decide when clients are dispatched and when the strategy aggregates.

``SyncRounds``: at each round start the population names the participants, all are
dispatched on the current model, and the strategy aggregates when the last one finishes
(round duration = slowest participant), or at ``deadline`` virtual seconds, dropping the
stragglers. Asynchronous and anarchic schedulers plug into the same engine loop.
"""

from __future__ import annotations

from fedsim.engine import Engine, Event
from fedsim.types import ClientJob, ClientResult

__all__ = ["SyncRounds"]


class SyncRounds:
    def __init__(self, rounds: int, deadline: float | None = None):
        self.rounds = rounds
        self.deadline = deadline
        self.round = 0
        self.waiting: dict[int, ClientJob] = {}
        self.results: list[ClientResult] = []

    def start(self, engine: Engine) -> None:
        engine.schedule(0.0, "round_start")

    def on_event(self, engine: Engine, event: Event) -> None:
        if event.kind == "round_start":
            self._start_round(engine)
        elif event.kind == "deadline" and event.payload == self.round and self.waiting:
            stragglers = list(self.waiting.values())
            engine.cancel(stragglers)
            self.waiting.clear()
            self._close_round(engine, dropped=len(stragglers))

    def on_result(self, engine: Engine, job: ClientJob, result: ClientResult) -> None:
        if self.waiting.pop(job.job_id, None) is None:
            return
        self.results.append(result)
        if not self.waiting:
            self._close_round(engine)

    def _start_round(self, engine: Engine) -> None:
        if self.round >= self.rounds:
            engine.stop()
            return
        jobs = engine.dispatch(engine.population.participants(self.round))
        self.waiting = {job.job_id: job for job in jobs}
        self.results = []
        if not jobs:
            self._close_round(engine)
        elif self.deadline is not None:
            engine.schedule(self.deadline, "deadline", self.round)

    def _close_round(self, engine: Engine, dropped: int = 0) -> None:
        results = sorted(self.results, key=lambda r: r.client_id)  # arrival order must not matter
        engine.aggregate(results, dropped=dropped)
        self.round += 1
        engine.schedule(0.0, "round_start")

