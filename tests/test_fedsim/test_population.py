"""Heterogeneous participation models and availability traces (fedsim.population)."""

import pickle
import time

import numpy as np
import pytest

from fedsim.config import PopulationConfig
from fedsim.population import PARTICIPATION
from fedsim.population.heterogeneous import (
    BernoulliParticipation,
    CyclicParticipation,
    MarkovParticipation,
    TraceParticipation,
    participation_probabilities,
)
from fedsim.population.traces import load_trace
from fedsim.rng import numpy_generator


class FakeData:
    """Just what the participation factories read: sizes and label histograms."""

    def __init__(self, histograms: np.ndarray):
        self.hist = np.asarray(histograms, dtype=np.float64)
        self.num_clients, self.num_classes = self.hist.shape

    def label_histograms(self, ids=None):
        return self.hist if ids is None else self.hist[ids]


def one_hot_data(num_clients: int = 200, num_classes: int = 10) -> FakeData:
    return FakeData(np.eye(num_classes)[np.arange(num_clients) % num_classes])


def pattern(model, rounds: int) -> np.ndarray:
    """bool[rounds, N]: who took part in each round."""
    n = len(model.probabilities)
    out = np.zeros((rounds, n), dtype=bool)
    for t in range(rounds):
        ids = model.participants(t)
        assert ids.dtype == np.int64 and np.all(np.diff(ids) > 0)
        out[t, ids] = True
    return out


def held_bytes(model) -> int:
    return sum(v.nbytes for v in vars(model).values() if isinstance(v, np.ndarray))


# ---------------------------------------------------------------- heterogeneous probabilities


def test_correlated_probabilities_follow_fedau_formula():
    config = PopulationConfig(mean_prob=0.1, min_prob=0.02, prob_alpha=0.1)
    data = one_hot_data()
    p = participation_probabilities(config, data, seed=3)
    u = numpy_generator(3, "participation-classes").dirichlet(np.full(10, 0.1))
    np.testing.assert_allclose(p, np.clip(10 * 0.1 * data.hist @ u, 0.02, 1.0))
    # Clients with the same label histogram get the same probability.
    same_class = np.arange(200) % 10 == 4
    assert np.all(p[same_class] == p[same_class][0])
    # Balanced one-hot clients: the mean before the floor is exactly mean_prob; the floor adds < min_prob.
    assert 0.1 <= p.mean() <= 0.1 + 0.02
    assert p.min() >= 0.02 and p.max() <= 1.0
    assert np.std(p) > 0.05  # alpha = 0.1: very skewed
    np.testing.assert_array_equal(p, participation_probabilities(config, data, seed=3))


def test_iid_probabilities_are_skewed_with_target_mean():
    config = PopulationConfig(mean_prob=0.1, min_prob=0.02, prob_alpha=0.5, correlate_with_data=False)
    data = one_hot_data(num_clients=20000)
    p = participation_probabilities(config, data, seed=1)
    assert p.min() >= 0.02 and p.max() <= 1.0
    assert 0.1 - 0.005 <= p.mean() <= 0.1 + 0.02
    assert np.median(p) < p.mean()  # right-skewed
    same_class = np.arange(20000) % 10 == 4
    assert np.std(p[same_class]) > 0.05  # not tied to the data
    other = participation_probabilities(config, data, seed=2)
    assert not np.array_equal(p, other)


# ---------------------------------------------------------------- bernoulli


def test_bernoulli_rate_matches_probability():
    p = np.linspace(0.02, 0.9, 50)
    rounds = 2000
    rate = pattern(BernoulliParticipation(p, seed=0), rounds).mean(axis=0)
    tol = 5 * np.sqrt(p * (1 - p) / rounds)
    assert np.all(np.abs(rate - p) < tol)


def test_bernoulli_is_deterministic_and_stable_under_population_growth():
    rng = np.random.default_rng(0)
    p50 = rng.uniform(0.05, 0.5, 50)
    p80 = np.concatenate([p50, rng.uniform(0.05, 0.5, 30)])
    a = pattern(BernoulliParticipation(p50, seed=7), 100)
    np.testing.assert_array_equal(a, pattern(BernoulliParticipation(p50, seed=7), 100))
    np.testing.assert_array_equal(a, pattern(BernoulliParticipation(p80, seed=7), 100)[:, :50])
    assert not np.array_equal(a, pattern(BernoulliParticipation(p50, seed=8), 100))


def test_bernoulli_keeps_empty_rounds():
    model = BernoulliParticipation(np.full(3, 0.02), seed=0)
    sizes = [len(model.participants(t)) for t in range(200)]
    assert 0 in sizes  # no redraw


# ---------------------------------------------------------------- markov

MARKOV_Q = 0.05
MARKOV_P = [0.02, 0.1, 0.5, 0.9]


def markov_leave_prob(p: float, q: float) -> tuple[float, float]:
    """(join, leave) after the clip: leave = q(1/p - 1), rescaled to 1 if larger."""
    leave = q * (1 / p - 1)
    return (q / leave, 1.0) if leave > 1 else (q, leave)


