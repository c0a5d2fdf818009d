"""Stop conditions: a run that cannot give a meaningful result stops, and says why.

:class:`RunGuard` is an engine callback plus a thin observer of the executor's results. It
stops the engine with a status that ends up in ``summary.json``:

- ``failed``: every job of a server update failed (no client trained), or more than
  ``stop.max_dropout_fraction`` of all jobs so far failed (checked once at least
  ``MIN_JOBS_FOR_FRACTION`` jobs ran, and at the end of the run). Stragglers cut by a round
  deadline are not failures. The first failure's traceback is kept for the run's log.
- ``diverged``: the global model is not finite after an update (the engine then skips the
  evaluation, so no accuracy is ever computed from NaN weights), or a test loss is not
  finite or exceeds ``stop.divergence_factor`` x max(initial test loss, ln C): the initial
  model's loss, floored at ln C, the cross-entropy of a uniform guess over C classes (so a
  model that starts out unusually good does not trip the bound by ordinary noise).

Programming errors in client code are not failures counted here: the worker re-raises them
and the run stops with status ``failed`` at once (see :mod:`fedsim.executors.worker`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from fedsim.checkpoint import checkpointable
from fedsim.params import all_finite
from fedsim.types import ClientJob, ClientResult

__all__ = ["RunGuard", "Failure", "MIN_JOBS_FOR_FRACTION"]

MIN_JOBS_FOR_FRACTION = 20  # a fraction over fewer jobs is noise (1 of 3 clients failing is not a trend)


@checkpointable
@dataclass(frozen=True)
class Failure:
    client_id: int
    version: int
    error: str
    traceback: str | None


class RunGuard:
    def __init__(
        self,
        max_dropout_fraction: float = 0.5,
        divergence_factor: float | None = 10.0,
        num_classes: int = 2,
        initial_test_loss: float | None = None,
    ):
        self.max_dropout_fraction = max_dropout_fraction
        self.divergence_factor = divergence_factor
        chance = math.log(num_classes) if num_classes > 1 else 0.0
        reference = (
            max(initial_test_loss, chance)
            if initial_test_loss is not None and math.isfinite(initial_test_loss)
            else chance
        )
        self.loss_bound = divergence_factor * reference if divergence_factor is not None and reference > 0 else math.inf
        self.jobs = 0  # jobs computed
        self.failed = 0  # ... that came back with an error
        self.failed_since_update = 0
        self.first_failure: Failure | None = None
        self.reason: str | None = None  # one line: why the run stopped early
        self.stopped_at: int | None = None  # model version at the stop
        self.signal: str | None = None  # SIGINT / SIGTERM that interrupted the run, if any

    # ------------------------------------------------------------------ results

    def watch(self, executor: Any) -> WatchedExecutor:
        """``executor`` whose results this guard counts (every result passes through unchanged)."""
        return WatchedExecutor(executor, self)

    def observe(self, results: Sequence[ClientResult]) -> None:
        for r in results:
            self.jobs += 1
            if not r.ok:
                self.failed += 1
                self.failed_since_update += 1
                if self.first_failure is None:
                    self.first_failure = Failure(r.client_id, r.base_version, str(r.error), r.traceback)

    # ------------------------------------------------------------------ engine callbacks

    def on_round(self, engine: Any, record: dict[str, Any]) -> None:
        failed, self.failed_since_update = self.failed_since_update, 0
        version = record["round"]
        if record["participants"] == 0 and failed > 0:
            self._stop(
                engine,
                "failed",
                version,
                f"every job of update {version} failed ({failed} of {failed}); "
                f"first failure: {self._first_failure_line()}",
            )
        elif not all_finite(engine.state.params):
            self._stop(
                engine, "diverged", version, f"the global model is not finite (NaN or inf) after update {version}"
            )
        elif self.jobs >= MIN_JOBS_FOR_FRACTION and self._too_many_failures():
            self._stop(engine, "failed", version, self._fraction_reason())

    def on_eval(self, engine: Any, record: dict[str, Any]) -> None:
        loss = record.get("test_loss")
        if loss is None or self.divergence_factor is None:
            return
        version = record["round"]
        if not math.isfinite(loss):
            self._stop(engine, "diverged", version, f"the test loss is not finite at update {version}")
            return
        if loss > self.loss_bound:
            self._stop(
                engine,
                "diverged",
                version,
                f"the test loss {loss:.4g} at update {version} exceeds {self.loss_bound:.4g} "
                f"(stop.divergence_factor {self.divergence_factor:g} x max(initial test loss, ln C))",
            )

    def on_end(self, engine: Any, summary: dict[str, Any]) -> None:
        if engine.status == "completed" and self._too_many_failures():
            engine.status = "failed"  # the run went to its end, but its result rests on too few clients
            self.reason, self.stopped_at = self._fraction_reason(), engine.state.version
        summary["status"] = engine.status
        summary["jobs"] = self.jobs
        summary["failed_jobs"] = self.failed
        if self.reason is not None:
            summary["stopped_at_round"] = self.stopped_at
            summary["reason"] = self.reason
        if self.first_failure is not None:
            summary["first_failure"] = self._first_failure_line()
        if self.signal is not None:
            summary["signal"] = self.signal

    # ------------------------------------------------------------------ helpers

    def _too_many_failures(self) -> bool:
        return self.failed > self.max_dropout_fraction * self.jobs

    def _fraction_reason(self) -> str:
        return (
            f"{self.failed} of {self.jobs} jobs failed, more than stop.max_dropout_fraction="
            f"{self.max_dropout_fraction:g}; first failure: {self._first_failure_line()}"
        )

    def stop(self, engine: Any, status: str, reason: str) -> None:
        """Stop ``engine`` now with ``status`` (e.g. interrupted by a signal), keeping ``reason`` for the summary."""
        self._stop(engine, status, engine.state.version, reason)

    def _stop(self, engine: Any, status: str, version: int, reason: str) -> None:
        if engine.status == "running":
            self.reason, self.stopped_at = reason, version
            engine.stop(status)

    def _first_failure_line(self) -> str:
        f = self.first_failure
        if f is None:
            return "none"
        return f"client {f.client_id} at version {f.version}: {f.error.strip().splitlines()[0] if f.error.strip() else '?'}"


class WatchedExecutor:
    """Passes jobs to ``executor`` and shows every result to the guard on the way back."""

    def __init__(self, executor: Any, guard: RunGuard):
        self.executor = executor
        self.guard = guard

    def run(self, jobs: Sequence[ClientJob]) -> list[ClientResult]:
        results = self.executor.run(jobs)
        self.guard.observe(results)
        return results

    def timings(self) -> dict[str, float]:
        timings = getattr(self.executor, "timings", None)
        return timings() if timings is not None else {}

    def close(self) -> None:
        self.executor.close()
