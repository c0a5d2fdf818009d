"""FedVARP: variance-reduced aggregation with one stored update per client (SAGA-style).

Jhunjhunwala, Sharma, Nagarkatti, Joshi, "FedVARP: Tackling the Variance Due to Partial
Client Participation in Federated Learning", UAI 2022, arXiv 2207.14130; baseline
``-weighting fedvarp`` in IBM/fedau.

    U      = y_bar + (1/|S_t|) sum_{n in S_t} (delta_n - G_n)     (G_n, y_bar from before the round)
    G_n   <- delta_n  for n in S_t                                 (G_n = 0 before first seen)
    y_bar <- (1/N) sum_{n=1..N} G_n

Symbols: y_i^t -> G_n = ``MemoryState.stored[n]``, y^t -> y_bar = ``MemoryState.mean``,
N -> ``MemoryState.num_clients``; the server step x <- x + eta_g U (eta_g ->
``strategy.server_lr``) belongs to the server optimizer.

A round without participants applies U = 0 and leaves G and y_bar unchanged (reference
code). y_bar is kept as the running sum S = sum_n G_n (float64) rather than as a separate
vector: G only changes in rounds with participants, and those refresh y_bar, so
y_bar = S / N always holds.

Cost: O(|S_t| d) per round. Memory: one float32 update per client SEEN so far, N_seen x d
floats in a ClientStateStore, plus S. State is functional and shared with MIFA
(strategies/mifa.py): a new state per round, stored tensors never modified in place. Under
asynchronous schedulers a round is one server update and a client arriving twice in it
counts once, with its latest update (S_t = the distinct clients).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from fedsim.types import ClientResult, PopulationInfo
from strategies.mifa import MemoryState, init_memory, latest_per_client, store_updates
from strategies.weighting import WEIGHTINGS

__all__ = ["FedVARP", "fedvarp"]


class FedVARP:
    """U = y_bar + mean over participants of (fresh update - its stored update)."""

    def init(self, params: torch.Tensor, population: PopulationInfo) -> MemoryState:
        return init_memory(params, population)

    def aggregate(
        self, state: MemoryState, results: Sequence[ClientResult], round: int
    ) -> tuple[torch.Tensor, MemoryState]:
        if not results:
            return torch.zeros_like(state.total, dtype=state.dtype), state
        change, new_state = store_updates(state, results)  # change = sum_{n in S_t} (delta_n - G_n^old)
        u = state.total / state.num_clients + change / len(latest_per_client(results))
        return u.to(state.dtype), new_state


@WEIGHTINGS.register("fedvarp", "U = y_bar + mean_{S_t}(delta_n - G_n), G_n = stored latest updates (FedVARP)")
def fedvarp() -> FedVARP:
    return FedVARP()
