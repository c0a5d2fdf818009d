"""Checkpoint and resume: a run killed part way and resumed writes the metrics an uninterrupted run writes.

Runs are started with ``python -m fedsim run`` in a subprocess (own session, bounded waits,
killed by pid even on failure); wall times are the only fields allowed to differ.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import fedsim.checkpoint as checkpoint_module
from fedsim.checkpoint import CheckpointError, decode, encode, load_checkpoint
from fedsim.cli import main
from fedsim.config import ConfigError
from fedsim.run import run_experiment

ROUNDS = 24
BASE = [
    "--quiet",
    "--no-tensorboard",
    "--seed",
    "3",
    "--set",
    "data.num_clients=20",
    "--set",
    "eval.every=1",
    "--set",
    "population.clients_per_round=4",
]
SCENARIOS = {
    "sync": ["--strategy", "fedavg"],
    # buffered asynchronous: results of older versions are pending in the event queue at every checkpoint
    "fedbuff": ["--strategy", "fedbuff", "--set", "scheduler.concurrency=6", "--set", "scheduler.buffer_size=3"],
}


def _cmd(out: Path, scenario: str, executor: str, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "fedsim",
        "run",
        "--rounds",
        str(ROUNDS),
        "--out",
        str(out),
        *BASE,
        *SCENARIOS[scenario],
        "--executor",
        executor,
        *extra,
    ]


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.communicate(timeout=60)


def _run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=300)


def _rows(path: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(line).items() if k != "wall_time"} for line in path.read_text().splitlines()]


def _start_and_wait(cmd: list[str], cwd: Path, out: Path, rows: int, checkpoint: bool = True) -> subprocess.Popen:
    """Start a run; return once it has ``rows`` rows of metrics.jsonl and a checkpoint if asked (or fail, killing it)."""
    proc = subprocess.Popen(
        cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    deadline = time.monotonic() + 240
    metrics = out / "metrics.jsonl"
    try:
        while not (
            ((out / "checkpoint.pt").exists() or not checkpoint)
            and metrics.exists()
            and metrics.read_text().count("\n") >= rows
        ):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"run did not reach row {rows}: {proc.returncode}")
            time.sleep(0.02)
    except BaseException:
        _stop(proc)
        raise
    return proc


def _kill_and_resume(tmp_path: Path, scenario: str, executor: str, rows: int) -> Path:
    out = tmp_path / f"killed-{executor}"
    proc = _start_and_wait(_cmd(out, scenario, executor, "--checkpoint-every", "2"), tmp_path, out, rows)
    try:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        _stop(proc)
    assert not (out / "summary.json").exists(), "the run finished before it was killed: raise ROUNDS"
    done = _run([sys.executable, "-m", "fedsim", "run", "--resume", str(out), "--quiet"], tmp_path)
    assert done.returncode == 0, done.stderr
    assert "resumed at update" in (out / "log.txt").read_text()
    return out


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The reference runs (serial), one per scenario, made once."""
    root = tmp_path_factory.mktemp("reference")
    outs = {}
    for scenario in SCENARIOS:
        outs[scenario] = root / scenario
        done = _run(_cmd(outs[scenario], scenario, "serial"), root)
        assert done.returncode == 0, done.stderr
    return outs


