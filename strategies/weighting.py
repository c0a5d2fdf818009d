"""Weightings: how client deltas are combined into one pseudo-gradient U = sum_i c_i delta_i.

The FedAvg variants compared in Wang & Ji, "A Lightweight Method for Tackling Unknown
Participation Statistics in Federated Averaging" (arXiv 2306.03401), plus McMahan et al.'s
sample weighting (AISTATS 2017, arXiv 1602.05629):

- ``samples``: c_i = m_i / sum_{j in S} m_j                  (FedAvg, data-size weighted)
- ``uniform``: c_i = 1 / |S|                                  (average over participants)
- ``average_all``: c_i = 1 / N                               (divide by the population size)
- ``known_prob``: c_i = 1 / (N p_i)                          (oracle: true participation probability)

An empty round gives U = 0 for every rule.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from fedsim.registry import Registry
from fedsim.types import ClientResult, PopulationInfo

__all__ = ["WEIGHTINGS", "WeightedAverage", "weighted_sum"]

WEIGHTINGS: Registry[Callable[..., Any]] = Registry("weighting")


def weighted_sum(results: Sequence[ClientResult], coefficients: Sequence[float], like: torch.Tensor) -> torch.Tensor:
    """sum_i c_i delta_i, accumulated in result order (deterministic, no stacking of copies)."""
    total = torch.zeros_like(like)
    for result, c in zip(results, coefficients):
        total.add_(result.delta.to(total.device), alpha=float(c))
    return total


class WeightedAverage:
    """A stateless weighting turned into an Aggregator."""

    def __init__(
        self,
        coefficients: Callable[[Sequence[ClientResult], PopulationInfo], np.ndarray],
        needs_probabilities: bool = False,
    ):
        self.coefficients = coefficients
        self.needs_probabilities = needs_probabilities

    def init(self, params: torch.Tensor, population: PopulationInfo) -> dict[str, Any]:
        if self.needs_probabilities and population.participation_prob is None:
            raise ValueError(
                "strategy.weighting 'known_prob' needs a participation model with known probabilities "
                "(population.participation: bernoulli, markov, cyclic, always or uniform)"
            )
        return {"population": population, "like": torch.zeros_like(params)}

    def aggregate(self, state: dict[str, Any], results: Sequence[ClientResult], round: int) -> tuple[torch.Tensor, Any]:
        if not results:
            return torch.zeros_like(state["like"]), state
        return weighted_sum(results, self.coefficients(results, state["population"]), state["like"]), state


@WEIGHTINGS.register("samples", "c_i = m_i / sum of participants' samples (FedAvg)")
def samples() -> WeightedAverage:
    def coefficients(results: Sequence[ClientResult], population: PopulationInfo) -> np.ndarray:
        m = np.array([r.num_samples for r in results], dtype=np.float64)
        if m.sum() <= 0:
            return np.full(len(results), 1.0 / len(results))
        return m / m.sum()

    return WeightedAverage(coefficients)


@WEIGHTINGS.register("uniform", "c_i = 1 / |S_t| (plain average over participants)")
def uniform() -> WeightedAverage:
    return WeightedAverage(lambda results, population: np.full(len(results), 1.0 / len(results)))


@WEIGHTINGS.register("average_all", "c_i = 1 / N (sum of participants divided by the population size)")
def average_all() -> WeightedAverage:
    return WeightedAverage(lambda results, population: np.full(len(results), 1.0 / population.num_clients))


@WEIGHTINGS.register("known_prob", "c_i = 1 / (N p_i) with the TRUE participation probability (oracle)")
def known_prob() -> WeightedAverage:
    def coefficients(results: Sequence[ClientResult], population: PopulationInfo) -> np.ndarray:
        p = population.participation_prob[[r.client_id for r in results]]
        return 1.0 / (population.num_clients * p)

    return WeightedAverage(coefficients, needs_probabilities=True)
