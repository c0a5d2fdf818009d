"""Client algorithms (clients/*.py) with their server parts: hand-computed rounds and invariants.

Quadratic clients F_i(y) = (a_i / 2) |y - b_i|^2 give exact gradients a_i (y - b_i) through a
hand-written gradient oracle, so every number below follows from the reference formulas.
"""

from __future__ import annotations

import pytest
import torch

from clients import CLIENTS, make_grad_fn, run_client
from fedsim.types import PopulationInfo
from strategies import FedDynAggregator, MomentumAggregator, ScaffoldAggregator

D = 3
X0 = torch.tensor([0.5, -1.0, 2.0])
CLIENT_A = (1.0, torch.tensor([1.0, 0.0, -1.0]))  # (a_i, b_i)
CLIENT_B = (3.0, torch.tensor([-2.0, 1.0, 0.5]))
BASE = {
    "lr": 0.1,
    "local_epochs": 1,
    "local_steps": None,
    "batch_size": 1,
    "optimizer": "sgd",
    "momentum": 0.0,
    "weight_decay": 0.0,
    "optimizer_kwargs": {},
    "lr_decay": 1.0,
    "clip_norm": None,
}


def quadratic(a: float, b: torch.Tensor):
    def grad(y, batch):
        return 0.5 * a * ((y - b) ** 2).sum(), a * (y - b)

    return grad


def local(name, client, steps=2, config=None, state=None, broadcast=None, params=X0, version=0):
    algorithm = CLIENTS.get(name)()
    config = BASE | (config or {})
    data = (torch.zeros(steps, 1), torch.zeros(steps, dtype=torch.long))  # batch 1: `steps` steps per epoch
    return run_client(
        algorithm,
        algorithm.options(config),
        quadratic(*client),
        params,
        data,
        config,
        state,
        broadcast,
        torch.Generator().manual_seed(0),
        version,
    )


def result(client_id, r):
    r.client_id, r.base_version = client_id, 0
    return r


def sgd_steps(y, grad_of, steps, lr, decay=0.0):
    for _ in range(steps):
        y = y - lr * (grad_of(y) + decay * y)
    return y


# ----------------------------------------------------------------------------- hand-computed two clients, two steps


def test_fedprox_two_steps_by_hand():
    mu = 0.5
    r = local("fedprox", CLIENT_A, config={"mu": mu})
    a, b = CLIENT_A
    expected = sgd_steps(X0, lambda y: a * (y - b) - mu * X0, 2, 0.1, decay=mu)  # g + mu (y - x0)
    torch.testing.assert_close(r.delta, expected - X0)
    # one step by hand: y1 = x0 - 0.1 (a (x0 - b) + 0) = x0 - 0.1 (x0 - b)
    y1 = X0 - 0.1 * (X0 - b)
    y2 = y1 - 0.1 * ((y1 - b) + mu * (y1 - X0))
    torch.testing.assert_close(r.delta, y2 - X0)


def test_scaffold_round_by_hand_and_server_c():
    aggregator = ScaffoldAggregator()
    state = aggregator.init(X0, PopulationInfo(4, torch.ones(4).numpy()))
    c = torch.tensor([0.1, 0.2, -0.3])
    c_a = torch.tensor([0.05, -0.1, 0.0])
    state = type(state)(c, 4, {"c": c})
    ra = result(0, local("scaffold", CLIENT_A, state={"c": c_a}, broadcast=aggregator.broadcast(state)))
    rb = result(1, local("scaffold", CLIENT_B, state=None, broadcast=aggregator.broadcast(state)))
    for (a, b), c_i, r in ((CLIENT_A, c_a, ra), (CLIENT_B, torch.zeros(D), rb)):
        y = sgd_steps(X0, lambda y: a * (y - b) + c - c_i, 2, 0.1)
        torch.testing.assert_close(r.delta, y - X0)
        c_new = c_i - c - (y - X0) / (2 * 0.1)
        torch.testing.assert_close(r.state["c"], c_new)
        torch.testing.assert_close(r.extras["delta_c"], c_new - c_i)
    u, new = aggregator.aggregate(state, [ra, rb], 0)
    torch.testing.assert_close(u, (ra.delta + rb.delta) / 2)
    torch.testing.assert_close(new.c, c + (ra.extras["delta_c"] + rb.extras["delta_c"]) / 4)
    assert aggregator.broadcast(new) is aggregator.broadcast(new)  # one object per version


