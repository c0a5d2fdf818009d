"""Weightings (strategies/weighting.py and every registered weighting): coefficients, empty rounds, order."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedsim.types import ClientResult, PopulationInfo
from strategies import WEIGHTINGS

POP = PopulationInfo(
    num_clients=4,
    num_samples=np.array([10, 30, 60, 100]),
    participation_prob=np.array([0.5, 0.25, 1.0, 0.1]),
)
# participants 2, 0, 1 (deliberately not in id order): coefficients must follow the client id
RESULTS = [
    ClientResult(2, 0, torch.tensor([1.0, 1.0]), 60, 1),
    ClientResult(0, 0, torch.tensor([2.0, 0.0]), 10, 1),
    ClientResult(1, 0, torch.tensor([0.0, 4.0]), 30, 1),
]


def _aggregate(name: str, results, population=POP, dim=2):
    agg = WEIGHTINGS.get(name)()
    u, _ = agg.aggregate(agg.init(torch.zeros(dim), population), results, 0)
    return u


def _weiszfeld_numpy(x, steps=3, nu=1e-6):  # smoothed Weiszfeld from the mean, written out in numpy
    z = x.mean(0)
    for _ in range(steps):
        w = 1 / np.maximum(np.linalg.norm(x - z, axis=1), nu)
        z = (w[:, None] * x).sum(0) / w.sum()
    return z.tolist()


GEOMED = _weiszfeld_numpy(np.array([[2.0, 0.0], [0.0, 4.0], [1.0, 1.0]]))
# U on RESULTS from a fresh state, for every registered weighting
HAND_EXPECTED = {
    "samples": [0.1 * 2 + 0.6 * 1, 0.3 * 4 + 0.6 * 1],  # c = m_i / (10 + 30 + 60) = 0.1, 0.3, 0.6
    "uniform": [1.0, 5 / 3],  # c = 1/3
    "average_all": [0.75, 1.25],  # c = 1/4
    "known_prob": [1.25, 4.25],  # c = 1/(4 p) = 0.5, 1.0, 0.25
    "fedau": [0.75, 1.25],  # first participation: omega = 1, c = 1/N
    "mifa": [0.75, 1.25],  # (1/N) sum of stored = the 3 fresh ones; client 3 stores 0
    "fedvarp": [1.0, 5 / 3],  # y_bar = 0, G = 0: mean over participants
    "fedfix": [0.4, 0.9],  # staleness 0: c = m_i / (sum of ALL m = 200) = 0.05, 0.15, 0.3
    "afa_cd": [1.0, 5 / 3],  # one step each: c = 1 / (m K_i) = 1/3
    "afa_cs": [0.75, 1.25],  # one step each: (1/M) sum of stored, as MIFA
    "scaffold": [1.0, 5 / 3],  # U = plain mean of the deltas (c is updated from the extras)
    "fedcm": [1.0, 5 / 3],  # U = plain mean of the deltas (momentum from the extras)
    "admm": [1.0, 5 / 3],  # z = unweighted mean of the sent w_i + lambda_i / rho, whatever the sample counts
    "feddyn": [1.0 + 0.75, 5 / 3 + 1.25],  # mean delta + (1/N) sum of h = the 3 fresh deltas
    "expected_cohort": [3 / 1.85, 5 / 1.85],  # sum of deltas / D, D = sum of p = 1.85 (no privacy plan)
    # robust rules with f = 0 (no attackers assumed); unweighted
    "median": [1.0, 1.0],  # per coordinate: median of (2, 0, 1) and of (0, 4, 1)
    "trimmed_mean": [1.0, 5 / 3],  # f = 0: the mean
    "krum": [2.0, 0.0],  # 1 neighbour: scores 2 (client 0), 10, 2 (client 2): the tie goes to client 0
    "multi_krum": [1.0, 5 / 3],  # m = n - f = 3: the mean
    "bulyan": [1.0, 5 / 3],  # f = 0: theta = beta = n, the mean
    "geomed": GEOMED,  # 3 smoothed Weiszfeld steps from the mean
    "centered_clipping": [(1 + 0.5**0.5) / 3] * 2,  # from 0, tau = 1: mean of (1, 0), (0, 1), (1, 1)/sqrt(2)
    "monna": [1.0, 5 / 3],  # f = 0: every neighbourhood is everyone, then the mean
}
for _r in RESULTS:  # what the stateful clients send their server parts
    _r.extras = {"delta_c": torch.zeros(2), "mean_grad": torch.zeros(2)}


@pytest.mark.parametrize("name", sorted(HAND_EXPECTED))
def test_coefficients_on_hand_example(name):
    torch.testing.assert_close(_aggregate(name, RESULTS), torch.tensor(HAND_EXPECTED[name]))


def test_every_weighting_has_a_hand_example():
    assert set(HAND_EXPECTED) == set(WEIGHTINGS.names())


def test_known_prob_needs_probabilities():
    with pytest.raises(ValueError, match="known_prob"):
        WEIGHTINGS.get("known_prob")().init(torch.zeros(2), PopulationInfo(4, num_samples=POP.num_samples))


def test_samples_falls_back_to_uniform_without_samples():
    results = [ClientResult(0, 0, torch.tensor([2.0]), 0, 1), ClientResult(1, 0, torch.tensor([4.0]), 0, 1)]
    torch.testing.assert_close(_aggregate("samples", results, dim=1), torch.tensor([3.0]))


def test_full_participation_baselines_equal_fedavg():
    # with full participation average_all, and known_prob with p = 1, are the plain average (FedAU paper, Sec. 3)
    pop = PopulationInfo(3, num_samples=np.array([1, 1, 1]), participation_prob=np.ones(3))
    results = [ClientResult(i, 0, torch.tensor([float(i), 1.0 - i]), 1, 1) for i in range(3)]
    expected = _aggregate("uniform", results, pop)
    for name in ("average_all", "known_prob", "samples"):
        torch.testing.assert_close(_aggregate(name, results, pop), expected)


@pytest.mark.parametrize("name", WEIGHTINGS.names())
def test_empty_first_round_gives_zero(name):
    u = _aggregate(name, [])
    assert torch.equal(u, torch.zeros(2))


@pytest.mark.parametrize("name", WEIGHTINGS.names())
def test_empty_round_after_updates(name):
    agg = WEIGHTINGS.get(name)()
    state = agg.init(torch.zeros(2), POP)
    _, state = agg.aggregate(state, RESULTS, 0)
    u, _ = agg.aggregate(state, [], 1)
    if name in ("mifa", "afa_cs"):  # MIFA (and AFA-CS) keep applying the mean of stored updates (paper, reference code)
        torch.testing.assert_close(u, torch.tensor([0.75, 1.25]))
    else:
        assert torch.equal(u, torch.zeros(2))


@pytest.mark.parametrize("name", WEIGHTINGS.names())
def test_result_order_does_not_matter(name):
    g = torch.Generator().manual_seed(3)
    rounds = [[0, 1, 3], [2, 3], [0, 1, 2, 3], [1]]
    deltas = [[torch.randn(5, generator=g) for _ in ids] for ids in rounds]
    runs = []
    for perm_seed in (None, 11):
        rng = np.random.default_rng(perm_seed)
        agg = WEIGHTINGS.get(name)()
        state = agg.init(torch.zeros(5), POP)
        us = []
        for t, (ids, ds) in enumerate(zip(rounds, deltas)):
            results = [ClientResult(i, t, d, int(POP.num_samples[i]), 1, extras={"delta_c": d, "mean_grad": -d})
                       for i, d in zip(ids, ds)]  # fmt: skip
            if perm_seed is not None:
                results = [results[k] for k in rng.permutation(len(results))]
            u, state = agg.aggregate(state, results, t)
            us.append(u)
        runs.append(us)
    for a, b in zip(*runs):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
