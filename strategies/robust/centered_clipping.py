"""Centered clipping (Karimireddy, He, Jaggi, "Learning from History for Byzantine Robust
Optimization", ICML 2021, arXiv 2012.10333).

    v <- v + (1/n) sum_i clip_tau(x_i - v),   clip_tau(u) = u min(1, tau / ||u||),   L times,

starting from the previous aggregation's result (server state ``center``, zeros at first; byzfl
also starts at 0 on its first call). tau = ``strategy.radius`` (default 1.0: about the norm of an
honest digits update at client lr 0.05; byzfl uses 100), L = ``strategy.iterations`` (default 1,
the paper's). tau = infinity gives the mean. The paper pairs it with momentum; preset
``centered_clipping`` adds server momentum 0.9 in the paper's normalisation (server lr 0.1 =
1 - beta). Assumes an honest majority (2f < n; f is only checked).
"""

from __future__ import annotations

from typing import Any

import torch

from fedsim.types import PopulationInfo
from strategies.robust.base import RobustAggregator
from strategies.weighting import WEIGHTINGS

__all__ = ["CenteredClipping", "centered_clip"]


def centered_clip(x: torch.Tensor, v: torch.Tensor, tau: float, iterations: int) -> torch.Tensor:
    for _ in range(iterations):
        diff = x - v
        norms = torch.linalg.vector_norm(diff, dim=1)
        scale = torch.clamp(tau / torch.clamp(norms, min=1e-12), max=1.0)
        v = v + (diff * scale[:, None]).mean(0)
    return v


class CenteredClipping(RobustAggregator):
    rule = "centered_clipping"

    def __init__(self, f: int | None = None, radius: float = 1.0, iterations: int = 1):
        super().__init__(f)
        if not radius > 0 or iterations < 1:
            raise ValueError(
                f"centered_clipping needs strategy.radius > 0 and strategy.iterations >= 1, got {radius}, {iterations}"
            )
        self.radius, self.iterations = float(radius), int(iterations)

    @property
    def options(self) -> dict[str, Any]:
        return {"f": self.f, "tau": self.radius, "L": self.iterations}

    def init(self, params: torch.Tensor, population: PopulationInfo) -> dict[str, Any]:
        return super().init(params, population) | {"center": torch.zeros_like(params)}

    def combine(self, x: torch.Tensor, f: int, state: dict[str, Any]) -> tuple[torch.Tensor, dict[str, Any]]:
        v = centered_clip(x, state["center"].to("cpu", torch.float64), self.radius, self.iterations)
        return v, state | {"center": v.to(state["center"].device, state["center"].dtype)}


@WEIGHTINGS.register(
    "centered_clipping", "v += mean clip_tau(x_i - v) from the previous aggregate (Karimireddy et al. 2021)"
)
def centered_clipping(f: int | None = None, radius: float = 1.0, iterations: int = 1) -> CenteredClipping:
    return CenteredClipping(f, radius, iterations)