def test_feddyn_round_by_hand_and_server_mean_of_all_h():
    lamb, n = 0.2, 5
    h_a = torch.tensor([0.3, -0.2, 0.1])
    ra = result(0, local("feddyn", CLIENT_A, config={"lamb": lamb}, state={"h": h_a}))
    rb = result(1, local("feddyn", CLIENT_B, config={"lamb": lamb}))
    for (a, b), h, r in ((CLIENT_A, h_a, ra), (CLIENT_B, torch.zeros(D), rb)):
        y = sgd_steps(X0, lambda y: a * (y - b) + lamb * (h - X0), 2, 0.1, decay=lamb)
        torch.testing.assert_close(r.delta, y - X0)
        torch.testing.assert_close(r.state["h"], h + (y - X0))
    aggregator = FedDynAggregator()
    state = aggregator.init(X0, PopulationInfo(n, torch.ones(n).numpy()))
    state = type(state)(h_a.double(), n, torch.float32)  # server's H = sum of all h_i (client A's so far)
    u, new = aggregator.aggregate(state, [ra, rb], 0)
    y_mean = X0 + (ra.delta + rb.delta) / 2
    h_all = ra.state["h"] + rb.state["h"]  # clients 2..4 have h = 0
    torch.testing.assert_close(X0 + u, y_mean + h_all / n)


def test_fedsam_two_steps_by_hand():
    rho = 0.3
    a, b = CLIENT_B
    r = local("fedsam", CLIENT_B, config={"rho": rho})

    def sam(y):
        g1 = a * (y - b)
        return a * (y + rho * g1 / (g1.norm() + 1e-7) - b)

    torch.testing.assert_close(r.delta, sgd_steps(X0, sam, 2, 0.1) - X0)


@pytest.mark.parametrize("name, rho", [("fedcm", 0.0), ("mofedsam", 0.3)])
def test_fedcm_mofedsam_round_by_hand_and_server_momentum(name, rho):
    alpha = 0.25
    m = torch.tensor([1.0, -0.5, 0.25])
    config = {"alpha": alpha} | ({"rho": rho} if name == "mofedsam" else {})
    results = []
    for cid, (a, b) in enumerate((CLIENT_A, CLIENT_B)):
        r = result(cid, local(name, (a, b), config=config, broadcast={"momentum": m}))

        def direction(y, a=a, b=b):
            g1 = a * (y - b)
            g = a * (y + rho * g1 / (g1.norm() + 1e-7) - b) if rho else g1
            return alpha * g + (1 - alpha) * m

        y = sgd_steps(X0, direction, 2, 0.1)
        torch.testing.assert_close(r.delta, y - X0)
        torch.testing.assert_close(r.extras["mean_grad"], -(y - X0) / (2 * 0.1))
        results.append(r)
    aggregator = MomentumAggregator()
    state = aggregator.init(X0, PopulationInfo(2, torch.ones(2).numpy()))
    u, new = aggregator.aggregate(state, results, 0)
    torch.testing.assert_close(u, (results[0].delta + results[1].delta) / 2)
    torch.testing.assert_close(
        aggregator.broadcast(new)["momentum"], (results[0].extras["mean_grad"] + results[1].extras["mean_grad"]) / 2
    )


