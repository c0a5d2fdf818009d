"""ClientStateStore: per-client state keyed by client id.

Memory grows with the clients that have stored something, never with the population size.
Used for stateful client algorithms (state travels in ClientJob.state / ClientResult.state)
and by server-side memories (MIFA, FedVARP keep one stored update per client seen).
"""

from __future__ import annotations

from typing import Any, Iterator

import torch

__all__ = ["ClientStateStore"]


class ClientStateStore:
    def __init__(self) -> None:
        self._states: dict[int, Any] = {}

    def get(self, client_id: int, default: Any = None) -> Any:
        return self._states.get(client_id, default)

    def put(self, client_id: int, state: Any) -> None:
        self._states[client_id] = state

    def __contains__(self, client_id: object) -> bool:
        return client_id in self._states

    def __len__(self) -> int:
        return len(self._states)

    def items(self) -> Iterator[tuple[int, Any]]:
        return iter(self._states.items())

    def copy(self) -> "ClientStateStore":
        """A shallow copy (new mapping, same state objects): enough for functional updates."""
        other = ClientStateStore()
        other._states = dict(self._states)
        return other

    def nbytes(self) -> int:
        """Bytes held by tensors in the store (what this memory costs)."""
        return sum(_nbytes(s) for s in self._states.values())


def _nbytes(obj: Any) -> int:
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(_nbytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_nbytes(v) for v in obj)
    return 0
