"""Strategy protocol and the explicit server state it threads through.

A strategy is functional in spirit (optax / FedJAX): ``init`` returns a ServerState,
``aggregate`` takes one and returns the next; nothing hides on ``self``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol

import torch

from fedsim.checkpoint import checkpointable
from fedsim.types import ClientResult, PopulationInfo

__all__ = ["ServerState", "Strategy", "Aggregator"]


@checkpointable
@dataclass(frozen=True)
class ServerState:
    params: torch.Tensor  # flat global model
    version: int = 0  # number of server updates so far (= round in sync mode)
    optimizer: Any = None  # server optimizer state (a NamedTuple of tensors, or None)
    aggregator: Any = None  # weighting / aggregator state (e.g. FedAU interval statistics)
    transforms: tuple[Any, ...] = ()  # one state per aggregate transform (e.g. adaptive clipping's clip norm)

    def replace(self, **changes: Any) -> ServerState:
        return replace(self, **changes)


class Strategy(Protocol):
    name: str

    def init(self, params: torch.Tensor, population: PopulationInfo) -> ServerState: ...

    def configure(self, state: ServerState, client_id: int, now: float) -> dict[str, Any]: ...

    def aggregate(self, state: ServerState, results: Sequence[ClientResult], now: float) -> ServerState: ...


class Aggregator(Protocol):
    """Turns client results into one pseudo-gradient U (points downhill, like the deltas)."""

    def init(self, params: torch.Tensor, population: PopulationInfo) -> Any: ...

    def aggregate(self, state: Any, results: Sequence[ClientResult], round: int) -> tuple[torch.Tensor, Any]: ...
