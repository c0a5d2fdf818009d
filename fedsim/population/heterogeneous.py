"""Participation models with heterogeneous per-client probabilities p_n, plus availability traces.

The probabilities, and the Bernoulli, Markov and cyclic models, follow FedAU (S. Wang, M. Ji,
"A Lightweight Method for Tackling Unknown Participation Statistics in Federated Averaging",
arXiv 2306.03401, Sec. 6 and Appendix) and its reference code (github.com/IBM/fedau):

- ``bernoulli``: client n takes part in each round independently with probability p_n. A round
  with no participant is returned as empty (no redraw, as in FedAU's code); the engine then
  applies a zero update.
- ``markov``: a two-state chain per client with stationary probability p_n.
- ``cyclic``: each client alternates fixed-length inactive and active blocks.
- ``trace``: availability from a trace file (CSV or FedScale's ``client_behave_trace``; Lai et
  al., ICML 2022, arXiv 2105.11367), see :mod:`fedsim.population.traces`.

On the engine's clock a "round" of these models is an availability slot of ``round_length``
virtual seconds: ``available(ids, now)`` reads slot ``floor(now / round_length)`` (traces read
``now`` itself). ``participants(slot)`` is the same question for every client at once.

Every per-round, per-client draw comes from :func:`fedsim.rng.uniform`, keyed by the client id,
so a client's pattern depends only on (seed, its id, its p_n): adding clients never changes it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.special import betaincinv

from fedsim.data.federated import LazyFederatedData
from fedsim.population.base import PARTICIPATION, slot_of
from fedsim.population.traces import AvailabilityTrace, load_trace
from fedsim.rng import numpy_generator, uniform

__all__ = [
    "participation_probabilities",
    "correlates_with_data",
    "BernoulliParticipation",
    "MarkovParticipation",
    "CyclicParticipation",
    "TraceParticipation",
]


def participation_probabilities(config: Any, data: Any, seed: int) -> np.ndarray:
    """Heterogeneous long-run participation probabilities p_n (float64[N], in [min_prob, 1]).

    ``correlate_with_data`` (FedAU §2.6): one class-preference vector u ~ Dirichlet(prob_alpha 1_C)
    and p_n = max(min_prob, C * mean_prob * <pi_n, u>), pi_n the client's label histogram, so
    clients holding favoured classes take part often. Since E[u] = 1_C / C, the mean before the
    floor is mean_prob.

    Otherwise p_n are i.i.d. Beta(a, a (1/mean_prob - 1)) with a = prob_alpha, floored at
    min_prob: mean mean_prob before the floor, and the same skew as the correlated case for a
    client holding one class (there p_n / (C mean_prob) ~ Beta(a, (C-1) a), a Dirichlet marginal).
    The floor raises the mean slightly (about 0.112 for the defaults mean 0.1, floor 0.02, a 0.1).
    """
    n = data.num_clients
    mean_prob, min_prob = config.probability_range(n)
    if correlates_with_data(config, data):
        c = data.num_classes
        u = numpy_generator(seed, "participation-classes").dirichlet(np.full(c, config.prob_alpha))
        raw = c * mean_prob * (data.label_histograms() @ u)
    else:
        a = config.prob_alpha
        draws = uniform(seed, "participation-iid", np.arange(n), 0)
        raw = betaincinv(a, a * (1.0 / mean_prob - 1.0), draws)
    p = np.clip(np.nan_to_num(raw, nan=0.0), min_prob, 1.0)
    return p.astype(np.float64)


LAZY_HISTOGRAM_LIMIT = 10_000  # label histograms of more lazily generated clients would generate them all


def correlates_with_data(config: Any, data: Any) -> bool:
    """``config.correlate_with_data`` resolved: "auto" is true unless the data is generated lazily
    for more than LAZY_HISTOGRAM_LIMIT clients (their label histograms would materialise every client)."""
    if config.correlate_with_data != "auto":
        return bool(config.correlate_with_data)
    return not (isinstance(data, LazyFederatedData) and data.num_clients > LAZY_HISTOGRAM_LIMIT)


def _check_probabilities(probabilities: np.ndarray) -> np.ndarray:
    p = np.asarray(probabilities, dtype=np.float64).reshape(-1)
    if np.any(~(p >= 0)) or np.any(p > 1):
        raise ValueError("participation probabilities must lie in [0, 1]")
    return p


class BernoulliParticipation:
    """Client n is active in round t iff uniform(seed, "bernoulli", n, t) < p_n. Empty rounds are kept."""

    time_varying = True

    def __init__(self, probabilities: np.ndarray, seed: int, round_length: float = 1.0):
        self.probabilities = _check_probabilities(probabilities)
        self.seed, self.round_length = seed, round_length

    def available(self, ids: np.ndarray, now: float) -> np.ndarray:
        slot = slot_of(now, self.round_length)
        return uniform(self.seed, "bernoulli", ids, slot) < self.probabilities[ids]

    def participants(self, round: int) -> np.ndarray:
        ids = np.arange(len(self.probabilities), dtype=np.int64)
        return ids[uniform(self.seed, "bernoulli", ids, round) < self.probabilities]


class MarkovParticipation:
    """Two-state chain per client (FedAU paper's Markovian participation; IBM/fedau ``markov-q``).

    P(inactive -> active) = q = ``rate``, P(active -> inactive) = q (1/p_n - 1). Where the latter
    exceeds 1 it becomes 1 and q is divided by the same factor, so the stationary probability is
    exactly p_n. The initial state is Bernoulli(p_n); each round first transitions, then reports.
    State is one byte per client; rounds must be asked in increasing order (asking an earlier
    round replays the chain from the start, so results stay deterministic).
    """

    time_varying = True

    def __init__(self, probabilities: np.ndarray, rate: float, seed: int, round_length: float = 1.0):
        p = _check_probabilities(probabilities)
        self.round_length = round_length
        if not 0 < rate <= 1:
            raise ValueError(f"population.markov_rate must be in (0, 1], got {rate}")
        self.probabilities, self.seed = p, seed
        with np.errstate(divide="ignore"):
            leave = rate * (1.0 / p - 1.0)  # inf where p = 0
        scale = np.maximum(leave, 1.0)
        self.p_join = rate / scale  # 0 where p = 0: never joins
        self.p_leave = leave / scale
        self.p_leave[p == 0] = 1.0
        self._reset()

    def _reset(self) -> None:
        ids = np.arange(len(self.probabilities))
        self.active = uniform(self.seed, "markov-init", ids, 0) < self.probabilities
        self._next_round = 0

    def available(self, ids: np.ndarray, now: float) -> np.ndarray:
        slot = slot_of(now, self.round_length)
        if slot != self._next_round - 1:
            self.participants(slot)
        return self.active[ids]

    def participants(self, round: int) -> np.ndarray:
        if round < self._next_round:
            self._reset()
        ids = np.arange(len(self.probabilities), dtype=np.int64)
        while self._next_round <= round:
            u = uniform(self.seed, "markov", ids, self._next_round)
            self.active = np.where(self.active, u >= self.p_leave, u < self.p_join)
            self._next_round += 1
        return ids[self.active]


class CyclicParticipation:
    """Fixed-length inactive/active blocks (FedAU paper's cyclic participation; IBM/fedau ``cyclic-P``).

    Active block A_n = max(1, round(P p_n)), inactive block B_n = max(1, P - A_n); the client
    starts inactive with a phase r_n ~ UniformInt[0, B_n), so it is active in round t iff
    t >= r_n and (t - r_n) mod (A_n + B_n) < A_n (the ref-code's counter, in closed form).
    ``probabilities`` is the REALISED rate A_n / (A_n + B_n), which differs from the target p_n
    (kept as ``target_probabilities``) when P p_n < 1.5 or P p_n is not an integer.
    """

    time_varying = True

    def __init__(self, probabilities: np.ndarray, period: int, seed: int, round_length: float = 1.0):
        p = _check_probabilities(probabilities)
        self.round_length = round_length
        if period < 2:
            raise ValueError(f"population.cyclic_period must be >= 2, got {period}")
        self.target_probabilities = p
        # np.rint rounds half to even, like Python's round() in the reference code.
        self.active_len = np.maximum(1, np.rint(period * p)).astype(np.int64)
        self.inactive_len = np.maximum(1, period - self.active_len)
        phase = np.floor(uniform(seed, "cyclic-phase", np.arange(len(p)), 0) * self.inactive_len)
        self.phase = np.minimum(phase.astype(np.int64), self.inactive_len - 1)
        self.probabilities = self.active_len / (self.active_len + self.inactive_len)

    def available(self, ids: np.ndarray, now: float) -> np.ndarray:
        since = slot_of(now, self.round_length) - self.phase[ids]
        return (since >= 0) & (np.mod(since, self.active_len[ids] + self.inactive_len[ids]) < self.active_len[ids])

    def participants(self, round: int) -> np.ndarray:
        since = round - self.phase
        active = (since >= 0) & (np.mod(since, self.active_len + self.inactive_len) < self.active_len)
        return np.flatnonzero(active).astype(np.int64)


class TraceParticipation:
    """Client n is available at virtual time t iff its trace client is online at t.

    ``participants(slot)`` asks at the slot's start, ``slot * round_length``.

    Population client n uses trace client n mod K (trace ids in sorted order), so a trace with
    fewer clients than the population is cycled. Time wraps modulo each trace client's period.
    ``probabilities`` is the fraction of the period the client is online.
    """

    time_varying = True

    def __init__(self, trace: AvailabilityTrace, num_clients: int, round_length: float):
        if round_length <= 0:
            raise ValueError(f"population.round_length must be positive, got {round_length}")
        self.trace, self.num_clients, self.round_length = trace, num_clients, round_length
        self.probabilities = self._expand(trace.availability_fraction())
        if not np.any(self.probabilities > 0):  # nobody could ever train: refuse instead of running empty rounds
            used = min(num_clients, trace.num_clients)
            raise ValueError(
                f"population.trace_path: none of the {used} trace clients this population uses is ever "
                "available (no interval of positive length)"
            )

    def _expand(self, per_trace_client: np.ndarray) -> np.ndarray:
        k = self.trace.num_clients
        if self.num_clients <= k:
            return per_trace_client[: self.num_clients]
        return per_trace_client[np.arange(self.num_clients) % k]

    def available(self, ids: np.ndarray, now: float) -> np.ndarray:
        return self.trace.available_clients(np.asarray(ids, dtype=np.int64) % self.trace.num_clients, now)

    def participants(self, round: int) -> np.ndarray:
        return np.flatnonzero(self._expand(self.trace.available(round * self.round_length))).astype(np.int64)


@PARTICIPATION.register(
    "bernoulli",
    "each client joins each round independently with heterogeneous p_n (FedAU)",
    options=("population.mean_prob", "population.min_prob", "population.prob_alpha", "population.correlate_with_data"),
)
def bernoulli(config: Any, data: Any, seed: int) -> BernoulliParticipation:
    return BernoulliParticipation(participation_probabilities(config, data, seed), seed, config.round_length)


@PARTICIPATION.register(
    "markov",
    "two-state Markov chain per client, stationary prob p_n, join prob markov_rate",
    options=(
        "population.mean_prob",
        "population.min_prob",
        "population.prob_alpha",
        "population.correlate_with_data",
        "population.markov_rate",
    ),
)
def markov(config: Any, data: Any, seed: int) -> MarkovParticipation:
    return MarkovParticipation(
        participation_probabilities(config, data, seed), config.markov_rate, seed, config.round_length
    )


@PARTICIPATION.register(
    "cyclic",
    "each client alternates inactive/active blocks over cyclic_period rounds (FedAU)",
    options=(
        "population.mean_prob",
        "population.min_prob",
        "population.prob_alpha",
        "population.correlate_with_data",
        "population.cyclic_period",
    ),
)
def cyclic(config: Any, data: Any, seed: int) -> CyclicParticipation:
    return CyclicParticipation(
        participation_probabilities(config, data, seed), config.cyclic_period, seed, config.round_length
    )


@PARTICIPATION.register(
    "trace",
    "availability from trace_path (CSV client_id,start,end or FedScale pickle)",
    options=("population.trace_path", "population.round_length"),
)
def trace(config: Any, data: Any, seed: int) -> TraceParticipation:
    if config.trace_path is None:
        raise ValueError("population.trace_path must be set for population.participation=trace")
    return TraceParticipation(load_trace(config.trace_path), data.num_clients, config.round_length)
