"""Poisson sampling: every client joins each round independently with the same probability q.

The cohort's size varies from round to round (mean qN). This is the sampling under which
DP-FedAvg's privacy amplification holds (McMahan et al. 2018, "Learning Differentially Private
Recurrent Language Models", arXiv 1710.06963; accounted as ``PoissonSampledDpEvent`` by
dp-accounting), and the one the server controls: it knows q exactly.

q = ``population.mean_prob``, or ``clients_per_round / num_clients`` when that is null.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from fedsim.population.base import PARTICIPATION
from fedsim.population.heterogeneous import BernoulliParticipation

__all__ = ["poisson", "sampling_rate"]


def sampling_rate(config: Any, num_clients: int) -> float:
    """q for a PopulationConfig (the same rule as ``probability_range``'s mean)."""
    return float(config.probability_range(num_clients)[0])


@PARTICIPATION.register(
    "poisson",
    "each client joins each round independently with the same q (DP sampling)",
    options=("population.mean_prob", "population.clients_per_round"),
)
def poisson(config: Any, data: Any, seed: int) -> BernoulliParticipation:
    q = sampling_rate(config, data.num_clients)
    return BernoulliParticipation(np.full(data.num_clients, q), seed, config.round_length)
