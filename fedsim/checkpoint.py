"""Checkpoints: a run's whole state in one file that ``torch.load(weights_only=True)`` reads.

A checkpoint holds the engine's state (clock, event queue with the jobs in flight and their
computed results, busy clients, dispatch counts, counters, evaluation history), the
strategy's ``ServerState``, the client state store, the scheduler's and the run guard's
state, and how many lines of ``metrics.jsonl`` / ``rounds.jsonl`` were written when it was
taken. Randomness is counter-based (seeds derive from the experiment seed and counters that
are saved), so there is no RNG state to save.

Objects become plain containers and tensors (:func:`encode`): a dataclass, NamedTuple or
plain object becomes ``{"__object__": "module:Class", ...}`` naming its class, and only
classes defined in fedsim's own packages are rebuilt on load (:func:`decode`). Tensors
shared between jobs (the model of one version) share storage, so ``torch.save`` writes
each version's parameters once.

Saving is atomic: write ``checkpoint.pt.tmp``, fsync, ``os.replace`` onto ``checkpoint.pt``,
so a kill during a save leaves the previous checkpoint as it was.
"""

from __future__ import annotations

import math

import importlib
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["encode", "decode", "save_checkpoint", "load_checkpoint", "Checkpointer", "CHECKPOINT_NAME",
           "CheckpointError"]

log = logging.getLogger("fedsim")