def test_fedspeed_two_steps_by_hand():
    lamb, rho = 0.1, 0.2
    h = torch.tensor([0.2, 0.0, -0.4])
    a, b = CLIENT_A
    r = local("fedspeed", CLIENT_A, config={"lamb": lamb, "rho": rho}, state={"h": h})

    def direction(y):
        g1 = a * (y - b)
        g2 = a * (y + rho * g1 / (g1.norm() + 1e-7) - b)
        return g2 + lamb * (h - X0)

    y = sgd_steps(X0, direction, 2, 0.1, decay=lamb)
    torch.testing.assert_close(r.delta, y - X0)
    torch.testing.assert_close(r.state["h"], h + y - X0)


# ----------------------------------------------------------------------------- invariants on a real model


@pytest.fixture(scope="module")
def mlp_setup():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    from fedsim.params import ParamLayout

    layout = ParamLayout.of(model)
    grad = make_grad_fn(model, layout, torch.nn.functional.cross_entropy)
    params = layout.flatten(model)
    data = (torch.randn(23, 5), torch.randint(0, 3, (23,)))
    return grad, params, data


def run_real(setup, name, config, state=None, broadcast=None, version=3):
    grad, params, data = setup
    algorithm = CLIENTS.get(name)()
    config = (
        BASE | {"batch_size": 5, "local_epochs": 2, "weight_decay": 1e-3, "clip_norm": 0.5, "lr_decay": 0.9} | config
    )
    return run_client(
        algorithm,
        algorithm.options(config),
        grad,
        params,
        data,
        config,
        state,
        broadcast,
        torch.Generator().manual_seed(7),
        version,
    )


@pytest.mark.parametrize("name, config", [
    ("fedprox", {"mu": 0.0}),
    ("fedsam", {"rho": 0.0}),
    ("fedcm", {"alpha": 1.0}),
])  # fmt: skip
def test_degenerate_options_are_fedavg_exactly(mlp_setup, name, config):
    reference = run_real(mlp_setup, "sgd", {})
    other = run_real(mlp_setup, name, config, broadcast={"momentum": torch.randn_like(mlp_setup[1])})
    assert torch.equal(other.delta, reference.delta)  # same clip (0.5 is active), weight decay, lr decay


def test_mofedsam_alpha_one_is_fedsam_and_fedspeed_rho_zero_is_feddyn(mlp_setup):
    m = {"momentum": torch.randn_like(mlp_setup[1])}
    assert torch.equal(
        run_real(mlp_setup, "mofedsam", {"alpha": 1.0, "rho": 0.05}, broadcast=m).delta,
        run_real(mlp_setup, "fedsam", {"rho": 0.05}).delta,
    )
    h = {"h": 0.01 * torch.randn_like(mlp_setup[1])}
    speed = run_real(mlp_setup, "fedspeed", {"rho": 0.0, "lamb": 0.1}, state=h)
    dyn = run_real(mlp_setup, "feddyn", {"lamb": 0.1}, state=h)
    assert torch.equal(speed.delta, dyn.delta) and torch.equal(speed.state["h"], dyn.state["h"])


def test_fedspeed_rho0_lamb0_client_step_is_fedavg_but_server_adds_mean_h(mlp_setup):
    h = {"h": 0.01 * torch.randn_like(mlp_setup[1])}
    speed = run_real(mlp_setup, "fedspeed", {"rho": 0.0, "lamb": 0.0}, state=h)
    assert torch.equal(speed.delta, run_real(mlp_setup, "sgd", {}).delta)
    # ... while FedDyn's server part still adds (1/N) sum_all h: not FedAvg
    aggregator = FedDynAggregator()
    params = mlp_setup[1]
    state = aggregator.init(params, PopulationInfo(4, torch.ones(4).numpy()))
    state = type(state)(h["h"].double(), 4, torch.float32)
    u, _ = aggregator.aggregate(state, [result(0, speed)], 0)
    torch.testing.assert_close(u, speed.delta + (h["h"] + speed.delta) / 4)
    assert not torch.allclose(u, speed.delta)