def test_markov_stationary_rate_and_run_lengths():
    per = 200
    p = np.repeat(MARKOV_P, per)
    rounds = 2000
    model = MarkovParticipation(p, MARKOV_Q, seed=0)
    active = pattern(model, rounds)
    for i, target in enumerate(MARKOV_P):
        cols = active[:, i * per : (i + 1) * per]
        join, leave = markov_leave_prob(target, MARKOV_Q)
        lam = 1 - join - leave  # autocorrelation of the chain inflates the variance
        std = np.sqrt(target * (1 - target) / (rounds * per) * (1 + lam) / (1 - lam))
        assert abs(cols.mean() - target) < 5 * std, target
        # Active -> inactive transitions per active round estimates P(leave) = 1 / mean active run.
        ends = np.sum(cols[:-1] & ~cols[1:])
        active_rounds = np.sum(cols[:-1])
        leave_std = np.sqrt(leave * (1 - leave) / active_rounds) + 1e-12
        assert abs(ends / active_rounds - leave) < 5 * leave_std + 1e-9, target
    # p = 0.02 with q = 0.05: q(1/p - 1) = 2.45 is clipped, so every active run lasts one round.
    low = active[:, :per]
    assert not np.any(low[:-1] & low[1:])


def test_markov_mean_active_run_length():
    p = np.full(500, 0.5)
    active = pattern(MarkovParticipation(p, 0.2, seed=1), 1000)  # leave = 0.2: runs of mean 5
    padded = np.vstack([np.zeros((1, 500), bool), active, np.zeros((1, 500), bool)]).astype(np.int8)
    starts = np.sum(np.diff(padded, axis=0) == 1)
    assert abs(active.sum() / starts - 5.0) < 0.25


def test_markov_deterministic_and_replays_earlier_rounds():
    p = np.linspace(0.05, 0.8, 40)
    model = MarkovParticipation(p, 0.1, seed=4)
    first = [model.participants(t) for t in range(10)]
    again = MarkovParticipation(p, 0.1, seed=4)
    for t in range(10):
        np.testing.assert_array_equal(first[t], again.participants(t))
    np.testing.assert_array_equal(first[3], model.participants(3))  # asked out of order: replayed
    np.testing.assert_array_equal(first[7], model.participants(7))
    grown = MarkovParticipation(np.concatenate([p, [0.3, 0.6]]), 0.1, seed=4)
    for t in range(10):
        ids = grown.participants(t)
        np.testing.assert_array_equal(first[t], ids[ids < 40])


# ---------------------------------------------------------------- cyclic


def test_cyclic_hand_computed_pattern():
    model = CyclicParticipation(np.array([0.3, 0.05, 0.5]), period=10, seed=0)
    np.testing.assert_array_equal(model.active_len, [3, 1, 5])  # round(0.5) = 0 -> max(1, 0) = 1
    np.testing.assert_array_equal(model.inactive_len, [7, 9, 5])
    assert np.all(model.phase < model.inactive_len)
    model.phase = np.array([2, 0, 4])
    got = pattern(model, 20)
    expected = np.zeros((20, 3), dtype=bool)
    expected[[2, 3, 4, 12, 13, 14], 0] = True
    expected[[0, 10], 1] = True
    expected[[4, 5, 6, 7, 8, 14, 15, 16, 17, 18], 2] = True
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_allclose(model.probabilities, [0.3, 0.1, 0.5])  # realised, not the 0.05 target
    np.testing.assert_allclose(model.target_probabilities, [0.3, 0.05, 0.5])


def reference_cyclic(active_len, inactive_len, phase, rounds):
    """The FedAU ref-code counter loop, for comparison with the closed form."""
    out = np.zeros((rounds, len(phase)), dtype=bool)
    for n in range(len(phase)):
        state, counter = False, int(phase[n])
        for t in range(rounds):
            if counter == 0:
                state = not state
                counter = int(active_len[n] if state else inactive_len[n])
            counter -= 1
            out[t, n] = state
    return out


def test_cyclic_closed_form_matches_counter_loop_and_realised_rate():
    p = np.random.default_rng(0).uniform(0.01, 0.9, 30)
    model = CyclicParticipation(p, period=20, seed=5)
    rounds = 20 * 20 * 3
    got = pattern(model, rounds)
    np.testing.assert_array_equal(got, reference_cyclic(model.active_len, model.inactive_len, model.phase, rounds))
    cycle = model.active_len + model.inactive_len
    # Over whole cycles after the phase, the rate is exactly A / (A + B).
    for n in range(30):
        window = got[model.phase[n] : model.phase[n] + 5 * cycle[n], n]
        assert window.mean() == pytest.approx(model.probabilities[n])


# ---------------------------------------------------------------- traces


def write_csv(path, header=True):
    rows = ["7,0,100", "7,250,280", "3,50,150", "3,120,200"]  # client 3's intervals overlap
    path.write_text(("client_id,start,end\n" if header else "") + "\n".join(rows) + "\n")
    return path


