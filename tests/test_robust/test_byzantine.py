"""Byzantine clients: attacks do what they say, attackers are counted, fraction 0 changes nothing."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from clients.transforms import ClientContext, build_client_transforms
from fedsim.attacks import client_train_data, plan_byzantine
from fedsim.config import ConfigError, load_config
from fedsim.run import build, run_experiment
from fedsim.types import ClientJob, ClientResult
from strategies.robust import ByzantineStage, alie_z
from tests.conftest import small_values


def ctx_for(rows: int, byzantine: list[int]) -> ClientContext:
    return ClientContext(
        layout=None,
        seeds=list(range(rows)),
        client_ids=list(range(rows)),
        versions=[0] * rows,
        configs=[{"byzantine": 1} if k in byzantine else {} for k in range(rows)],
    )


def test_sign_flip_and_scale_touch_only_attackers():
    x = torch.randn(4, 5)
    out, _ = build_client_transforms([("attack_sign_flip", {})])[0].apply(x, ctx_for(4, [1, 3]))
    assert torch.equal(out[[0, 2]], x[[0, 2]]) and torch.equal(out[[1, 3]], -x[[1, 3]])
    out, _ = build_client_transforms([("attack_scale", {"scale": -3.0})])[0].apply(x, ctx_for(4, [2]))
    assert torch.equal(out[2], -3.0 * x[2]) and torch.equal(out[[0, 1, 3]], x[[0, 1, 3]])
    out, _ = build_client_transforms([("attack_gaussian", {"std": 2.0})])[0].apply(x, ctx_for(4, [0]))
    assert not torch.equal(out[0], x[0]) and torch.equal(out[1:], x[1:])


def results(rows, ids):
    return [
        ClientResult(
            client_id=c, base_version=0, delta=torch.as_tensor(r, dtype=torch.float32), num_samples=1, num_steps=1
        )
        for c, r in zip(ids, rows)
    ]


def test_alie_is_mean_minus_z_std_of_the_honest_and_ipm_is_minus_eps_mean():
    rows = np.array([[1.0, 2.0], [3.0, 2.0], [5.0, 8.0], [100.0, 100.0]], dtype=np.float32)
    honest = rows[:3]
    stage = ByzantineStage(frozenset({7}), "alie", "server", {"z": 1.5}, {"byzantine": 1})
    out, info = stage.apply(results(rows, [0, 1, 2, 7]))
    assert info == {"byzantine": 1}
    expected = honest.mean(0) - 1.5 * honest.std(0, ddof=1)
    np.testing.assert_allclose(out[3].delta.numpy(), expected, rtol=1e-6)
    assert all(torch.equal(out[i].delta, torch.from_numpy(rows[i])) for i in range(3))
    stage = ByzantineStage(frozenset({7}), "alie", "server", {"z": None}, {})
    out, _ = stage.apply(results(rows, [0, 1, 2, 7]))
    np.testing.assert_allclose(out[3].delta.numpy(), honest.mean(0) - alie_z(4, 1) * honest.std(0, ddof=1), rtol=1e-6)
    stage = ByzantineStage(frozenset({7}), "ipm", "server", {"eps": 0.5}, {})
    out, _ = stage.apply(results(rows, [0, 1, 2, 7]))
    np.testing.assert_allclose(out[3].delta.numpy(), -0.5 * honest.mean(0), rtol=1e-6)


class _Task:
    num_classes = 10

    class data:  # noqa: N801
        @staticmethod
        def train(cid):
            return torch.zeros(3, 2), torch.tensor([0, 3, 9])


def test_label_flip_is_data_side_and_only_for_attackers():
    job = ClientJob(0, 0, 0, torch.zeros(1), {"data_attack": "label_flip", "byzantine": 1}, 0)
    assert client_train_data(_Task, job)[1].tolist() == [9, 6, 0]
    honest = ClientJob(0, 0, 0, torch.zeros(1), {}, 0)
    assert client_train_data(_Task, honest)[1].tolist() == [0, 3, 9]


def config(**overrides):
    return load_config(values=small_values(**overrides))


def run_params(cfg):
    experiment = build(cfg)
    experiment.run()
    return experiment.engine.state.params


@pytest.mark.parametrize("strategy", ["fedavg", "krum", "centered_clipping", "monna"])
def test_fraction_zero_is_bit_identical(strategy):
    base = run_params(config(rounds=2, strategy={"name": strategy}))
    zero = run_params(
        config(
            rounds=2, strategy={"name": strategy}, population={"byzantine_fraction": 0.0, "byzantine_attack": "alie"}
        )
    )
    assert torch.equal(base, zero)


def test_attackers_reproducible_and_explicit_ids():
    cfg = config(population={"byzantine_fraction": 0.25})
    a, b = plan_byzantine(cfg, 20), plan_byzantine(cfg, 20)
    assert a.attackers == b.attackers and len(a.attackers) == 5 and a.f == 2  # ceil(0.25 * 5 per round)
    ids = plan_byzantine(config(population={"byzantine_ids": [3, 4]}), 20)
    assert ids.attackers == {3, 4}


def test_attackers_counted_in_rounds_jsonl(tmp_path):
    cfg = config(
        rounds=2,
        data={"num_clients": 6},
        population={"participation": "always", "byzantine_fraction": 0.34, "byzantine_attack": "sign_flip"},
        strategy={"name": "trimmed_mean"},
    )
    summary, out = run_experiment(cfg, tmp_path / "run")
    lines = [json.loads(line) for line in (out / "rounds.jsonl").read_text().splitlines()]
    assert [line["byzantine"] for line in lines] == [2, 2]
    assert len(summary["byzantine"]["attackers"]) == 2


@pytest.mark.parametrize("attack", ["sign_flip", "label_flip", "alie"])
def test_serial_and_vmap_agree_with_attackers(attack):
    values = dict(
        rounds=2, population={"byzantine_fraction": 0.2, "byzantine_attack": attack}, strategy={"name": "median"}
    )
    serial = run_params(config(**values))
    vmapped = run_params(config(**values, executor={"name": "vmap", "compile": "off"}))
    torch.testing.assert_close(serial, vmapped, rtol=1e-4, atol=1e-5)
    assert not torch.equal(serial, run_params(config(rounds=2, strategy={"name": "median"})))  # the attack changed it


def test_broken_assumption_is_a_one_line_config_error(tmp_path):
    cfg = config(population={"clients_per_round": 5, "byzantine_fraction": 0.3}, strategy={"name": "bulyan"})
    with pytest.raises(ConfigError) as err:
        run_experiment(cfg, tmp_path / "run")
    assert "n >= 4f + 3" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="byzantine_attack"):
        config(population={"byzantine_attack": "nope"})
    with pytest.raises(ConfigError, match="byzantine_options.eps"):
        run_experiment(
            config(
                population={"byzantine_fraction": 0.2, "byzantine_attack": "alie", "byzantine_options": {"eps": 1.0}}
            ),
            tmp_path / "run2",
        )


def test_buffered_mode_aggregates_per_buffer():
    cfg = config(
        rounds=2,
        scheduler={"name": "buffered", "buffer_size": 5, "concurrency": 6},
        population={"byzantine_fraction": 0.2, "byzantine_attack": "ipm"},
        strategy={"name": "krum"},
    )
    params = run_params(cfg)
    assert torch.isfinite(params).all()
