"""Communication end to end: compressed runs on every executor, residuals through checkpoint/resume, bytes in the logs."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import torch
from test_resume import _rows, run_experiment_resumed

from fedsim.checkpoint import decode, load_checkpoint
from fedsim.run import build, run_experiment

EF_TOPK = {"compressor": "topk", "ratio": 0.1, "error_feedback": True}


def test_a_compressed_run_resumes_with_its_residuals(small_config, tmp_path):
    config = small_config(
        rounds=4,
        communication=EF_TOPK | {"link": "lognormal"},
        output={"checkpoint_every": 2, "progress": False, "tensorboard": False},
    )
    out = tmp_path / "run"
    summary, _ = run_experiment(config, out_dir=out)
    expected, final = _rows(out / "metrics.jsonl"), (out / "model_state.pt").read_bytes()
    states = decode(load_checkpoint(out / "checkpoint.pt")["engine"])["client_states"]
    assert states and all(any(k.startswith("transform/0.topk/") for k in s) for s in states.values())
    (out / "summary.json").unlink()
    summary, _ = run_experiment_resumed(out)
    assert summary["status"] == "completed" and _rows(out / "metrics.jsonl") == expected
    resumed = torch.load(out / "model_state.pt", weights_only=True)
    reference = torch.load(io.BytesIO(final), weights_only=True)
    assert all(torch.equal(resumed[k], reference[k]) for k in reference)
    rounds = _rows(out / "rounds.jsonl")
    assert all(r["bytes_up"] > 0 and r["bytes_down"] > 0 for r in rounds)
    assert json.loads((out / "summary.json").read_text())["bytes_up"] == rounds[-1]["bytes_up"]


@pytest.mark.parametrize(
    "communication", [EF_TOPK, {"compressor": "powersgd", "rank": 1}, {"compressor": "qsgd", "levels": 4}]
)
def test_vmap_equals_serial(small_config, one_torch_thread, communication):
    finals = {}
    for executor in ("serial", "vmap"):
        experiment = build(small_config(rounds=2, communication=communication, executor={"name": executor}))
        experiment.run()
        finals[executor] = experiment.engine.state.params
        assert len(experiment.engine.client_states) > 0 or communication.get("compressor") == "qsgd"
    assert torch.allclose(finals["serial"], finals["vmap"], atol=1e-5)


def test_compression_cuts_uploaded_bytes_and_virtual_time(small_config):
    def run(communication):
        experiment = build(small_config(rounds=2, communication=communication | {"link": "constant", "up_mbps": 0.01}))
        return experiment.run()

    dense, sparse = run({}), run(EF_TOPK)
    assert sparse["bytes_up"] < dense["bytes_up"] / 4 and sparse["bytes_down"] == dense["bytes_down"]
    assert sparse["virtual_time"] < dense["virtual_time"]


def test_the_compression_experiment_runs_and_reports(tmp_path, load_experiment):
    module = load_experiment("compression.py")
    path = Path(module.__file__)
    rows = [module.run_one((label, 1, str(path.with_suffix(".yaml")), 1)) for label in ("none", "PowerSGD r=1")]
    table = module.report(rows, tmp_path)
    assert "PowerSGD r=1" in table and (tmp_path / "results.png").exists() and (tmp_path / "results.csv").exists()
    assert rows[1]["bytes_up"] < rows[0]["bytes_up"] / 10
