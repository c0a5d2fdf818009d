"""Differential privacy end to end: tiny runs with ``privacy:`` (DP-FedAvg, adaptive and per-layer
clipping, local DP, buffered async), their reported epsilon, executors, checkpoints, and bad input."""

from __future__ import annotations

import io
import json
import math

import dp_accounting
import pytest
import torch
from dp_accounting import pld, rdp

from fedsim.checkpoint import decode, load_checkpoint
from fedsim.cli import main
from fedsim.config import load_config
from fedsim.run import build, resume_experiment, run_experiment
from tests.conftest import small_values

pytestmark = pytest.mark.usefixtures("one_torch_thread")

POISSON = {"data": {"num_clients": 30}, "population": {"participation": "poisson", "mean_prob": 0.1}}  # D = qN = 3
CENTRAL = {"strategy": {"name": "dp-fedavg"}, "privacy": {"mode": "central"}}


def config(*parts: dict, **top):
    values = small_values(**top)
    for part in parts:
        values = _merge(values, part)
    return load_config(values=values)


def _merge(base: dict, top: dict) -> dict:
    from fedsim.config import deep_merge  # noqa: PLC0415

    return deep_merge(base, top)


def run(cfg):
    experiment = build(cfg)
    summary = experiment.run()
    rows = [{k: v for k, v in row.items() if k != "wall_time"} for row in experiment.engine.history]
    return rows, experiment.engine.state.params.clone(), summary


def _rows(path) -> list[dict]:
    return [{k: v for k, v in json.loads(line).items() if k != "wall_time"} for line in path.read_text().splitlines()]


# ---------------------------------------------------------------- z = 0 is the non-DP strategy


def test_dp_fedavg_with_no_noise_and_an_unreached_clip_equals_the_fixed_denominator_average_bit_for_bit():
    private = {**CENTRAL, "privacy": {"mode": "central", "noise_multiplier": 0.0, "clip": 1e6}}
    plain = {"strategy": {"name": "dp-fedavg", "weighting": "expected_cohort"}, "privacy": {"mode": "off"}}
    rows, params, summary = run(config(POISSON, private, rounds=4))
    plain_rows, plain_params, plain_summary = run(config(POISSON, plain, rounds=4))
    assert sum(r["participants"] for r in rows) > 0
    assert torch.equal(params, plain_params)
    assert [{k: v for k, v in r.items() if k != "epsilon"} for r in rows] == plain_rows
    assert all(r["epsilon"] is None for r in rows[1:])  # z = 0: no privacy, reported as null
    assert summary["privacy"]["epsilon"] is None and "privacy" not in plain_summary


# ---------------------------------------------------------------- the reported epsilon


def test_reported_epsilon_is_dp_accountings_for_poisson_sampling(tmp_path):
    cfg = config(POISSON, CENTRAL, {"privacy": {"noise_multiplier": 2.0}}, rounds=3)
    summary, out = run_experiment(cfg, out_dir=tmp_path / "run")
    q, z, delta = 0.1, 2.0, 1.0 / 30**1.1
    accountant = pld.PLDAccountant()
    accountant.compose(
        dp_accounting.SelfComposedDpEvent(dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(z)), 3)
    )
    expected = accountant.get_epsilon(delta)
    privacy = json.loads((out / "summary.json").read_text())["privacy"]
    assert privacy["epsilon"] == pytest.approx(expected, rel=1e-9)
    assert (privacy["sampling"], privacy["sampling_rate"], privacy["steps"]) == ("poisson", q, 3)
    assert privacy["delta"] == pytest.approx(delta) and privacy["accountant"] == "dp-accounting PLD"
    rows = _rows(out / "metrics.jsonl")
    assert rows[-1]["epsilon"] == pytest.approx(expected, rel=1e-9)
    epsilons = [row["epsilon"] for row in rows if "epsilon" in row]
    assert len(epsilons) == 3 and epsilons[0] < epsilons[1] < epsilons[2]


