"""Checkpoints: a run's whole state in one checksummed file of plain data.

A checkpoint holds the engine's state (clock, event queue with the jobs in flight and their
computed results, busy clients, dispatch counts, counters, evaluation history), the
strategy's ``ServerState``, the client state store, the scheduler's and the run guard's
state, how many lines of ``metrics.jsonl`` / ``rounds.jsonl`` were written when it was taken
(and their sha256), and a fingerprint of the run's config and data (``fedsim.run`` checks
both before resuming). Randomness is counter-based (seeds derive from the experiment seed
and counters that are saved), so there is no RNG state to save.

Objects become plain containers and tensors (:func:`encode`). Only classes registered for
checkpointing are written and rebuilt; a file never names code to run. Register a state
class with one decorator line::

    from fedsim.checkpoint import checkpointable

    @checkpointable
    @dataclass(frozen=True)
    class MyAggregatorState:
        sums: torch.Tensor
        count: int

A dataclass is stored field by field and rebuilt by calling the class with exactly its
fields; a NamedTuple by its values. Any other class must define ``state_dict()`` (plain
data) and a classmethod ``from_state_dict(state, **context)`` that builds an instance from
that data alone, without touching files (``context`` holds run settings the caller passes
to :func:`decode`, e.g. ``spill_dir`` from the run's config). A class is registered under
``"module:QualName"`` (``@checkpointable(name="...")`` keeps an old name readable after a
move). :func:`decode` refuses any name not in the table, a registered class given other
fields than its own, and anything but plain data, with a :class:`CheckpointError`.

File format: one header line ``fedsim-checkpoint <format> <sha256 of the payload>\\n``, then
the payload, a ``torch.save`` of the state. The digest is checked before the payload is read
(a truncated, bit-flipped or foreign file is refused; the payload is then read with
``torch.load(weights_only=True)``). Saving is atomic: write ``checkpoint.pt.tmp``, fsync,
``os.replace`` onto ``checkpoint.pt``, so a kill during a save leaves the previous
checkpoint as it was.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import io
import logging
import math
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch

__all__ = [
    "encode",
    "decode",
    "checkpointable",
    "registered_classes",
    "save_checkpoint",
    "load_checkpoint",
    "Checkpointer",
    "CHECKPOINT_NAME",
    "CheckpointError",
    "FORMAT_VERSION",
]

log = logging.getLogger("fedsim")

CHECKPOINT_NAME = "checkpoint.pt"
FORMAT_VERSION = 2  # 1: a bare torch.save (no checksum, no fingerprint), no longer read
MAGIC = b"fedsim-checkpoint"
_HEADER_LEN = len(MAGIC) + 1 + 8 + 1 + 64 + 1  # magic, space, 8-digit format, space, sha256 hex, newline

T = TypeVar("T", bound=type)

_CLASSES: dict[str, type] = {}  # registered name -> class
_NAMES: dict[type, str] = {}  # class -> registered name
_DTYPES = {str(d).removeprefix("torch."): d for d in vars(torch).values() if isinstance(d, torch.dtype)}


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not fit the run (one line)."""


# ----------------------------------------------------------------------------- the class table


def _kind(cls: type) -> str:
    if issubclass(cls, tuple) and hasattr(cls, "_fields"):
        return "values"  # NamedTuple
    if dataclasses.is_dataclass(cls):
        return "fields"
    return "state"


def checkpointable(cls: T | None = None, *, name: str | None = None) -> T | Callable[[T], T]:
    """Class decorator: checkpoints may hold instances of this class (see the module docstring)."""

    def register(cls: T) -> T:
        key = name or f"{cls.__module__}:{cls.__qualname__}"
        kind = _kind(cls)
        if kind == "fields" and not all(f.init for f in dataclasses.fields(cls)):
            raise TypeError(
                f"@checkpointable {key}: a dataclass is rebuilt from its fields; every field needs init=True"
            )
        if kind == "state" and not (
            callable(getattr(cls, "state_dict", None)) and callable(getattr(cls, "from_state_dict", None))
        ):
            raise TypeError(
                f"@checkpointable {key}: not a dataclass or NamedTuple, so it needs state_dict() and "
                "a classmethod from_state_dict(state, **context)"
            )
        if _CLASSES.get(key, cls) is not cls:
            raise ValueError(f"@checkpointable: the name {key} is already taken by {_CLASSES[key]!r}")
        _CLASSES[key] = cls
        _NAMES[cls] = key
        return cls

    return register(cls) if cls is not None else register


