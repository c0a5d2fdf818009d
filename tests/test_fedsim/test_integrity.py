"""Fault injection: malicious and broken data files, rejected configs, failing clients, divergence,
run folders, signals, determinism of random ops, and the saved model.

Each test feeds fedsim one bad thing and asserts the documented outcome: a one-line error and
exit 2 for bad input, a status in summary.json and exit 1 for a run that cannot give a
meaningful result, and never code execution, a traceback on stderr or a silently wrong run.
"""

from __future__ import annotations

import gzip
import json
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml

from clients import CLIENTS, LocalSGD
from fedsim.cli import main
from fedsim.config import ConfigError, load_config
from fedsim.errors import RunFailed
from fedsim.population.traces import load_trace
from fedsim.run import _FolderLock, build, run_experiment
from fedsim.safe_pickle import DataFileError
from fedsim.safe_pickle import load as safe_load
from fedsim.tasks import TaskSpec, build_task

REPO = Path(__file__).resolve().parents[2]


def run_cli(capsys, *argv: str) -> tuple[int, str]:
    code = main(["run", *argv])
    return code, capsys.readouterr().err


def one_line_error(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("fedsim:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


# --------------------------------------------------------------------------- code execution from data


class _RunsCode:
    """Unpickling this with plain pickle would create the canary file."""

    def __init__(self, canary: Path):
        self.canary = canary

    def __reduce__(self):
        return (Path.touch, (self.canary,))


def _malicious(canary: Path, wrap) -> bytes:
    return pickle.dumps(wrap(_RunsCode(canary)), protocol=2)


def test_malicious_cifar10_batch_is_refused_without_running_code(tmp_path):
    canary = tmp_path / "canary"
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (tmp_path / name).write_bytes(_malicious(canary, lambda obj: {b"data": obj, b"labels": [0]}))
    spec = TaskSpec(name="cifar10", num_clients=2, partition="iid", options={"path": str(tmp_path)})
    with pytest.raises(DataFileError, match=r"data_batch_1 is not a readable data pickle: refusing"):
        build_task(spec)
    assert not canary.exists()


def test_malicious_fedscale_trace_is_refused_without_running_code(tmp_path):
    canary = tmp_path / "canary"
    trace = tmp_path / "trace.pkl"
    trace.write_bytes(_malicious(canary, lambda obj: {1: {"active": [0], "inactive": [5], "finish_time": obj}}))
    with pytest.raises(DataFileError, match=r"trace\.pkl.*refusing"):
        load_trace(trace)
    assert not canary.exists()


def test_malicious_fedscale_device_file_is_refused_without_running_code(tmp_path):
    from fedsim.population.simple import load_device_file  # noqa: PLC0415

    canary = tmp_path / "canary"
    devices = tmp_path / "devices.pkl"
    devices.write_bytes(_malicious(canary, lambda obj: {1: {"computation": obj, "communication": 10.0}}))
    with pytest.raises(DataFileError, match=r"devices\.pkl.*refusing"):
        load_device_file(devices)
    assert not canary.exists()


def test_safe_unpickler_admits_plain_data_and_numpy(tmp_path):
    data = {
        "a": [1, 2.5, "x", b"y", None, True],
        "t": (1, 2),
        "s": {1, 2},
        "arr": np.arange(6).reshape(2, 3),
        "f32": np.float32(1.5),
    }
    path = tmp_path / "ok.pkl"
    path.write_bytes(pickle.dumps(data))
    loaded = safe_load(path)
    np.testing.assert_array_equal(loaded["arr"], data["arr"])
    assert loaded["a"] == data["a"] and loaded["s"] == {1, 2} and loaded["f32"] == 1.5


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "truncated or empty"),
        (pickle.dumps({"data": [1, 2, 3]})[:-5], "truncated"),
        (b"not a pickle at all", "not a readable data pickle"),
        (pickle.dumps([1, 2, 3]), "expected a dict"),
        (pickle.dumps({b"data": np.zeros((2, 3072), np.uint8)}), "missing key 'labels'"),
        (pickle.dumps({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}), "3072 pixels"),
    ],
)
def test_broken_cifar10_batches_fail_with_one_line_naming_the_file(tmp_path, content, message):
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (tmp_path / name).write_bytes(content)
    spec = TaskSpec(name="cifar10", num_clients=2, partition="iid", options={"path": str(tmp_path)})
    with pytest.raises(DataFileError, match=message) as info:
        build_task(spec)
    assert "data_batch_1" in str(info.value) and "\n" not in str(info.value)