def test_fixed_size_cohorts_are_accounted_with_rdp_sampling_without_replacement(tmp_path):
    # small_values: population uniform, 5 of 20 clients per round
    cfg = config(CENTRAL, {"privacy": {"noise_multiplier": 2.0, "delta": 1e-3}}, rounds=2)
    summary, _ = run_experiment(cfg, out_dir=tmp_path / "run")
    accountant = rdp.RdpAccountant(neighboring_relation=dp_accounting.NeighboringRelation.REPLACE_ONE)
    accountant.compose(
        dp_accounting.SelfComposedDpEvent(
            dp_accounting.SampledWithoutReplacementDpEvent(20, 5, dp_accounting.GaussianDpEvent(1.0)), 2
        )
    )
    privacy = summary["privacy"]
    assert privacy["epsilon"] == pytest.approx(accountant.get_epsilon(1e-3), rel=1e-9)
    assert (privacy["sampling"], privacy["sampling_rate"], privacy["accountant"]) == (
        "fixed_size",
        0.25,
        "dp-accounting RDP",
    )


def test_a_target_epsilon_run_spends_at_most_that_epsilon(tmp_path):
    cfg = config(POISSON, CENTRAL, {"privacy": {"target_epsilon": 3.0, "accountant": "rdp"}}, rounds=3)
    summary, _ = run_experiment(cfg, out_dir=tmp_path / "run")
    privacy = summary["privacy"]
    assert 0.97 * 3.0 <= privacy["epsilon"] <= 3.0
    more_noise, _ = run_experiment(
        config(
            POISSON,
            CENTRAL,
            {"privacy": {"noise_multiplier": privacy["noise_multiplier"] * 1.5, "accountant": "rdp"}},
            rounds=3,
        ),
        out_dir=tmp_path / "more",
    )
    assert more_noise["privacy"]["epsilon"] < privacy["epsilon"]


# ---------------------------------------------------------------- buffered asynchronous DP


def test_fedbuff_with_central_dp_runs_without_sampling_amplification(tmp_path):
    cfg = config(
        {
            "strategy": {"name": "fedbuff"},
            "scheduler": {"buffer_size": 3, "concurrency": 6},
            "privacy": {"mode": "central", "clip": 0.5, "accountant": "rdp"},
        },
        rounds=3,
    )
    experiment = build(cfg)
    assert experiment.engine.strategy.aggregator.cohort == 3.0  # D = the buffer size
    summary = experiment.run()
    privacy = summary["privacy"]
    assert (privacy["sampling"], privacy["sampling_rate"], privacy["steps"]) == ("none", 1.0, 3)
    accountant = rdp.RdpAccountant()
    accountant.compose(dp_accounting.SelfComposedDpEvent(dp_accounting.GaussianDpEvent(1.0), 3))
    assert privacy["epsilon"] == pytest.approx(accountant.get_epsilon(privacy["delta"]), rel=1e-9)
    assert math.isfinite(experiment.engine.history[-1]["test_loss"])


# ---------------------------------------------------------------- executors


ADAPTIVE_PER_LAYER = {
    "privacy": {
        "mode": "central",
        "clip": 0.05,
        "clipping": "per_layer_normalized",
        "layer_budget": "dimension",
        "adaptive": True,
        "count_noise": 2.0,
    }
}
# RDP: dp-accounting's PLD takes seconds per evaluation for local DP's small per-release z (z / 2)
LOCAL = {"privacy": {"mode": "local", "clip": 0.05, "noise_multiplier": 0.5, "accountant": "rdp"}}


@pytest.mark.parametrize("case", [ADAPTIVE_PER_LAYER, LOCAL], ids=["central-adaptive-per-layer", "local"])
def test_transforms_run_the_same_on_serial_and_vmap(case):
    strategy = {"strategy": {"name": "dp-fedavg" if case["privacy"]["mode"] == "central" else "fedavg"}}
    rows, params, summary = run(config(strategy, case, rounds=3))
    vmap_rows, vmap_params, vmap_summary = run(config(strategy, case, {"executor": {"name": "vmap"}}, rounds=3))
    torch.testing.assert_close(vmap_params, params, rtol=1e-5, atol=1e-5)
    assert len(rows) == len(vmap_rows)
    for a, b in zip(rows, vmap_rows):
        assert a.keys() == b.keys()
        for key, value in a.items():
            assert b[key] == (pytest.approx(value, rel=1e-4, abs=1e-5) if isinstance(value, float) else value), key
    assert vmap_summary["privacy"]["clip_norm"] == pytest.approx(summary["privacy"]["clip_norm"], rel=1e-6)
    if case is ADAPTIVE_PER_LAYER:
        assert summary["privacy"]["clip_norm"] != 0.05  # the clip moved: clients reported dp_unclipped


