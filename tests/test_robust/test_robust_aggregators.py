"""Robust aggregators on hand-made inputs: the rules' formulas, their invariants and refusals."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedsim.types import ClientResult, PopulationInfo
from strategies import WEIGHTINGS
from strategies.robust import alie_z, bulyan_select, krum_scores, nearest_neighbour_mixing

ROBUST = ["median", "trimmed_mean", "krum", "multi_krum", "bulyan", "geomed", "centered_clipping", "monna"]


def results_of(rows, ids=None):
    rows = [torch.as_tensor(r, dtype=torch.float32) for r in rows]
    ids = ids if ids is not None else list(range(len(rows)))
    return [
        ClientResult(client_id=c, base_version=0, delta=r, num_samples=10 + c, num_steps=1) for c, r in zip(ids, rows)
    ]


def aggregate(name, rows, ids=None, **kwargs):
    agg = WEIGHTINGS.get(name)(**kwargs)
    results = results_of(rows, ids)
    state = agg.init(torch.zeros_like(results[0].delta), PopulationInfo(len(rows), np.full(len(rows), 10)))
    return agg.aggregate(state, results, 0)[0]


@pytest.mark.parametrize("name", ROBUST)
def test_identical_updates_give_that_update(name):
    u = torch.tensor([0.5, -1.0, 2.0, 0.25])
    # 7 >= 4f + 3: every rule's assumption holds; centered clipping reaches u from its center 0 in one
    # step only if ||u|| <= tau (by design: it moves at most tau per iteration)
    extra = {"radius": 10.0} if name == "centered_clipping" else {}
    out = aggregate(name, [u] * 7, f=1, **extra)
    torch.testing.assert_close(out, u)


def test_median_is_numpys_even_and_odd():
    rng = np.random.default_rng(0)
    for n in (4, 5):
        x = rng.normal(size=(n, 6)).astype(np.float32)
        torch.testing.assert_close(aggregate("median", x, f=1), torch.from_numpy(np.median(x, axis=0)))


def test_trimmed_mean_is_numpys_and_f0_is_the_mean():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(7, 5)).astype(np.float32)
    expected = np.sort(x, axis=0)[2:5].mean(axis=0)
    torch.testing.assert_close(aggregate("trimmed_mean", x, f=2), torch.from_numpy(expected))
    torch.testing.assert_close(aggregate("trimmed_mean", x, f=0), torch.from_numpy(x.mean(axis=0)))


def test_krum_selects_the_hand_computed_update():
    # 5 points, f = 1: each score sums the n - f - 2 = 2 smallest squared distances to the others
    x = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0], [10.0, 10.0], [1.0, 1.0]], dtype=torch.float64)
    # d^2 from 0: 1, 4, 200, 2 -> 1 + 2 = 3;  1: 1, 5, 181, 1 -> 2;  2: 4, 5, 164, 2 -> 6;  4: 2, 1, 2, 162 -> 3
    assert krum_scores(x, 1)[[0, 1, 2, 4]].tolist() == [3.0, 2.0, 6.0, 3.0]
    torch.testing.assert_close(aggregate("krum", x.float(), f=1), torch.tensor([1.0, 0.0]))
    # Multi-Krum m = 3: the three lowest scores (1, then 0 and 4 tied at 3), unweighted
    torch.testing.assert_close(aggregate("multi_krum", x.float(), f=1, m=3), torch.tensor([2.0, 1.0]) / 3)


def test_krum_ties_go_to_the_lower_client_id_whatever_the_order():
    x = [[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, -1.0]]  # all scores tie
    a = aggregate("krum", x, ids=[5, 3, 9, 7], f=0)
    torch.testing.assert_close(a, torch.tensor([-1.0, 0.0]))  # client 3
    b = aggregate("krum", x[::-1], ids=[7, 9, 3, 5], f=0)
    torch.testing.assert_close(a, b)


def test_bulyan_with_f0_is_the_mean_and_selection_is_repeated_krum():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(5, 3)).astype(np.float32)
    torch.testing.assert_close(aggregate("bulyan", x, f=0), torch.from_numpy(x.mean(axis=0)))
    # one selection (n = 3 = 4f + 3 with f = 0 ... and theta = n - 2f): with f = 1, n = 7, theta = 5, beta = 1
    y = torch.tensor([[0.0], [0.1], [0.2], [0.3], [0.4], [50.0], [-50.0]], dtype=torch.float64)
    chosen = bulyan_select(y, 1)
    assert sorted(chosen) == [0, 1, 2, 3, 4]
    torch.testing.assert_close(aggregate("bulyan", y.float(), f=1), torch.tensor([0.2]))  # the median of the five


def test_geomed_is_the_minimiser_of_the_sum_of_distances():
    from scipy.optimize import minimize

    x = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [1000.0, 1000.0]])
    out = aggregate("geomed", x, f=1, iterations=200, nu=1e-9).double().numpy()
    best = minimize(
        lambda z: np.linalg.norm(x - z, axis=1).sum(),
        x[:4].mean(0),
        method="Nelder-Mead",
        options={"xatol": 1e-9, "fatol": 1e-12},
    ).x
    np.testing.assert_allclose(out, best, atol=1e-4)
    assert np.all(out < 1.0)  # the far outlier moves it less than one unit


def test_centered_clipping_huge_radius_is_the_mean_and_keeps_its_center():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(6, 4)).astype(np.float32)
    torch.testing.assert_close(aggregate("centered_clipping", x, radius=1e9), torch.from_numpy(x.mean(axis=0)))
    agg = WEIGHTINGS.get("centered_clipping")(radius=0.5)
    state = agg.init(torch.zeros(4), PopulationInfo(6, np.full(6, 10)))
    out, state = agg.aggregate(state, results_of(x), 0)
    torch.testing.assert_close(state["center"], out)
    assert float(torch.linalg.vector_norm(out)) <= 0.5 + 1e-6  # from v0 = 0 each step moves at most tau


def test_nearest_neighbour_mixing_includes_itself():
    x = torch.tensor([[0.0], [1.0], [10.0]], dtype=torch.float64)
    torch.testing.assert_close(nearest_neighbour_mixing(x, 1), torch.tensor([[0.5], [0.5], [5.5]], dtype=torch.float64))


def test_empty_round_is_zero():
    agg = WEIGHTINGS.get("krum")(f=0)
    state = agg.init(torch.zeros(3), PopulationInfo(1, np.ones(1)))
    assert torch.equal(agg.aggregate(state, [], 0)[0], torch.zeros(3))


@pytest.mark.parametrize(
    "name,n,f,needs",
    [
        ("krum", 6, 2, "n > 2f + 2"),
        ("bulyan", 10, 2, "n >= 4f + 3"),
        ("median", 4, 2, "2f < n"),
        ("monna", 6, 3, "2f < n"),
    ],
)
def test_assumption_broken_is_refused_in_one_line(name, n, f, needs):
    with pytest.raises(ValueError) as err:
        WEIGHTINGS.get(name)(f=f).check(n, "population.clients_per_round")
    message = str(err.value)
    assert "\n" not in message and needs in message and "population.clients_per_round" in message


def test_too_few_updates_at_run_time_lower_f_and_count_it():
    agg = WEIGHTINGS.get("krum")(f=2)
    state = agg.init(torch.zeros(1), PopulationInfo(5, np.ones(5)))
    out, state = agg.aggregate(state, results_of([[0.0], [1.0], [2.0], [3.0], [100.0]]), 0)  # n = 5 allows f = 1
    assert state["f_reduced"] == 1
    torch.testing.assert_close(out, torch.tensor([1.0]))


def test_alie_z_is_the_papers():
    # n = 50, f = 12: s = 26 - 12 = 14, z = Phi^-1(36 / 50) ~ 0.583
    assert alie_z(50, 12) == pytest.approx(0.5828, abs=1e-3)
    assert alie_z(10, 1) == 0.0  # (n - s)/n = 0.5
