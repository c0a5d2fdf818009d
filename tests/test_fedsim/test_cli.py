"""The command line as a user meets it: list, run (run folder contents), plot, and exit code 2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from fedsim import registries
from fedsim.cli import main

FAST = ["--rounds", "2", "--quiet", "--set", "data.num_clients=20", "--set", "population.clients_per_round=4"]


def test_list_shows_every_registry_with_descriptions(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for _, _, heading in registries.KINDS.values():
        assert heading in out
    assert "fedavg" in out and "FedAvg" in out and "synthetic" in out and "dirichlet" in out and "serial" in out


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["run", "--strategy", "fedfoo"], "valid choices"),
        (["run", "--task", "imagenet"], "task.name"),
        (["run", "--config", "/nonexistent.yaml"], "not found"),
        (["run", "--set", "client.lr=-1"], "client.lr"),
        (["run", "--set", "data.alpha=0"], "data.alpha"),
        (["run", "--set", "data.num_clients=3"], "clients_per_round"),
        (["run", "--set", "strategy.beta2=0.9"], "strategy.beta2"),
        (["run", "--set", "task.model=resnet"], "task.model"),
        (["run", "--device", "tpu"], "executor.device"),
        (["run", "--set", "client.optimizer=adam", "--set", "client.momentum=0.9"], "client.momentum"),
    ],
)
def test_bad_input_exits_2_with_one_line(argv, needle, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("fedsim: error:") and needle in err[0]


def test_cuda_without_gpu_is_a_clear_error(capsys, tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    assert main(["run", "--device", "cuda", "--out", str(tmp_path / "r"), *FAST]) == 2
    assert "cuda requested but not available" in capsys.readouterr().err


def test_run_writes_the_run_folder(tmp_path):
    out = tmp_path / "run"
    assert main(["run", "--out", str(out), "--seed", "3", *FAST]) == 0
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["seed"] == 3 and config["rounds"] == 2 and config["strategy"]["name"] == "fedavg"
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [0, 2]  # the initial model, every 5 rounds, and after the last
    assert rows[0]["train_loss"] is None and rows[0]["participants"] == 0 and rows[0]["virtual_time"] == 0
    for key in (
        "round",
        "virtual_time",
        "wall_time",
        "train_loss",
        "test_loss",
        "test_accuracy",
        "participants",
        "updates",
        "dropouts",
    ):
        assert key in rows[1]
    per_round = [json.loads(line) for line in (out / "rounds.jsonl").read_text().splitlines()]
    assert [r["round"] for r in per_round] == [1, 2]
    assert all(r["participants"] == 4 and r["dropouts"] == 0 and r["train_loss"] > 0 for r in per_round)
    assert per_round[-1]["virtual_time"] == rows[-1]["virtual_time"]
    assert rows[1]["updates"] == 8  # since the previous evaluation: 2 rounds x 4 participants
    summary = json.loads((out / "summary.json").read_text())
    assert summary["rounds"] == 2 and summary["final"]["test_accuracy"] == rows[-1]["test_accuracy"]
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    log = (out / "log.txt").read_text()
    assert "executor auto: serial (a short run" in log  # notices from before the run folder existed are kept


def test_plot_compares_runs(tmp_path, capsys):
    runs = []
    for strategy in ("fedavg", "fedavgm"):
        out = tmp_path / strategy
        assert (
            main(["run", "--strategy", strategy, "--out", str(out), "--no-tensorboard", "--set", "eval.every=1", *FAST])
            == 0
        )
        runs.append(str(out))
    png = tmp_path / "cmp.png"
    assert main(["plot", *runs, "--metric", "test_accuracy", "--x", "virtual_time", "--out", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["plot", *runs, "--metric", "nope", "--out", str(png)]) == 2
    assert "available" in capsys.readouterr().err


@pytest.mark.slow
def test_python_dash_m_entry_point(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "fedsim",
            "run",
            "--out",
            str(out),
            "--no-tensorboard",
            *[a for a in FAST if a != "--quiet"],
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert proc.returncode == 0, proc.stderr
    assert "done:" in proc.stdout and "round" in proc.stderr  # progress bar on stderr
    assert (out / "metrics.jsonl").exists()
