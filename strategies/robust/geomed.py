"""Geometric median by smoothed Weiszfeld: RFA (Pillutla, Kakade, Harchaoui, "Robust Aggregation for
Federated Learning", IEEE TSP 2022, arXiv 1912.13445).

    z <- sum_i x_i / max(nu, ||x_i - z||)  /  sum_i 1 / max(nu, ||x_i - z||)

starting at the mean (as RFA; byzfl starts at 0), T iterations (``strategy.iterations``,
default 3, RFA's observation that a few suffice; byzfl's default too), nu = ``strategy.smoothing``
(default 1e-6). Unweighted (RFA weights by sample counts, which a Byzantine client could inflate).
Breakdown point 1/2: assumes 2f < n (f is only checked).
"""

from __future__ import annotations

from typing import Any

import torch

from strategies.robust.base import RobustAggregator
from strategies.weighting import WEIGHTINGS

__all__ = ["GeometricMedian", "weiszfeld"]


def weiszfeld(x: torch.Tensor, iterations: int, nu: float) -> torch.Tensor:
    z = x.mean(0)
    for _ in range(iterations):
        w = 1.0 / torch.clamp(torch.linalg.vector_norm(x - z, dim=1), min=nu)
        z = (w[:, None] * x).sum(0) / w.sum()
    return z


class GeometricMedian(RobustAggregator):
    rule = "geomed"

    def __init__(self, f: int | None = None, iterations: int = 3, nu: float = 1e-6):
        super().__init__(f)
        if iterations < 1 or not nu > 0:
            raise ValueError(
                f"geomed needs strategy.iterations >= 1 and strategy.smoothing > 0, got {iterations}, {nu}"
            )
        self.iterations, self.nu = int(iterations), float(nu)

    @property
    def options(self) -> dict[str, Any]:
        return {"f": self.f, "T": self.iterations, "nu": self.nu}

    def combine(self, x: torch.Tensor, f: int, state: dict[str, Any]) -> tuple[torch.Tensor, dict[str, Any]]:
        return weiszfeld(x, self.iterations, self.nu), state


@WEIGHTINGS.register("geomed", "geometric median by smoothed Weiszfeld from the mean (RFA, Pillutla et al. 2022)")
def geomed(f: int | None = None, iterations: int = 3, nu: float = 1e-6) -> GeometricMedian:
    return GeometricMedian(f, iterations, nu)
