"""MIFA: average the latest stored update of EVERY client, fresh or stale.

Gu, Huang, Zhang, Huang, "Fast Federated Learning in the Presence of Arbitrary Device
Unavailability", NeurIPS 2021, arXiv 2106.04159; baseline ``-weighting mifa`` in IBM/fedau.

    G_n <- delta_n            for n in S_t   (G_n kept for absent clients; G_n = 0 before first seen)
    U    = (1/N) sum_{n=1..N} G_n

Symbols: G_n -> ``MemoryState.stored[n]``, N -> ``MemoryState.num_clients``; the server step
x <- x + eta_g U (eta_g -> ``strategy.server_lr``) belongs to the server optimizer.

Cost: a running sum S = sum_n G_n (float64, so that adding and removing updates over many
rounds does not drift) makes a round O(|S_t| d). Memory: one float32 update per client SEEN
so far, N_seen x d floats in a ClientStateStore (clients never seen store nothing; their
G_n = 0 is implicit), plus S.

A round without participants still applies U = (1/N) sum_n G_n, as in the paper's algorithm
and the reference code (the stored updates do not depend on who shows up).

State is functional: each round returns a new MemoryState whose store is a shallow copy of
the old one with only the participants' entries replaced; stored tensors are never modified
in place. ``MemoryState`` and ``store_updates`` are shared with FedVARP (strategies/fedvarp.py).

Under asynchronous schedulers a "round" is one server update, and a client can arrive twice
before the buffer is aggregated: its later update supersedes the earlier one (G_n is the
client's LATEST update), so each client counts once per server update.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from fedsim.checkpoint import checkpointable
from fedsim.state import ClientStateStore
from fedsim.types import ClientResult, PopulationInfo
from strategies.weighting import WEIGHTINGS

__all__ = ["MemoryState", "MIFA", "mifa", "store_updates", "latest_per_client"]


@checkpointable
@dataclass(frozen=True)
class MemoryState:
    stored: ClientStateStore  # client id -> its latest update G_n (float32, shaped like the model)
    total: torch.Tensor  # float64: S = sum_n G_n over the stored updates
    num_clients: int  # N
    dtype: torch.dtype  # dtype of the model (and of U)

    @property
    def mean(self) -> torch.Tensor:
        """(1/N) sum_n G_n in the model's dtype (FedVARP's y-bar)."""
        return (self.total / self.num_clients).to(self.dtype)


def init_memory(params: torch.Tensor, population: PopulationInfo) -> MemoryState:
    return MemoryState(
        stored=ClientStateStore(),
        total=torch.zeros_like(params, dtype=torch.float64),
        num_clients=population.num_clients,
        dtype=params.dtype,
    )


def store_updates(state: MemoryState, results: Sequence[ClientResult]) -> tuple[torch.Tensor, MemoryState]:
    """Replace G_n by delta_n for every result; returns (sum_n (delta_n - G_n^old) in float64, new state)."""
    stored = state.stored.copy()
    change = torch.zeros_like(state.total)
    for r in latest_per_client(results):
        delta = r.delta.detach().to(device=state.total.device, dtype=torch.float32, copy=True)
        old = state.stored.get(r.client_id)
        change.add_(delta)
        if old is not None:
            change.sub_(old)
        stored.put(r.client_id, delta)
    new_state = MemoryState(stored, state.total + change, state.num_clients, state.dtype)
    return change, new_state


def latest_per_client(results: Sequence[ClientResult]) -> list[ClientResult]:
    """One result per client: its last one in the sequence (arrival order)."""
    latest: dict[int, ClientResult] = {}
    for r in results:
        latest[r.client_id] = r
    return list(latest.values())


class MIFA:
    """U = (1/N) sum over all N clients of each one's latest update."""

    def init(self, params: torch.Tensor, population: PopulationInfo) -> MemoryState:
        return init_memory(params, population)

    def aggregate(
        self, state: MemoryState, results: Sequence[ClientResult], round: int
    ) -> tuple[torch.Tensor, MemoryState]:
        _, new_state = store_updates(state, results)
        return new_state.mean, new_state


@WEIGHTINGS.register("mifa", "U = (1/N) sum_n G_n, G_n = latest update of client n, stale ones kept (MIFA)")
def mifa() -> MIFA:
    return MIFA()
