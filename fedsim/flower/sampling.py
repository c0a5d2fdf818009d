"""Who trains in a Flower round: samplers over the dense client indices of connected nodes.

- :class:`UniformSampler`: ``per_round`` of the connected clients uniformly without
  replacement (FedAvg's sampling). It draws exactly as fedsim's ``uniform`` participation
  does, so with every client connected and indexed by partition id it picks the same
  clients as a fedsim run with the same seed.
- :class:`AllConnected`: every connected client (full participation).
- :class:`ParticipationSampler`: any fedsim participation model (bernoulli, markov, cyclic,
  traces) replayed over the indices; of the clients it names, those not connected simply
  do not take part. This is how a Flower run reproduces a fedsim participation pattern.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from fedsim.population.base import Participation
from fedsim.rng import numpy_generator

__all__ = ["Sampler", "UniformSampler", "AllConnected", "ParticipationSampler"]


class Sampler(Protocol):
    def select(self, round: int, connected: np.ndarray) -> np.ndarray:
        """Sorted client indices to train in ``round`` (a subset of the sorted ``connected``)."""
        ...


class UniformSampler:
    def __init__(self, per_round: int, seed: int):
        if per_round < 1:
            raise ValueError(f"population.clients_per_round must be >= 1, got {per_round}")
        self.per_round, self.seed = per_round, seed

    def select(self, round: int, connected: np.ndarray) -> np.ndarray:
        rng = numpy_generator(self.seed, "uniform-participation", round)  # as fedsim.population.simple
        k = min(self.per_round, len(connected))
        return np.sort(connected[rng.choice(len(connected), size=k, replace=False)])


class AllConnected:
    def select(self, round: int, connected: np.ndarray) -> np.ndarray:
        return np.asarray(connected, dtype=np.int64)


class ParticipationSampler:
    def __init__(self, participation: Participation):
        self.participation = participation

    def select(self, round: int, connected: np.ndarray) -> np.ndarray:
        return np.intersect1d(self.participation.participants(round), connected).astype(np.int64)
