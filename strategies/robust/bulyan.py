"""Bulyan (El Mhamdi, Guerraoui, Rouault, "The Hidden Vulnerability of Distributed Learning in
Byzantium", ICML 2018, arXiv 1802.07927), over Krum.

1. Select theta = n - 2f updates by repeated Krum: pick the lowest Krum score, remove it,
   recompute the scores (n' - f - 2 neighbours on the n' updates left, at least 0) on the rest.
   (Flower's old function does the same on a shrinking list; its newer class does a single
   Multi-Krum selection, which is not the paper's rule.) Ties go to the lower client id.
2. Per coordinate, average the beta = theta - 2f selected values closest to the coordinate's
   median of the selection (numpy's median).

Assumes n >= 4f + 3. With f = 0 it is the mean of the n updates.
"""

from __future__ import annotations

from typing import Any

import torch

from strategies.robust.base import RobustAggregator, coordinate_median
from strategies.robust.krum import krum_order
from strategies.weighting import WEIGHTINGS

__all__ = ["Bulyan", "bulyan_select"]


def bulyan_select(x: torch.Tensor, f: int) -> list[int]:
    """Indices (into x) of the theta = n - 2f updates repeated Krum selects, in selection order."""
    remaining = list(range(x.shape[0]))
    chosen: list[int] = []
    for _ in range(x.shape[0] - 2 * f):
        best = remaining[int(krum_order(x[remaining], f)[0])]
        chosen.append(best)
        remaining.remove(best)
    return chosen


class Bulyan(RobustAggregator):
    rule = "bulyan"
    requirement = "n >= 4f + 3"

    def max_f(self, n: int) -> int:
        return (n - 3) // 4  # n >= 4f + 3

    def combine(self, x: torch.Tensor, f: int, state: dict[str, Any]) -> tuple[torch.Tensor, dict[str, Any]]:
        selected = x[bulyan_select(x, f)]
        beta = selected.shape[0] - 2 * f
        med = coordinate_median(selected)
        closest = torch.sort((selected - med).abs(), dim=0, stable=True).indices[:beta]
        return torch.gather(selected, 0, closest).mean(0), state


@WEIGHTINGS.register(
    "bulyan",
    "repeated Krum selects n - 2f, then per coordinate the mean of the n - 4f closest "
    "to the median (El Mhamdi et al. 2018); n >= 4f + 3",
)
def bulyan(f: int | None = None) -> Bulyan:
    return Bulyan(f)