def test_corrupt_gzip_and_truncated_idx_fail_with_one_line(tmp_path):
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(b"\x1f\x8b\x08\x00garbage")
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(b"\x00\x00\x08\x01\x00\x00\x00\x05\x01")
    spec = TaskSpec(name="mnist", num_clients=2, partition="iid", options={"path": str(tmp_path)})
    with pytest.raises(DataFileError, match=r"train-images-idx3-ubyte\.gz: cannot read it"):
        build_task(spec)
    with gzip.open(tmp_path / "train-images-idx3-ubyte.gz", "wb") as f:
        f.write(b"\x00\x00\x08\x03" + np.array([5, 28, 28], ">u4").tobytes() + bytes(28 * 28 * 5))
    with pytest.raises(DataFileError, match=r"train-labels-idx1-ubyte is truncated"):
        build_task(spec)


def test_leaf_json_missing_a_key_or_not_json_fails_with_one_line(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps({"users": ["u1"], "user_data": {"u1": {"x": [[0.0] * 784]}}}))
    spec = TaskSpec(name="femnist", num_clients=1, partition="natural", options={"path": str(tmp_path)})
    with pytest.raises(DataFileError, match=r"a\.json: missing key 'y'"):
        build_task(spec)
    (tmp_path / "a.json").write_text("{not json")
    with pytest.raises(DataFileError, match=r"a\.json is not readable JSON"):
        build_task(spec)


def test_bad_data_file_through_the_cli_is_exit_2_and_one_line(tmp_path, capsys):
    (tmp_path / "a.json").write_text(json.dumps({"users": ["u1"]}))
    code, err = run_cli(
        capsys,
        "--task",
        "femnist",
        "--set",
        f"task.path={tmp_path}",
        "--set",
        "data.num_clients=1",
        "--set",
        "population.clients_per_round=1",
        "--out",
        str(tmp_path / "run"),
        "--quiet",
    )
    assert code == 2
    assert "a.json: missing key 'user_data'" in one_line_error(err)
    assert not (tmp_path / "run").exists()  # nothing written for bad input


# --------------------------------------------------------------------------- rejected configs


REJECTED = [  # (--set values, field the one-line error must name)
    (["task.iid='false'"], "task.iid"),
    (["task.num_classes=1"], "task.num_classes"),
    (["task.alpha=.inf"], "task.alpha"),
    (["task.num_features=0"], "task.num_features"),
    (["data.num_clients=0"], "data.num_clients"),
    (["client.batch_size=-1"], "client.batch_size"),
    (["client.lr=.inf"], "client.lr"),
    (["population.step_time=inf"], "population.step_time"),
    (["data.alpha=.inf"], "data.alpha"),
    (["round_deadline=.inf"], "round_deadline"),
    (["strategy.server_lr=.nan"], "strategy.server_lr"),
    (["client.optimizer=adam", "client.optimizer_kwargs={betas: [0.9, .nan]}"], "client.optimizer_kwargs"),
    (["client.local_steps=1000000000"], "client.local_steps"),
    (["client.local_epochs=10000", "client.batch_size=1"], "client.local_epochs"),  # 10^4 x ~800 samples
    (["strategy.server_optimizer=adam", "strategy.cutoff=5"], "strategy.cutoff"),
]


@pytest.mark.parametrize("overrides, field", REJECTED, ids=[r[1] + "-" + r[0][-1] for r in REJECTED])
def test_rejected_config_is_exit_2_with_one_line_naming_the_field(tmp_path, capsys, overrides, field):
    argv = ["--rounds", "1", "--quiet", "--no-tensorboard", "--out", str(tmp_path / "run")]
    for item in overrides:
        argv += ["--set", item]
    code, err = run_cli(capsys, *argv)
    assert code == 2, err
    assert field in one_line_error(err)
    assert not (tmp_path / "run").exists()


