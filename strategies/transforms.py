"""Aggregate transforms: the update pipeline's stage between the aggregator and the server optimizer.

The server side of fedsim's update pipeline is, for every strategy (strategies/fedopt.py):

    arrival transforms (staleness factor, FedAsync rebase) -> aggregator (a weighting)
      -> aggregate transforms (this module's protocol) -> server optimizer

An aggregate transform is an optax-style pair over explicit state, kept in
``ServerState.transforms`` (so checkpoints carry it):

    state = transform.init(params, population)
    aggregate, state, metrics = transform.apply(aggregate, state, ctx)

``ctx`` (:class:`ServerContext`) holds the update's results and server version, and ``info``:
what earlier transforms of the same update reported (e.g. the clip norm that clipped this
update, which the Gaussian noise that follows must be calibrated to). A transform may also
give clients per-job instructions with ``client_config(state) -> dict``, which
``Strategy.configure`` merges into every job's config (e.g. adaptive clipping's current clip norm).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from fedsim.types import ClientResult, PopulationInfo

__all__ = ["AggregateTransform", "ServerContext", "describe_server"]


@dataclass
class ServerContext:
    results: Sequence[ClientResult]  # the update's accepted results (after arrival transforms)
    version: int  # server version before this update (one release per update)
    info: dict[str, Any] = field(default_factory=dict)  # what earlier transforms of this update reported


class AggregateTransform(Protocol):
    name: str

    def init(self, params: torch.Tensor, population: PopulationInfo) -> Any: ...

    def apply(
        self, aggregate: torch.Tensor, state: Any, ctx: ServerContext
    ) -> tuple[torch.Tensor, Any, dict[str, Any]]: ...


def describe_server(transform: Any) -> str:
    """``name(option=value, ...)`` from a transform's ``options`` dict (for ``fedsim show``)."""
    options = getattr(transform, "options", {})
    return f"{transform.name}({', '.join(f'{k}={v}' for k, v in options.items())})"
