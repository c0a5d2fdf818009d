"""Batched adaptive client optimizers (clients/optimizers.py) against the libraries they reimplement."""

from __future__ import annotations

import pytest
import torch
from torch.func import vmap

from clients import LOCAL_OPTIMIZERS, LocalSGD
from clients.optimizers import AdaptiveOptions, adaptive_step, init_state
from fedsim.config import ConfigError, load_config
from fedsim.run import run_experiment

CASES = [
    ("adam", {}),
    ("adam", {"weight_decay": 0.1}),
    ("adam", {"weight_decay": 0.1, "optimizer_kwargs": {"decoupled_weight_decay": True}}),
    ("adamw", {"weight_decay": 0.05, "optimizer_kwargs": {"betas": [0.8, 0.99], "eps": 1e-6}}),
    ("lion", {}),
    ("lion", {"weight_decay": 0.1}),
    ("adan", {}),
    ("adan", {"weight_decay": 0.05}),
    ("adan", {"weight_decay": 0.05, "optimizer_kwargs": {"weight_decouple": True}}),
    ("adabelief", {}),
    ("adabelief", {"weight_decay": 0.05, "optimizer_kwargs": {"weight_decouple": False}}),
    ("adopt", {}),
    ("adopt", {"weight_decay": 0.05, "optimizer_kwargs": {"weight_decouple": True}}),
]


def _config(name: str, extra: dict) -> dict:
    return {
        "optimizer": name,
        "lr": 0.01,
        "momentum": 0.0,
        "weight_decay": 0.0,
        "optimizer_kwargs": {},
        "batch_size": 4,
        "local_steps": 10,
    } | extra


def _grad(y: torch.Tensor, k: int) -> torch.Tensor:
    """A gradient that depends on y (a quadratic) plus a step-dependent drift, some entries exactly 0."""
    a = torch.linspace(0.5, 2.0, y.numel(), dtype=y.dtype)
    return a * (y - 0.3) + 0.1 * torch.cos(torch.arange(y.numel(), dtype=y.dtype) * (k + 1))


@pytest.mark.parametrize("name, extra", CASES)
def test_batched_step_equals_the_library_over_10_steps(name, extra):
    config = _config(name, extra)
    client = LocalSGD()
    options = client.options(config)
    assert isinstance(options, AdaptiveOptions), "these options must take the batched path"
    x0 = torch.linspace(-1.0, 1.0, 7, dtype=torch.float64)
    carry = client.start(options, x0, None, None, config["lr"])
    param = torch.nn.Parameter(x0.clone())
    from clients.sgd import make_optimizer  # noqa: PLC0415

    reference = make_optimizer([param], config)
    for k in range(10):
        g = _grad(carry["y"], k)
        carry, _ = client.step(options, carry, None, lambda y, batch, g=g: (torch.zeros(()), g))
        param.grad = _grad(param.detach(), k)
        reference.step()
        torch.testing.assert_close(carry["y"], param.detach(), rtol=1e-10, atol=1e-12, msg=f"{name} step {k + 1}")


def test_the_step_maps_over_a_stack_of_clients_with_vmap():
    options = AdaptiveOptions("adan", None, (0.98, 0.92, 0.99), 1e-8, 0.0, False, False, False)
    ys = torch.randn(3, 5)
    state = {k: torch.zeros(3, 5) for k in init_state(options, ys[0])}
    lr = torch.tensor([0.1, 0.01, 0.001])
    t = torch.ones(3)
    batched = vmap(lambda s, y, g, lr, t: adaptive_step(options, s, y, g, lr, t))
    for k in range(3):
        gs = torch.cos(ys * (k + 1))
        out_y, out_state = batched(state, ys, gs, lr, t)
        for i in range(3):
            one_y, _ = adaptive_step(options, {key: v[i] for key, v in state.items()}, ys[i], gs[i], lr[i], t[i])
            torch.testing.assert_close(out_y[i], one_y)
        ys, state, t = out_y, out_state, t + 1


def test_options_no_step_implements_take_the_serial_path():
    client = LocalSGD()
    assert client.options(_config("adam", {"optimizer_kwargs": {"amsgrad": True}})) is None
    assert client.options(_config("adabelief", {"optimizer_kwargs": {"rectify": True}})) is None
    assert client.options(_config("lion", {"optimizer_kwargs": {"cautious": True}})) is None
    assert client.options(_config("rmsprop", {})) is None
    assert LOCAL_OPTIMIZERS.get("lion").__name__ == "Lion"


def test_bad_client_optimizer_options_fail_in_one_line():
    with pytest.raises(ValueError, match="has no option 'nope'"):
        LocalSGD().options(_config("lion", {"optimizer_kwargs": {"nope": 1}}))
    with pytest.raises(ConfigError, match="client.optimizer"):
        load_config(values={"client": {"optimizer": "sophia"}})


@pytest.mark.parametrize("name", ["adam", "lion", "adopt"])
def test_serial_and_vmap_executors_give_the_same_model(small_config, tmp_path, name):
    models = {}
    for executor in ("serial", "vmap"):
        config = small_config(
            rounds=2, client={"optimizer": name, "lr": 0.005}, executor={"name": executor, "compile": "off"}
        )
        summary, out = run_experiment(config, out_dir=tmp_path / executor)
        assert summary["status"] == "completed"
        models[executor] = torch.load(out / "model_state.pt", weights_only=True)
    for key, value in models["serial"].items():
        torch.testing.assert_close(models["vmap"][key], value, rtol=1e-4, atol=1e-5)