def test_yaml_alias_bomb_is_refused_not_expanded(tmp_path, capsys):
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 12)]
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text("\n".join(lines) + "\n")
    code, err = run_cli(capsys, "--config", str(bomb))
    assert code == 2
    assert "bomb.yaml" in one_line_error(err) and "aliases" in err


def test_binary_and_oversized_yaml_files_are_refused(tmp_path, capsys):
    binary = tmp_path / "model.yaml"
    binary.write_bytes(bytes(range(256)) * 4)
    code, err = run_cli(capsys, "--config", str(binary))
    assert code == 2 and "not a UTF-8 text file" in one_line_error(err)
    huge = tmp_path / "huge.yaml"
    huge.write_text("seed: 1\n" + "# padding\n" * 200_000)
    code, err = run_cli(capsys, "--config", str(huge))
    assert code == 2 and "at most" in one_line_error(err)


def test_out_folder_that_is_a_file_or_under_a_file_is_exit_2(tmp_path, capsys):
    a_file = tmp_path / "taken"
    a_file.write_text("x")
    for out in (a_file, a_file / "run"):
        code, err = run_cli(capsys, "--rounds", "1", "--quiet", "--no-tensorboard", "--out", str(out))
        assert code == 2 and "output.out" in one_line_error(err)


# --------------------------------------------------------------------------- run folders


def test_existing_run_folder_is_refused_then_overwritten_on_request(tmp_path, capsys, small_config):
    out = tmp_path / "run"
    base = ["--rounds", "1", "--quiet", "--no-tensorboard", "--out", str(out), "--set", "data.num_clients=20"]
    assert run_cli(capsys, *base)[0] == 0
    first = (out / "metrics.jsonl").read_text()
    code, err = run_cli(capsys, *base)
    line = one_line_error(err)
    assert code == 2 and "--overwrite" in line and "--resume" not in line  # completed: nothing to resume
    assert (out / "metrics.jsonl").read_text() == first  # untouched
    (out / "stale.txt").write_text("from the old run")
    assert run_cli(capsys, *base, "--overwrite")[0] == 0
    assert not (out / "stale.txt").exists()
    code, err = run_cli(capsys, "--resume", str(out))
    assert code == 2 and "already completed" in one_line_error(err)


def test_overwrite_never_deletes_a_folder_that_is_not_a_run(tmp_path, capsys):
    folder = tmp_path / "thesis"
    folder.mkdir()
    (folder / "chapter1.tex").write_text("precious")
    code, err = run_cli(capsys, "--rounds", "1", "--quiet", "--out", str(folder), "--overwrite")
    assert code == 2 and "not a fedsim run folder" in one_line_error(err)
    assert (folder / "chapter1.tex").read_text() == "precious"


def test_a_second_run_into_a_locked_folder_is_refused(tmp_path, small_config):
    out = tmp_path / "run"
    out.mkdir()
    lock = _FolderLock(out)
    lock.acquire()  # a live run holds this folder
    try:
        with pytest.raises(ConfigError, match="another fedsim run .* is writing to"):
            run_experiment(small_config(rounds=1), out_dir=out)
        assert [p.name for p in out.iterdir()] == [".lock"]  # nothing interleaved
    finally:
        lock.release()
    summary, _ = run_experiment(small_config(rounds=1), out_dir=out)  # free again once the holder is gone
    assert summary["status"] == "completed"