def registered_classes() -> dict[str, type]:
    """The checkpoint class table: name -> class."""
    return dict(_CLASSES)


# ----------------------------------------------------------------------------- encode / decode


def encode(value: Any) -> Any:
    """``value`` as plain containers, numbers, strings and tensors (raises TypeError on anything else)."""
    if value is None or isinstance(value, (bool, int, float, str, torch.Tensor)):
        return value
    if isinstance(value, torch.dtype):
        return {"__dtype__": str(value).removeprefix("torch.")}
    cls = type(value)
    if cls in _NAMES:
        kind = _kind(cls)
        if kind == "values":
            return {"__object__": _NAMES[cls], "values": [encode(v) for v in value]}
        if kind == "fields":
            return {
                "__object__": _NAMES[cls],
                "attrs": {f.name: encode(getattr(value, f.name)) for f in dataclasses.fields(value)},
            }
        return {"__object__": _NAMES[cls], "state": encode(value.state_dict())}
    if isinstance(value, np.ndarray):
        if value.dtype == object:
            raise TypeError("cannot checkpoint a numpy array of Python objects")
        return {"__ndarray__": torch.from_numpy(np.ascontiguousarray(value).copy())}
    if isinstance(value, np.generic):
        return {"__npscalar__": torch.from_numpy(np.asarray(value).copy())}
    if isinstance(value, dict):
        return {"__dict__": [[encode(k), encode(v)] for k, v in value.items()]}
    if isinstance(value, list):
        return [encode(v) for v in value]
    if isinstance(value, tuple) and not hasattr(value, "_fields"):
        return {"__tuple__": [encode(v) for v in value]}
    if isinstance(value, (set, frozenset)):
        return {"__set__": [encode(v) for v in sorted(value)]}
    raise TypeError(
        f"cannot checkpoint a {cls.__module__}.{cls.__qualname__} "
        "(register its class with @fedsim.checkpoint.checkpointable)"
    )


def decode(value: Any, where: str = "checkpoint", **context: Any) -> Any:
    """Inverse of :func:`encode`; ``context`` goes to registered classes' ``from_state_dict``.

    Raises :class:`CheckpointError` (one line, naming the entry) on anything that is not what
    :func:`encode` writes: an unregistered class, a registered one given other fields, or
    values that are not plain data.
    """
    try:
        return _decode(value, where, context)
    except RecursionError:
        raise CheckpointError(f"{where}: nested too deeply") from None


_SCALARS = (type(None), bool, int, float, str)


