"""Population model: who can take part in a round, and how long a client's job takes.

A participation model answers ``participants(round)`` with sorted client ids; its
``probabilities`` are the true long-run participation probabilities (known to the
simulator, hidden from strategies except oracle baselines). A speed model gives each
client's virtual seconds per local step. Per-client bookkeeping is O(1) numbers, so
populations of 10^6 clients work.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Protocol

import numpy as np

from fedsim.registry import Registry
from fedsim.types import PopulationInfo

__all__ = ["Participation", "SpeedModel", "Population", "PARTICIPATION", "SPEEDS"]


class Participation(Protocol):
    probabilities: np.ndarray | None  # float64[N] true long-run participation probability

    def participants(self, round: int) -> np.ndarray: ...  # sorted int64 ids


class SpeedModel(Protocol):
    def step_time(self, client_ids: np.ndarray) -> np.ndarray: ...  # virtual seconds per local step


# factory(population config, federated data, seed) -> Participation / SpeedModel
PARTICIPATION: Registry[Callable[..., Participation]] = Registry("participation model")
SPEEDS: Registry[Callable[..., SpeedModel]] = Registry("speed model")


@dataclass
class Population:
    participation: Participation
    speed: SpeedModel
    comm_time: float
    num_samples: np.ndarray

    @property
    def num_clients(self) -> int:
        return len(self.num_samples)

    def participants(self, round: int) -> np.ndarray:
        return self.participation.participants(round)

    def durations(self, client_ids: np.ndarray, steps: np.ndarray) -> np.ndarray:
        """Virtual seconds each job takes: local steps x step time + communication."""
        return np.asarray(steps) * self.speed.step_time(np.asarray(client_ids)) + self.comm_time

    def info(self) -> PopulationInfo:
        return PopulationInfo(
            num_clients=self.num_clients,
            num_samples=self.num_samples,
            participation_prob=self.participation.probabilities,
        )


def build_population(config: Any, data: Any, seed: int) -> Population:
    return Population(
        participation=PARTICIPATION.get(config.participation)(config, data, seed),
        speed=SPEEDS.get(config.speed)(config, data, seed),
        comm_time=config.comm_time,
        num_samples=np.asarray(data.num_samples, dtype=np.int64),
    )