def _assert_same_run(resumed: Path, reference: Path) -> None:
    for name in ("metrics.jsonl", "rounds.jsonl"):
        assert _rows(resumed / name) == _rows(reference / name), name
    assert len(_rows(reference / "metrics.jsonl")) == ROUNDS + 1
    summary = json.loads((resumed / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["rounds"] == ROUNDS
    expected = json.loads((reference / "summary.json").read_text())
    assert summary["jobs_dispatched"] == expected["jobs_dispatched"]
    final, expected_final = (torch.load(run / "model_state.pt", weights_only=True) for run in (resumed, reference))
    assert final.keys() == expected_final.keys()
    assert all(torch.equal(final[k], expected_final[k]) for k in final)


@pytest.mark.parametrize("scenario, rows", [("sync", 5), ("fedbuff", 8)])
def test_sigkill_then_resume_matches_an_uninterrupted_run_serial(tmp_path, uninterrupted, scenario, rows):
    resumed = _kill_and_resume(tmp_path, scenario, "serial", rows)
    _assert_same_run(resumed, uninterrupted[scenario])


@pytest.mark.slow
@pytest.mark.parametrize("scenario", ["sync", "fedbuff"])
def test_sigkill_then_resume_matches_an_uninterrupted_run_ray(tmp_path, uninterrupted, scenario):
    # the reference is the serial run: results do not depend on the executor
    resumed = _kill_and_resume(tmp_path, scenario, "ray", 4)
    _assert_same_run(resumed, uninterrupted[scenario])


def test_sigterm_leaves_a_checkpoint_the_run_resumes_from(tmp_path, uninterrupted):
    out = tmp_path / "stopped"
    proc = _start_and_wait(
        _cmd(out, "fedbuff", "serial", "--checkpoint-every", "1000"), tmp_path, out, 2, checkpoint=False
    )
    assert not (out / "checkpoint.pt").exists()
    try:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        _stop(proc)
    assert proc.returncode == 143, err
    assert "--resume" in err and "Traceback" not in err
    assert json.loads((out / "summary.json").read_text())["status"] == "interrupted"
    done = _run([sys.executable, "-m", "fedsim", "run", "--resume", str(out), "--quiet"], tmp_path)
    assert done.returncode == 0, done.stderr
    _assert_same_run(out, uninterrupted["fedbuff"])
    again = _run([sys.executable, "-m", "fedsim", "run", "--resume", str(out)], tmp_path)
    assert again.returncode == 2 and "already completed" in again.stderr


class _Killed(BaseException):
    """Stands for SIGKILL: nothing in fedsim handles it."""


def test_a_kill_during_a_checkpoint_write_leaves_the_previous_one(small_config, tmp_path, monkeypatch):
    config = small_config(rounds=6, output={"checkpoint_every": 2, "progress": False, "tensorboard": False})
    real_open, opened = open, []

    class CutOff:
        """The temp file of the second checkpoint: its write stops half way, as by a kill."""

        def __init__(self, f):
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def write(self, data):
            self.f.write(data[: len(data) // 2])
            raise _Killed("killed during the write")

    def open_dying_at_the_second(file, mode="r", *args, **kwargs):
        f = real_open(file, mode, *args, **kwargs)
        if str(file).endswith("checkpoint.pt.tmp"):
            opened.append(1)
            if len(opened) == 2:
                return CutOff(f)
        return f

    monkeypatch.setattr(checkpoint_module, "open", open_dying_at_the_second, raising=False)
    with pytest.raises(_Killed):
        run_experiment(config, out_dir=tmp_path / "run")
    monkeypatch.undo()
    out = tmp_path / "run"
    assert (out / "checkpoint.pt.tmp").exists()
    state = load_checkpoint(out / "checkpoint.pt")  # the first one, intact
    assert decode(state["engine"])["server_state"].version == 2
    summary, _ = run_experiment_resumed(out)
    assert summary["status"] == "completed" and summary["rounds"] == 6
    reference, _ = run_experiment(config, out_dir=tmp_path / "reference")
    assert _rows(out / "metrics.jsonl") == _rows(tmp_path / "reference" / "metrics.jsonl")


def run_experiment_resumed(out: Path):
    from fedsim.run import resume_experiment  # noqa: PLC0415

    return resume_experiment(out, ["output.progress=false", "output.tensorboard=false"])


def test_checkpoints_hold_only_plain_data_and_refuse_foreign_classes(tmp_path):
    payload = {"a": (1, 2.5), 3: [torch.ones(2), None], "s": {4, 5}}
    roundtrip = decode(encode(payload))
    assert roundtrip["a"] == (1, 2.5) and torch.equal(roundtrip[3][0], torch.ones(2)) and roundtrip["s"] == {4, 5}
    with pytest.raises(CheckpointError, match="not registered"):
        decode({"__object__": "os:system", "values": ["echo hi"]})
    evil = tmp_path / "checkpoint.pt"

    class Boom:
        def __reduce__(self):
            return (os.system, ("touch " + str(tmp_path / "pwned"),))

    evil.write_bytes(pickle.dumps(Boom()))
    with pytest.raises(CheckpointError, match="not a fedsim checkpoint"):
        load_checkpoint(evil)
    assert not (tmp_path / "pwned").exists()


def test_resume_errors_are_one_line(tmp_path, capsys):
    code = main(["run", "--resume", str(tmp_path / "nothing")])
    assert code == 2 and "not a fedsim run folder" in capsys.readouterr().err
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.yaml").write_text("rounds: 2\n")
    code = main(["run", "--resume", str(out)])
    assert code == 2 and "no checkpoint" in capsys.readouterr().err
    code = main(["run", "--resume", str(out), "--set", "rounds=5"])
    assert code == 2 and "only output.* may change" in capsys.readouterr().err
    with pytest.raises(ConfigError):
        run_experiment_resumed(out)


PRESETS = [
    "afa-cd",
    "afa-cs",
    "fedadagrad",
    "fedadam",
    "fedasync",
    "fedau",
    "fedavg",
    "fedavg_all",
    "fedavg_known",
    "fedavg_participating",
    "fedavgm",
    "fedbuff",
    "fedcm",
    "fedadmm",
    "feddyn",
    "fedfix",
    "fedprox",
    "fedsam",
    "fedspeed",
    "fedvarp",
    "fedyogi",
    "mifa",
    "mofedsam",
    "scaffold",
]


@pytest.mark.parametrize("preset", PRESETS)
def test_every_presets_state_survives_a_checkpoint(small_config, tmp_path, preset):
    """Strategy, client-store and scheduler state of each preset round-trips: resuming from update 2 of 4 ends the same."""
    config = small_config(
        rounds=4, strategy={"name": preset}, output={"checkpoint_every": 2, "progress": False, "tensorboard": False}
    )
    out = tmp_path / "run"
    summary, _ = run_experiment(config, out_dir=out)
    assert summary["status"] == "completed"
    expected, final = _rows(out / "metrics.jsonl"), (out / "model_state.pt").read_bytes()
    (out / "summary.json").unlink()  # as if killed after the update-2 checkpoint
    assert decode(load_checkpoint(out / "checkpoint.pt")["engine"])["server_state"].version == 2
    summary, _ = run_experiment_resumed(out)
    assert summary["status"] == "completed" and _rows(out / "metrics.jsonl") == expected
    resumed = torch.load(out / "model_state.pt", weights_only=True)
    reference = torch.load(io.BytesIO(final), weights_only=True)
    assert all(torch.equal(resumed[k], reference[k]) for k in reference)


def test_checkpoints_every_virtual_seconds_and_a_buffered_run_resumes_from_one(small_config, tmp_path, monkeypatch):
    def config_with(output):
        return small_config(
            rounds=12,
            strategy={"name": "fedbuff"},
            scheduler={"concurrency": 6, "buffer_size": 3},
            output={"progress": False, "tensorboard": False, **output},
        )

    reference, _ = run_experiment(config_with({}), out_dir=tmp_path / "reference")
    every = reference["virtual_time"] / 5
    real_save, saved_at = checkpoint_module.Checkpointer.save, []

    def save_then_die_at_the_third(self, engine):
        real_save(self, engine)
        saved_at.append(engine.now)
        if len(saved_at) == 3:
            raise _Killed("killed right after the third checkpoint")

    monkeypatch.setattr(checkpoint_module.Checkpointer, "save", save_then_die_at_the_third)
    with pytest.raises(_Killed):
        run_experiment(config_with({"checkpoint_every_time": every}), out_dir=tmp_path / "run")
    monkeypatch.undo()
    # one checkpoint per interval crossed, at the first event at or after each multiple of `every`
    assert [int(t // every) for t in saved_at] == [1, 2, 3]
    summary, _ = run_experiment_resumed(tmp_path / "run")
    assert summary["status"] == "completed" and summary["rounds"] == 12
    for name in ("metrics.jsonl", "rounds.jsonl"):
        assert _rows(tmp_path / "run" / name) == _rows(tmp_path / "reference" / name), name


def test_default_wall_clock_checkpoints_make_a_killed_run_resumable(small_config, tmp_path, monkeypatch):
    """output.checkpoint_every_wall (on by default, 60 s) saves at the first update after that long;
    a run killed after such a checkpoint resumes to the uninterrupted run's metrics."""
    from fedsim.checkpoint import Checkpointer  # noqa: PLC0415
    from fedsim.config import OutputConfig  # noqa: PLC0415

    assert OutputConfig().checkpoint_every_wall == 60.0 and OutputConfig().checkpoint_every is None
    config = small_config(
        rounds=5, eval={"every": 1}, output={"checkpoint_every_wall": 1e-9, "progress": False, "tensorboard": False}
    )
    real_save, saves = Checkpointer.save, []

    def save_then_die_at_the_third(self, engine):
        real_save(self, engine)
        saves.append(engine.state.version)
        if len(saves) == 3:
            raise _Killed("kill -9 after the third checkpoint")

    monkeypatch.setattr(Checkpointer, "save", save_then_die_at_the_third)
    with pytest.raises(_Killed):
        run_experiment(config, out_dir=tmp_path / "run")
    monkeypatch.undo()
    assert saves == [1, 2, 3]  # one per update: the interval is tiny here
    summary, _ = run_experiment_resumed(tmp_path / "run")
    assert summary["status"] == "completed" and summary["rounds"] == 5
    run_experiment(config, out_dir=tmp_path / "reference")
    assert _rows(tmp_path / "run" / "metrics.jsonl") == _rows(tmp_path / "reference" / "metrics.jsonl")


def test_a_used_folder_suggests_resume_only_when_there_is_a_checkpoint(small_config, tmp_path):
    config = small_config(rounds=1, output={"progress": False, "tensorboard": False})
    out = tmp_path / "run"
    run_experiment(config, out_dir=out)  # completed: summary.json, no checkpoint to go on from
    with pytest.raises(ConfigError) as err:
        run_experiment(config, out_dir=out)
    assert "--overwrite" in str(err.value) and "--resume" not in str(err.value)
    (out / "summary.json").unlink()
    (out / "checkpoint.pt").write_bytes(b"")
    with pytest.raises(ConfigError, match=f"or --resume {out} to continue it"):
        run_experiment(config, out_dir=out)
