"""The sgd client: minibatch schedule, step counts, optimizer by name, and the math of one step."""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn

from clients import LocalSGD, TrainContext, batch_schedule, check_optimizer_options, make_optimizer
from fedsim.params import ResidentModel

CONFIG = {
    "lr": 0.1,
    "local_epochs": 1,
    "local_steps": None,
    "batch_size": 4,
    "optimizer": "sgd",
    "momentum": 0.0,
    "weight_decay": 0.0,
    "optimizer_kwargs": {},
}


def test_each_epoch_visits_every_sample_once():
    rng = torch.Generator().manual_seed(0)
    batches = batch_schedule(10, 4, 6, rng)  # two epochs of [4, 4, 2]
    assert [len(b) for b in batches] == [4, 4, 2, 4, 4, 2]
    for epoch in (batches[:3], batches[3:]):
        assert sorted(torch.cat(epoch).tolist()) == list(range(10))


def test_num_steps_epochs_and_fixed_steps():
    client = LocalSGD()
    assert client.num_steps(CONFIG | {"local_epochs": 2}, 10) == 6
    assert client.num_steps(CONFIG | {"local_steps": 7}, 10) == 7


def test_one_full_batch_step_is_gradient_descent():
    torch.manual_seed(0)
    model = ResidentModel(nn.Linear(3, 2))
    ctx = TrainContext(model, nn.functional.cross_entropy, torch.device("cpu"))
    x, y = torch.randn(5, 3), torch.tensor([0, 1, 1, 0, 1])
    params = model.read()
    reference = nn.Linear(3, 2)
    with torch.no_grad():
        reference.weight.copy_(params[:6].view(2, 3))
        reference.bias.copy_(params[6:])
    nn.functional.cross_entropy(reference(x), y).backward()
    expected = -0.1 * torch.cat([reference.weight.grad.reshape(-1), reference.bias.grad])
    result = LocalSGD().train(ctx, params, (x, y), CONFIG | {"batch_size": 5}, None, torch.Generator().manual_seed(1))
    torch.testing.assert_close(result.delta, expected)
    assert result.num_steps == 1 and result.num_samples == 5
    torch.testing.assert_close(params, model.read() - result.delta)  # the start point was not modified


def test_any_torch_optimizer_by_name():
    p = [nn.Parameter(torch.zeros(2))]
    assert isinstance(
        make_optimizer(p, CONFIG | {"optimizer": "adamw", "optimizer_kwargs": {"betas": (0.8, 0.9)}}), torch.optim.AdamW
    )


def test_torch_validation_messages_pass_through():
    with pytest.raises(ValueError, match="Invalid"):
        check_optimizer_options(CONFIG | {"optimizer": "adam", "optimizer_kwargs": {"betas": (2.0, 0.9)}})


def test_option_the_optimizer_does_not_take():
    with pytest.raises(ValueError, match="client.momentum"):
        check_optimizer_options(CONFIG | {"optimizer": "adam", "momentum": 0.9})
    with pytest.raises(ValueError, match="valid choices"):
        check_optimizer_options(CONFIG | {"optimizer_kwargs": {"betaz": 1}})


@pytest.mark.parametrize(
    "bad",
    [
        {"lr": -0.1},
        {"momentum": -0.5},
        {"weight_decay": -1e-3},
        {"optimizer_kwargs": {"nesterov": True}},
        {"momentum": 0.9, "optimizer_kwargs": {"nesterov": True, "dampening": 0.1}},
    ],
)
def test_sgd_options_are_checked_with_torchs_own_messages(bad):
    """fedsim checks SGD's arguments without building torch.optim.SGD (that imports torch._dynamo)."""
    config = CONFIG | {"optimizer": "sgd"} | bad
    kwargs = {
        "lr": config["lr"],
        "momentum": config.get("momentum", 0.0),
        "weight_decay": config.get("weight_decay", 0.0),
        **config.get("optimizer_kwargs", {}),
    }
    with pytest.raises(ValueError) as torch_error:
        torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], **kwargs)
    with pytest.raises(ValueError, match=f"^{re.escape(str(torch_error.value))}$"):
        check_optimizer_options(config)
