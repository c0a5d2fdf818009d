"""FedAU (strategies/fedau.py; Wang & Ji, arXiv 2306.03401, Algorithm 1): its invariants, and an exact replay
against the reference code's eager per-round algorithm."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedsim.config import StrategyConfig
from fedsim.types import ClientResult, PopulationInfo
from strategies import FedAUWeighting, build_strategy


def _pop(n: int) -> PopulationInfo:
    return PopulationInfo(n, num_samples=np.arange(1, n + 1) * 10, participation_prob=np.full(n, 0.5))


def _used_weights(pattern: np.ndarray, cutoff: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Run FedAUWeighting over a participation pattern [T, N] with one-hot deltas (float64).

    Returns (weights applied in each round, 0 for absent clients; weights(state, t) before each round).
    N * U = the applied weights, because client n sends e_n.
    """
    rounds, n = pattern.shape
    agg = FedAUWeighting(cutoff)
    state = agg.init(torch.zeros(n, dtype=torch.float64), _pop(n))
    eye = torch.eye(n, dtype=torch.float64)
    used, before = np.zeros((rounds, n)), np.zeros((rounds, n))
    for t in range(rounds):
        before[t] = agg.weights(state, t)
        results = [ClientResult(int(i), t, eye[i], 1, 1) for i in np.flatnonzero(pattern[t])]
        u, state = agg.aggregate(state, results, t)
        used[t] = n * u.numpy()
    return used, before


def _final_weights(pattern: np.ndarray, cutoff: int | None) -> np.ndarray:
    """weights(state, T) after aggregating every round of a pattern [T, N] (deltas irrelevant)."""
    rounds, n = pattern.shape
    agg = FedAUWeighting(cutoff)
    state = agg.init(torch.zeros(1), _pop(n))
    one = torch.ones(1)
    for t in range(rounds):
        _, state = agg.aggregate(state, [ClientResult(int(i), t, one, 1, 1) for i in np.flatnonzero(pattern[t])], t)
    return agg.weights(state, rounds)


def _reference(pattern: np.ndarray, cutoff: int | None) -> tuple[np.ndarray, np.ndarray]:
    """IBM/fedau main.py, eager: every client is touched every round (github.com/IBM/fedau)."""
    rounds, n = pattern.shape
    not_participated = [0] * n
    intervals: list[list[int]] = [[] for _ in range(n)]
    used, before = np.zeros((rounds, n)), np.zeros((rounds, n))
    for t in range(rounds):
        for i in range(n):
            before[t, i] = np.mean(intervals[i]) if intervals[i] else 1.0
            if pattern[t, i]:
                used[t, i] = np.mean(intervals[i]) if intervals[i] else 1.0
                intervals[i].append(not_participated[i] + 1)
                not_participated[i] = 0
            else:
                not_participated[i] += 1
                if cutoff is not None and not_participated[i] >= cutoff:
                    intervals[i].append(cutoff)
                    not_participated[i] = 0
    return used, before


def _bernoulli(probs, rounds: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).random((rounds, len(probs))) < np.asarray(probs)


@pytest.mark.parametrize("cutoff", [None, 1, 3, 7])
def test_lazy_weights_replay_reference_exactly(cutoff):
    pattern = _bernoulli([0.05, 0.15, 0.3, 0.5, 0.8, 1.0], rounds=120, seed=5)
    used, before = _used_weights(pattern, cutoff)
    ref_used, ref_before = _reference(pattern, cutoff)
    np.testing.assert_allclose(used, ref_used, rtol=1e-12, atol=0)
    np.testing.assert_allclose(before, ref_before, rtol=1e-12, atol=0)


def test_absent_exactly_k_rounds_records_k_then_1():
    # K = 3: present at 0 (records 1), absent 1..3 (closes 3), present at 4 (weight mean(1, 3) = 2,
    # records 1 -- not K + 1 = 4), present at 5 (weight mean(1, 3, 1) = 5/3)
    pattern = np.array([[1], [0], [0], [0], [1], [1]], dtype=bool)
    used, _ = _used_weights(pattern, cutoff=3)
    np.testing.assert_allclose(used[:, 0], [1.0, 0, 0, 0, 2.0, 5 / 3])
    np.testing.assert_allclose(_reference(pattern, 3)[0][:, 0], used[:, 0])


def test_weights_settles_long_absences_with_cutoff():
    agg = FedAUWeighting(cutoff=3)
    state = agg.init(torch.zeros(1), _pop(2))
    _, state = agg.aggregate(state, [ClientResult(0, 0, torch.ones(1), 1, 1)], 0)
    # client 0: interval 1, then rounds 1..9 absent close three intervals of 3 -> mean(1, 3, 3, 3)
    # client 1: absent 0..9 closes three intervals of 3 (the 10th round is still open) -> 3
    np.testing.assert_allclose(agg.weights(state, 10), [2.5, 3.0])
    np.testing.assert_allclose(agg.weights(state, 1), [1.0, 1.0])  # no cutoff interval closed yet