def test_saved_config_is_resolved_and_rerunning_it_makes_a_new_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = load_config(
        overrides=[
            "strategy.name=fedau",
            "strategy.server_optimizer=adam",
            "rounds=2",
            "task.name=digits",
            "data.num_clients=20",
            "eval.every=1",
            "output.progress=false",
            "output.tensorboard=false",
        ]
    )
    summary, out = run_experiment(config, out_dir="first", argv=["fedsim", "run", "--strategy", "fedau"])
    saved = yaml.safe_load((out / "config.yaml").read_text())
    # Adam swapped into fedau runs at Adam's own lr, and the saved config says so
    assert saved["strategy"] == {
        "name": "fedau",
        "weighting": "fedau",
        "server_optimizer": "adam",
        "cutoff": None,
        "server_lr": 0.01,
        "beta1": 0.9,
        "beta2": 0.99,
        "tau": 1e-3,
        "bias_correction": False,
    }
    assert saved["data"]["partition"] == "dirichlet"  # "auto" resolved
    assert saved["task"] == {"name": "digits", "model": "mlp", "hidden": 64, "dropout": 0.0}
    assert saved["output"]["out"] is None
    assert saved["provenance"]["command"] == "fedsim run --strategy fedau"
    assert saved["provenance"]["fedsim_version"]
    again = load_config(Path("first/config.yaml"))
    summary2, out2 = run_experiment(again)
    assert out2 != out and out2.parent.name == "runs"
    strip = [
        {k: v for k, v in json.loads(line).items() if k != "wall_time"}
        for line in (out / "metrics.jsonl").read_text().splitlines()
    ]
    strip2 = [
        {k: v for k, v in json.loads(line).items() if k != "wall_time"}
        for line in (out2 / "metrics.jsonl").read_text().splitlines()
    ]
    assert strip == strip2


# --------------------------------------------------------------------------- failing clients


class _FailingClient(LocalSGD):
    """Every job raises ``error``."""

    error: type[Exception] = RuntimeError

    def options(self, config):
        return None  # not a step function: train through ``train``

    def train(self, ctx, params, data, config, state, rng):
        raise self.error("injected failure")


@pytest.fixture
def failing_client():
    """Registers a client algorithm that raises; yields a function choosing the exception class."""
    name = "test_integrity_failing"
    CLIENTS.register(name, "test only: raises")(_FailingClient)

    def configure(error: type[Exception] = RuntimeError) -> str:
        _FailingClient.error = error
        return name

    yield configure
    CLIENTS._entries.pop(name, None)


def test_a_round_in_which_every_job_fails_stops_with_status_failed(tmp_path, capsys, failing_client):
    name = failing_client(RuntimeError)
    out = tmp_path / "run"
    code, err = run_cli(
        capsys,
        "--rounds",
        "5",
        "--quiet",
        "--no-tensorboard",
        "--out",
        str(out),
        "--set",
        f"client.algorithm={name}",
        "--set",
        "data.num_clients=20",
    )
    assert code == 1
    line = [x for x in err.splitlines() if x.startswith("fedsim:")]
    assert line == [line[0]] and "every job of update 1 failed" in line[0]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "failed" and summary["stopped_at_round"] == 1
    assert summary["final"] == {}  # no evaluation of a model no client trained
    log = (out / "log.txt").read_text()
    assert "Traceback (most recent call last)" in log and "RuntimeError: injected failure" in log
    assert not (out / "model.pt2").exists()


class _HalfFailingClient(LocalSGD):
    def options(self, config):
        return None  # not a step function: train through ``train``

    def train(self, ctx, params, data, config, state, rng):
        if rng.initial_seed() % 10 < 6:  # about 60% of jobs, chosen by the job's seed
            raise RuntimeError("flaky device")
        return super().train(ctx, params, data, config, state, rng)


@pytest.mark.parametrize("fraction, status", [(0.5, "failed"), (0.9, "completed")])
def test_more_failures_than_max_dropout_fraction_stop_the_run(small_config, fraction, status):
    CLIENTS.register("test_integrity_flaky", "test only")(_HalfFailingClient)
    try:
        config = small_config(
            rounds=8, client={"algorithm": "test_integrity_flaky"}, stop={"max_dropout_fraction": fraction}
        )
        experiment = build(config)
        summary = experiment.run()
    finally:
        CLIENTS._entries.pop("test_integrity_flaky", None)
    assert summary["status"] == status
    assert summary["failed_jobs"] > 0.5 * summary["jobs"]
    if status == "failed":
        assert "max_dropout_fraction" in summary["reason"] and summary["rounds"] < 8


