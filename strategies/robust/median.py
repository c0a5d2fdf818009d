"""Coordinate-wise median (Yin, Chen, Ramchandran, Bartlett, "Byzantine-Robust Distributed Learning:
Towards Optimal Statistical Rates", ICML 2018, arXiv 1803.01498).

U_j = median_i x_ij with numpy's convention (mean of the two middle values for an even n).
Assumes 2f < n (f is only checked: the median itself takes no f).
"""

from __future__ import annotations

from typing import Any

import torch

from strategies.robust.base import RobustAggregator, coordinate_median
from strategies.weighting import WEIGHTINGS

__all__ = ["Median"]


class Median(RobustAggregator):
    rule = "median"

    def combine(self, x: torch.Tensor, f: int, state: dict[str, Any]) -> tuple[torch.Tensor, dict[str, Any]]:
        return coordinate_median(x), state


@WEIGHTINGS.register("median", "coordinate-wise median, numpy's convention (Yin et al. 2018); assumes 2f < n")
def median(f: int | None = None) -> Median:
    return Median(f)
