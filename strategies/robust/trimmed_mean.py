"""Coordinate-wise trimmed mean (Yin, Chen, Ramchandran, Bartlett, ICML 2018, arXiv 1803.01498).

Per coordinate, drop the f largest and the f smallest values and average the other n - 2f.
f is a count (byzfl's convention; Flower's fraction beta trims int(beta n) per side, which
silently trims one less than intended for many (n, f) because of float rounding). Assumes 2f < n;
f = 0 is the mean.
"""

from __future__ import annotations

from typing import Any

import torch

from strategies.robust.base import RobustAggregator
from strategies.weighting import WEIGHTINGS

__all__ = ["TrimmedMean", "trimmed_mean_of"]


def trimmed_mean_of(x: torch.Tensor, f: int) -> torch.Tensor:
    n = x.shape[0]
    return torch.sort(x, dim=0).values[f : n - f].mean(0)


class TrimmedMean(RobustAggregator):
    rule = "trimmed_mean"

    def combine(self, x: torch.Tensor, f: int, state: dict[str, Any]) -> tuple[torch.Tensor, dict[str, Any]]:
        return trimmed_mean_of(x, f), state


@WEIGHTINGS.register(
    "trimmed_mean", "coordinate-wise mean without the f largest and f smallest (Yin et al. 2018); 2f < n"
)
def trimmed_mean(f: int | None = None) -> TrimmedMean:
    return TrimmedMean(f)