def test_lr_decay_and_clip_apply(mlp_setup):
    a = run_real(mlp_setup, "sgd", {"lr_decay": 0.5}, version=1)
    b = run_real(mlp_setup, "sgd", {"lr": 0.05, "lr_decay": 1.0}, version=1)
    assert torch.equal(a.delta, b.delta)  # lr * decay^version
    unclipped = run_real(mlp_setup, "sgd", {"clip_norm": None})
    assert not torch.allclose(unclipped.delta, run_real(mlp_setup, "sgd", {}).delta)


# ----------------------------------------------------------------------------- bias correction on quadratics


def run_rounds(name, strategy_aggregator, clients, rounds, steps, config=None):
    """Full participation, `steps` local steps; returns the final global model."""
    x = torch.zeros(D)
    n = len(clients)
    agg_state = strategy_aggregator.init(x, PopulationInfo(n, torch.ones(n).numpy())) if strategy_aggregator else None
    states = [None] * n
    for _ in range(rounds):
        broadcast = strategy_aggregator.broadcast(agg_state) if hasattr(strategy_aggregator, "broadcast") else None
        results = []
        for cid, client in enumerate(clients):
            r = result(
                cid, local(name, client, steps=steps, config=config, state=states[cid], broadcast=broadcast, params=x)
            )
            states[cid] = r.state
            results.append(r)
        if strategy_aggregator is None:
            x = x + sum(r.delta for r in results) / n
        else:
            u, agg_state = strategy_aggregator.aggregate(agg_state, results, 0)
            x = x + u
    return x, agg_state, states


def test_scaffold_and_feddyn_reach_the_exact_minimiser_where_fedavg_drifts():
    clients = [CLIENT_A, CLIENT_B]
    optimum = (CLIENT_A[0] * CLIENT_A[1] + CLIENT_B[0] * CLIENT_B[1]) / (CLIENT_A[0] + CLIENT_B[0])
    fedavg, _, _ = run_rounds("sgd", None, clients, 300, 20)
    scaffold, _, _ = run_rounds("scaffold", ScaffoldAggregator(), clients, 300, 20)
    feddyn, _, _ = run_rounds("feddyn", FedDynAggregator(), clients, 300, 20, {"lamb": 0.1})
    assert (fedavg - optimum).norm() > 0.1  # client drift: FedAvg with 20 local steps is biased
    assert (scaffold - optimum).norm() < 1e-4
    assert (feddyn - optimum).norm() < 1e-3


def test_scaffold_full_participation_keeps_c_equal_to_mean_c_i():
    clients = [CLIENT_A, CLIENT_B, (2.0, torch.tensor([0.0, 3.0, 1.0]))]
    for rounds in (1, 2, 5):
        _, agg_state, states = run_rounds("scaffold", ScaffoldAggregator(), clients, rounds, 4)
        torch.testing.assert_close(agg_state.c, sum(s["c"] for s in states) / len(clients))


def test_zero_lr_leaves_feddyn_and_scaffold_unchanged():
    clients = [CLIENT_A, CLIENT_B]
    for name, agg in (("feddyn", FedDynAggregator()), ("scaffold", ScaffoldAggregator())):
        x, _, states = run_rounds(name, agg, clients, 3, 4, {"lr": 0.0})
        assert torch.equal(x, torch.zeros(D))
        assert all(bool((torch.cat(list(s.values())) == 0).all()) for s in states)


def test_every_client_algorithm_docstring_cites_paper_and_reference_code():
    import importlib

    for name in ("sgd", "fedprox", "scaffold", "feddyn", "fedsam", "fedcm", "mofedsam", "fedspeed"):
        module = importlib.import_module(CLIENTS.get(name).__module__)
        doc = module.__doc__ or ""
        assert "arXiv" in doc, name
        if name != "sgd":
            assert "FL-Simulator" in doc and "L" in doc and "client." in doc, name
