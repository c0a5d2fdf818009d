"""Engine callbacks: everything a run measures or guards, apart from the event loop itself.

The engine calls, in list order, ``on_round(engine, record)`` after each server update,
``on_eval(engine, record)`` after each evaluation and ``on_end(engine, summary)`` once at the
end. ``on_round``/``on_eval`` return ``(stop, metrics)`` or None (the same as ``(False, {})``):
``metrics`` are merged into the record, so later callbacks (the recorder writing
metrics.jsonl) see them, and ``stop`` ends the run after this event with status "completed"
(a callback that ends it otherwise, e.g. diverged, calls ``engine.stop(status)``).
``on_end`` may add keys to the summary. A callback that also has ``after_event(engine)`` is
called after every event (checkpoints are taken there, between events).

Built in, first in every engine's list: :class:`Evaluation` (what an evaluation record holds),
:class:`History` (the evaluation records, the summary's final and best accuracy) and
:class:`TimeToAccuracy`. The divergence guard (:mod:`fedsim.guard`), the privacy accountant
(:mod:`fedsim.privacy`), the checkpointer (:mod:`fedsim.checkpoint`) and the recorder
(:mod:`fedsim.metrics`) plug in the same way.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

from fedsim.evaluation import Evaluator
from fedsim.types import ClientResult

if TYPE_CHECKING:
    from fedsim.engine import Engine

__all__ = ["Callback", "Evaluation", "History", "Outcome", "TimeToAccuracy", "notify", "weighted_train_loss"]

Outcome = tuple[bool, dict[str, Any]]  # (stop the run, metrics to merge into the record)


class Callback(Protocol):
    def on_round(self, engine: Engine, record: dict[str, Any]) -> Outcome | None: ...

    def on_eval(self, engine: Engine, record: dict[str, Any]) -> Outcome | None: ...

    def on_end(self, engine: Engine, summary: dict[str, Any]) -> None: ...


def notify(callbacks: Sequence[Any], hook: str, engine: Engine, record: dict[str, Any]) -> bool:
    """Call ``hook`` ("on_round" or "on_eval") on each callback in order, merging the metrics they
    return into ``record``; True if any asked to stop."""
    stop = False
    for callback in callbacks:
        outcome = getattr(callback, hook)(engine, record)
        if outcome is not None:
            wants_stop, metrics = outcome
            record.update(metrics)
            stop = stop or bool(wants_stop)
    return stop


def weighted_train_loss(results: Sequence[ClientResult]) -> float | None:
    """The clients' training losses weighted by their sample counts (None: none reported)."""
    pairs = [(r.metrics["train_loss"], r.num_samples) for r in results if "train_loss" in r.metrics]
    total = sum(n for _, n in pairs)
    if not pairs or total == 0:
        return None
    return float(sum(loss * n for loss, n in pairs) / total)


class Evaluation:
    """Evaluates the global model; the record also says what happened since the last evaluation
    (train loss weighted over every update since, participants of the last update, dropouts)."""

    def __init__(self, evaluator: Evaluator):
        self.evaluator = evaluator
        self.since_eval: list[ClientResult] = []
        self.last_version = -1  # model version of the last evaluation
        self.last_participants = 0

    def on_round(self, engine: Engine, record: dict[str, Any]) -> None:
        self.since_eval.extend(engine.last_results)
        self.last_participants = record["participants"]

    def on_eval(self, engine: Engine, record: dict[str, Any]) -> None:
        pass

    def on_end(self, engine: Engine, summary: dict[str, Any]) -> None:
        pass

    def record(self, engine: Engine) -> dict[str, Any]:
        """Evaluate the model now: the evaluation record, before the callbacks' metrics."""
        metrics = self.evaluator.evaluate(
            engine.state.params, engine.client_states
        )  # personal models from client state
        record = {
            "round": engine.state.version,
            "virtual_time": engine.now,
            "wall_time": engine.elapsed(),
            "train_loss": weighted_train_loss(self.since_eval),
            **metrics,
            "participants": self.last_participants,
            "updates": len(self.since_eval),
            "dropouts": engine.run_state.dropouts,
            "bytes_up": engine.run_state.bytes_up,
            "bytes_down": engine.run_state.bytes_down,
        }
        self.since_eval = []
        self.last_version = engine.state.version
        return record


class History:
    """The evaluation records, in order (``engine.history``); the summary's final and best accuracy."""

    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []

    def on_round(self, engine: Engine, record: dict[str, Any]) -> None:
        pass

    def on_eval(self, engine: Engine, record: dict[str, Any]) -> None:
        self.records.append(record)  # the same dict: metrics later callbacks return show up here too

    def on_end(self, engine: Engine, summary: dict[str, Any]) -> None:
        pass

    def summary(self) -> dict[str, Any]:
        accuracies = [h["test_accuracy"] for h in self.records if "test_accuracy" in h]
        return {
            "final": self.records[-1] if self.records else {},
            "best_test_accuracy": max(accuracies) if accuracies else None,
        }


class TimeToAccuracy:
    """The first evaluation at or above ``target`` test accuracy: when (virtual time, updates, wall time)."""

    def __init__(self, target: float | None):
        self.target = target
        self.reached: dict[str, Any] | None = None

    def on_round(self, engine: Engine, record: dict[str, Any]) -> None:
        pass

    def on_eval(self, engine: Engine, record: dict[str, Any]) -> None:
        accuracy = record.get("test_accuracy")
        if self.target is not None and self.reached is None and accuracy is not None and accuracy >= self.target:
            self.reached = {
                "target": self.target,
                "virtual_time": engine.now,
                "server_updates": engine.state.version,
                "wall_time": record["wall_time"],
            }

    def on_end(self, engine: Engine, summary: dict[str, Any]) -> None:
        pass

    def summary(self) -> dict[str, Any] | None:
        if self.target is None:
            return None
        return self.reached or {"target": self.target, "virtual_time": None, "server_updates": None}
