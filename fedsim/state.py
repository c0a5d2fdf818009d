"""ClientStateStore: per-client state keyed by client id, spilling to disk past a memory limit.

Memory grows with the clients that have stored something, never with the population size.
Used for stateful client algorithms (state travels in ClientJob.state / ClientResult.state:
SCAFFOLD's c_i, FedDyn's and FedSpeed's h_i) and by server-side memories (MIFA, FedVARP keep
one stored update per client seen).

With ``memory_limit`` (bytes), the least recently used states move to files under
``spill_dir`` (a temporary folder by default, removed by :meth:`close` or at exit) whenever
the states held in memory exceed the limit; reading a spilled state loads it back
(``torch.save`` / ``torch.load``: bit-identical tensors) and makes it the most recent. A
store that was ``copy()``-ed shares its files with the copy and no longer deletes them.
"""

from __future__ import annotations

import atexit
import collections
import itertools
import operator
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from fedsim.checkpoint import checkpointable

__all__ = ["ClientStateStore"]


@checkpointable
class ClientStateStore:
    def __init__(self, memory_limit: int | None = None, spill_dir: str | Path | None = None) -> None:
        if memory_limit is not None and memory_limit < 0:
            raise ValueError(f"client_state.memory_limit_mb must be > 0, got {memory_limit / 2**20:g}")
        self.memory_limit = memory_limit
        self._states: collections.OrderedDict[int, Any] = collections.OrderedDict()  # in memory, LRU order
        self._files: dict[int, Path] = {}  # spilled client id -> file
        self._bytes = 0  # bytes of tensors held in memory
        self._spill_root = Path(spill_dir) if spill_dir is not None else None
        self._dir: Path | None = None
        self._counter = itertools.count()
        self._shared = False  # files shared with a copy: never delete them
        self.spilled = 0  # states written to disk so far
        self.loaded = 0  # states read back from disk so far

    # ------------------------------------------------------------------ mapping

    def get(self, client_id: int, default: Any = None) -> Any:
        if client_id in self._states:
            self._states.move_to_end(client_id)
            return self._states[client_id]
        path = self._files.get(client_id)
        if path is None:
            return default
        state = torch.load(path, weights_only=True)
        self.loaded += 1
        self._forget_file(client_id)
        self._keep(client_id, state)
        return state

    def put(self, client_id: int, state: Any) -> None:
        self._forget_file(client_id)
        old = self._states.pop(client_id, None)
        if old is not None:
            self._bytes -= _nbytes(old)
        self._keep(client_id, state)

    def __contains__(self, client_id: object) -> bool:
        return client_id in self._states or client_id in self._files

    def __len__(self) -> int:
        return len(self._states) + len(self._files)

    def items(self) -> Iterator[tuple[int, Any]]:
        """Every (client id, state), spilled ones read from disk without moving them back."""
        yield from list(self._states.items())
        for cid, path in list(self._files.items()):
            yield cid, torch.load(path, weights_only=True)

    def copy(self) -> ClientStateStore:
        """A shallow copy (new mapping, same state objects): enough for functional updates."""
        other = ClientStateStore(self.memory_limit, self._spill_root)
        other._states = collections.OrderedDict(self._states)
        other._files = dict(self._files)
        other._bytes = self._bytes
        other._dir, other._counter = self._dir, self._counter
        self._shared = other._shared = True
        return other

    def state_dict(self) -> dict[str, Any]:
        """For checkpoints: the limit and every (client id, state), spilled ones included."""
        return {"memory_limit": self.memory_limit, "states": [[cid, state] for cid, state in self.items()]}

    @classmethod
    def from_state_dict(
        cls, state: dict[str, Any], spill_dir: str | Path | None = None, **context: Any
    ) -> ClientStateStore:
        """A store holding ``state_dict()``'s states, all in memory: building it touches no file.

        ``spill_dir`` comes from the caller (the run's config), never from ``state``; the
        memory limit applies from the next ``put`` on.
        """
        if type(state) is not dict or set(state) != {"memory_limit", "states"}:
            raise ValueError(
                f"a client state store takes exactly memory_limit and states, got {sorted(map(str, state))}"
                if isinstance(state, dict)
                else "a client state store's state is not a mapping"
            )
        limit, states = state["memory_limit"], state["states"]
        if limit is not None and (type(limit) is not int or limit < 0):
            raise ValueError(f"memory_limit must be None or a non-negative int, got {limit!r}")
        if type(states) is not list or not all(type(p) is list and len(p) == 2 and _is_index(p[0]) for p in states):
            raise ValueError("states must be a list of [client id, state] pairs")
        store = cls(None, spill_dir)
        for cid, client_state in states:
            store.put(cid, client_state)  # no limit yet: nothing spills while rebuilding
        store.memory_limit = limit
        return store

    def nbytes(self) -> int:
        """Bytes held by tensors in memory (what this memory costs; spilled states cost disk only)."""
        return self._bytes

    @property
    def num_spilled(self) -> int:
        """Clients whose state is on disk right now."""
        return len(self._files)

    def close(self) -> None:
        """Remove the spill folder this store created (unless shared with a copy)."""
        if self._dir is not None and not self._shared and self._spill_root is None:
            shutil.rmtree(self._dir, ignore_errors=True)
        elif self._dir is not None and not self._shared:
            for path in self._files.values():
                path.unlink(missing_ok=True)
        self._files.clear()

    # ------------------------------------------------------------------ spilling

    def _keep(self, client_id: int, state: Any) -> None:
        self._states[client_id] = state
        self._bytes += _nbytes(state)
        if self.memory_limit is None:
            return
        while self._bytes > self.memory_limit and len(self._states) > 1:
            cid, victim = self._states.popitem(last=False)
            self._bytes -= _nbytes(victim)
            path = self._spill_folder() / f"{cid}-{next(self._counter)}.pt"
            torch.save(victim, path)
            self._files[cid] = path
            self.spilled += 1

    def _spill_folder(self) -> Path:
        if self._dir is None:
            if self._spill_root is not None:
                self._spill_root.mkdir(parents=True, exist_ok=True)
                self._dir = Path(tempfile.mkdtemp(prefix="fedsim-client-state-", dir=self._spill_root))
            else:
                self._dir = Path(tempfile.mkdtemp(prefix="fedsim-client-state-"))
            atexit.register(shutil.rmtree, self._dir, True)
        return self._dir

    def _forget_file(self, client_id: int) -> None:
        path = self._files.pop(client_id, None)
        if path is not None and not self._shared:
            path.unlink(missing_ok=True)


def _nbytes(obj: Any) -> int:
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(_nbytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_nbytes(v) for v in obj)
    return 0


def _is_index(value: Any) -> bool:
    """An integer client id (a Python or numpy int, not a bool)."""
    try:
        operator.index(value)
    except TypeError:
        return False
    return type(value) is not bool