def test_first_participation_has_weight_one_without_cutoff():
    pattern = np.zeros((10, 1), dtype=bool)
    pattern[7] = pattern[8] = True
    used, before = _used_weights(pattern, cutoff=None)
    assert used[7, 0] == 1.0  # first time seen: unscaled, although 7 rounds went by
    assert used[8, 0] == 8.0  # the first interval counts from round 0: rounds 0..7
    assert before[9, 0] == pytest.approx((8 + 1) / 2)


@pytest.mark.parametrize("cutoff", [1, 2, 5])
def test_weights_between_one_and_cutoff(cutoff):
    pattern = _bernoulli([0.01, 0.1, 0.3, 0.9], rounds=300, seed=cutoff)
    used, before = _used_weights(pattern, cutoff)
    assert ((before >= 1) & (before <= cutoff)).all()
    applied = used[pattern]
    assert ((applied >= 1) & (applied <= cutoff)).all()


def test_cyclic_pattern_converges_to_period_over_active():
    period, active, cycles = 10, 3, 100
    t = np.arange(period * cycles)
    pattern = np.stack([t % period >= period - active, t % period < active], axis=1)  # two phases
    _, before = _used_weights(pattern, cutoff=None)
    # client 0 records 8, 1, 1 per cycle: exactly 10/3; client 1 starts active: 1, 1, 1, then 8, 1, 1, ...
    last = len(t) - active  # first active round of the last cycle: 99 whole cycles recorded before it
    assert before[last, 0] == pytest.approx(period / active, rel=1e-12)
    assert before[last, 1] == pytest.approx(period / active, abs=0.03)
    assert abs(before[last, 1] - period / active) < abs(before[len(t) // 10, 1] - period / active)


def test_bernoulli_weights_converge_to_inverse_probability():
    probs = np.array([0.5, 0.2, 0.1])
    weights = _final_weights(_bernoulli(probs, rounds=20000, seed=0), cutoff=None)
    np.testing.assert_allclose(weights, 1 / probs, rtol=0.08)


def test_bernoulli_weights_with_cutoff_converge_to_truncated_mean():
    probs, k = np.array([0.5, 0.2, 0.1]), 5
    weights = _final_weights(_bernoulli(probs, rounds=5000, seed=1), cutoff=k)
    expected = (1 - (1 - probs) ** k) / probs  # E[min(Geometric(p), K)]
    np.testing.assert_allclose(weights, expected, rtol=0.05)
    assert (1 / probs - weights > 0.2 * expected)[1:].all()  # visibly biased below 1/p


def _run(cfg: StrategyConfig, rounds: list[list[int]], n: int, dim: int = 3, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    strategy = build_strategy(cfg)
    pop = _pop(n)
    state = strategy.init(torch.randn(dim, generator=g), pop)
    trajectory = []
    for t, ids in enumerate(rounds):
        results = [ClientResult(i, t, torch.randn(dim, generator=g), int(pop.num_samples[i]), 1) for i in ids]
        state = strategy.aggregate(state, results, float(t))
        trajectory.append(state.params)
    return trajectory


@pytest.mark.parametrize("cutoff", [None, 2])
def test_full_participation_is_identical_to_uniform_average(cutoff):
    n = 4
    rounds = [list(range(n))] * 6
    fedau = _run(StrategyConfig(name="fedau", cutoff=cutoff), rounds, n)
    fedavg = _run(StrategyConfig(name="fedavg_participating"), rounds, n)
    for a, b in zip(fedau, fedavg):
        assert torch.equal(a, b)


def test_cutoff_one_is_identical_to_average_all():
    n = 5
    pattern = _bernoulli([0.1, 0.3, 0.5, 0.7, 0.9], rounds=30, seed=2)
    rounds = [[int(i) for i in np.flatnonzero(row)] for row in pattern]
    fedau = _run(StrategyConfig(name="fedau", cutoff=1), rounds, n)
    average_all = _run(StrategyConfig(name="fedavg_all"), rounds, n)
    for a, b in zip(fedau, average_all):
        assert torch.equal(a, b)
    _, before = _used_weights(pattern, cutoff=1)
    assert (before == 1).all()


def test_duplicate_client_in_a_round_rejected():
    agg = FedAUWeighting()
    state = agg.init(torch.zeros(1), _pop(2))
    results = [ClientResult(0, 0, torch.ones(1), 1, 1)] * 2
    with pytest.raises(ValueError, match="at most once"):
        agg.aggregate(state, results, 0)


def test_cutoff_below_one_rejected():
    with pytest.raises(ValueError, match="cutoff"):
        FedAUWeighting(cutoff=0)
