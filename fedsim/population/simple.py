"""The two homogeneous participation models and the speed models.

- ``always``: every client every round (full participation).
- ``uniform``: the server samples ``clients_per_round`` clients uniformly without
  replacement each round, as in FedAvg (McMahan et al. 2017).
- speed ``constant``: every client takes ``step_time`` per local step;
  ``lognormal``: client n takes ``step_time * exp(speed_sigma * z_n)``, z_n ~ N(0,1) fixed per client.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.special import ndtri

from fedsim.population.base import PARTICIPATION, SPEEDS
from fedsim.rng import numpy_generator, uniform

__all__ = ["AlwaysParticipation", "UniformParticipation", "ConstantSpeed", "LognormalSpeed"]


class AlwaysParticipation:
    def __init__(self, num_clients: int):
        self.ids = np.arange(num_clients, dtype=np.int64)
        self.probabilities = np.ones(num_clients)

    def participants(self, round: int) -> np.ndarray:
        return self.ids


class UniformParticipation:
    def __init__(self, num_clients: int, per_round: int, seed: int):
        if per_round > num_clients:
            raise ValueError(f"population.clients_per_round ({per_round}) must be <= num_clients ({num_clients})")
        self.num_clients, self.per_round, self.seed = num_clients, per_round, seed
        self.probabilities = np.full(num_clients, per_round / num_clients)

    def participants(self, round: int) -> np.ndarray:
        rng = numpy_generator(self.seed, "uniform-participation", round)
        return np.sort(rng.choice(self.num_clients, size=self.per_round, replace=False)).astype(np.int64)


class ConstantSpeed:
    def __init__(self, step_time: float):
        self.seconds = step_time

    def step_time(self, client_ids: np.ndarray) -> np.ndarray:
        return np.full(len(client_ids), self.seconds)


class LognormalSpeed:
    def __init__(self, step_time: float, sigma: float, seed: int):
        self.seconds, self.sigma, self.seed = step_time, sigma, seed

    def step_time(self, client_ids: np.ndarray) -> np.ndarray:
        u = uniform(self.seed, "client-speed", client_ids, 0)
        z = ndtri(np.clip(u, 1e-12, 1 - 1e-12))
        return self.seconds * np.exp(self.sigma * z)


@PARTICIPATION.register("always", "every client takes part in every round (full participation)", options=())
def always(config: Any, data: Any, seed: int) -> AlwaysParticipation:
    return AlwaysParticipation(data.num_clients)


@PARTICIPATION.register("uniform", "server samples clients_per_round clients uniformly each round (FedAvg)",
                        options=("population.clients_per_round",))
def uniform_sampling(config: Any, data: Any, seed: int) -> UniformParticipation:
    return UniformParticipation(data.num_clients, config.clients_per_round, seed)


@SPEEDS.register("constant", "every client takes step_time virtual seconds per local step")
def constant(config: Any, data: Any, seed: int) -> ConstantSpeed:
    return ConstantSpeed(config.step_time)


@SPEEDS.register("lognormal", "per-client step time = step_time * exp(speed_sigma * N(0,1))")
def lognormal(config: Any, data: Any, seed: int) -> LognormalSpeed:
    return LognormalSpeed(config.step_time, config.speed_sigma, seed)
