"""The researcher's loop: discover (--version, list KIND, show, --help, --dry-run), sweep seeds and
settings into one folder, compare in a table (numbers checked by hand) and a plot, and what a run
records (progress bar, hparams, executor auto)."""

from __future__ import annotations

import json
import logging
import math
import re
import statistics
from pathlib import Path

import numpy as np
import pytest
import yaml

from fedsim import __version__
from fedsim.cli import main
from fedsim.config import ConfigError, load_config
from fedsim.plot import group_curve, plot_runs
from fedsim.sweep import parse_axes, split_values
from fedsim.table import compare_table, find_runs, group_runs, load_run

FAST = [
    "--rounds",
    "2",
    "--quiet",
    "--no-tensorboard",
    "--set",
    "data.num_clients=12",
    "--set",
    "population.clients_per_round=3",
    "--set",
    "task.max_test_clients=12",
]


# ------------------------------------------------------------------------------ discover


def test_version_list_kind_and_show(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0 and __version__ in capsys.readouterr().out
    assert main(["list", "participation"]) == 0
    out = capsys.readouterr().out
    assert "bernoulli" in out and "fedavg" not in out
    assert main(["list", "strategies"]) == 0 and "fedau" in capsys.readouterr().out
    assert main(["list", "nope"]) == 2 and "valid choices" in capsys.readouterr().err

    assert main(["show", "fedau"]) == 0
    out = capsys.readouterr().out
    assert "weighting fedau (strategy.weighting)" in out and "strategy.cutoff = None" in out
    assert "server optimizer sgd" in out and "strategy.server_lr = 1.0" in out
    assert "config defaults it suggests" in out and "population.participation = bernoulli" in out
    assert main(["show", "digits"]) == 0 and re.search(r"task\.model +  = mlp", capsys.readouterr().out)
    assert main(["show", "markov"]) == 0 and "population.markov_rate" in capsys.readouterr().out
    assert main(["show", "fedfoo"]) == 2 and "fedsim list" in capsys.readouterr().err


def test_help_lists_choices_and_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "config key strategy.name; choices: " in out and " fedau, " in out and "default: fedavg" in out
    assert "choices: auto, ray, serial, vmap; default: auto" in out
    assert "default: 50" in out  # rounds


def test_dry_run_prints_the_resolved_config_and_writes_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["run", "--strategy", "fedau", "--set", "client.lr=0.2", "--dry-run"]) == 0
    config = yaml.safe_load(capsys.readouterr().out)
    assert config["client"]["lr"] == 0.2 and config["rounds"] == 1000  # preset default + override
    assert config["population"]["participation"] == "bernoulli" and config["executor"]["name"] == "auto"
    assert not list(tmp_path.iterdir())


# ------------------------------------------------------------------------------ sweep


def test_split_and_parse_axes():
    assert split_values("a,[1, 2],{x: 1, y: 2}") == ["a", "[1, 2]", "{x: 1, y: 2}"]
    axes = parse_axes("0,1,2", ["strategy.name=fedau,fedavg", "data.alpha=0.1,1.0"])
    assert axes == [("strategy.name", ["fedau", "fedavg"]), ("data.alpha", ["0.1", "1.0"]), ("seed", ["0", "1", "2"])]
    for seeds, sweeps in [("0,x", []), (None, ["data.alpha"]), ("1", ["seed=1,2"]), (None, ["data.alpha=1,1"])]:
        with pytest.raises(ConfigError):
            parse_axes(seeds, sweeps)