def _decode(value: Any, where: str, context: Mapping[str, Any]) -> Any:
    if type(value) in _SCALARS or type(value) is torch.Tensor or type(value) is torch.nn.Parameter:
        return value
    if type(value) is list:
        return [_decode(v, f"{where}[{i}]", context) for i, v in enumerate(value)]
    if type(value) is not dict or len(value) not in (1, 2):
        raise CheckpointError(f"{where}: unexpected {type(value).__name__} (not plain checkpoint data)")
    keys = set(value)
    if keys == {"__dict__"}:
        pairs = _list_of(value["__dict__"], where)
        if not all(type(p) is list and len(p) == 2 for p in pairs):
            raise CheckpointError(f"{where}: a mapping entry is not a [key, value] pair")
        out = {}
        for k, v in pairs:
            key = _decode(k, f"{where}.<key>", context)
            try:
                out[key] = _decode(v, f"{where}.{key}", context)
            except TypeError:  # an unhashable key
                raise CheckpointError(f"{where}: a mapping key of type {type(key).__name__}") from None
        return out
    if keys in ({"__ndarray__"}, {"__npscalar__"}):
        tensor = value.get("__ndarray__", value.get("__npscalar__"))
        if type(tensor) is not torch.Tensor or ("__npscalar__" in keys and tensor.dim() != 0):
            raise CheckpointError(f"{where}: a numpy entry that is not a tensor")
        array = tensor.numpy()
        return array if "__ndarray__" in keys else array[()]
    if keys == {"__dtype__"}:
        dtype = _DTYPES.get(value["__dtype__"]) if type(value["__dtype__"]) is str else None
        if dtype is None:
            raise CheckpointError(f"{where}: unknown dtype {value['__dtype__']!r}")
        return dtype
    if keys == {"__tuple__"}:
        return tuple(_decode(v, f"{where}[{i}]", context) for i, v in enumerate(_list_of(value["__tuple__"], where)))
    if keys == {"__set__"}:
        items = [_decode(v, f"{where}[{i}]", context) for i, v in enumerate(_list_of(value["__set__"], where))]
        try:
            return set(items)
        except TypeError:
            raise CheckpointError(f"{where}: a set of unhashable items") from None
    if "__object__" in keys and len(keys) == 2:
        return _decode_object(value, where, context)
    raise CheckpointError(f"{where}: unknown entry with keys {sorted(map(str, keys))[:4]}")


def _list_of(value: Any, where: str) -> list:
    if type(value) is not list:
        raise CheckpointError(f"{where}: expected a list, got {type(value).__name__}")
    return value


def _decode_object(value: dict, where: str, context: Mapping[str, Any]) -> Any:
    name = value["__object__"]
    cls = _CLASSES.get(name) if type(name) is str else None
    if cls is None:
        raise CheckpointError(
            f"{where}: class {str(name)[:100]!r} is not registered for checkpoints "
            "(only plain data and @checkpointable classes are read)"
        )
    kind = _kind(cls)
    (payload_key,) = set(value) - {"__object__"}
    expected = {"values": "values", "fields": "attrs", "state": "state"}[kind]
    if payload_key != expected:
        raise CheckpointError(f"{where}: {name} is stored by '{expected}', the file gives '{payload_key}'")
    payload = value[payload_key]
    try:
        if kind == "values":
            items = _list_of(payload, where)
            if len(items) != len(cls._fields):
                raise CheckpointError(f"{where}: {name} has {len(cls._fields)} fields, the file gives {len(items)}")
            return cls(*[_decode(v, f"{where}.{f}", context) for f, v in zip(cls._fields, items)])
        if kind == "fields":
            if type(payload) is not dict or not all(type(k) is str for k in payload):
                raise CheckpointError(f"{where}: {name} fields are not a mapping of names")
            names = [f.name for f in dataclasses.fields(cls)]
            extra, missing = sorted(set(payload) - set(names)), [n for n in names if n not in payload]
            if extra or missing:
                raise CheckpointError(
                    f"{where}: {name} takes exactly the fields {', '.join(names)} "
                    f"(the file gives {'extra ' + ', '.join(extra[:3]) if extra else ''}"
                    f"{'; ' if extra and missing else ''}{'no ' + ', '.join(missing[:3]) if missing else ''})"
                )
            return cls(**{k: _decode(v, f"{where}.{k}", context) for k, v in payload.items()})
        return cls.from_state_dict(_decode(payload, f"{where}.state", context), **context)
    except CheckpointError:
        raise
    except (TypeError, ValueError, KeyError, AttributeError, IndexError) as exc:
        text = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{where}: cannot rebuild {name} ({text})") from None


# ----------------------------------------------------------------------------- the file


