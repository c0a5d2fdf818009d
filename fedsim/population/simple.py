"""The two homogeneous participation models and the speed models.

- ``always``: every client is always available (full participation).
- ``uniform``: every client is always available and a synchronous round samples
  ``clients_per_round`` of them uniformly without replacement, as in FedAvg (McMahan et
  al. 2017). Asynchronous schedulers sample among idle clients themselves.
- speed ``constant``: every client takes ``step_time`` per local step;
  ``lognormal``: client n takes ``step_time * exp(speed_sigma * z_n)``, z_n ~ N(0,1) fixed per client;
  ``tiered``: device tiers, ``speed_tiers`` = [[fraction, slowdown], ...], client n's tier
  drawn once from the fractions, step time = ``step_time * slowdown``;
  ``device_file``: FedScale's device capacity file (Lai et al., "FedScale: Benchmarking Model
  and System Performance of Federated Learning at Scale", ICML 2022, arXiv 2105.11367;
  ``client_device_capacity`` in the FedScale repo): a pickle ``{id: {'computation': ms per
  sample, 'communication': kbit/s}}``. As FedScale's ``getCompletionTime``, a local step costs
  ``3 * batch_size * computation / 1000`` seconds (forward + backward ~ 3 forward passes) and a
  job moves the model down and up at ``communication`` kbit/s. Population client n uses
  device n mod D (device ids in sorted order).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from scipy.special import ndtri

from fedsim import safe_pickle
from fedsim.population.base import PARTICIPATION, SPEEDS
from fedsim.rng import numpy_generator, uniform

__all__ = [
    "AlwaysParticipation",
    "UniformParticipation",
    "ConstantSpeed",
    "LognormalSpeed",
    "TieredSpeed",
    "DeviceSpeed",
    "load_device_file",
    "speed_tiers_problem",
]


class AlwaysParticipation:
    time_varying = False

    def __init__(self, num_clients: int):
        self.num_clients = num_clients
        self.probabilities = np.ones(num_clients)

    def available(self, ids: np.ndarray, now: float) -> np.ndarray:
        return np.ones(len(ids), dtype=bool)

    def participants(self, slot: int) -> np.ndarray:
        return np.arange(self.num_clients, dtype=np.int64)


class UniformParticipation(AlwaysParticipation):
    def __init__(self, num_clients: int, per_round: int, seed: int):
        if per_round > num_clients:
            raise ValueError(f"population.clients_per_round ({per_round}) must be <= num_clients ({num_clients})")
        super().__init__(num_clients)
        self.per_round, self.seed = per_round, seed
        self.probabilities = np.full(num_clients, per_round / num_clients)

    def select(self, round: int, candidates: np.ndarray, extra_fraction: float = 0.0) -> np.ndarray:
        """``clients_per_round`` (x (1 + extra_fraction), over-selection) of the candidates, sorted."""
        k = min(len(candidates), int(np.ceil(self.per_round * (1.0 + extra_fraction) - 1e-9)))
        rng = numpy_generator(self.seed, "uniform-participation", round)
        if len(candidates) == self.num_clients:  # nobody busy or offline: the classic draw
            return np.sort(rng.choice(self.num_clients, size=k, replace=False)).astype(np.int64)
        return np.sort(rng.choice(candidates, size=k, replace=False)).astype(np.int64)

    def participants(self, slot: int) -> np.ndarray:
        return self.select(slot, np.arange(self.num_clients, dtype=np.int64))


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


TIER_SUM_TOLERANCE = 1e-6


def speed_tiers_problem(tiers: list[list[float]]) -> str | None:
    """What is wrong with a ``speed_tiers`` table ([[fraction, slowdown], ...]), or None.

    Fractions are shares of the clients: each in [0, 1], together 1; slowdowns multiply the
    step time: each > 0. At most MAX_SPEED_TIERS tiers.
    """
    if (
        not isinstance(tiers, (list, tuple))
        or not tiers
        or any(not isinstance(t, (list, tuple)) or len(t) != 2 for t in tiers)
    ):
        return "must be a non-empty list of [fraction, slowdown] pairs"
    if len(tiers) > MAX_SPEED_TIERS:
        return f"has {len(tiers)} tiers; at most {MAX_SPEED_TIERS}"
    for k, (fraction, slowdown) in enumerate(tiers):
        if not 0 <= fraction <= 1:
            return f"tier {k}: fraction {fraction!r} must lie in [0, 1] (a share of the clients)"
        if not slowdown > 0:
            return f"tier {k}: slowdown {slowdown!r} must be > 0 (a step-time multiplier)"
    total = float(sum(t[0] for t in tiers))
    if abs(total - 1.0) > TIER_SUM_TOLERANCE:
        return f"fractions sum to {total:g}; they are shares of the clients and must sum to 1"
    return None


MAX_SPEED_TIERS = 1000


class TieredSpeed:
    def __init__(self, step_time: float, tiers: list[list[float]], seed: int):
        problem = speed_tiers_problem(tiers)
        if problem is not None:
            raise ValueError(f"population.speed_tiers {problem}")
        table = np.asarray(tiers, dtype=np.float64)
        self.seconds, self.seed = step_time, seed
        self.cumulative = np.cumsum(table[:, 0]) / table[:, 0].sum()
        self.slowdown = table[:, 1]

    def tier(self, client_ids: np.ndarray) -> np.ndarray:
        u = uniform(self.seed, "client-tier", client_ids, 0)
        return np.minimum(np.searchsorted(self.cumulative, u, side="right"), len(self.slowdown) - 1)

    def step_time(self, client_ids: np.ndarray) -> np.ndarray:
        return self.seconds * self.slowdown[self.tier(client_ids)]


def load_device_file(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """(compute ms per sample, bandwidth kbit/s) per device, in sorted device-id order."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"population.device_file: no such file {str(path)!r}")
    raw = safe_pickle.load(path, what="population.device_file")  # plain data only: cannot run code
    if not isinstance(raw, dict) or not raw:
        raise ValueError(
            f"population.device_file {path}: expected a non-empty dict id -> {{'computation', 'communication'}}"
        )
    keys = sorted(raw, key=lambda k: (str(type(k)), k))
    compute, bandwidth = [], []
    for key in keys:
        entry = raw[key]
        if not isinstance(entry, dict) or not {"computation", "communication"} <= entry.keys():
            raise ValueError(f"population.device_file {path}: device {key!r} lacks 'computation' or 'communication'")
        compute.append(float(entry["computation"]))
        bandwidth.append(float(entry["communication"]))
    compute_arr, bandwidth_arr = np.asarray(compute), np.asarray(bandwidth)
    if np.any(~(compute_arr > 0)) or np.any(~(bandwidth_arr > 0)):
        raise ValueError(f"population.device_file {path}: computation and communication must be positive numbers")
    return compute_arr, bandwidth_arr


