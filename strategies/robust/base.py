"""What every robust aggregator shares: f, its assumption, a stack of the updates, deterministic order.

A robust aggregator turns the n updates of one aggregation (a synchronous round, or one
asynchronous buffer: the n of every assumption below is the number of updates aggregated
together) into one pseudo-gradient, tolerating up to f Byzantine updates among them. They are
**unweighted** (a Byzantine client could claim any sample count) and order the updates by
(client id, base version) first, so ties break by client id whatever the arrival order.

``f`` is ``strategy.byzantine_f`` or, when unset, derived by ``fedsim.attacks.plan_byzantine``
from ``population.byzantine_fraction`` and the nominal n. ``check(n, source)`` refuses, in
one line, a configuration whose nominal n breaks the rule's assumption. An aggregation that
gets fewer updates than planned (dropouts, a short Poisson round) runs with the largest f the
rule allows for that n, logged and counted in the state (``f_reduced``); one too small for
any f (e.g. Krum with n < 3) takes the plain mean, counted as ``fallbacks``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch

from fedsim.types import ClientResult, PopulationInfo

__all__ = ["RobustAggregator", "stack", "coordinate_median", "pairwise_sq_distances"]

log = logging.getLogger("fedsim")


def stack(results: Sequence[ClientResult]) -> torch.Tensor:
    """(n, d) float64 stack of the deltas, ordered by (client id, base version)."""
    ordered = sorted(results, key=lambda r: (r.client_id, r.base_version))
    return torch.stack([r.delta.detach().to("cpu", torch.float64) for r in ordered])


def coordinate_median(x: torch.Tensor) -> torch.Tensor:
    """numpy's median per coordinate (mean of the two middle values for an even count; torch.median
    returns the lower one)."""
    n = x.shape[0]
    s = torch.sort(x, dim=0).values
    if n % 2:
        return s[n // 2]
    return (s[n // 2 - 1] + s[n // 2]) / 2


def pairwise_sq_distances(x: torch.Tensor) -> torch.Tensor:
    """||x_i - x_j||^2, summed directly (no matrix-product shortcut, no square root), one row at a time."""
    return torch.stack([((x - row) ** 2).sum(1) for row in x])


class RobustAggregator:
    """Subclasses set ``rule`` and ``requirement`` and implement ``max_f`` and ``combine``."""

    rule = "robust"
    requirement = "2f < n"

    def __init__(self, f: int | None = None):
        if f is not None and f < 0:
            raise ValueError(f"strategy.byzantine_f must be >= 0, got {f}")
        self.f = 0 if f is None else int(f)

    @property
    def options(self) -> dict[str, Any]:
        return {"f": self.f}

    def max_f(self, n: int) -> int:
        """The largest f the assumption allows with n updates (-1: none)."""
        return (n - 1) // 2  # 2f < n

    def check(self, n: int, source: str) -> None:
        if self.f > self.max_f(n):
            raise ValueError(
                f"strategy weighting '{self.rule}' needs {self.requirement} updates per aggregation, but n = {n} "
                f"({source}) with f = {self.f} (strategy.byzantine_f or population.byzantine_fraction); "
                f"raise n or lower f to at most {max(self.max_f(n), 0) if self.max_f(n) >= 0 else 'none possible'}"
            )

    def init(self, params: torch.Tensor, population: PopulationInfo) -> dict[str, Any]:
        return {"like": torch.zeros_like(params), "f_reduced": 0, "fallbacks": 0}

    def aggregate(self, state: dict[str, Any], results: Sequence[ClientResult], round: int) -> tuple[torch.Tensor, Any]:
        like = state["like"]
        if not results:
            return torch.zeros_like(like), state
        x = stack(results)
        n = x.shape[0]
        allowed = self.max_f(n)
        state = dict(state)
        if allowed < 0:
            if state["fallbacks"] == 0:
                log.warning(
                    "%s: %d update(s) are too few for %s; this aggregation takes their mean (counted as fallbacks)",
                    self.rule,
                    n,
                    self.requirement,
                )
            state["fallbacks"] += 1
            return x.mean(0).to(like.device, like.dtype), state
        f = self.f
        if f > allowed:
            if state["f_reduced"] == 0:
                log.warning(
                    "%s: an aggregation of n = %d updates cannot tolerate f = %d (%s); it runs with f = %d "
                    "(counted as f_reduced)",
                    self.rule,
                    n,
                    f,
                    self.requirement,
                    allowed,
                )
            state["f_reduced"] += 1
            f = allowed
        out, state = self.combine(x, f, state)
        return out.to(like.device, like.dtype), state

    def combine(self, x: torch.Tensor, f: int, state: dict[str, Any]) -> tuple[torch.Tensor, dict[str, Any]]:
        raise NotImplementedError