def save_checkpoint(state: dict[str, Any], path: Path) -> None:
    """Atomically replace ``path`` with ``state`` (header with checksum + torch.save payload; temp file, fsync, rename)."""
    buffer = io.BytesIO()
    torch.save({"format": FORMAT_VERSION, **state}, buffer)
    payload = buffer.getvalue()
    header = b"%s %08d %s\n" % (MAGIC, FORMAT_VERSION, hashlib.sha256(payload).hexdigest().encode())
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(header)
        f.write(payload)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """The state a checkpoint file holds, still encoded (see :func:`decode`); CheckpointError names the file."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(
            f"{path}: no checkpoint (was the run started with --checkpoint-every, or stopped by SIGINT/SIGTERM?)"
        ) from None
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read the checkpoint ({exc.strerror or exc})") from None
    if not data:
        raise CheckpointError(f"{path}: empty file, not a fedsim checkpoint")
    header, payload = data[:_HEADER_LEN], data[_HEADER_LEN:]
    if not header.startswith(MAGIC + b" "):
        old = data.startswith(b"PK")  # format 1 was a bare torch.save (a zip file)
        raise CheckpointError(
            f"{path}: "
            + (
                "written by an older fedsim without a checksum; it cannot be resumed, start the run again"
                if old
                else "not a fedsim checkpoint"
            )
        )
    fields = header[len(MAGIC) + 1 :].split(b" ")
    if len(header) < _HEADER_LEN or len(fields) != 2 or not fields[0].isdigit() or not header.endswith(b"\n"):
        raise CheckpointError(f"{path}: truncated or damaged checkpoint header")
    if int(fields[0]) != FORMAT_VERSION:
        raise CheckpointError(f"{path}: checkpoint format {int(fields[0])}, this fedsim reads format {FORMAT_VERSION}")
    if not hmac.compare_digest(hashlib.sha256(payload).hexdigest().encode(), fields[1].strip()):
        raise CheckpointError(f"{path}: checksum mismatch (the file is truncated or corrupt)")
    try:
        state = torch.load(io.BytesIO(payload), weights_only=True, map_location="cpu")
    except Exception as exc:  # noqa: BLE001  (disallowed types: one line)
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()] or [type(exc).__name__]
        text = lines[0]
        marks = [i for i, line in enumerate(lines) if "WeightsUnpickler error" in line]
        if marks:  # torch's weights-only refusal: what it refused follows this marker
            rest = lines[marks[0]].split("WeightsUnpickler error:", 1)[-1].strip()
            text = "it holds more than plain data: " + (
                rest or (lines[marks[0] + 1] if marks[0] + 1 < len(lines) else "?")
            )
        raise CheckpointError(f"{path}: not a readable fedsim checkpoint ({text[:200]})") from None
    if type(state) is not dict or state.get("format") != FORMAT_VERSION:
        raise CheckpointError(f"{path}: not a fedsim checkpoint of format {FORMAT_VERSION}")
    return state


class Checkpointer:
    """Engine callback: a checkpoint every ``every`` server updates and/or every ``every_time``
    virtual seconds (time-driven modes), taken between events.

    ``on_round`` only marks one as due; the engine calls ``after_event`` once the event that
    caused the update is fully handled (the scheduler may still dispatch the next round in
    it), so a checkpoint is always a state the loop can continue from.
    """

    def __init__(
        self,
        path: Path,
        every: int | None,
        snapshot: Any,
        every_time: float | None = None,
        every_wall: float | None = None,
    ):
        self.path = Path(path)
        self.every = every
        self.every_time = every_time
        self.every_wall = every_wall  # wall seconds: the first update after this long without a save is saved
        self._last_wall = time.monotonic()
        self.snapshot = snapshot  # () -> dict: the run's state now
        self._due = False
        self._next_time: float | None = None  # next multiple of every_time; recomputed from the clock on resume
        self.saved_version: int | None = None

    def on_round(self, engine: Any, record: dict[str, Any]) -> None:
        if self.every and engine.state.version % self.every == 0:
            self._due = True
        if self.every_wall and time.monotonic() - self._last_wall >= self.every_wall:
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
        self._last_wall = time.monotonic()
        save_checkpoint(self.snapshot(), self.path)
        self.saved_version = engine.state.version
        log.debug("checkpoint at update %d -> %s", engine.state.version, self.path)

    def on_end(self, engine: Any, summary: dict[str, Any]) -> None:
        if engine.status == "interrupted":  # the loop stopped between events: a state it can go on from
            self.save(engine)
            summary["checkpoint"] = str(self.path)
            log.info("checkpoint at update %d -> %s", engine.state.version, self.path)
