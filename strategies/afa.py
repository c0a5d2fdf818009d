"""AFA-CD and AFA-CS: anarchic federated averaging with two-sided learning rates.

H. Yang, X. Zhang, P. Khanduri, J. Liu, "Anarchic Federated Learning", ICML 2022,
arXiv 2108.09875 (AFedAvg-TSLR-CD / -CS). No reference code exists; the details below are
our reconstruction from the paper's abstract and are documented choices, not verified facts.

Workers choose when to join and how many local steps K_i to run (the ``anarchic`` arrival
process); each update is normalised by its step count, G_i = delta_i / K_i (the average of the
K_i local steps, as FedNova), so clients running more steps do not pull harder:

- ``afa_cd`` (cross-device): U = (1/m) sum over the m arrivals of G_i;
- ``afa_cs`` (cross-silo): the server keeps every worker's latest G_i (zero before its first
  arrival) and U = (1/M) sum over ALL M workers of G_i, stale entries included (SAG / MIFA
  style), which removes the bias of non-uniform arrival rates.

The server step x <- x + eta U belongs to the server optimizer: eta -> ``strategy.server_lr``,
the local rate eta_L -> ``client.lr``. The presets use eta = 5, about the mean of the default
local steps (uniform in [1, 10]), so one server update moves about as far as one FedAvg
round; with eta = K, every worker arriving once with K steps and no delay, AFA-CD is exactly
FedAvg with uniform weights. m is the ``buffered`` scheduler's buffer_size. A worker arriving
twice in one buffer contributes both updates to AFA-CD and its latest to AFA-CS.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np
import torch

from fedsim.types import ClientResult, PopulationInfo
from strategies.mifa import MemoryState, init_memory, store_updates
from strategies.weighting import WEIGHTINGS, WeightedAverage

__all__ = ["AFACS", "afa_cd", "afa_cs", "normalised"]


def normalised(results: Sequence[ClientResult]) -> list[ClientResult]:
    """G_i = delta_i / K_i."""
    return [replace(r, delta=r.delta / max(r.num_steps, 1)) for r in results]


@WEIGHTINGS.register("afa_cd", "c_i = 1 / (m K_i): mean of step-normalised updates (AFA-CD)")
def afa_cd() -> WeightedAverage:
    def coefficients(results: Sequence[ClientResult], population: PopulationInfo) -> np.ndarray:
        steps = np.array([max(r.num_steps, 1) for r in results], dtype=np.float64)
        return 1.0 / (len(results) * steps)

    return WeightedAverage(coefficients)


class AFACS:
    """U = (1/M) sum over all M workers of their latest step-normalised update."""

    def init(self, params: torch.Tensor, population: PopulationInfo) -> MemoryState:
        return init_memory(params, population)

    def aggregate(
        self, state: MemoryState, results: Sequence[ClientResult], round: int
    ) -> tuple[torch.Tensor, MemoryState]:
        _, new_state = store_updates(state, normalised(results))
        return new_state.mean, new_state


@WEIGHTINGS.register("afa_cs", "U = (1/M) sum_all G_i, G_i = latest delta_i / K_i of every worker (AFA-CS)")
def afa_cs() -> AFACS:
    return AFACS()
