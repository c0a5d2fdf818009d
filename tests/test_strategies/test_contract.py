"""Contract tests over EVERY registered strategy preset (a new preset is tested automatically),
plus option resolution (resolve_parts / build_strategy)."""

from __future__ import annotations

import dataclasses
import io

import numpy as np
import pytest
import torch

from fedsim.config import StrategyConfig
from fedsim.state import ClientStateStore
from fedsim.types import ClientResult, PopulationInfo
from strategies import STRATEGIES, build_strategy, resolve_parts, resolved_options, server_part

N, DIM = 5, 4
POP = PopulationInfo(
    N, num_samples=np.array([10, 20, 5, 40, 25]), participation_prob=np.array([0.9, 0.5, 0.3, 0.2, 0.1])
)
ROUNDS = [[0, 2], [], [1, 2, 3], [4], [0, 1, 2, 3, 4], [3, 0]]  # includes an empty round and a repeat


def _results(t: int, scale: float = 1.0) -> list[ClientResult]:
    g = torch.Generator().manual_seed(1000 + t)
    results = [ClientResult(i, t, scale * torch.randn(DIM, generator=g), int(POP.num_samples[i]), 1) for i in ROUNDS[t]]
    for r in results:  # what the stateful clients send their server parts (SCAFFOLD's delta_c, FedCM's mean_grad)
        r.extras = {"delta_c": torch.randn(DIM, generator=g), "mean_grad": torch.randn(DIM, generator=g)}
    return results


def _x0() -> torch.Tensor:
    return torch.randn(DIM, generator=torch.Generator().manual_seed(7))


def _run(strategy, state, rounds, scale: float = 1.0):
    for t in rounds:
        state = strategy.aggregate(state, _results(t, scale), float(t))
    return state


def _tensors(obj, path="state"):
    """Every tensor / array reachable from a state, as (path, clone) pairs, for in-place checks."""
    if isinstance(obj, torch.Tensor):
        return [(path, obj.clone())]
    if isinstance(obj, np.ndarray):
        return [(path, obj.copy())]
    if isinstance(obj, ClientStateStore):
        return [(path + "#len", len(obj))] + [p for k, v in sorted(obj.items()) for p in _tensors(v, f"{path}[{k}]")]
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return [p for f in dataclasses.fields(obj) for p in _tensors(getattr(obj, f.name), f"{path}.{f.name}")]
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):  # NamedTuple
        return [p for f in obj._fields for p in _tensors(getattr(obj, f), f"{path}.{f}")]
    if isinstance(obj, dict):
        return [p for k, v in obj.items() for p in _tensors(v, f"{path}[{k!r}]")]
    if isinstance(obj, (list, tuple)):
        return [p for i, v in enumerate(obj) for p in _tensors(v, f"{path}[{i}]")]
    return []


def _same(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, np.ndarray):
        return np.array_equal(a, b)
    return a == b


PRESETS = STRATEGIES.names()


def test_registry_is_not_trivially_small():
    assert {"fedavg", "fedadam", "fedau", "mifa", "fedvarp"} <= set(PRESETS)


@pytest.mark.parametrize("name", PRESETS)
def test_zero_server_lr_is_a_no_op(name):
    strategy = build_strategy(StrategyConfig(name=name, server_lr=0.0))
    state = strategy.init(_x0(), POP)
    state = _run(strategy, state, [0, 1, 2])
    assert torch.equal(state.params, _x0())
    assert state.version == 3


@pytest.mark.parametrize("name", PRESETS)
def test_zero_deltas_leave_params_unchanged(name):
    strategy = build_strategy(StrategyConfig(name=name))
    state = _run(strategy, strategy.init(_x0(), POP), range(len(ROUNDS)), scale=0.0)
    assert torch.equal(state.params, _x0())


@pytest.mark.parametrize("name", PRESETS)
def test_state_round_trips_through_torch_save(name):
    strategy = build_strategy(StrategyConfig(name=name))
    state = _run(strategy, strategy.init(_x0(), POP), [0, 1, 2])
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    assert loaded.version == state.version
    assert all(_same(a, b) for (_, a), (_, b) in zip(_tensors(loaded), _tensors(state)))
    continued = _run(strategy, state, [3, 4, 5])
    resumed = _run(strategy, loaded, [3, 4, 5])
    assert torch.equal(resumed.params, continued.params)
    assert not torch.equal(continued.params, state.params)


@pytest.mark.parametrize("name", PRESETS)
def test_deterministic(name):
    runs = []
    for _ in range(2):
        strategy = build_strategy(StrategyConfig(name=name))
        runs.append(_run(strategy, strategy.init(_x0(), POP), range(len(ROUNDS))).params)
    assert torch.equal(runs[0], runs[1])
    assert not torch.equal(runs[0], _x0())


@pytest.mark.parametrize("name", PRESETS)
def test_aggregate_does_not_mutate_its_input_state(name):
    strategy = build_strategy(StrategyConfig(name=name))
    state = strategy.init(_x0(), POP)
    for t in range(len(ROUNDS)):
        before = _tensors(state)
        new = strategy.aggregate(state, _results(t), float(t))
        after = _tensors(state)
        assert [p for p, _ in before] == [p for p, _ in after]
        changed = [p for (p, a), (_, b) in zip(before, after) if not _same(a, b)]
        assert not changed, f"round {t}: aggregate modified {changed} in place"
        state = new


