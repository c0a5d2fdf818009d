"""The serial path's resident buffers: channels-last from the model, the flat gradient buffer
(ResidentGrad), and plain SGD's in-place step (bit-identical to the flat step)."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from clients import CLIENTS, ResidentGrad, TrainContext, resident_grad_fn, run_client
from fedsim.executors.worker import train_one
from fedsim.params import ResidentModel


def mlp():
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 16), nn.ReLU(), nn.Linear(16, 4))


def cnn():
    return nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(4 * 3 * 3, 4)
    )  # fmt: skip


class RejectsChannelsLast(nn.Module):
    """A conv model whose forward refuses a channels-last input (e.g. a .view on the raw layout)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 3)

    def forward(self, x):
        if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
            raise RuntimeError("NCHW only")
        return self.conv(x).flatten(1)


def data(n=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 8, 8, generator=g), torch.randint(0, 4, (n,), generator=g)


def resident(build, seed=0):
    torch.manual_seed(seed)
    return ResidentModel(build())


def test_channels_last_is_chosen_from_the_model():
    x, _ = data()
    conv, dense = resident(cnn), resident(mlp)
    assert conv.channels_last is None and dense.channels_last is False  # conv: decided by the dry run
    cl = conv.inputs(x)
    assert conv.channels_last is True
    assert cl.is_contiguous(memory_format=torch.channels_last) and not cl.is_contiguous()
    assert torch.equal(cl, x)  # same values and shape, other memory layout
    assert dense.inputs(x) is x
    assert conv.inputs(x[:, :, :, 0]).ndim == 3  # only 4-D batches are touched
    assert ResidentModel(cnn(), "meta").channels_last is False  # CPU only


def test_a_model_that_rejects_channels_last_falls_back():
    model = ResidentModel(RejectsChannelsLast())
    x, _ = data()
    assert model.channels_last is None
    assert model.inputs(x) is x and model.channels_last is False
    assert model.model.training  # the dry run restores training mode


def test_channels_last_training_matches_nchw_to_rounding():
    x, y = data()
    algorithm = CLIENTS.get("sgd")()
    config = {"lr": 0.1, "batch_size": 4, "local_epochs": 2, "optimizer": "sgd"}
    deltas = []
    for channels_last in (True, False):
        model = resident(cnn)
        model.channels_last = None if channels_last else False
        params = model.read()
        ctx = TrainContext(model, F.cross_entropy, torch.device("cpu"))
        rng = torch.Generator().manual_seed(3)
        deltas.append(train_one(algorithm, ctx, params, (x, y), config, None, None, rng, 0).delta)
        assert model.channels_last is channels_last
    assert not torch.equal(deltas[0], torch.zeros_like(deltas[0]))
    torch.testing.assert_close(deltas[0], deltas[1], rtol=1e-5, atol=1e-6)


def test_parameter_grads_are_views_of_one_flat_buffer():
    model = resident(cnn)
    buffers = ResidentGrad(model, F.cross_entropy)
    x, y = data()
    loss = buffers.backward((x, y, None))
    reference = torch.autograd.grad(F.cross_entropy(model.model(x), y), list(model.model.parameters()))
    flat = buffers.flat.untyped_storage().data_ptr()
    for p, g in zip(model.model.parameters(), reference):
        assert p.grad.untyped_storage().data_ptr() == flat
        assert torch.equal(p.grad, g)
    assert torch.equal(buffers.flat, torch.cat([g.reshape(-1) for g in reference]))
    assert loss.requires_grad is False and torch.isfinite(loss)
    # a torch optimizer's zero_grad(set_to_none=True) drops the views; the next backward restores them
    for p in model.model.parameters():
        p.grad = None
    buffers.backward((x, y, None))
    assert all(p.grad.untyped_storage().data_ptr() == flat for p in model.model.parameters())


def reference_grad_fn(model: ResidentModel):
    """The flat step's oracle before the flat buffer: autograd.grad and torch.cat."""

    def grad(flat, batch):
        x, y, _ = batch
        model.load(flat)
        with torch.enable_grad():
            loss = F.cross_entropy(model.model(x), y)
            grads = torch.autograd.grad(loss, list(model.model.parameters()))
        return loss.detach(), torch.cat([g.reshape(-1) for g in grads])

    return grad


def run(name, build, grad_of, config, state=None, broadcast=None):
    model = resident(build)
    params = model.read()
    algorithm = CLIENTS.get(name)()
    x, y = data()
    rng = torch.Generator().manual_seed(7)
    result = run_client(
        algorithm, algorithm.options(config), grad_of(model), params, (x, y), config, state, broadcast, rng, 0
    )
    return result


@pytest.mark.parametrize("build", [mlp, cnn])
def test_in_place_sgd_is_bit_identical_to_the_flat_step(build):
    config = {"lr": 0.3, "batch_size": 5, "local_steps": 4, "optimizer": "sgd"}
    sgd = CLIENTS.get("sgd")()
    assert sgd.in_place_step(sgd.options(config)) is not None
    fast = run("sgd", build, lambda m: resident_grad_fn(m, F.cross_entropy), config)
    slow = run("sgd", build, reference_grad_fn, config)
    assert torch.equal(fast.delta, slow.delta) and fast.delta.abs().sum() > 0
    assert fast.metrics == slow.metrics and fast.num_steps == slow.num_steps == 4


@pytest.mark.parametrize(
    "extra", [{"momentum": 0.9}, {"weight_decay": 1e-3}, {"clip_norm": 1.0}, {"optimizer": "adam"}]
)
def test_sgd_with_extras_keeps_the_generic_step(extra):
    sgd = CLIENTS.get("sgd")()
    config = {"lr": 0.1, "batch_size": 5, "local_steps": 2, "optimizer": "sgd"} | extra
    assert sgd.in_place_step(sgd.options(config)) is None
    fast = run("sgd", mlp, lambda m: resident_grad_fn(m, F.cross_entropy), config)
    slow = run("sgd", mlp, reference_grad_fn, config)
    assert torch.equal(fast.delta, slow.delta)


@pytest.mark.parametrize("name", ["fedprox", "scaffold"])
def test_other_clients_give_the_same_bits_with_the_flat_buffer(name):
    config = {"lr": 0.1, "batch_size": 5, "local_steps": 3, "mu": 0.1}
    assert not hasattr(CLIENTS.get(name)(), "in_place_step")
    numel = resident(mlp).layout.numel
    broadcast = {"c": torch.full((numel,), 0.01)} if name == "scaffold" else None
    fast = run(name, mlp, lambda m: resident_grad_fn(m, F.cross_entropy), config, broadcast=broadcast)
    slow = run(name, mlp, reference_grad_fn, config, broadcast=broadcast)
    assert torch.equal(fast.delta, slow.delta) and fast.delta.abs().sum() > 0
    for key in fast.extras or {}:
        assert torch.equal(fast.extras[key], slow.extras[key])