def test_local_dp_adds_noise_of_the_configured_scale():
    """A local-DP run differs from the same run without noise by the clients' noise, averaged."""
    noisy_rows, noisy, summary = run(config(LOCAL, rounds=1))
    quiet_rows, quiet, _ = run(config({"privacy": {**LOCAL["privacy"], "noise_multiplier": 0.0}}, rounds=1))
    # 5 clients, each adds N(0, (0.5 * 0.05)^2) to its delta; the mean of 5 (samples weights) ~ 0.025 / sqrt(5)
    std = float((noisy - quiet).std())
    assert 0.005 < std < 0.03
    assert summary["privacy"]["sampling"] == "local" and summary["privacy"]["epsilon"] > 0


# ---------------------------------------------------------------- checkpoint and resume


def test_an_adaptive_dp_run_resumed_from_a_checkpoint_ends_as_an_uninterrupted_one(tmp_path):
    # NOTE: resuming needs ServerState.transforms (adaptive clipping's {"clip": C}) in the checkpoint;
    # if fedsim/checkpoint.py moves to a registry of checkpointable classes, they must be registered.
    cfg = config(
        POISSON,
        CENTRAL,
        ADAPTIVE_PER_LAYER,
        {"privacy": {"noise_multiplier": 0.8, "accountant": "rdp"}},
        rounds=4,
        output={"checkpoint_every": 2, "progress": False, "tensorboard": False},
    )
    out = tmp_path / "run"
    summary, _ = run_experiment(cfg, out_dir=out)
    assert summary["status"] == "completed"
    expected, final = _rows(out / "metrics.jsonl"), (out / "model_state.pt").read_bytes()
    (out / "summary.json").unlink()  # as if killed after the update-2 checkpoint
    saved = decode(load_checkpoint(out / "checkpoint.pt")["engine"])["server_state"]
    assert saved.version == 2 and saved.transforms[0]["clip"] != 0.05  # the adaptive clip of update 2
    resumed, _ = resume_experiment(out, ["output.progress=false", "output.tensorboard=false"])
    assert resumed["status"] == "completed" and _rows(out / "metrics.jsonl") == expected
    assert resumed["privacy"] == summary["privacy"]
    assert expected[-1]["epsilon"] == summary["privacy"]["epsilon"]
    params = torch.load(out / "model_state.pt", weights_only=True)
    reference = torch.load(io.BytesIO(final), weights_only=True)
    assert all(torch.equal(params[k], reference[k]) for k in reference)


# ---------------------------------------------------------------- bad input


BAD = [
    (["--set", "privacy.clip=0"], "privacy.clip"),
    (["--set", "privacy.noise_multiplier=-1"], "privacy.noise_multiplier"),
    (["--set", "privacy.target_epsilon=0"], "privacy.target_epsilon"),
    (["--set", "privacy.delta=0"], "privacy.delta"),
    (["--set", "privacy.delta=1"], "privacy.delta"),
    (["--set", "privacy.delta=0.1"], "privacy.delta (0.1) must be < 1/num_clients"),
    (
        ["--set", "privacy.noise_multiplier=1", "--set", "privacy.target_epsilon=1"],
        "noise_multiplier or target_epsilon",
    ),
    (
        ["--rounds", "1000", "--set", "privacy.target_epsilon=1e-6", "--set", "privacy.delta=1e-5"],
        "privacy.target_epsilon: 1e-06 is not reached",
    ),
    (["--set", "privacy.adaptive=true", "--set", "privacy.count_noise=0.1"], "privacy.count_noise"),
    (["--set", "strategy.weighting=samples"], "strategy.weighting 'samples' is not differentially private"),
    (["--strategy", "fedau"], "privacy.mode central: strategy 'fedau'"),
    (["--strategy", "fedasync"], "privacy.mode central: strategy 'fedasync'"),
    (["--strategy", "scaffold"], "client.algorithm 'scaffold'"),
    (["--set", "privacy.mode=local", "--set", "privacy.adaptive=true"], "privacy.mode local"),
]


@pytest.mark.parametrize("args, expected", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_privacy_input_is_one_line_naming_the_field(tmp_path, capsys, args, expected):
    argv = [
        "run",
        "--strategy",
        "dp-fedavg",
        "--rounds",
        "2",
        "--quiet",
        "--no-tensorboard",
        "--out",
        str(tmp_path / "r"),
        "--set",
        "data.num_clients=20",
        "--set",
        "privacy.mode=central",
        *args,
    ]
    code = main(argv)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("fedsim: error:"), err
    assert expected in lines[0], err
    assert not (tmp_path / "r" / "summary.json").exists()
