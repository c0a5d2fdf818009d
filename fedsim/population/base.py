"""Population model: who is available at a virtual time, and how long a client's job takes.

A participation model answers two questions on the engine's virtual clock:

- ``available(ids, now)``: which of these clients are online at virtual time ``now``. The
  per-round models (Bernoulli, Markov, cyclic) are defined over virtual-time slots of
  ``population.round_length`` seconds: slot ``floor(now / round_length)``; traces are read
  at ``now`` itself. ``time_varying`` is False for models whose answer never changes.
- ``participants(slot)``: every client online in one slot (the round-indexed view).

Its ``probabilities`` are the true long-run participation probabilities (known to the
simulator, hidden from strategies except oracle baselines).

A speed model gives each client's virtual seconds per local step; :class:`Population` adds
communication (the job's download and upload bits / bandwidth, or a per-client ``link`` from
fedsim/communication.py with latency and asymmetry), random extra delays, and mid-training
dropouts, all drawn from counter-based streams keyed by (client, that client's dispatch
count), so a job's timing never depends on which other clients ran. Per-client bookkeeping
is O(1) numbers, so populations of 10^6 clients work; sampling k idle available clients
costs O(k) when most clients are available and idle, and one vectorised pass over the
engine's busy mask plus O(k) when most are busy.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from fedsim.registry import Registry
from fedsim.rng import numpy_generator, splitmix_ints, uniform_per_client
from fedsim.types import PopulationInfo

__all__ = ["Participation", "SpeedModel", "Population", "JobTiming", "PARTICIPATION", "SPEEDS", "build_population"]


class Participation(Protocol):
    probabilities: np.ndarray | None  # float64[N] true long-run participation probability
    time_varying: bool  # False: available() is the same at every time

    def available(self, ids: np.ndarray, now: float) -> np.ndarray: ...  # bool, one per id

    def participants(self, slot: int) -> np.ndarray: ...  # sorted int64 ids online in that slot


class SpeedModel(Protocol):
    def step_time(self, client_ids: np.ndarray) -> np.ndarray: ...  # virtual seconds per local step


# factory(population config, federated data, seed) -> Participation / SpeedModel
PARTICIPATION: Registry[Callable[..., Participation]] = Registry("participation model")
SPEEDS: Registry[Callable[..., SpeedModel]] = Registry("speed model")


@dataclass(frozen=True)
class JobTiming:
    """When dispatched jobs end: ``durations`` in virtual seconds; ``dropped`` jobs end early, failed."""

    durations: np.ndarray  # float64[k]
    dropped: np.ndarray  # bool[k]


@dataclass
class Population:
    participation: Participation
    speed: SpeedModel
    comm_time: float  # fixed virtual seconds per job (latency)
    num_samples: np.ndarray
    seed: int = 0
    round_length: float = 60.0  # virtual seconds per availability slot
    model_bits: float = 0.0  # size of the model in bits; a job moves it down and up once
    bandwidth: Callable[[np.ndarray], np.ndarray] | None = None  # bits/s per client; None = infinite
    extra_delay: float = 0.0  # mean of an exponential random extra delay per job (0 = none)
    dropout_prob: float = 0.0  # probability that a job fails mid-training
    link: Any = None  # per-client link (fedsim.communication.Link): replaces bandwidth when set

    @property
    def num_clients(self) -> int:
        return len(self.num_samples)

    # ------------------------------------------------------------------ availability on the clock

    def available(self, ids: np.ndarray, now: float) -> np.ndarray:
        return self.participation.available(np.asarray(ids, dtype=np.int64), now)

    def available_ids(self, now: float) -> np.ndarray:
        """Every client online at ``now`` (sorted int64); O(N)."""
        ids = np.arange(self.num_clients, dtype=np.int64)
        return ids[self.available(ids, now)]

    def idle_available(self, now: float, busy: Collection[int], busy_mask: np.ndarray | None = None) -> np.ndarray:
        """Every client online at ``now`` and not in ``busy`` (sorted int64); O(N).

        ``busy_mask`` (bool[N], True exactly for the clients in ``busy``) replaces the set
        lookup by one vectorised pass.
        """
        ids = self.available_ids(now)
        if busy_mask is not None:
            return ids[~busy_mask[ids]]
        if busy:
            ids = ids[~np.isin(ids, np.fromiter(busy, dtype=np.int64, count=len(busy)))]
        return ids

    def sample(
        self,
        k: int,
        now: float,
        busy: Collection[int],
        seed: int,
        counter: int,
        busy_mask: np.ndarray | None = None,
    ) -> np.ndarray:
        """Up to k distinct clients drawn uniformly from those available at ``now`` and not busy.

        Rejection sampling (draw ids from the counter-based stream (seed, counter), keep
        available idle ones, first drawn first kept) costs O(k) when most clients qualify;
        after a few thin draws it falls back to one O(N) scan. ``busy_mask`` (bool[N], True
        exactly for the clients in ``busy``; the engine keeps one, else it is built here) makes that
        scan one vectorised pass and the shuffle O(k): the same clients either way.
        """
        n = self.num_clients
        if k <= 0:
            return np.empty(0, dtype=np.int64)
        chosen: list[int] = []
        seen: set[int] = set()
        check = self.participation.time_varying
        attempts = 4 if 2 * len(busy) < n else 0  # mostly busy: scan at once
        for attempt in range(attempts):
            wanted = k - len(chosen)
            draws = [h % n for h in splitmix_ints(seed, "select-idle", 4 * counter + attempt, wanted + wanted // 4 + 2)]
            ok = self.available(np.asarray(draws, dtype=np.int64), now).tolist() if check else None
            for i, cid in enumerate(draws):
                if (ok is None or ok[i]) and cid not in busy and cid not in seen:
                    seen.add(cid)
                    chosen.append(cid)
                    if len(chosen) == k:
                        return np.asarray(chosen, dtype=np.int64)
        if not check and n <= 100_000:  # small, mostly busy population: list the idle clients directly
            if busy_mask is None:
                busy_mask = np.zeros(n, dtype=bool)
                busy_mask[np.fromiter(busy, dtype=np.int64, count=len(busy))] = True
            idle_ids = np.flatnonzero(~busy_mask)
            if seen:
                idle_ids = idle_ids[~np.isin(idle_ids, np.fromiter(seen, dtype=np.int64, count=len(seen)))]
            picks = splitmix_ints(seed, "select-idle-scan", counter, min(k - len(chosen), len(idle_ids)))
            return np.asarray(chosen + _partial_shuffle(idle_ids, picks), dtype=np.int64)
        rest = self.idle_available(now, busy, busy_mask)
        if seen:
            rest = rest[~np.isin(rest, np.fromiter(seen, dtype=np.int64))]
        rng = numpy_generator(seed, "select-idle-scan", counter)
        extra = rng.choice(rest, size=min(k - len(chosen), len(rest)), replace=False) if len(rest) else rest
        return np.concatenate([np.asarray(chosen, dtype=np.int64), extra.astype(np.int64)])

    def round_participants(
        self, round: int, now: float, busy: Collection[int] = (), extra_fraction: float = 0.0
    ) -> np.ndarray:
        """Sync rounds: the clients that take part in ``round`` starting at ``now`` (sorted).

        Every available idle client, unless the model selects among them (``uniform``: the
        server samples ``clients_per_round``, times ``1 + extra_fraction`` for over-selection).
        """
        candidates = self.idle_available(now, busy)
        select = getattr(self.participation, "select", None)
        if select is None:
            return candidates
        return select(round, candidates, extra_fraction)

    # ------------------------------------------------------------------ job timing

    def timing(
        self,
        client_ids: np.ndarray,
        steps: np.ndarray | Sequence[int],
        dispatch_counts: np.ndarray | Sequence[int],
        dropouts: bool = True,
        up_bits: np.ndarray | Sequence[float] | None = None,
        down_bits: np.ndarray | Sequence[float] | None = None,
        now: float = 0.0,
    ) -> JobTiming:
        """Virtual seconds each job takes: local steps x step time + communication + random delay.

        Communication moves ``down_bits`` then ``up_bits`` per job (default: the dense model each
        way) over the client's link (or ``bandwidth``) when one is set. A dropped job ends at a
        uniformly drawn fraction of its duration. Draws are keyed by (client, the client's
        dispatch count).
        """
        ids = np.asarray(client_ids, dtype=np.int64)
        plain = (
            self.extra_delay == 0
            and (self.dropout_prob == 0 or not dropouts)
            and self.bandwidth is None
            and self.link is None
        )
        if plain and len(ids) == 1:  # the common asynchronous refill: skip array arithmetic
            duration = float(steps[0]) * float(self.step_times[ids[0]]) + self.comm_time
            return JobTiming(np.array([duration]), np.zeros(1, dtype=bool))
        counts = np.asarray(dispatch_counts, dtype=np.int64)
        durations = np.asarray(steps, dtype=np.float64) * self.step_times[ids] + self.comm_time
        if self.link is not None or (self.bandwidth is not None and self.model_bits > 0):
            up = np.full(len(ids), self.model_bits) if up_bits is None else np.asarray(up_bits, dtype=np.float64)
            down = np.full(len(ids), self.model_bits) if down_bits is None else np.asarray(down_bits, dtype=np.float64)
            if self.link is not None:
                durations = durations + self.link.seconds(ids, up, down, now, durations)
            else:
                durations = durations + (down + up) / self.bandwidth(ids)
        if self.extra_delay > 0:
            u = uniform_per_client(self.seed, "extra-delay", ids, counts)
            durations = durations - self.extra_delay * np.log1p(-u)  # Exp(mean extra_delay)
        dropped = np.zeros(len(ids), dtype=bool)
        if dropouts and self.dropout_prob > 0:
            dropped = uniform_per_client(self.seed, "dropout", ids, counts) < self.dropout_prob
            if dropped.any():
                fraction = uniform_per_client(self.seed, "dropout-at", ids, counts)
                durations = np.where(dropped, durations * fraction, durations)
        return JobTiming(durations, dropped)

    @functools.cached_property
    def step_times(self) -> np.ndarray:
        """Every client's seconds per local step, computed once (8 bytes per client)."""
        return np.asarray(self.speed.step_time(np.arange(self.num_clients, dtype=np.int64)), dtype=np.float64)

    def durations(self, client_ids: np.ndarray, steps: np.ndarray) -> np.ndarray:
        """Full durations of first dispatches (dropouts ignored); handy for tests and planning."""
        ids = np.asarray(client_ids, dtype=np.int64)
        return self.timing(ids, steps, np.zeros(len(ids), dtype=np.int64), dropouts=False).durations

    def info(self) -> PopulationInfo:
        return PopulationInfo(
            num_clients=self.num_clients,
            num_samples=self.num_samples,
            participation_prob=self.participation.probabilities,
        )


