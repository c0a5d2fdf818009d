"""Krum and Multi-Krum (Blanchard, El Mhamdi, Guerraoui, Stainer, "Machine Learning with Adversaries:
Byzantine Tolerant Gradient Descent", NeurIPS 2017).

score(i) = sum of the squared distances from x_i to its n - f - 2 nearest OTHER updates (the
paper's count; byzfl counts n - f - 1, so byzfl's Krum with f is fedsim's with f + 1... on the
same inputs). Krum returns the update with the lowest score; Multi-Krum the unweighted mean of
the m lowest (m = ``strategy.selection``, default n - f; Flower weights by num_examples, fedsim
does not). Ties go to the lower client id. Assumes n > 2f + 2 (neither byzfl nor Flower checks it).
"""

from __future__ import annotations

from typing import Any

import torch

from strategies.robust.base import RobustAggregator, pairwise_sq_distances
from strategies.weighting import WEIGHTINGS

__all__ = ["Krum", "krum_scores", "krum_order"]


def krum_scores(x: torch.Tensor, f: int) -> torch.Tensor:
    n = x.shape[0]
    k = max(n - f - 2, 0)
    d = pairwise_sq_distances(x)
    d.fill_diagonal_(float("inf"))  # only the other updates count
    if k == 0:
        return torch.zeros(n, dtype=x.dtype)
    return torch.sort(d, dim=1).values[:, :k].sum(1)


def krum_order(x: torch.Tensor, f: int) -> torch.Tensor:
    """Indices by increasing score; a stable sort breaks ties by position (= client id order)."""
    return torch.sort(krum_scores(x, f), stable=True).indices


class Krum(RobustAggregator):
    rule = "krum"
    requirement = "n > 2f + 2"

    def __init__(self, f: int | None = None, m: int | None = 1, rule: str = "krum"):
        super().__init__(f)
        if m is not None and m < 1:
            raise ValueError(f"strategy.selection must be >= 1, got {m}")
        self.m = m
        self.rule = rule

    @property
    def options(self) -> dict[str, Any]:
        return {"f": self.f, "m": self.m if self.m is not None else "n - f"}

    def max_f(self, n: int) -> int:
        return (n - 3) // 2  # n > 2f + 2

    def combine(self, x: torch.Tensor, f: int, state: dict[str, Any]) -> tuple[torch.Tensor, dict[str, Any]]:
        n = x.shape[0]
        m = min(self.m if self.m is not None else n - f, n)
        chosen = krum_order(x, f)[:m]
        return x[chosen].mean(0), state


@WEIGHTINGS.register(
    "krum", "the update with the least sum of squared distances to its n - f - 2 nearest (Blanchard et al. 2017)"
)
def krum(f: int | None = None) -> Krum:
    return Krum(f, 1, "krum")


@WEIGHTINGS.register("multi_krum", "unweighted mean of the m updates with the lowest Krum scores (m default n - f)")
def multi_krum(f: int | None = None, m: int | None = None) -> Krum:
    return Krum(f, m, "multi_krum")