@pytest.mark.parametrize("error", [AttributeError, TypeError, NameError])
def test_a_programming_error_in_a_client_is_not_a_dropout(tmp_path, small_config, failing_client, error):
    name = failing_client(error)
    with pytest.raises(RunFailed, match=f"{error.__name__}: injected failure") as info:
        run_experiment(small_config(rounds=3, client={"algorithm": name}), out_dir=tmp_path / "run")
    assert "log.txt" in str(info.value)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "failed" and summary["dropouts"] == 0
    assert f"{error.__name__}: injected failure" in (tmp_path / "run" / "log.txt").read_text()


def test_a_programming_error_through_the_cli_is_exit_1_with_one_line(tmp_path, capsys, failing_client):
    name = failing_client(AttributeError)
    code, err = run_cli(
        capsys,
        "--rounds",
        "2",
        "--quiet",
        "--no-tensorboard",
        "--out",
        str(tmp_path / "run"),
        "--set",
        f"client.algorithm={name}",
        "--set",
        "data.num_clients=20",
    )
    assert code == 1
    assert "AttributeError: injected failure" in one_line_error(err)


# --------------------------------------------------------------------------- divergence


def test_a_non_finite_global_model_stops_the_run_as_diverged(tmp_path, small_config):
    # server lr 1e39 overflows float32: the model becomes inf after the first update
    config = small_config(rounds=5, strategy={"server_lr": 1e39})
    summary, out = run_experiment(config, out_dir=tmp_path / "run")
    assert summary["status"] == "diverged" and summary["stopped_at_round"] == 1
    assert "not finite" in summary["reason"]
    assert summary["final"] == {} and summary["best_test_accuracy"] is None  # no accuracy from NaN logits
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [row["round"] for row in rows] == [0]  # the initial model only: nothing evaluated after it diverged
    assert json.loads((out / "summary.json").read_text())["status"] == "diverged"
    assert not (out / "model.pt2").exists()


def test_a_test_loss_past_the_bound_stops_the_run_as_diverged(small_config):
    config = small_config(rounds=20, client={"lr": 1e30})
    summary = build(config).run()
    assert summary["status"] == "diverged" and summary["rounds"] < 20
    assert "stop.divergence_factor" in summary["reason"]
    config = small_config(rounds=3, client={"lr": 1e30}, stop={"divergence_factor": None})
    assert build(config).run()["status"] == "completed"  # the bound can be switched off


def test_nan_logits_give_no_accuracy(small_config):
    experiment = build(small_config())
    model = experiment.task.build_model()
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(float("nan"))
    x, y = experiment.task.data.global_test()
    metrics = experiment.task.evaluate(model, x, y)
    assert np.isnan(metrics["accuracy"]) and np.isnan(metrics["loss"])


# --------------------------------------------------------------------------- signals


def _start_run(tmp_path: Path) -> tuple[subprocess.Popen, Path]:
    out = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "fedsim",
        "run",
        "--rounds",
        "100000",
        "--quiet",
        "--no-tensorboard",
        "--out",
        str(out),
        "--set",
        "data.num_clients=20",
        "--set",
        "eval.every=1",
    ]
    proc = subprocess.Popen(
        cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    deadline = time.monotonic() + 120
    metrics = out / "metrics.jsonl"
    while not (metrics.exists() and metrics.read_text().count("\n") >= 3):  # round 0 (initial model), 1, 2
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"run did not start: {proc.communicate()}")
        time.sleep(0.2)
    return proc, out


@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), pytest.param(signal.SIGINT, 130, marks=pytest.mark.slow)])
def test_a_signal_stops_the_run_cleanly_with_status_interrupted(tmp_path, sig, code):
    proc, out = _start_run(tmp_path)
    try:
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == code, err
    assert "Traceback" not in err and f"{sig.name}: stopping" in err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["signal"] == sig.name
    assert 2 <= summary["rounds"] < 100000
    assert (out / "model.pt2").exists()
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert all(json.loads(line) for line in lines)  # every line complete


# --------------------------------------------------------------------------- determinism and side effects