@pytest.mark.parametrize("header", [True, False])
def test_csv_trace_availability(tmp_path, header):
    trace = load_trace(write_csv(tmp_path / "trace.csv", header))
    assert trace.client_ids == [3, 7]
    np.testing.assert_array_equal(trace.offsets, [0, 1, 3])  # client 3 merged to [50, 200)
    model = TraceParticipation(trace, num_clients=3, round_length=50)  # population 2 cycles back to trace client 3
    expected = {0: [1], 1: [0, 1, 2], 2: [0, 2], 3: [0, 2], 4: [], 5: [1], 6: [1], 7: [0, 1, 2]}
    for t, ids in expected.items():
        np.testing.assert_array_equal(model.participants(t), ids, err_msg=f"round {t}")
    np.testing.assert_allclose(model.probabilities, [150 / 280, 130 / 280, 150 / 280])


def fedscale_trace():
    return {
        101: {"active": [10, 100], "inactive": [40, 160], "finish_time": 200, "duration": 190, "model": "x"},
        5: {"active": [0], "inactive": [20], "finish_time": 60, "duration": 60, "model": "y"},
        7: {"active": [], "inactive": [], "finish_time": 100, "duration": 0, "model": "z"},
    }


def test_fedscale_trace_availability(tmp_path):
    path = tmp_path / "client_behave_trace"
    path.write_bytes(pickle.dumps(fedscale_trace()))
    config = PopulationConfig(participation="trace", trace_path=str(path), round_length=30)
    model = PARTICIPATION.get("trace")(config, one_hot_data(num_clients=3), 0)
    assert model.trace.client_ids == [5, 7, 101]
    # Closed intervals, time modulo each client's finish_time (101 wraps at 200 -> 210 is 10).
    expected = {0: [0], 1: [2], 2: [0], 3: [], 4: [0, 2], 5: [2], 6: [0], 7: [2]}
    for t, ids in expected.items():
        np.testing.assert_array_equal(model.participants(t), ids, err_msg=f"round {t}")
    np.testing.assert_allclose(model.probabilities, [20 / 60, 0.0, 90 / 200])


def test_trace_errors(tmp_path):
    config = PopulationConfig(participation="trace", trace_path=str(tmp_path / "missing.csv"))
    with pytest.raises(FileNotFoundError, match="population.trace_path"):
        PARTICIPATION.get("trace")(config, one_hot_data(), 0)
    with pytest.raises(ValueError, match="trace_path"):
        PARTICIPATION.get("trace")(PopulationConfig(participation="trace"), one_hot_data(), 0)
    bad_csv = tmp_path / "bad.csv"
    bad_csv.write_text("client_id,start,end\n1,0\n")
    with pytest.raises(ValueError, match="client_id,start,end"):
        load_trace(bad_csv)
    reversed_interval = tmp_path / "rev.csv"
    reversed_interval.write_text("1,10,5\n")
    with pytest.raises(ValueError, match="end is before its start"):
        load_trace(reversed_interval)
    not_a_dict = tmp_path / "list.pkl"
    not_a_dict.write_bytes(pickle.dumps([1, 2, 3]))
    with pytest.raises(ValueError, match="FedScale"):
        load_trace(not_a_dict)
    missing_key = tmp_path / "nokey.pkl"
    missing_key.write_bytes(pickle.dumps({1: {"active": [0], "inactive": [5]}}))
    with pytest.raises(ValueError, match="finish_time"):
        load_trace(missing_key)
    code = tmp_path / "evil.pkl"
    code.write_bytes(pickle.dumps({1: time.sleep}))  # a global: refused, never called
    with pytest.raises(ValueError, match="refusing"):
        load_trace(code)


# ---------------------------------------------------------------- registry and scale


@pytest.mark.parametrize("name", ["bernoulli", "markov", "cyclic"])
def test_factories_use_heterogeneous_probabilities(name):
    config = PopulationConfig(participation=name)
    data = one_hot_data()
    model = PARTICIPATION.get(name)(config, data, 0)
    p = participation_probabilities(config, data, 0)
    if name == "cyclic":
        np.testing.assert_allclose(model.target_probabilities, p)
    else:
        np.testing.assert_allclose(model.probabilities, p)
    assert model.participants(0).dtype == np.int64


@pytest.mark.parametrize(
    "make",
    [
        lambda p: BernoulliParticipation(p, seed=0),
        lambda p: MarkovParticipation(p, 0.05, seed=0),
        lambda p: CyclicParticipation(p, 100, seed=0),
    ],
)
def test_large_population_is_fast_and_compact(make):
    n = 100_000
    p = np.random.default_rng(0).uniform(0.02, 0.3, n)
    start = time.perf_counter()
    model = make(p)
    sizes = [len(model.participants(t)) for t in range(5)]
    assert time.perf_counter() - start < 5.0
    assert all(0 < s < n for s in sizes)
    assert held_bytes(model) < 64 * n
