"""Nearest-neighbour mixing, the server form of MoNNA's nearest-neighbour averaging.

MoNNA (Farhadkhani, Guerraoui, Gupta, Hoang, Pinot, Stephan, "Robust Collaborative Learning with
Linear Gradient Overhead", ICML 2023, arXiv 2209.10931; code LPD-EPFL/robust-collaborative-learning)
is peer-to-peer: each honest worker averages the n - f received momentums nearest to its own.
A server has no vector of its own, so fedsim uses the same averaging as a pre-aggregation
step for every update (NNM, Allouah, Farhadkhani, Guerraoui, Gupta, Pinot, Stephan, "Fixing by
Mixing", AISTATS 2023, arXiv 2302.01772): x_i <- mean of the n - f updates nearest to x_i,
itself included (ties to the lower client id), then a coordinate-wise trimmed mean with f, the
composition that paper recommends. Preset ``monna`` pairs it with clients that send Polyak
momentum (client algorithm ``polyak``). Assumes 2f < n.
"""

from __future__ import annotations

from typing import Any

import torch

from strategies.robust.base import RobustAggregator, pairwise_sq_distances
from strategies.robust.trimmed_mean import trimmed_mean_of
from strategies.weighting import WEIGHTINGS

__all__ = ["NNMTrimmedMean", "nearest_neighbour_mixing"]


def nearest_neighbour_mixing(x: torch.Tensor, f: int) -> torch.Tensor:
    n = x.shape[0]
    d = pairwise_sq_distances(x)
    d.fill_diagonal_(-1.0)  # itself first, also when another update is at distance 0
    nearest = torch.sort(d, dim=1, stable=True).indices[:, : n - f]
    return x[nearest].mean(1)


class NNMTrimmedMean(RobustAggregator):
    rule = "monna"

    def combine(self, x: torch.Tensor, f: int, state: dict[str, Any]) -> tuple[torch.Tensor, dict[str, Any]]:
        return trimmed_mean_of(nearest_neighbour_mixing(x, f), f), state


@WEIGHTINGS.register(
    "monna",
    "nearest-neighbour mixing (n - f nearest, itself included), then trimmed mean "
    "(MoNNA's averaging at a server; Allouah et al. 2023); 2f < n",
)
def monna(f: int | None = None) -> NNMTrimmedMean:
    return NNMTrimmedMean(f)
