"""FedAU: FedAvg with aggregation weights estimated online from participation intervals.

S. Wang and M. Ji, "A Lightweight Method for Tackling Unknown Participation Statistics in
Federated Averaging", arXiv 2306.03401; reference code IBM/fedau (``-weighting adaptive``).

Client n's weight is the mean of its past participation intervals, an online estimate of
1/p_n (p_n = its unknown participation probability); U = (1/N) sum_{n in S_t} omega_n delta_n.
Paper symbols: K (cutoff) -> ``cutoff`` (None = no cutoff, K -> infinity), omega_n -> weights.

Semantics follow the reference code exactly: the weight used in round t comes from intervals
completed strictly before t; a first participation has weight 1; an interval counts rounds
from the previous participation (exclusive) to this one (inclusive), the first from round 0;
K consecutive absences close an interval of length K, so a client absent exactly K rounds and
then present records K and then 1. Hence 1 <= omega_n <= K.

Deviation (equivalent, cheaper): the reference code touches every client every round; here
the absences since a client's last recorded interval are settled when it next participates,
so a round costs O(participants) and state is three numbers per client.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch

from fedsim.checkpoint import checkpointable
from fedsim.types import ClientResult, PopulationInfo
from strategies.weighting import WEIGHTINGS, weighted_sum

__all__ = ["FedAUWeighting", "FedAUState", "fedau"]


@checkpointable
@dataclass(frozen=True)
class FedAUState:
    last_close: np.ndarray  # int64[N]: round at which the client's last interval closed (-1 = before round 0)
    total: np.ndarray  # float64[N]: sum of recorded intervals
    count: np.ndarray  # int64[N]: number of recorded intervals
    num_clients: int
    like: torch.Tensor  # zero vector shaped like the model, for empty rounds


class FedAUWeighting:
    requires_rounds = True  # intervals are counted in synchronous rounds; refused by async schedulers

    def __init__(self, cutoff: int | None = None):
        if cutoff is not None and cutoff < 1:
            raise ValueError(f"strategy.cutoff must be >= 1 or null (no cutoff), got {cutoff}")
        self.cutoff = cutoff

    def init(self, params: torch.Tensor, population: PopulationInfo) -> FedAUState:
        n = population.num_clients
        return FedAUState(
            last_close=np.full(n, -1, dtype=np.int64),
            total=np.zeros(n, dtype=np.float64),
            count=np.zeros(n, dtype=np.int64),
            num_clients=n,
            like=torch.zeros_like(params),
        )

    def _settle_absences(
        self, state: FedAUState, ids: np.ndarray, round: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Totals and counts after recording cutoff intervals for absences before ``round``."""
        absent = round - 1 - state.last_close[ids]  # rounds missed since the last closed interval
        total, count = state.total[ids].copy(), state.count[ids].copy()
        if self.cutoff is not None:
            closed = absent // self.cutoff
            total += closed * self.cutoff
            count += closed
            absent = absent % self.cutoff
        return total, count, absent

    def aggregate(
        self, state: FedAUState, results: Sequence[ClientResult], round: int
    ) -> tuple[torch.Tensor, FedAUState]:
        if not results:
            return torch.zeros_like(state.like), state
        ids = np.array([r.client_id for r in results], dtype=np.int64)
        if len(np.unique(ids)) != len(ids):
            raise ValueError("FedAU expects each client at most once per round")
        total, count, absent = self._settle_absences(state, ids, round)
        omega = np.where(count > 0, total / np.maximum(count, 1), 1.0)
        u = weighted_sum(results, omega / state.num_clients, state.like)
        new_total, new_count, new_last = state.total.copy(), state.count.copy(), state.last_close.copy()
        new_total[ids] = total + absent + 1
        new_count[ids] = count + 1
        new_last[ids] = round
        return u, replace(state, last_close=new_last, total=new_total, count=new_count)

    def weights(self, state: FedAUState, round: int) -> np.ndarray:
        """Every client's weight if it participated in ``round`` (NaN-free; 1 where no interval yet)."""
        ids = np.arange(state.num_clients)
        total, count, _ = self._settle_absences(state, ids, round)
        return np.where(count > 0, total / np.maximum(count, 1), 1.0)


@WEIGHTINGS.register("fedau", "c_i = omega_i / N, omega_i = mean past participation interval (FedAU)")
def fedau(cutoff: int | None = None) -> FedAUWeighting:
    return FedAUWeighting(cutoff)
