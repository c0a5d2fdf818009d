"""Library server optimizers (strategies/library_optimizers.py): torch.optim / pytorch-optimizer on the pseudo-gradient."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from fedsim.checkpoint import decode, encode, load_checkpoint
from fedsim.config import ConfigError, RunConfig, load_config
from fedsim.run import run_experiment
from fedsim.types import ClientResult, PopulationInfo
from strategies import SERVER_OPTIMIZERS, build_strategy
from strategies.fedopt import resolved_options


def _result(cid: int, delta: torch.Tensor, n: int = 10) -> ClientResult:
    return ClientResult(client_id=cid, base_version=0, delta=delta, num_samples=n, num_steps=1)


def _strategy(**options):
    return build_strategy(RunConfig(strategy={"name": "fedavg", **options}).strategy)


def _population() -> PopulationInfo:
    return PopulationInfo(num_clients=4, num_samples=np.full(4, 10))


DELTAS = [
    torch.tensor([0.5, -1.0, 0.25, 2.0]),
    torch.tensor([-0.3, 0.1, 0.0, 1.0]),
    torch.tensor([1.0, 1.0, -2.0, 0.5]),
]


@pytest.mark.parametrize(
    "name, options, by_hand",
    [
        (
            "adabelief",
            {"betas": [0.9, 0.99]},
            lambda p, lr: __import__("pytorch_optimizer").AdaBelief([p], lr=lr, betas=(0.9, 0.99)),
        ),
        ("torch.AdamW", {"weight_decay": 0.1}, lambda p, lr: torch.optim.AdamW([p], lr=lr, weight_decay=0.1)),
        ("lion", None, lambda p, lr: __import__("pytorch_optimizer").Lion([p], lr=lr)),
    ],
)
def test_library_optimizer_is_the_optimizer_on_the_negative_delta(name, options, by_hand):
    """Three server updates equal the optimizer stepping a flat parameter whose gradient is -U, by hand."""
    lr = 0.05
    strategy = _strategy(server_optimizer=name, server_lr=lr, server_optimizer_kwargs=options)
    x0 = torch.tensor([1.0, -2.0, 0.5, 0.0])
    state = strategy.init(x0, _population())
    param = torch.nn.Parameter(x0.clone())
    opt = by_hand(param, lr)
    for delta in DELTAS:
        state = strategy.aggregate(state, [_result(0, delta)], now=0.0)
        param.grad = -delta
        opt.step()
        assert torch.equal(state.params, param.detach())
    assert state.version == 3


def test_server_sgd_lr_1_through_the_generic_path_is_fedavg_bit_for_bit(small_config, tmp_path):
    runs = {}
    for name, strategy in {
        "fedavg": {"name": "fedavg"},
        "torch.SGD": {"name": "fedavg", "server_optimizer": "torch.SGD", "server_lr": 1.0},
    }.items():
        config = small_config(rounds=3, strategy=strategy, output={"progress": False, "tensorboard": False})
        summary, out = run_experiment(config, out_dir=tmp_path / name)
        assert summary["status"] == "completed"
        runs[name] = torch.load(out / "model_state.pt", weights_only=True)
    assert all(torch.equal(runs["fedavg"][k], runs["torch.SGD"][k]) for k in runs["fedavg"])
    # and on aggregates of several clients, unit level
    a, b = _strategy(), _strategy(server_optimizer="torch.SGD", server_lr=1.0)
    sa = a.init(torch.linspace(-1, 1, 4), _population())
    sb = b.init(torch.linspace(-1, 1, 4), _population())
    for delta in DELTAS:
        results = [_result(0, delta, 7), _result(1, 0.3 * delta.flip(0), 3)]
        sa, sb = a.aggregate(sa, results, 0.0), b.aggregate(sb, results, 0.0)
        assert torch.equal(sa.params, sb.params)


def test_state_is_plain_data_that_round_trips_through_the_checkpoint_codec():
    strategy = _strategy(server_optimizer="adan", server_lr=0.01)
    state = strategy.init(torch.zeros(4), _population())
    for delta in DELTAS[:2]:
        state = strategy.aggregate(state, [_result(0, delta)], 0.0)
    restored = decode(encode(state.optimizer))
    assert restored.keys() == state.optimizer.keys()
    a = strategy.aggregate(state, [_result(0, DELTAS[2])], 0.0)
    b = strategy.aggregate(state.replace(optimizer=restored), [_result(0, DELTAS[2])], 0.0)
    assert torch.equal(a.params, b.params)
    # updates are pure: stepping from `state` twice gave the same result, so its tensors were not modified
    c = strategy.aggregate(state, [_result(0, DELTAS[2])], 0.0)
    assert torch.equal(a.params, c.params)


def test_a_run_with_a_library_server_optimizer_resumes_to_the_same_model(small_config, tmp_path):
    from fedsim.run import resume_experiment  # noqa: PLC0415

    config = small_config(
        rounds=4,
        strategy={"name": "fedavg", "server_optimizer": "adopt", "server_lr": 0.01},
        output={"checkpoint_every": 2, "progress": False, "tensorboard": False},
    )
    out = tmp_path / "run"
    summary, _ = run_experiment(config, out_dir=out)
    assert summary["status"] == "completed"
    final = (out / "model_state.pt").read_bytes()
    (out / "summary.json").unlink()  # as if killed after the update-2 checkpoint
    assert decode(load_checkpoint(out / "checkpoint.pt")["engine"])["server_state"].version == 2
    summary, _ = resume_experiment(out, ["output.progress=false", "output.tensorboard=false"])
    assert summary["status"] == "completed"
    resumed = torch.load(out / "model_state.pt", weights_only=True)
    reference = torch.load(io.BytesIO(final), weights_only=True)
    assert all(torch.equal(resumed[k], reference[k]) for k in reference)


@pytest.mark.parametrize(
    "options, needle",
    [
        ({"server_optimizer": "sophiah"}, "Hessian"),
        ({"server_optimizer": "adahessian"}, "Hessian"),
        ({"server_optimizer": "torch.LBFGS"}, "closure"),
        ({"server_optimizer": "alig"}, "closure"),
        ({"server_optimizer": "muon"}, "2-D"),
        ({"server_optimizer": "adamw"}, "torch.AdamW"),
        ({"server_optimizer": "nosuch"}, "torch.<Class>"),
    ],
)
def test_names_that_cannot_be_server_optimizers_fail_at_load_in_one_line(options, needle):
    with pytest.raises(ConfigError, match="strategy.server_optimizer") as info:
        load_config(values={"strategy": options})
    assert needle in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize(
    "options, needle",
    [
        ({"server_optimizer": "torch.Adam", "server_optimizer_kwargs": {"betas": [2.0, 0.9]}}, "Invalid beta"),
        ({"server_optimizer": "lion", "server_optimizer_kwargs": {"nope": 1}}, "has no option 'nope'"),
        ({"server_optimizer": "lion", "server_optimizer_kwargs": {"lr": 1}}, "strategy.server_lr"),
        (
            {"server_optimizer": "adam", "server_optimizer_kwargs": {"betas": [0.9, 0.9]}},
            "strategy.server_optimizer_kwargs is not used",
        ),
        ({"server_optimizer": "lion", "beta1": 0.5}, "strategy.beta1 is not used"),
        ({"server_optimizer": "torch.SparseAdam"}, "cannot step one flat parameter"),
    ],
)
def test_bad_options_are_refused_by_the_constructor_in_one_line(options, needle):
    with pytest.raises(ValueError, match=r"^strategy\.") as info:
        _strategy(**options)
    assert needle in str(info.value) and "\n" not in str(info.value)


def test_names_resolve_by_the_documented_scheme():
    assert SERVER_OPTIMIZERS.get("torch.adamw").name == "torch.AdamW"  # any case
    assert SERVER_OPTIMIZERS.get("pytorch_optimizer.yogi").name == "pytorch_optimizer.yogi"
    assert SERVER_OPTIMIZERS.get("yogi") is not SERVER_OPTIMIZERS.get("pytorch_optimizer.yogi")  # the hand-written one
    assert SERVER_OPTIMIZERS.names() == ["adagrad", "adam", "sgd", "yogi"]
    listed = dict(SERVER_OPTIMIZERS.listing())
    for name in (
        "sgd",
        "torch.SGD",
        "torch.AdamW",
        "adabelief",
        "lion",
        "adopt",
        "mars",
        "adan",
        "adamp",
        "diffgrad",
        "exadam",
        "adabound",
        "pytorch_optimizer.yogi",
    ):
        assert name in listed, name
    assert not {"sophiah", "adahessian", "torch.LBFGS"} & set(listed)
    # the saved config states the lr the class defaults to, and the options
    resolved = resolved_options(RunConfig(strategy={"server_optimizer": "torch.SGD"}).strategy)
    assert resolved["server_optimizer"] == "torch.SGD" and resolved["server_lr"] == 1e-3


def test_fedsim_list_optimizers_and_show_cover_both_sides(capsys):
    from fedsim.cli import main  # noqa: PLC0415

    assert main(["list", "optimizers"]) == 0
    out = capsys.readouterr().out
    assert "local optimizers (client.optimizer)" in out and "server optimizers (strategy.server_optimizer)" in out
    assert "lion" in out and "[batched]" in out and "torch.AdamW" in out and "adabelief" in out
    assert main(["show", "adabelief"]) == 0
    out = capsys.readouterr().out
    assert "server optimizer adabelief" in out and "strategy.server_optimizer_kwargs.betas" in out
    assert "local optimizer adabelief" in out and "client.optimizer_kwargs.betas" in out


def test_server_mars_is_mars_at_server_lr_not_adamw_at_lr_1d():
    # the server's one flat vector is 1-D; MARS's default sends 1-D parameters to AdamW at lr_1d
    params, u = torch.linspace(-1.0, 1.0, 16), torch.linspace(0.3, -0.2, 16)
    steps = []
    for lr in (1e-3, 1e-2):
        opt = SERVER_OPTIMIZERS.get("mars")(lr=lr)
        new, _ = opt.apply(u, opt.init(params), params)
        steps.append((new - params).abs().max().item())
    assert steps[1] > 5 * steps[0]  # the step follows server_lr
    opt = SERVER_OPTIMIZERS.get("mars")(lr=1e-2, options={"optimize_1d": False})  # the user's choice stands
    new, _ = opt.apply(u, opt.init(params), params)
    assert (new - params).abs().max().item() == pytest.approx(3e-3, rel=0.2)  # AdamW at lr_1d
