"""MIFA (strategies/mifa.py) and FedVARP (strategies/fedvarp.py): hand examples and invariants."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedsim.config import StrategyConfig
from fedsim.types import ClientResult, PopulationInfo
from strategies import MIFA, FedVARP, build_strategy

POP3 = PopulationInfo(3, num_samples=np.array([5, 5, 5]), participation_prob=np.full(3, 0.5))


def _results(round: int, deltas: dict[int, list[float]]) -> list[ClientResult]:
    return [ClientResult(i, round, torch.tensor(d), 5, 1) for i, d in deltas.items()]


# N = 3, d = 2, three rounds of partial participation
ROUNDS = [
    {0: [2.0, 0.0], 1: [0.0, 4.0]},
    {1: [0.0, 1.0], 2: [3.0, 3.0]},
    {0: [-1.0, 2.0]},
]
# MIFA: U = (1/3) * sum of the latest update of each client (0 if never seen)
MIFA_U = [
    [2 / 3, 4 / 3],  # G = (2,0), (0,4), 0
    [5 / 3, 4 / 3],  # G = (2,0), (0,1), (3,3)
    [2 / 3, 2.0],  # G = (-1,2), (0,1), (3,3)
]
# FedVARP: U = y_bar_old + mean over S_t of (delta - G_old); y_bar = MIFA's U of the same round
FEDVARP_U = [
    [1.0, 2.0],  # 0 + ((2,0) + (0,4)) / 2
    [2 / 3 + 1.5, 4 / 3],  # (2/3, 4/3) + ((0,1) - (0,4) + (3,3) - 0) / 2
    [5 / 3 - 3, 4 / 3 + 2],  # (5/3, 4/3) + ((-1,2) - (2,0))
]


@pytest.mark.parametrize("aggregator, expected", [(MIFA(), MIFA_U), (FedVARP(), FEDVARP_U)])
def test_hand_example(aggregator, expected):
    state = aggregator.init(torch.zeros(2), POP3)
    for t, (deltas, u_expected) in enumerate(zip(ROUNDS, expected)):
        u, state = aggregator.aggregate(state, _results(t, deltas), t)
        torch.testing.assert_close(u, torch.tensor(u_expected))
        torch.testing.assert_close(state.mean, torch.tensor(MIFA_U[t]))  # y_bar = (1/N) sum_n G_n
    assert u.dtype == torch.float32


@pytest.mark.parametrize("name, expected", [("mifa", MIFA_U), ("fedvarp", FEDVARP_U)])
def test_strategy_applies_u_with_server_lr(name, expected):
    strategy = build_strategy(StrategyConfig(name=name, server_lr=0.5))
    state = strategy.init(torch.tensor([1.0, 1.0]), POP3)
    for t, deltas in enumerate(ROUNDS):
        state = strategy.aggregate(state, _results(t, deltas), float(t))
    torch.testing.assert_close(state.params, 1 + 0.5 * torch.tensor(expected).sum(0))


@pytest.mark.parametrize("name", ["mifa", "fedvarp"])
def test_full_participation_equals_uniform_fedavg(name):
    g = torch.Generator().manual_seed(0)
    n, dim = 4, 6
    pop = PopulationInfo(n, num_samples=np.array([1, 2, 3, 4]), participation_prob=np.ones(n))
    x0 = torch.randn(dim, generator=g)
    ours, fedavg = (
        build_strategy(StrategyConfig(name=name)),
        build_strategy(StrategyConfig(name="fedavg_participating")),
    )
    s_ours, s_avg = ours.init(x0, pop), fedavg.init(x0, pop)
    for t in range(8):
        results = [ClientResult(i, t, torch.randn(dim, generator=g), i + 1, 1) for i in range(n)]
        s_ours, s_avg = ours.aggregate(s_ours, results, t), fedavg.aggregate(s_avg, results, t)
        torch.testing.assert_close(s_ours.params, s_avg.params, rtol=1e-6, atol=1e-6)


def test_fedvarp_empty_round_keeps_y_bar():
    agg = FedVARP()
    state = agg.init(torch.zeros(2), POP3)
    _, state = agg.aggregate(state, _results(0, ROUNDS[0]), 0)
    u, after = agg.aggregate(state, [], 1)
    assert torch.equal(u, torch.zeros(2))
    torch.testing.assert_close(after.mean, torch.tensor(MIFA_U[0]))
    assert len(after.stored) == 2
    # the next round still uses the y_bar of round 0: (2/3, 4/3) + ((0,1) - (0,4) + (3,3)) / 2
    u, _ = agg.aggregate(after, _results(2, ROUNDS[1]), 2)
    torch.testing.assert_close(u, torch.tensor(FEDVARP_U[1]))


def test_mifa_empty_round_applies_stored_mean():
    # the paper and the reference code keep applying (1/N) sum_n G_n when nobody shows up
    agg = MIFA()
    state = agg.init(torch.zeros(2), POP3)
    u, state = agg.aggregate(state, [], 0)
    assert torch.equal(u, torch.zeros(2))
    _, state = agg.aggregate(state, _results(1, ROUNDS[0]), 1)
    u, _ = agg.aggregate(state, [], 2)
    torch.testing.assert_close(u, torch.tensor(MIFA_U[0]))


@pytest.mark.parametrize("aggregator", [MIFA(), FedVARP()])
def test_memory_grows_only_with_clients_seen(aggregator):
    dim = 100
    pop = PopulationInfo(100_000, num_samples=np.ones(100_000, dtype=np.int64))
    state = aggregator.init(torch.zeros(dim), pop)
    assert len(state.stored) == 0 and state.stored.nbytes() == 0
    for t, ids in enumerate([[3, 99_999], [3], [3, 7, 99_999], []]):
        _, state = aggregator.aggregate(state, [ClientResult(i, t, torch.ones(dim), 1, 1) for i in ids], t)
    assert len(state.stored) == 3  # clients 3, 7, 99_999
    assert state.stored.nbytes() == 3 * dim * 4  # one float32 update each


@pytest.mark.parametrize("aggregator", [MIFA(), FedVARP()])
def test_functional_state_and_stored_copies(aggregator):
    state0 = aggregator.init(torch.zeros(2), POP3)
    delta = torch.tensor([2.0, 0.0])
    _, state1 = aggregator.aggregate(state0, [ClientResult(0, 0, delta, 5, 1)], 0)
    delta.fill_(100.0)  # a caller reusing its buffer must not change the memory
    _, state2 = aggregator.aggregate(state1, _results(1, {0: [1.0, 1.0], 1: [0.0, 3.0]}), 1)
    assert len(state0.stored) == 0 and torch.equal(state0.total, torch.zeros(2, dtype=torch.float64))
    assert len(state1.stored) == 1 and torch.equal(state1.stored.get(0), torch.tensor([2.0, 0.0]))
    torch.testing.assert_close(state1.mean, torch.tensor([2 / 3, 0.0]))
    torch.testing.assert_close(state2.mean, torch.tensor([1 / 3, 4 / 3]))


def test_stored_updates_live_on_the_model_device_and_dtype():
    agg = MIFA()
    state = agg.init(torch.zeros(2), POP3)
    _, state = agg.aggregate(state, [ClientResult(0, 0, torch.tensor([1.0, 2.0], dtype=torch.float64), 5, 1)], 0)
    assert state.stored.get(0).dtype == torch.float32


@pytest.mark.parametrize("make", [MIFA, FedVARP])
def test_client_twice_in_one_update_counts_once_with_its_latest(make):
    # asynchronous buffers can hold one client twice: the later update supersedes the earlier
    agg = make()
    init = agg.init(torch.zeros(2), POP3)
    twice = _results(0, {0: [1.0, 1.0]}) + _results(0, {1: [0.0, 3.0]}) + _results(0, {0: [2.0, 0.0]})
    once = _results(0, {1: [0.0, 3.0]}) + _results(0, {0: [2.0, 0.0]})
    u_twice, s_twice = agg.aggregate(init, twice, 0)
    u_once, s_once = agg.aggregate(init, once, 0)
    assert torch.allclose(u_twice, u_once)
    assert torch.equal(s_twice.stored.get(0), torch.tensor([2.0, 0.0]))