@pytest.mark.parametrize("name", PRESETS)
def test_one_client_full_participation_first_round(name):
    # with N = 1 every weighting gives U = delta in its first round (FedAU omega = 1, MIFA / FedVARP
    # memories empty, known_prob p = 1); an SGD server then steps lr * delta (momentum starts at 0)
    pop = PopulationInfo(1, num_samples=np.array([3]), participation_prob=np.ones(1))
    strategy = build_strategy(StrategyConfig(name=name, server_lr=0.5))
    delta = torch.tensor([1.0, -2.0, 0.5, 0.0])
    extras = {"delta_c": torch.zeros(DIM), "mean_grad": torch.zeros(DIM)}
    state = strategy.aggregate(strategy.init(_x0(), pop), [ClientResult(0, 0, delta, 3, 1, extras=extras)], 0.0)
    _, _, optimizer, _ = resolve_parts(StrategyConfig(name=name))
    # FedDyn / FedSpeed add the mean of every h_i on top: with N = 1, h_0 = delta, so U = 2 delta
    u = 2 * delta if server_part(StrategyConfig(name=name)) == "feddyn" else delta
    if (
        name == "centered_clipping"
    ):  # moves at most its radius tau = 1 from its first center 0 (Karimireddy et al. 2021)
        u = delta / float(torch.linalg.vector_norm(delta))
    if optimizer == "sgd":
        torch.testing.assert_close(state.params, _x0() + 0.5 * u)
    else:  # adaptive: m = (1 - b1) delta, the step has delta's sign
        assert torch.equal(torch.sign(state.params - _x0()), torch.sign(delta))


# --- option resolution


def test_option_not_taken_by_the_chosen_parts_is_rejected():
    with pytest.raises(ValueError, match=r"strategy\.beta2") as info:
        build_strategy(StrategyConfig(name="fedavg", beta2=0.9))
    assert "momentum" in str(info.value)  # lists what the parts do take
    with pytest.raises(ValueError, match=r"strategy\.cutoff"):
        resolve_parts(StrategyConfig(name="fedadam", cutoff=5))
    with pytest.raises(ValueError, match=r"strategy\.beta1"):
        resolve_parts(StrategyConfig(name="mifa", beta1=0.9))


def test_a_swapped_in_part_gets_its_own_defaults_not_the_presets():
    # fedau's lr 1.0 belongs to its sgd: Adam swapped in runs at Adam's own lr (0.01), not 1.0
    weighting, w_kwargs, optimizer, o_kwargs = resolve_parts(StrategyConfig(name="fedau", server_optimizer="adam"))
    assert (weighting, w_kwargs, optimizer, o_kwargs) == ("fedau", {}, "adam", {})
    assert resolved_options(StrategyConfig(name="fedau", server_optimizer="adam"))["server_lr"] == 0.01
    assert build_strategy(StrategyConfig(name="fedau", server_optimizer="adam")).name == "fedau"
    assert resolve_parts(StrategyConfig(name="fedavgm", server_optimizer="adam"))[3] == {}
    assert resolve_parts(StrategyConfig(name="fedadam", server_optimizer="sgd"))[3] == {}
    # the preset's own part keeps the preset's options; the user's options always win
    assert resolve_parts(StrategyConfig(name="fedadam", weighting="uniform"))[3] == {"lr": 0.01, "tau": 1e-3}
    assert resolve_parts(StrategyConfig(name="fedau", server_optimizer="adam", server_lr=0.5))[3] == {"lr": 0.5}


def test_resolved_options_state_every_option_the_parts_use():
    assert resolved_options(StrategyConfig(name="fedadam")) == {
        "name": "fedadam",
        "weighting": "samples",
        "server_optimizer": "adam",
        "server_lr": 0.01,
        "beta1": 0.9,
        "beta2": 0.99,
        "tau": 1e-3,
        "bias_correction": False,
    }
    assert resolved_options(StrategyConfig(name="fedau", cutoff=50)) == {
        "name": "fedau",
        "weighting": "fedau",
        "server_optimizer": "sgd",
        "cutoff": 50,
        "server_lr": 1.0,
        "momentum": 0.0,
    }
    # running the resolved options again resolves to the same thing
    again = StrategyConfig(**resolved_options(StrategyConfig(name="fedyogi", beta2=0.9)))
    assert resolved_options(again) == resolved_options(StrategyConfig(name="fedyogi", beta2=0.9))


def test_user_options_reach_their_part():
    weighting, w_kwargs, optimizer, o_kwargs = resolve_parts(
        StrategyConfig(name="fedau", cutoff=50, server_optimizer="yogi", beta2=0.9, server_lr=0.1)
    )
    assert (weighting, w_kwargs) == ("fedau", {"cutoff": 50})
    assert (optimizer, o_kwargs) == ("yogi", {"lr": 0.1, "beta2": 0.9})
    assert build_strategy(StrategyConfig(name="fedau", cutoff=50)).aggregator.cutoff == 50
    assert resolve_parts(StrategyConfig(name="fedavg", weighting="mifa"))[:2] == ("mifa", {})