def test_executors_leave_the_driver_threads_and_rng_as_they_found_them(small_config):
    threads = torch.get_num_threads()
    torch.set_num_threads(3)
    try:
        torch.manual_seed(1234)
        before = torch.get_rng_state()
        for executor, task in (
            ("serial", {"name": "digits", "model": "cnn", "dropout": 0.3}),
            ("vmap", {"name": "digits"}),
        ):
            experiment = build(small_config(rounds=2, executor={"name": executor, "threads": 1}, task=task))
            experiment.run()
            assert torch.get_num_threads() == 3, executor
            assert torch.equal(torch.get_rng_state(), before), executor
    finally:
        torch.set_num_threads(threads)


def _dropout_config(small_config, **overrides: Any):
    return small_config(
        rounds=2,
        task={"name": "digits", "model": "cnn", "dropout": 0.5},
        data={"num_clients": 10, "partition": "iid"},
        population={"clients_per_round": 4},
        client={"local_steps": 3},
        **overrides,
    )


def test_dropout_draws_from_the_job_seed_not_the_global_rng(small_config):
    runs = []
    for global_seed in (0, 1):
        torch.manual_seed(global_seed)  # must not matter
        experiment = build(_dropout_config(small_config))
        experiment.run()
        runs.append(experiment.engine.state.params)
    assert torch.equal(runs[0], runs[1])
    no_dropout = build(
        small_config(
            rounds=2,
            task={"name": "digits", "model": "cnn"},
            data={"num_clients": 10, "partition": "iid"},
            population={"clients_per_round": 4},
            client={"local_steps": 3},
        )
    )
    no_dropout.run()
    assert not torch.equal(runs[0], no_dropout.engine.state.params)  # dropout really was active


@pytest.mark.slow
def test_dropout_model_serial_equals_ray_with_1_and_2_workers(small_config):
    serial = build(_dropout_config(small_config))
    serial.run()
    for workers in (1, 2):
        ray_run = build(_dropout_config(small_config, executor={"name": "ray", "workers": workers}))
        ray_run.run()
        assert torch.equal(ray_run.engine.state.params, serial.engine.state.params), f"{workers} workers"


class _BuggyClient(LocalSGD):
    """A client with a typo: every job raises NameError."""

    name = "test_integrity_buggy"

    def options(self, config):
        return None  # not a step function: train through ``train``

    def train(self, ctx, params, data, config, state, rng):
        return undefined_helper(ctx)  # noqa: F821  (the bug)


if _BuggyClient.name not in CLIENTS:  # Ray actors import this module too (it registers the client)
    CLIENTS.register(_BuggyClient.name, "test only: raises NameError")(_BuggyClient)


@pytest.mark.slow
def test_a_programming_error_on_ray_is_not_a_dropout(tmp_path, small_config):
    with pytest.raises(RunFailed, match="NameError"):
        run_experiment(
            small_config(rounds=2, client={"algorithm": _BuggyClient.name}, executor={"name": "ray", "workers": 1}),
            out_dir=tmp_path / "run",
        )
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["status"] == "failed"


# --------------------------------------------------------------------------- the saved model


def test_the_final_model_loads_in_three_lines_of_pytorch(tmp_path, small_config):
    config = small_config(
        rounds=2, task={"name": "digits", "model": "cnn"}, data={"num_clients": 10, "partition": "iid"}
    )
    summary, out = run_experiment(config, out_dir=tmp_path / "run")
    x, _ = build(config).task.data.global_test()

    # the three lines the README shows
    import torch as torch_  # noqa: PLC0415

    model = torch_.export.load(str(out / "model.pt2")).module()
    predictions = model(x).argmax(dim=1)

    reference = build(config).task.build_model()
    reference.load_state_dict(torch.load(out / "model_state.pt", weights_only=True))
    reference.eval()
    with torch.no_grad():
        assert torch.equal(predictions, reference(x).argmax(dim=1))
    accuracy = float((predictions == build(config).task.data.global_test()[1]).float().mean())
    assert accuracy == pytest.approx(summary["final"]["test_accuracy"])