def build_population(config: Any, data: Any, seed: int, model_bits: float = 0.0, batch_size: int = 1) -> Population:
    speed = SPEEDS.get(config.speed)(config, data, seed, batch_size=batch_size)
    bandwidth = getattr(speed, "bandwidth", None)  # device files carry per-client bandwidth
    if bandwidth is None and config.bandwidth is not None:
        bits_per_second = config.bandwidth * 1e6

        def bandwidth(ids: np.ndarray) -> np.ndarray:
            return np.full(len(ids), bits_per_second)

    return Population(
        participation=PARTICIPATION.get(config.participation)(config, data, seed),
        speed=speed,
        comm_time=config.comm_time,
        num_samples=np.asarray(data.num_samples, dtype=np.int64),
        seed=seed,
        round_length=config.round_length,
        model_bits=model_bits,
        bandwidth=bandwidth,
        extra_delay=config.extra_delay,
        dropout_prob=config.dropout_prob,
    )


def _partial_shuffle(ids: np.ndarray, picks: list[int]) -> list[int]:
    """The first ``len(picks)`` entries of a partial Fisher-Yates shuffle of ``ids`` by ``picks``.

    Swap i takes position ``i + picks[i] % (len(ids) - i)``. Only the positions a swap moved
    are remembered, so ``ids`` is never copied into a list: O(len(picks)).
    """
    moved: dict[int, int] = {}  # position -> the id a swap put there
    out = []
    for i, h in enumerate(picks):
        j = i + h % (len(ids) - i)
        at_j = moved.pop(j, None)
        out.append(int(ids[j]) if at_j is None else at_j)
        if j != i:
            at_i = moved.pop(i, None)
            moved[j] = int(ids[i]) if at_i is None else at_i
    return out


def slot_of(now: float, round_length: float) -> int:
    """The availability slot containing virtual time ``now``."""
    return int(math.floor(now / round_length + 1e-9))
