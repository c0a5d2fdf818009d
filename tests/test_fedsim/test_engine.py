"""Engine behaviour: determinism, strategy math end to end, dropouts, deadlines, virtual time."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from clients import CLIENTS, LocalSGD, resident_grad_fn, run_client
from fedsim.executors.worker import torch_threads
from fedsim.params import ResidentModel
from fedsim.population import PARTICIPATION
from fedsim.population.base import slot_of
from fedsim.rng import derive_seed
from fedsim.run import build, initial_params


class FaultyClient(LocalSGD):
    """Client 3 raises, client 4 returns NaN, client 5 returns a mis-shaped update."""

    name = "test_faulty"

    def options(self, config):
        return None  # not a step function: train through ``train``

    def train(self, ctx, params, data, config, state, rng):
        result = super().train(ctx, params, data, config, state, rng)
        cid = config["_client_id"]
        if cid == 3:
            raise RuntimeError("simulated crash")
        if cid == 4:
            result.delta = result.delta * float("nan")
        if cid == 5:
            result.delta = result.delta[:-1]
        return result


class EvenRoundsEmpty:
    """Participation model for tests: nobody in even slots, clients 0..2 in odd slots."""

    time_varying = True

    def __init__(self, num_clients, round_length):
        self.probabilities = np.full(num_clients, 0.5)
        self.round_length = round_length

    def available(self, ids, now):
        slot = slot_of(now, self.round_length)
        return (ids < 3) & (slot % 2 == 1)

    def participants(self, round):
        return np.array([], dtype=np.int64) if round % 2 == 0 else np.arange(3)


if "test_faulty" not in CLIENTS:
    CLIENTS.register("test_faulty", "test only")(FaultyClient)
    PARTICIPATION.register("test_even_empty", "test only")(
        lambda config, data, seed: EvenRoundsEmpty(data.num_clients, config.round_length)
    )


def _history(experiment):
    experiment.run()
    return [{k: v for k, v in row.items() if k != "wall_time"} for row in experiment.engine.history]


def test_same_seed_same_metrics(small_config):
    a = _history(build(small_config()))
    b = _history(build(small_config()))
    assert a == b
    c = _history(build(small_config(seed=2)))
    assert a != c


def test_fedavg_one_client_full_participation_equals_local_training(small_config):
    config = small_config(
        rounds=1,
        data={"num_clients": 1, "partition": "natural"},
        population={"participation": "always"},
        strategy={"name": "fedavg", "server_lr": 1.0},
    )
    experiment = build(config)
    experiment.run()
    task = experiment.task
    start = initial_params(task, config.seed)
    model = ResidentModel(task.build_model())
    rng = torch.Generator().manual_seed(derive_seed(config.seed, "client-train", 0, 0, 0))
    client, client_config = LocalSGD(), config.client.model_dump()
    with torch_threads(config.executor.threads):  # the thread count the worker trains with: same floats
        local = run_client(
            client,
            client.options(client_config),
            resident_grad_fn(model, task.loss_fn),
            start,
            task.data.train(0),
            client_config,
            None,
            None,
            rng,
            0,
        )
    assert torch.equal(experiment.engine.state.params, start + local.delta)


@pytest.mark.parametrize("strategy", ["fedavg", "fedadam", "fedavgm"])
def test_server_lr_zero_leaves_model_unchanged(small_config, strategy):
    experiment = build(small_config(strategy={"name": strategy, "server_lr": 0.0}))
    start = experiment.engine.state.params.clone()
    experiment.run()
    assert torch.equal(experiment.engine.state.params, start)
    assert experiment.engine.state.version == 3


def test_failing_clients_are_logged_dropouts(small_config, caplog, monkeypatch):
    # tell the faulty client who it is through its config
    experiment = build(
        small_config(
            rounds=2,
            client={"algorithm": "test_faulty"},
            data={"num_clients": 8},
            population={"participation": "always"},
        )
    )
    configure = experiment.engine.strategy.configure
    monkeypatch.setattr(
        experiment.engine.strategy,
        "configure",
        lambda state, cid, now: configure(state, cid, now) | {"_client_id": cid},
    )
    with caplog.at_level(logging.WARNING, logger="fedsim"):
        summary = experiment.run()
    assert summary["dropouts"] == 6  # clients 3, 4, 5 in each of 2 rounds
    assert experiment.engine.history[-1]["participants"] == 5
    assert torch.isfinite(experiment.engine.state.params).all()
    text = caplog.text
    assert "simulated crash" in text and "not finite" in text and "shape" in text


def test_round_time_is_the_slowest_participant(small_config):
    config = small_config(client={"local_steps": 5}, population={"step_time": 0.01, "comm_time": 0.5})
    experiment = build(config)
    experiment.run()
    assert experiment.engine.now == pytest.approx(3 * (5 * 0.01 + 0.5))
    rows = experiment.engine.history
    assert [r["virtual_time"] for r in rows] == pytest.approx([0.55, 1.1, 1.65])


def test_deadline_drops_stragglers(small_config):
    config = small_config(
        rounds=4,
        round_deadline=0.05,
        client={"local_steps": 5},
        population={"speed": "lognormal", "speed_sigma": 1.0, "step_time": 0.01},
    )
    experiment = build(config)
    summary = experiment.run()
    assert summary["dropouts"] > 0
    assert experiment.engine.now <= 4 * 0.05 + 1e-9
    steps = 5 * experiment.population.speed.step_time(np.arange(20))
    assert (steps > 0.05).any() and (steps <= 0.05).any()


def test_empty_rounds_apply_no_update(small_config):
    experiment = build(small_config(rounds=4, population={"participation": "test_even_empty"}))
    versions = []
    experiment.engine.callbacks.append(
        type(
            "Spy",
            (),
            {
                "on_round": lambda self, engine, record: versions.append((record["round"], record["participants"])),
                "on_eval": lambda self, engine, record: None,
                "on_end": lambda self, engine, summary: None,
            },
        )()
    )
    start = experiment.engine.state.params.clone()
    experiment.run()
    assert versions == [(1, 0), (2, 3), (3, 0), (4, 3)]
    assert not torch.equal(experiment.engine.state.params, start)
    assert [r["virtual_time"] for r in experiment.engine.history][:1] == [0.0]  # round 1: slot 0, nobody


def test_empty_rounds_leave_the_parameters_unchanged(small_config):
    experiment = build(small_config(rounds=1, population={"participation": "test_even_empty"}))
    start = experiment.engine.state.params.clone()
    experiment.run()
    assert experiment.engine.state.version == 1
    assert torch.equal(experiment.engine.state.params, start)


def test_per_client_evaluation(small_config):
    experiment = build(small_config(rounds=1, eval={"per_client": True}))
    experiment.run()
    row = experiment.engine.history[-1]
    assert 0 <= row["client_accuracy_worst10"] <= row["client_accuracy_mean"] <= 1


def test_all_finite_agrees_with_isfinite_including_sums_that_overflow():
    from fedsim.params import all_finite

    big = torch.full((10,), 3e38)  # every element finite, the float32 sum overflows to inf
    cases = [
        torch.randn(100),
        big,
        torch.tensor([1.0, float("nan")]),
        torch.tensor([float("inf"), -float("inf")]),
        torch.tensor([float("-inf"), 1.0]),
        torch.zeros(0),
        torch.arange(5),
    ]
    for t in cases:
        assert all_finite(t) == bool(torch.isfinite(t).all()), t


class _StopAt:
    """A callback in the (stop, metrics) protocol: adds a metric to every record, stops at a version."""

    def __init__(self, version):
        self.version, self.ended = version, None

    def on_round(self, engine, record):
        return record["round"] >= self.version, {"marker": record["round"] * 10}

    def on_eval(self, engine, record):
        return False, {"eval_marker": record["round"]}

    def on_end(self, engine, summary):
        self.ended = summary["rounds"]


def test_callbacks_return_stop_and_metrics_merged_into_the_record(small_config):
    experiment = build(small_config(rounds=5))
    spy = _StopAt(2)
    rounds = []
    experiment.engine.callbacks += [
        spy,
        type(
            "Spy",
            (),
            {
                "on_round": lambda self, engine, record: rounds.append(dict(record)),
                "on_eval": lambda self, engine, record: None,
                "on_end": lambda self, engine, summary: None,
            },
        )(),
    ]
    summary = experiment.run()
    assert summary["status"] == "completed" and summary["rounds"] == 2 and spy.ended == 2
    assert [r["marker"] for r in rounds] == [10, 20]  # later callbacks see the merged metrics
    assert [h["eval_marker"] for h in experiment.engine.history] == [1, 2]  # and so does the history


def test_evaluation_history_and_time_to_accuracy_are_callbacks(small_config):
    from fedsim.callbacks import Evaluation, History, TimeToAccuracy  # noqa: PLC0415

    experiment = build(small_config(rounds=2, eval={"every": 1, "target_accuracy": 0.01}))
    engine = experiment.engine
    assert [type(cb) for cb in engine.callbacks[:3]] == [Evaluation, History, TimeToAccuracy]
    summary = experiment.run()
    assert engine.history is engine.callbacks[1].records and len(engine.history) == 2
    assert summary["final"] == engine.history[-1]
    assert (
        summary["time_to_accuracy"] == engine.callbacks[2].reached
        and summary["time_to_accuracy"]["server_updates"] == 1
    )