class DeviceSpeed:
    """Per-client compute and bandwidth from a FedScale device capacity file."""

    def __init__(self, compute_ms: np.ndarray, bandwidth_kbps: np.ndarray, batch_size: int):
        self.compute_ms, self.bandwidth_kbps, self.batch_size = compute_ms, bandwidth_kbps, batch_size

    def _device(self, client_ids: np.ndarray) -> np.ndarray:
        return np.asarray(client_ids, dtype=np.int64) % len(self.compute_ms)

    def step_time(self, client_ids: np.ndarray) -> np.ndarray:
        return 3.0 * self.batch_size * self.compute_ms[self._device(client_ids)] / 1000.0

    def bandwidth(self, client_ids: np.ndarray) -> np.ndarray:
        """bits per second."""
        return self.bandwidth_kbps[self._device(client_ids)] * 1000.0


@PARTICIPATION.register("always", "every client is always available and takes part in every round", options=())
def always(config: Any, data: Any, seed: int) -> AlwaysParticipation:
    return AlwaysParticipation(data.num_clients)


@PARTICIPATION.register(
    "uniform",
    "always available; a sync round samples clients_per_round uniformly (FedAvg)",
    options=("population.clients_per_round",),
)
def uniform_sampling(config: Any, data: Any, seed: int) -> UniformParticipation:
    return UniformParticipation(data.num_clients, config.clients_per_round, seed)


@SPEEDS.register(
    "constant", "every client takes step_time virtual seconds per local step", options=("population.step_time",)
)
def constant(config: Any, data: Any, seed: int, batch_size: int = 1) -> ConstantSpeed:
    return ConstantSpeed(config.step_time)


@SPEEDS.register(
    "lognormal",
    "per-client step time = step_time * exp(speed_sigma * N(0,1))",
    options=("population.step_time", "population.speed_sigma"),
)
def lognormal(config: Any, data: Any, seed: int, batch_size: int = 1) -> LognormalSpeed:
    return LognormalSpeed(config.step_time, config.speed_sigma, seed)


@SPEEDS.register(
    "tiered",
    "device tiers: speed_tiers = [[fraction, slowdown], ...] times step_time",
    options=("population.step_time", "population.speed_tiers"),
)
def tiered(config: Any, data: Any, seed: int, batch_size: int = 1) -> TieredSpeed:
    return TieredSpeed(config.step_time, config.speed_tiers, seed)


@SPEEDS.register(
    "device_file",
    "FedScale device capacity pickle (device_file): compute ms/sample, kbit/s",
    options=("population.device_file",),
)
def device_file(config: Any, data: Any, seed: int, batch_size: int = 1) -> DeviceSpeed:
    if config.device_file is None:
        raise ValueError("population.device_file must be set for population.speed=device_file")
    compute, bandwidth = load_device_file(config.device_file)
    return DeviceSpeed(compute, bandwidth, batch_size)