CHECKPOINT_NAME = "checkpoint.pt"
FORMAT_VERSION = 1
_TRUSTED_PACKAGES = ("fedsim", "strategies", "clients")


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not fit the run (one line, names the file)."""


def _class_name(obj: Any) -> str:
    cls = type(obj)
    return f"{cls.__module__}:{cls.__qualname__}"


def _trusted_class(name: str) -> type:
    module_name, _, qualname = name.partition(":")
    if module_name.split(".")[0] not in _TRUSTED_PACKAGES:
        raise CheckpointError(f"class {name} is not one of fedsim's own")
    target: Any = importlib.import_module(module_name)
    for part in qualname.split("."):
        target = getattr(target, part)
    if not isinstance(target, type):
        raise CheckpointError(f"{name} is not a class")
    return target


def _is_trusted(value: Any) -> bool:
    return type(value).__module__.split(".")[0] in _TRUSTED_PACKAGES


def encode(value: Any) -> Any:
    """``value`` as plain containers, numbers, strings and tensors (raises TypeError on anything else)."""
    if value is None or isinstance(value, (bool, int, float, str, torch.Tensor)):
        return value
    if isinstance(value, torch.dtype):
        return {"__dtype__": str(value).removeprefix("torch.")}
    if hasattr(value, "state_dict") and hasattr(type(value), "from_state_dict") and _is_trusted(value):
        return {"__object__": _class_name(value), "state": encode(value.state_dict())}  # e.g. ClientStateStore
    if isinstance(value, np.ndarray):
        return {"__ndarray__": torch.from_numpy(np.ascontiguousarray(value).copy())}
    if isinstance(value, np.generic):
        return {"__npscalar__": torch.from_numpy(np.asarray(value).copy())}
    if isinstance(value, dict):
        return {"__dict__": [[encode(k), encode(v)] for k, v in value.items()]}
    if isinstance(value, list):
        return [encode(v) for v in value]
    if isinstance(value, tuple) and hasattr(value, "_fields"):  # NamedTuple
        return {"__object__": _class_name(value), "values": [encode(v) for v in value]}
    if isinstance(value, tuple):
        return {"__tuple__": [encode(v) for v in value]}
    if isinstance(value, (set, frozenset)):
        return {"__set__": [encode(v) for v in sorted(value)]}
    if _is_trusted(value) and hasattr(value, "__dict__"):
        return {"__object__": _class_name(value), "attrs": {k: encode(v) for k, v in vars(value).items()}}
    raise TypeError(f"cannot checkpoint a {type(value).__module__}.{type(value).__qualname__}")


def decode(value: Any) -> Any:
    """Inverse of :func:`encode`."""
    if isinstance(value, list):
        return [decode(v) for v in value]
    if not isinstance(value, dict):
        return value
    if "__dict__" in value:
        return {decode(k): decode(v) for k, v in value["__dict__"]}
    if "__ndarray__" in value:
        return value["__ndarray__"].numpy()
    if "__npscalar__" in value:
        return value["__npscalar__"].numpy()[()]
    if "__dtype__" in value:
        dtype = getattr(torch, value["__dtype__"], None)
        if not isinstance(dtype, torch.dtype):
            raise CheckpointError(f"unknown dtype {value['__dtype__']!r}")
        return dtype
    if "__tuple__" in value:
        return tuple(decode(v) for v in value["__tuple__"])
    if "__set__" in value:
        return {decode(v) for v in value["__set__"]}
    if "__object__" in value:
        cls = _trusted_class(value["__object__"])
        if "state" in value:
            return cls.from_state_dict(decode(value["state"]))
        if "values" in value:
            return cls(*[decode(v) for v in value["values"]])
        obj = cls.__new__(cls)
        obj.__dict__.update({k: decode(v) for k, v in value["attrs"].items()})  # (frozen dataclasses too)
        return obj
    raise CheckpointError(f"unknown entry with keys {sorted(value)[:4]}")


def save_checkpoint(state: dict[str, Any], path: Path) -> None:
    """Atomically replace ``path`` with ``state`` (temp file, fsync, rename)."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        torch.save({"format": FORMAT_VERSION, **state}, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load_checkpoint(path: Path) -> dict[str, Any]:
    try:
        state = torch.load(path, weights_only=True, map_location="cpu")
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no checkpoint (was the run started with --checkpoint-every, "
                              "or stopped by SIGINT/SIGTERM?)") from None
    except Exception as exc:  # noqa: BLE001  (truncated, not a torch file, disallowed types: one line)
        raise CheckpointError(f"{path}: not a readable fedsim checkpoint ({str(exc).splitlines()[0][:200]})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT_VERSION:
        raise CheckpointError(f"{path}: not a fedsim checkpoint of format {FORMAT_VERSION}")
    return state


class Checkpointer:
    """Engine callback: a checkpoint every ``every`` server updates and/or every ``every_time``
    virtual seconds (time-driven modes), taken between events.

    ``on_round`` only marks one as due; the engine calls ``after_event`` once the event that
    caused the update is fully handled (the scheduler may still dispatch the next round in
    it), so a checkpoint is always a state the loop can continue from.
    """

    def __init__(self, path: Path, every: int | None, snapshot: Any, every_time: float | None = None):
        self.path = Path(path)
        self.every = every
        self.every_time = every_time
        self.snapshot = snapshot  # () -> dict: the run's state now
        self._due = False
        self._next_time: float | None = None  # next multiple of every_time; recomputed from the clock on resume
        self.saved_version: int | None = None

    def on_round(self, engine: Any, record: dict[str, Any]) -> None:
        if self.every and engine.state.version % self.every == 0:
            self._due = True

    def on_eval(self, engine: Any, record: dict[str, Any]) -> None:
        pass

    def after_event(self, engine: Any) -> None:
        if self.every_time:
            if self._next_time is None:
                self._next_time = (math.floor(engine.now / self.every_time) + 1) * self.every_time
            if engine.now >= self._next_time:
                self._due = True
                self._next_time = (math.floor(engine.now / self.every_time) + 1) * self.every_time
        if self._due and not engine.run_state.stopped:
            self.save(engine)

    def save(self, engine: Any) -> None:
        self._due = False
        save_checkpoint(self.snapshot(), self.path)
        self.saved_version = engine.state.version
        log.debug("checkpoint at update %d -> %s", engine.state.version, self.path)

    def on_end(self, engine: Any, summary: dict[str, Any]) -> None:
        if engine.status == "interrupted":  # the loop stopped between events: a state it can go on from
            self.save(engine)
            summary["checkpoint"] = str(self.path)
            log.info("checkpoint at update %d -> %s", engine.state.version, self.path)
