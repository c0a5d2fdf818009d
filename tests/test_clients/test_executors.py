"""Every client algorithm through the executors and the engine: vmap == serial, state, spill, CLI."""

from __future__ import annotations

import dataclasses
import logging
import subprocess
import sys

import pytest
import torch

from clients import CLIENTS
from fedsim.config import ConfigError, load_config
from fedsim.executors import EXECUTORS, SerialExecutor, WorkerSpec
from fedsim.rng import derive_seed
from fedsim.run import build, initial_params, task_spec
from fedsim.state import ClientStateStore
from fedsim.tasks import build_task
from fedsim.types import ClientJob

ALGORITHMS = ["sgd", "fedprox", "scaffold", "feddyn", "fedsam", "fedcm", "mofedsam", "fedspeed"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_vmap_equals_serial_with_state_broadcast_and_heterogeneous_steps(algorithm, caplog):
    config = load_config(values={
        "task": {"name": "synthetic", "max_samples": 90}, "data": {"num_clients": 8},
        "population": {"clients_per_round": 4},
        "client": {"algorithm": algorithm, "lr": 0.05, "batch_size": 7, "weight_decay": 1e-3, "clip_norm": 1.0,
                   "lr_decay": 0.9},
        "strategy": {"name": {"scaffold": "scaffold", "feddyn": "feddyn", "fedspeed": "fedspeed", "fedcm": "fedcm",
                              "mofedsam": "mofedsam"}.get(algorithm, "fedavg")},
        "output": {"progress": False, "tensorboard": False},
    })  # fmt: skip
    spec = task_spec(config)
    task = build_task(spec)
    params = initial_params(task, 0)
    worker_spec = WorkerSpec(task=spec, client=algorithm)
    gen = torch.Generator().manual_seed(3)
    d = params.numel()
    broadcast = {"c": 0.01 * torch.randn(d, generator=gen), "momentum": 0.1 * torch.randn(d, generator=gen)}
    base = config.client.model_dump()
    sizes = {int(task.data.num_samples[c]) for c in range(8)}
    assert len(sizes) > 3  # heterogeneous data sizes: heterogeneous step counts
    jobs = []
    for cid in range(8):
        state = (
            None
            if cid % 3 == 0
            else {"c": 0.01 * torch.randn(d, generator=gen), "h": 0.01 * torch.randn(d, generator=gen)}
        )
        extra = {"local_epochs": 1 + cid % 2} | ({"local_steps": 3} if cid == 5 else {})
        jobs.append(
            ClientJob(
                job_id=cid,
                client_id=cid,
                version=cid % 2,
                params=params if cid % 2 == 0 else params + 0.01,
                config=base | extra,
                seed=derive_seed(0, "t", cid),
                state=state,
                broadcast=broadcast,
            )
        )
    serial = SerialExecutor(worker_spec, task).run(jobs)
    with caplog.at_level(logging.WARNING, logger="fedsim"):
        batched = EXECUTORS.get("vmap")(config.executor, worker_spec, task).run(jobs)
    assert not caplog.records, caplog.text  # everything took the batched path
    for a, b in zip(serial, batched):
        assert a.ok and b.ok, (a.error, b.error)
        assert a.num_steps == b.num_steps
        torch.testing.assert_close(b.delta, a.delta, atol=2e-5, rtol=1e-4)
        for field in ("state", "extras"):
            sa, sb = getattr(a, field), getattr(b, field)
            assert (sa is None) == (sb is None)
            for key in sa or {}:
                assert sb[key].device.type == "cpu" and sb[key]._base is None
                torch.testing.assert_close(sb[key], sa[key], atol=1e-4, rtol=1e-4)
        assert b.metrics["train_loss"] == pytest.approx(a.metrics["train_loss"], rel=1e-5)


def test_engine_stores_scaffold_state_and_c_is_mean_of_c_i(small_config):
    experiment = build(
        small_config(
            strategy={"name": "scaffold"}, population={"participation": "always"}, data={"num_clients": 6}, rounds=3
        )
    )
    experiment.run()
    states = experiment.engine.client_states
    assert len(states) == 6
    c = experiment.engine.state.aggregator.c
    torch.testing.assert_close(c, sum(states.get(i)["c"] for i in range(6)) / 6, atol=1e-6, rtol=1e-5)


def test_feddyn_h_i_is_the_sum_of_the_clients_deltas(small_config):
    experiment = build(
        small_config(
            strategy={"name": "feddyn"}, population={"participation": "always"}, data={"num_clients": 4}, rounds=2
        )
    )
    deltas: dict[int, torch.Tensor] = {}
    aggregate = experiment.engine.strategy.aggregate

    def spy(state, results, now):
        for r in results:
            deltas[r.client_id] = deltas.get(r.client_id, 0) + r.delta
        return aggregate(state, results, now)

    experiment.engine.strategy.aggregate = spy
    experiment.run()
    for cid, total in deltas.items():
        torch.testing.assert_close(experiment.engine.client_states.get(cid)["h"], total)


def test_spilled_client_state_round_trips_bit_identical(tmp_path):
    store = ClientStateStore(memory_limit=3 * 400, spill_dir=tmp_path)  # room for 3 states of 100 floats
    gen = torch.Generator().manual_seed(0)
    states = {cid: {"c": torch.randn(100, generator=gen)} for cid in range(10)}
    for cid, state in states.items():
        store.put(cid, state)
    assert store.num_spilled == 7 and store.nbytes() <= 3 * 400 and len(store) == 10
    for cid in range(10):
        assert torch.equal(store.get(cid)["c"], states[cid]["c"])
    assert store.loaded >= 7
    store.close()
    assert not any(tmp_path.rglob("*.pt"))


def test_run_with_tiny_state_memory_equals_run_without(small_config, tmp_path):
    plain = build(small_config(strategy={"name": "fedspeed"}, rounds=3))
    plain.run()
    spilling = build(
        small_config(
            strategy={"name": "fedspeed"}, rounds=3, client_state={"memory_limit_mb": 0.001, "spill_dir": str(tmp_path)}
        )
    )
    spilling.run()
    assert spilling.engine.client_states.spilled > 0
    assert torch.equal(plain.engine.state.params, spilling.engine.state.params)


def test_presets_set_both_sides_and_nonsense_pairs_are_refused():
    config = load_config(values={"strategy": {"name": "fedspeed"}})
    assert config.client.algorithm == "fedspeed" and config.client.clip_norm == 10 and config.client.lr_decay == 0.998
    assert (
        load_config(values={"strategy": {"name": "fedspeed"}, "client": {"algorithm": "feddyn"}}).client.algorithm
        == "feddyn"
    )
    assert load_config(values={"strategy": {"name": "fedadam"}, "client": {"algorithm": "fedprox"}})
    with pytest.raises(ConfigError, match="client.algorithm 'scaffold' does not combine with strategy 'fedavg'"):
        load_config(values={"client": {"algorithm": "scaffold"}})
    with pytest.raises(ConfigError, match="'sgd' does not combine with strategy 'scaffold'"):
        load_config(values={"strategy": {"name": "scaffold"}, "client": {"algorithm": "sgd"}})
    with pytest.raises(ConfigError, match="client.rho is not used by client algorithm 'fedprox'; it takes: mu"):
        load_config(values={"strategy": {"name": "fedprox"}, "client": {"rho": 0.1}})


def test_step_algorithms_refuse_batchnorm_models(small_config, monkeypatch):
    config = small_config(strategy={"name": "fedprox"})
    from fedsim import run as run_module

    real = run_module.build_task

    def with_batchnorm(spec):
        task = real(spec)
        task.build_model = lambda: torch.nn.Sequential(
            torch.nn.Linear(60, 8), torch.nn.BatchNorm1d(8), torch.nn.Linear(8, 10)
        )
        return task

    monkeypatch.setattr(run_module, "build_task", with_batchnorm)
    with pytest.raises(ValueError, match="needs a model without float buffers"):
        build(config)


def test_cli_refuses_a_nonsense_pair_with_one_line(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "fedsim",
            "run",
            "--strategy",
            "fedavg",
            "--set",
            "client.algorithm=scaffold",
            "--out",
            str(tmp_path / "run"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "scaffold" in lines[0] and "fedavg" in lines[0]


@pytest.mark.parametrize("strategy", ["fedprox", "scaffold", "feddyn", "fedsam", "mofedsam", "fedcm", "fedspeed"])
def test_presets_run_serial_and_vmap_with_the_same_metrics(strategy, small_config, caplog):
    finals = []
    for executor in ("serial", "vmap"):
        experiment = build(
            small_config(
                strategy={"name": strategy},
                rounds=2,
                data={"num_clients": 10},
                population={"clients_per_round": 4},
                executor={"name": executor},
            )
        )
        with caplog.at_level(logging.WARNING, logger="fedsim"):
            summary = experiment.run()
        assert "cannot be batched" not in caplog.text
        assert summary["dropouts"] == 0
        finals.append(experiment.engine.history[-1])
    assert finals[0]["test_accuracy"] == pytest.approx(finals[1]["test_accuracy"], abs=0.02)
    assert finals[0]["test_loss"] == pytest.approx(finals[1]["test_loss"], rel=1e-3)


@pytest.mark.slow
def test_cli_fedspeed_on_vmap_end_to_end(tmp_path):
    import json

    out = tmp_path / "run"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "fedsim",
            "run",
            "--strategy",
            "fedspeed",
            "--rounds",
            "3",
            "--executor",
            "vmap",
            "--quiet",
            "--no-tensorboard",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["rounds"] == 3 and summary["dropouts"] == 0


def test_registry_lists_every_algorithm():
    assert set(ALGORITHMS) <= set(CLIENTS.names())
    assert dataclasses.is_dataclass(CLIENTS.get("fedspeed")().options({"lr": 0.1}))