def test_sweep_writes_one_folder_per_combination(tmp_path, capsys):
    root = tmp_path / "sweep"
    assert main(["run", *FAST, "--seeds", "0,1", "--sweep", "strategy.name=fedavg,fedavgm", "--out", str(root)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in out] == [
        "[1/4] strategy.name=fedavg,seed=0",
        "[2/4] strategy.name=fedavg,seed=1",
        "[3/4] strategy.name=fedavgm,seed=0",
        "[4/4] strategy.name=fedavgm,seed=1",
    ]
    folders = sorted(p.name for p in root.iterdir() if p.is_dir())
    assert folders == [
        "strategy.name=fedavg,seed=0",
        "strategy.name=fedavg,seed=1",
        "strategy.name=fedavgm,seed=0",
        "strategy.name=fedavgm,seed=1",
    ]
    for folder in folders:
        config = yaml.safe_load((root / folder / "config.yaml").read_text())
        assert f"strategy.name={config['strategy']['name']},seed={config['seed']}" == folder
        assert config["output"]["out"] is None  # a saved config runs again into a new folder
        assert (root / folder / "summary.json").is_file()
    sweep = yaml.safe_load((root / "sweep.yaml").read_text())
    assert sweep["axes"] == {"strategy.name": ["fedavg", "fedavgm"], "seed": ["0", "1"]}
    assert len(sweep["runs"]) == 4
    # the table groups the four runs by strategy, two seeds each
    assert main(["table", str(root)]) == 0
    table = capsys.readouterr().out
    assert "| strategy | runs |" in table and "| fedavg | 2 |" in table and "| fedavgm | 2 |" in table
    # refusing to write into a used sweep folder
    assert main(["run", *FAST, "--seeds", "0,1", "--out", str(root)]) == 2


def test_a_bad_combination_fails_before_anything_runs(tmp_path, capsys):
    root = tmp_path / "sweep"
    assert main(["run", *FAST, "--sweep", "data.alpha=0.5,-1", "--out", str(root)]) == 2
    err = capsys.readouterr().err
    assert "data.alpha=-1" in err and "data.alpha" in err
    assert not root.exists()


@pytest.mark.slow
def test_concurrent_sweep_on_ray_gives_the_sequential_results(tmp_path, capsys):
    seq, par = tmp_path / "seq", tmp_path / "par"
    args = [*FAST, "--seeds", "0,1", "--executor", "serial"]
    assert main(["run", *args, "--out", str(seq)]) == 0
    assert main(["run", *args, "--jobs", "2", "--out", str(par)]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("[")]
    assert len(lines) == 4
    for folder in ("seed=0", "seed=1"):
        a, b = (load_run(root / folder).evals for root in (seq, par))
        assert [{k: v for k, v in r.items() if k != "wall_time"} for r in a] == [
            {k: v for k, v in r.items() if k != "wall_time"} for r in b
        ]


# ------------------------------------------------------------------------------ table


def fake_run(root: Path, name: str, config: dict, accuracies: list[tuple[int, float, float]], dropouts: int) -> Path:
    """A run folder written by hand: evaluations (round, virtual_time, test_accuracy)."""
    run = root / name
    run.mkdir(parents=True)
    base = {"seed": 0, "rounds": 4, "strategy": {"name": "fedavg"}, "data": {"alpha": 0.5}, "output": {"out": str(run)}}
    (run / "config.yaml").write_text(yaml.safe_dump({**base, **config}))
    rows = [
        {"round": r, "virtual_time": t, "test_accuracy": a, "test_loss": 1 - a, "dropouts": dropouts}
        for r, t, a in accuracies
    ]
    (run / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    (run / "summary.json").write_text(json.dumps({"rounds": 4, "dropouts": dropouts}))
    return run


@pytest.fixture
def fake_sweep(tmp_path):
    root = tmp_path / "sweep"
    curves = {  # strategy, seed -> evaluations
        ("fedau", 0): [(0, 0.0, 0.10), (2, 1.0, 0.50), (4, 2.0, 0.70)],
        ("fedau", 1): [(0, 0.0, 0.10), (2, 1.5, 0.60), (4, 3.0, 0.65)],
        ("fedau", 2): [(0, 0.0, 0.10), (2, 0.5, 0.40), (4, 1.0, 0.90)],
        ("fedavg", 0): [(0, 0.0, 0.10), (2, 1.0, 0.30), (4, 2.0, 0.40)],
        ("fedavg", 1): [(0, 0.0, 0.10), (2, 1.0, 0.35), (4, 2.0, 0.50)],
    }
    for (strategy, seed), evals in curves.items():
        fake_run(root, f"{strategy}-{seed}", {"seed": seed, "strategy": {"name": strategy}}, evals, dropouts=seed)
    return root


def test_table_numbers_are_the_hand_computed_means(fake_sweep):
    table = compare_table([fake_sweep], target=0.6, as_csv=True).splitlines()
    header = table[0].split(",")
    rows = {line.split(",")[0]: dict(zip(header, line.split(","))) for line in table[1:]}
    fedau, fedavg = rows["fedau"], rows["fedavg"]
    assert fedau["runs"] == "3" and fedavg["runs"] == "2"
    assert float(fedau["final_mean"]) == pytest.approx((0.70 + 0.65 + 0.90) / 3)
    assert float(fedau["final_std"]) == pytest.approx(statistics.stdev([0.70, 0.65, 0.90]))
    assert float(fedau["best_mean"]) == pytest.approx(0.75)
    # first evaluation reaching 0.6: round 4 (seed 0), round 2 (seed 1), round 4 (seed 2)
    assert float(fedau["rounds_to_target_mean"]) == pytest.approx(10 / 3)
    assert float(fedau["vtime_to_target_mean"]) == pytest.approx((2.0 + 1.5 + 1.0) / 3)
    assert float(fedau["dropouts_mean"]) == pytest.approx(1.0)  # seeds 0, 1, 2 -> 0, 1, 2 dropouts
    assert fedavg["rounds_to_target_count"] == "0" and fedavg["rounds_to_target_mean"] == ""  # never reached
    assert float(fedavg["final_mean"]) == pytest.approx(0.45)
    assert float(fedavg["final_std"]) == pytest.approx(math.sqrt(0.005))


def test_markdown_table_default_target_and_errors(fake_sweep):
    text = compare_table([fake_sweep])
    # default target: the best accuracy every run reached (fedavg seed 0: 0.40)
    assert "rounds to 0.4" in text
    assert "| fedau | 3 | 0.7500 ± 0.1323 | 0.7500 ± 0.1323 |" in text
    assert "| fedavg | 2 | 0.4500 ± 0.0707 |" in text
    with pytest.raises(ValueError, match="available"):
        compare_table([fake_sweep], metric="nope")
    with pytest.raises(FileNotFoundError):
        compare_table([fake_sweep / "missing"])


# ------------------------------------------------------------------------------ plot


def test_plot_groups_seeds_into_mean_and_band(fake_sweep, tmp_path):
    runs = [load_run(p) for p in find_runs([fake_sweep])]
    keys, groups = group_runs(runs)
    assert keys == ["strategy.name"] and [len(g) for g in groups] == [3, 2]
    curves = [
        (np.array([0.0, 2.0, 4.0]), np.array([0.1, 0.5, 0.7])),
        (np.array([0.0, 2.0, 4.0]), np.array([0.1, 0.6, 0.65])),
    ]
    x, mean, std = group_curve(curves)
    assert x.tolist() == [0, 2, 4] and mean == pytest.approx([0.1, 0.55, 0.675])
    assert std == pytest.approx([0.0, statistics.stdev([0.5, 0.6]), statistics.stdev([0.7, 0.65])])
    # virtual times differ between seeds: a common grid over the range both cover
    x, mean, _ = group_curve(
        [(np.array([0.0, 1.0, 2.0]), np.array([0.0, 1.0, 2.0])), (np.array([0.0, 1.5]), np.array([0.0, 3.0]))]
    )
    assert x.tolist() == [0, 1, 1.5] and mean == pytest.approx([0.0, 1.5, 2.25])
    png = plot_runs([fake_sweep], x="virtual_time", out=tmp_path / "p.png", labels=["FedAU", "FedAvg"], title="t")
    assert png.read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ValueError, match="2 groups"):
        plot_runs([fake_sweep], out=tmp_path / "q.png", labels=["only one"])


# ------------------------------------------------------------------------------ a run's records


def test_progress_bar_shows_the_latest_evaluation(tmp_path, small_config):
    from fedsim.metrics import RunRecorder

    recorder = RunRecorder(tmp_path, 2, "x", progress=True, tensorboard=False)
    recorder.on_round(None, {"round": 1, "virtual_time": 1.0, "participants": 3, "dropouts": 0, "train_loss": 0.5})
    recorder.on_eval(None, {"round": 1, "virtual_time": 1.0, "test_accuracy": 0.25})
    recorder.on_round(None, {"round": 2, "virtual_time": 2.0, "participants": 3, "dropouts": 0, "train_loss": 0.4})
    recorder.on_eval(None, {"round": 2, "virtual_time": 2.0, "test_accuracy": 0.75})
    assert "acc=0.750@2" in str(recorder._bar)  # the evaluation after the last round, not the one before
    recorder.close()


def test_tensorboard_gets_the_runs_hyperparameters(tmp_path):
    out = tmp_path / "run"
    assert main(["run", *[a for a in FAST if a != "--no-tensorboard"], "--out", str(out)]) == 0
    events = b"".join(p.read_bytes() for p in (out / "tensorboard").glob("events.out.tfevents.*"))
    assert b"hparams" in events and b"strategy.name" in events and b"hparam/final_test_accuracy" in events


def test_executor_auto_says_which_it_chose(small_config, caplog):
    from fedsim.executors.serial import SerialExecutor
    from fedsim.executors.vmap import VmapExecutor
    from fedsim.run import build

    assert load_config().executor.name == "auto"
    for client, rounds, expected, needle in [
        ({}, 1_000, VmapExecutor, "executor auto: vmap"),
        ({}, 3, SerialExecutor, "executor auto: serial (a short run: "),
        ({"optimizer": "rmsprop"}, 1_000, SerialExecutor, "serial (vmap cannot batch optimizer 'rmsprop')"),
    ]:
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="fedsim"):
            experiment = build(small_config(executor={"name": "auto"}, rounds=rounds, client=client))
        assert isinstance(experiment.executor, expected)
        assert needle in caplog.text


def test_table_notes_runs_that_did_not_complete(tmp_path):
    done = fake_run(tmp_path, "a", {}, [(0, 0.0, 0.1), (2, 1.0, 0.5)], dropouts=0)
    stopped = fake_run(tmp_path, "b", {"seed": 1}, [(0, 0.0, 0.1), (2, 1.0, 0.2)], dropouts=9)
    (stopped / "summary.json").write_text(json.dumps({"rounds": 2, "dropouts": 9, "status": "diverged"}))
    (done / "summary.json").unlink()
    text = compare_table([tmp_path])
    assert "| all runs |" not in text and "| 2 |" in text  # one group (only the seed differs)
    assert f"no summary.json (still running or interrupted): {done}" in text
    assert f"{stopped} (diverged)" in text
