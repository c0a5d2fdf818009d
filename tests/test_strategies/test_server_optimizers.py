"""Server optimizers (strategies/server_optimizers.py) against the formulas of Reddi et al., "Adaptive Federated Optimization" (arXiv 2003.00295, Algorithm 2)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedsim.config import StrategyConfig
from fedsim.types import ClientResult, PopulationInfo
from strategies import SERVER_OPTIMIZERS, adagrad, adam, build_strategy, sgd, yogi

F64 = torch.float64


def test_sgd_without_momentum_steps_lr_times_u_and_keeps_no_state():
    opt = sgd(lr=0.5)
    state = opt.init(torch.zeros(2))
    assert state is None
    step, state = opt.update(torch.tensor([2.0, -4.0]), state)
    assert torch.equal(step, torch.tensor([1.0, -2.0]))
    assert state is None


def test_sgd_momentum_is_fedavgm():
    # m_1 = U_1, m_2 = beta m_1 + U_2, m_3 = beta m_2 + U_3; step = lr * m
    beta, lr = 0.5, 2.0
    opt = sgd(lr=lr, momentum=beta)
    state = opt.init(torch.zeros(1, dtype=F64))
    steps = []
    for u in (1.0, 2.0, -4.0):
        step, state = opt.update(torch.tensor([u], dtype=F64), state)
        steps.append(step.item())
    # m: 1, 0.5 + 2 = 2.5, 1.25 - 4 = -2.75
    assert steps == pytest.approx([2.0, 5.0, -5.5])
    assert state.item() == pytest.approx(-2.75)


def test_fedadam_first_step_formula():
    lr, b1, b2, tau = 0.3, 0.9, 0.99, 1e-3
    u = torch.tensor([0.5, -2.0, 1e-4, 0.0], dtype=F64)
    opt = adam(lr=lr, beta1=b1, beta2=b2, tau=tau)
    step, state = opt.update(u, opt.init(torch.zeros_like(u)))
    expected = lr * (1 - b1) * u.abs() / ((1 - b2) ** 0.5 * u.abs() + tau) * torch.sign(u)
    torch.testing.assert_close(step, expected, rtol=1e-12, atol=0)
    torch.testing.assert_close(state.m, (1 - b1) * u)
    torch.testing.assert_close(state.v, (1 - b2) * u * u)
    assert state.count == 1


def test_fedyogi_first_second_moment_equals_fedadam():
    u = torch.tensor([0.5, -2.0, 3.0], dtype=F64)
    a, y = adam(beta2=0.95), yogi(beta2=0.95)
    _, sa = a.update(u, a.init(torch.zeros_like(u)))
    _, sy = y.update(u, y.init(torch.zeros_like(u)))
    torch.testing.assert_close(sy.v, sa.v, rtol=0, atol=0)
    # ... but later Yogi's additive update differs from Adam's multiplicative one
    u2 = torch.tensor([0.1, 0.1, 0.1], dtype=F64)
    _, sa = a.update(u2, sa)
    _, sy = y.update(u2, sy)
    assert not torch.allclose(sy.v, sa.v)
    assert (sy.v >= 0).all()


def test_fedadagrad_second_moment_non_decreasing():
    g = torch.Generator().manual_seed(0)
    opt = adagrad(lr=0.1, beta1=0.5)
    state = opt.init(torch.zeros(10, dtype=F64))
    for _ in range(20):
        u = torch.randn(10, generator=g, dtype=F64)
        _, new = opt.update(u, state)
        assert (new.v >= state.v).all()
        torch.testing.assert_close(new.v, state.v + u * u)
        state = new


def test_yogi_second_moment_stays_non_negative():
    g = torch.Generator().manual_seed(1)
    opt = yogi(beta2=0.5)
    state = opt.init(torch.zeros(10, dtype=F64))
    for _ in range(20):
        _, state = opt.update(torch.randn(10, generator=g, dtype=F64) * 3, state)
        assert (state.v >= 0).all()


def test_adam_bias_correction_scales_lr():
    b1, b2 = 0.8, 0.9
    plain, corrected = adam(lr=0.1, beta1=b1, beta2=b2), adam(lr=0.1, beta1=b1, beta2=b2, bias_correction=True)
    sp, sc = plain.init(torch.zeros(3, dtype=F64)), corrected.init(torch.zeros(3, dtype=F64))
    for t, u in enumerate(([1.0, -2.0, 0.5], [0.3, 0.3, -1.0], [2.0, 0.0, 1.0]), start=1):
        u = torch.tensor(u, dtype=F64)
        step_p, sp = plain.update(u, sp)
        step_c, sc = corrected.update(u, sc)
        scale = (1 - b2**t) ** 0.5 / (1 - b1**t)
        torch.testing.assert_close(step_c, scale * step_p)
        torch.testing.assert_close(sc.v, sp.v)  # only the step is scaled, not the moments


@pytest.mark.parametrize("name", SERVER_OPTIMIZERS.names())
def test_zero_lr_gives_zero_step(name):
    opt = SERVER_OPTIMIZERS.get(name)(lr=0.0)
    state = opt.init(torch.zeros(3))
    for u in ([1.0, -2.0, 3.0], [0.0, 5.0, -1.0]):
        step, state = opt.update(torch.tensor(u), state)
        assert torch.equal(step, torch.zeros(3))


def test_negative_lr_rejected():
    with pytest.raises(ValueError, match="server_lr"):
        adam(lr=-1.0)


def test_moment_optimizer_without_moments_and_lr_equal_tau_is_fedavg():
    # beta1 = 0 and v frozen at 0 (beta2 = 1): step = lr * U / tau, so lr = tau gives U
    opt = adam(lr=0.25, beta1=0.0, beta2=1.0, tau=0.25)
    state = opt.init(torch.zeros(2, dtype=F64))
    for u in ([1.0, -3.0], [0.5, 2.0]):
        u = torch.tensor(u, dtype=F64)
        step, state = opt.update(u, state)
        torch.testing.assert_close(step, u, rtol=0, atol=0)
        assert torch.equal(state.v, torch.zeros(2, dtype=F64))


# --- FedAdam / FedYogi / FedAdagrad with 1 client, 1 full-batch local step == centralised optimizer


def _second_moment(kind: str, beta2: float):
    if kind == "adam":
        return lambda v, g: beta2 * v + (1 - beta2) * g * g
    if kind == "yogi":
        return lambda v, g: v - (1 - beta2) * g * g * torch.sign(v - g * g)
    return lambda v, g: v + g * g


@pytest.mark.parametrize("kind, preset", [("adam", "fedadam"), ("yogi", "fedyogi"), ("adagrad", "fedadagrad")])
def test_one_client_one_step_equals_centralised_optimizer(kind, preset):
    """Delta = -lr_l grad F(x) => FedX(lr, tau) == centralised X without bias correction, eps = tau / lr_l."""
    a = torch.tensor([[3.0, 0.5], [0.5, 1.0]], dtype=F64)
    b = torch.tensor([1.0, -2.0], dtype=F64)

    def grad(x: torch.Tensor) -> torch.Tensor:  # F(x) = 1/2 x^T A x - b^T x
        return a @ x - b

    lr, lr_local, tau, beta1, beta2 = 0.05, 0.1, 1e-3, 0.9, 0.99
    if kind == "adagrad":
        beta1 = 0.5
    x0 = torch.tensor([2.0, -1.0])
    cfg = {"server_lr": lr, "tau": tau, "beta1": beta1} | ({} if kind == "adagrad" else {"beta2": beta2})
    strategy = build_strategy(StrategyConfig(name=preset, **cfg))
    state = strategy.init(x0, PopulationInfo(1, num_samples=np.array([7])))

    # centralised reference, float64, written out by hand
    x, m, v = x0.to(F64), torch.zeros(2, dtype=F64), torch.zeros(2, dtype=F64)
    eps = tau / lr_local
    second = _second_moment(kind, beta2)
    for t in range(25):
        delta = (-lr_local * grad(state.params.to(F64))).float()  # the client's only step
        state = strategy.aggregate(state, [ClientResult(0, state.version, delta, 7, 1)], now=float(t))
        g = grad(x)
        m = beta1 * m + (1 - beta1) * g
        v = second(v, g)
        x = x - lr * m / (v.sqrt() + eps)
        torch.testing.assert_close(state.params.to(F64), x, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(x, x0.to(F64))  # it actually moved
