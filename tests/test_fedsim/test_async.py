"""Time-driven participation: asynchronous, periodic and anarchic schedulers, system heterogeneity.

Invariants: FedBuff with K = C = N equals FedAvg with uniform weights; FedFix with a window
longer than the slowest job equals synchronous FedAvg; FedAsync with alpha = 1 and one client
continues its local SGD; staleness follows a hand-computed schedule; results do not depend on
how jobs are batched; availability follows the virtual clock.
"""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch

from clients import CLIENTS, LocalSGD, TrainContext
from fedsim.cli import main
from fedsim.config import ConfigError, load_config
from fedsim.engine import Engine
from fedsim.params import ResidentModel
from fedsim.population import SPEEDS
from fedsim.rng import derive_seed
from fedsim.run import build, initial_params, run_experiment
from strategies.staleness import hinge, polynomial


class SpeedById:
    """Client n takes 1 + 2n virtual seconds per local step (test only)."""

    def step_time(self, ids):
        return 1.0 + 2.0 * np.asarray(ids, dtype=np.float64)


class CountingClient(LocalSGD):
    """A stateful client: its state counts the jobs it finished (test only)."""

    name = "test_counting"

    def options(self, config):
        return None  # not a step function: train through ``train``

    def train(self, ctx, params, data, config, state, rng):
        result = super().train(ctx, params, data, config, state, rng)
        result.state = (state or 0) + 1
        return result


if "test_by_id" not in SPEEDS:
    SPEEDS.register("test_by_id", "test only")(lambda config, data, seed, batch_size=1: SpeedById())
    CLIENTS.register("test_counting", "test only")(CountingClient)


def _config(small_config, **overrides):
    base = {
        "data": {"num_clients": 5},
        "client": {"local_steps": 3},
        "population": {"participation": "always", "speed": "constant"},
    }
    from fedsim.config import deep_merge  # noqa: PLC0415

    return small_config(**deep_merge(base, overrides))


def _run(config):
    experiment = build(config)
    summary = experiment.run()
    return experiment, summary


def _records(experiment):
    rounds = []
    experiment.engine.callbacks.append(
        type(
            "Spy",
            (),
            {
                "on_round": lambda self, engine, record: rounds.append(record),
                "on_eval": lambda self, engine, record: None,
                "on_end": lambda self, engine, summary: None,
            },
        )()
    )
    return rounds


# ---------------------------------------------------------------- invariants (ALGORITHMS.md §8)


def test_fedbuff_with_k_equal_concurrency_equal_population_is_fedavg_with_uniform_weights(small_config):
    sync, _ = _run(_config(small_config, strategy={"name": "fedavg", "weighting": "uniform"}))
    fedbuff, _ = _run(
        _config(
            small_config,
            strategy={"name": "fedbuff", "staleness": "constant"},
            scheduler={"buffer_size": 5, "concurrency": 5},
            population={"speed": "constant"},
        )
    )
    assert fedbuff.engine.state.version == sync.engine.state.version == 3
    assert torch.equal(fedbuff.engine.state.params, sync.engine.state.params)


def test_fedbuff_composes_with_server_adam(small_config):
    sync, _ = _run(_config(small_config, strategy={"name": "fedadam", "weighting": "uniform"}))
    fedbuff, _ = _run(
        _config(
            small_config,
            strategy={
                "name": "fedbuff",
                "staleness": "constant",
                "server_optimizer": "adam",
                "server_lr": 0.01,
                "tau": 1e-3,
            },
            scheduler={"buffer_size": 5, "concurrency": 5},
            population={"speed": "constant"},
        )
    )
    assert torch.equal(fedbuff.engine.state.params, sync.engine.state.params)


def test_fedfix_with_window_longer_than_slowest_job_is_synchronous_fedavg(small_config):
    speeds = {"speed": "lognormal", "speed_sigma": 1.0}
    sync, _ = _run(_config(small_config, population=speeds))
    slowest = float(sync.population.durations(np.arange(5), np.full(5, 3)).max())
    fedfix, _ = _run(
        _config(
            small_config,
            strategy={"name": "fedfix"},
            population=speeds,
            scheduler={"interval": slowest * 1.01, "concurrency": 5},
        )
    )
    assert torch.equal(fedfix.engine.state.params, sync.engine.state.params)
    assert fedfix.engine.now == pytest.approx(3 * slowest * 1.01)


def test_fedfix_weights_count_the_windows_a_job_spans():
    from fedsim.types import ClientResult, PopulationInfo  # noqa: PLC0415
    from strategies import WEIGHTINGS  # noqa: PLC0415

    population = PopulationInfo(4, num_samples=np.array([10, 30, 60, 100]))
    fresh = ClientResult(0, 3, torch.tensor([1.0, 0.0]), 10, 1, staleness=0)
    stale = ClientResult(2, 1, torch.tensor([0.0, 1.0]), 60, 1, staleness=2)  # spanned 3 windows
    agg = WEIGHTINGS.get("fedfix")()
    u, _ = agg.aggregate(agg.init(torch.zeros(2), population), [fresh, stale], 3)
    torch.testing.assert_close(u, torch.tensor([10 / 200, 3 * 60 / 200]))


def test_periodic_windows_without_arrivals_are_zero_updates(small_config):
    # every job takes 0.03 s; windows of 0.01 s: two of every three windows see no arrival
    config = _config(
        small_config, rounds=6, strategy={"name": "fedfix"}, scheduler={"interval": 0.01, "concurrency": 5}
    )
    experiment = build(config)
    rounds = _records(experiment)
    params: list[torch.Tensor] = []
    experiment.engine.callbacks.append(
        type(
            "Params",
            (),
            {
                "on_round": lambda self, engine, record: params.append(engine.state.params.clone()),
                "on_eval": lambda self, engine, record: None,
                "on_end": lambda self, engine, summary: None,
            },
        )()
    )
    start = experiment.engine.state.params.clone()
    experiment.run()
    assert [r["participants"] for r in rounds] == [0, 0, 5, 0, 0, 5]
    assert torch.equal(params[0], start) and torch.equal(params[1], start)
    assert not torch.equal(params[2], start) and torch.equal(params[3], params[2])
    assert [r["staleness"] for r in rounds if r["participants"]] == [2, 2]


def test_fedasync_alpha_one_one_client_continues_local_sgd(small_config):
    config = _config(
        small_config,
        data={"num_clients": 1},
        rounds=4,
        strategy={"name": "fedasync", "server_lr": 1.0, "staleness": "constant"},
        scheduler={"concurrency": 1},
    )
    experiment, _ = _run(config)
    task = experiment.task
    params = initial_params(task, config.seed)
    ctx = TrainContext(ResidentModel(task.build_model()), task.loss_fn, torch.device("cpu"))
    for version in range(4):  # the client's dispatch count equals the version here
        rng = torch.Generator().manual_seed(derive_seed(config.seed, "client-train", 0, version, version))
        params = params + LocalSGD().train(ctx, params, task.data.train(0), config.client.model_dump(), None, rng).delta
    torch.testing.assert_close(experiment.engine.state.params, params, rtol=0, atol=1e-6)


def test_staleness_follows_hand_computed_schedule(small_config):
    # client 0 takes 1 s, client 1 takes 3 s; K = 1. At t = 3 both arrive: client 1 first
    # (dispatched earlier), 2 versions stale; then client 0, 1 stale. Both restart on version 4.
    config = _config(
        small_config,
        data={"num_clients": 2},
        rounds=8,
        client={"local_steps": 1},
        population={"speed": "test_by_id"},
        strategy={"name": "fedasync"},
        scheduler={"concurrency": 2},
    )
    experiment = build(config)
    rounds = _records(experiment)
    experiment.run()
    assert [r["staleness"] for r in rounds] == [0, 0, 2, 1, 0, 0, 2, 1]
    assert [r["virtual_time"] for r in rounds] == [1, 2, 3, 3, 4, 5, 6, 6]


def test_max_staleness_refuses_and_counts(small_config):
    config = _config(
        small_config,
        data={"num_clients": 2},
        rounds=6,
        client={"local_steps": 1},
        population={"speed": "test_by_id"},
        strategy={"name": "fedasync"},
        scheduler={"concurrency": 2, "max_staleness": 1},
    )
    experiment = build(config)
    rounds = _records(experiment)
    summary = experiment.run()
    assert summary["stale_refused"] == 2  # client 1's updates at t = 3 and t = 6
    assert all(r["staleness"] <= 1 for r in rounds)


def test_staleness_functions():
    tau = np.arange(12)
    for s in (polynomial(0.5), hinge(10, 4), polynomial(2.0)):
        w = s(tau)
        assert w[0] == 1 and np.all(np.diff(w) <= 0)
    np.testing.assert_allclose(polynomial(0.5)(tau), 1 / np.sqrt(1 + tau))
    np.testing.assert_array_equal(hinge(10, 4)(tau)[:5], 1.0)
    assert hinge(10, 4)(np.array([6]))[0] == pytest.approx(1 / 21)


# ---------------------------------------------------------------- determinism and batching


class OneByOne:
    """Wraps an executor: computes jobs one per call, in reverse order (batching must not matter)."""

    def __init__(self, inner):
        self.inner = inner

    def run(self, jobs):
        return [self.inner.run([job])[0] for job in jobs[::-1]][::-1]

    def close(self):
        self.inner.close()


@pytest.mark.parametrize("strategy", ["fedbuff", "fedasync", "fedfix", "afa-cs"])
def test_async_runs_do_not_depend_on_batching(small_config, strategy):
    config = _config(small_config, data={"num_clients": 12}, rounds=6, strategy={"name": strategy})
    a, _ = _run(config)
    b = build(config)
    b.engine.executor = OneByOne(b.engine.executor)
    b.run()
    assert torch.equal(a.engine.state.params, b.engine.state.params)
    assert [r["virtual_time"] for r in a.engine.history] == [r["virtual_time"] for r in b.engine.history]


def test_async_serial_and_vmap_agree(small_config):
    config = _config(
        small_config,
        data={"num_clients": 12},
        rounds=5,
        strategy={"name": "fedbuff"},
        scheduler={"buffer_size": 3, "concurrency": 6},
    )
    serial, s_summary = _run(config)
    vmap, v_summary = _run(config.model_copy(update={"executor": config.executor.model_copy(update={"name": "vmap"})}))
    torch.testing.assert_close(vmap.engine.state.params, serial.engine.state.params, rtol=1e-4, atol=1e-5)
    assert s_summary["virtual_time"] == v_summary["virtual_time"]
    assert v_summary["executor_batch_mean"] > 1


def test_job_seeds_derive_from_client_version_and_dispatch_count(small_config):
    experiment = build(
        _config(small_config, strategy={"name": "fedbuff"}, rounds=4, scheduler={"buffer_size": 2, "concurrency": 3})
    )
    seen: list = []
    dispatch = experiment.engine.dispatch

    def spy(ids, overrides=None):
        jobs = dispatch(ids, overrides)
        seen.extend(jobs)
        return jobs

    experiment.engine.dispatch = spy
    experiment.run()
    counts: dict[int, int] = {}
    for job in seen:
        assert job.seed == derive_seed(1, "client-train", job.client_id, job.version, counts.get(job.client_id, 0))
        counts[job.client_id] = counts.get(job.client_id, 0) + 1


def test_client_state_is_stored_on_arrival_not_on_aggregation(small_config):
    # a buffer that never fills: nothing is aggregated, yet each re-dispatch sees its latest state
    config = _config(
        small_config,
        data={"num_clients": 3},
        client={"algorithm": "test_counting"},
        strategy={"name": "fedbuff"},
        scheduler={"buffer_size": 1000, "concurrency": 2, "max_time": 1.0},
    )
    experiment, _ = _run(config)
    assert experiment.engine.state.version == 0
    counts = experiment.engine.run_state.dispatch_counts
    in_flight = {job.client_id for job in experiment.engine.run_state.jobs.values()}
    for cid, state in experiment.engine.client_states.items():
        assert state == counts[cid] - (cid in in_flight)


# ---------------------------------------------------------------- availability follows the clock


def test_availability_follows_the_clock_in_async_and_sync(small_config, tmp_path):
    trace = tmp_path / "trace.csv"
    # client 0 online [0, 2), client 1 online [1, 4), client 2 online [3, 6); period 6
    trace.write_text("client_id,start,end\n0,0,2\n1,1,4\n2,3,6\n")
    online = {0: (0, 2), 1: (1, 4), 2: (3, 6)}
    for scheduler in ({"name": "buffered", "buffer_size": 1, "concurrency": 2}, {"name": "sync"}):
        rounds = 12 if scheduler["name"] == "sync" else 40  # both reach t > 3, when client 2 comes online
        config = _config(
            small_config,
            data={"num_clients": 3},
            rounds=rounds,
            client={"local_steps": 1},
            population={"participation": "trace", "trace_path": str(trace), "round_length": 0.5, "step_time": 0.2},
            strategy={"name": "fedasync" if scheduler["name"] == "buffered" else "fedavg"},
            scheduler=scheduler,
        )
        experiment = build(config)
        engine: Engine = experiment.engine
        dispatched: list[tuple[float, int]] = []
        dispatch = engine.dispatch

        def spy(ids, overrides=None, dispatch=dispatch, engine=engine):
            dispatched.extend((engine.now, int(c)) for c in np.asarray(ids).tolist())
            return dispatch(ids, overrides)

        engine.dispatch = spy
        experiment.run()
        assert dispatched, scheduler
        for now, cid in dispatched:
            start, end = online[cid]
            assert start <= now % 6 < end, (scheduler["name"], now, cid)
        assert {cid for _, cid in dispatched} == {0, 1, 2}


def test_sync_rounds_read_the_slot_of_their_round(small_config):
    # rounds shorter than round_length start on slot boundaries: round r sees slot r (FedAU semantics)
    config = _config(
        small_config,
        data={"num_clients": 20},
        rounds=6,
        population={"participation": "bernoulli", "mean_prob": 0.3, "round_length": 10.0},
    )
    experiment = build(config)
    rounds = _records(experiment)
    experiment.run()
    model = experiment.population.participation
    assert [r["participants"] for r in rounds] == [len(model.participants(t)) for t in range(6)]
    assert [r["virtual_time"] for r in rounds][:2] == pytest.approx([0.03, 10.03])


@pytest.mark.parametrize("name", ["bernoulli", "markov", "cyclic"])
def test_available_matches_participants_of_the_slot(name):
    from fedsim.config import PopulationConfig  # noqa: PLC0415
    from fedsim.population import PARTICIPATION  # noqa: PLC0415

    class Data:
        num_clients, num_classes = 50, 10

        def label_histograms(self, ids=None):
            return np.eye(10)[np.arange(50) % 10]

    model = PARTICIPATION.get(name)(PopulationConfig(participation=name, round_length=2.0, cyclic_period=4), Data(), 0)
    ids = np.arange(50)
    for slot in range(8):
        expected = np.zeros(50, dtype=bool)
        expected[model.participants(slot)] = True
        np.testing.assert_array_equal(model.available(ids, 2.0 * slot + 1.3), expected)


# ---------------------------------------------------------------- system heterogeneity


def test_over_selection_aggregates_the_first_k_to_arrive(small_config):
    config = _config(
        small_config,
        data={"num_clients": 20},
        rounds=3,
        population={"participation": "uniform", "clients_per_round": 5, "speed": "lognormal"},
        scheduler={"over_selection": 0.6},
    )
    experiment = build(config)
    rounds = _records(experiment)
    summary = experiment.run()
    assert [r["participants"] for r in rounds] == [5, 5, 5]
    assert summary["jobs_dispatched"] == 3 * 8
    assert summary["dropouts"] == 0  # the unneeded 3 per round are cancelled, not dropouts


def test_device_file_and_bandwidth_give_fedscale_completion_times(small_config, tmp_path):
    path = tmp_path / "devices.pkl"
    path.write_bytes(
        pickle.dumps(
            {1: {"computation": 20.0, "communication": 1000.0}, 2: {"computation": 5.0, "communication": 4000.0}}
        )
    )
    config = _config(
        small_config, population={"speed": "device_file", "device_file": str(path)}, client={"batch_size": 10}
    )
    experiment = build(config)
    bits = 32.0 * experiment.engine.state.params.numel()
    durations = experiment.population.durations(np.array([0, 1, 2]), np.array([3, 3, 3]))
    expected = [3 * 10 * 20.0 / 1000 * 3 + 2 * bits / 1e6, 3 * 10 * 5.0 / 1000 * 3 + 2 * bits / 4e6]
    np.testing.assert_allclose(durations, [expected[0], expected[1], expected[0]])


def test_device_file_errors_are_one_line(tmp_path):
    bad = tmp_path / "bad.pkl"
    bad.write_bytes(pickle.dumps({1: {"computation": 1.0}}))
    for path, message in ((tmp_path / "missing.pkl", "no such file"), (bad, "lacks")):
        config = load_config(values={"population": {"speed": "device_file", "device_file": str(path)}})
        with pytest.raises(ConfigError, match=message):
            run_experiment(config, out_dir=tmp_path / "run")


def test_tiered_speeds_follow_the_fractions():
    from fedsim.population.simple import TieredSpeed  # noqa: PLC0415

    speed = TieredSpeed(0.1, [[0.5, 1.0], [0.5, 10.0]], seed=0)
    steps = speed.step_time(np.arange(4000))
    assert set(np.round(steps, 6)) == {0.1, 1.0}
    assert abs((steps == 0.1).mean() - 0.5) < 0.05


def test_dropouts_mid_training_and_extra_delays(small_config):
    config = _config(
        small_config,
        data={"num_clients": 20},
        rounds=4,
        strategy={"name": "fedbuff"},
        scheduler={"buffer_size": 4, "concurrency": 8},
        population={"dropout_prob": 0.3, "extra_delay": 0.5},
    )
    experiment, summary = _run(config)
    rs = experiment.engine.run_state
    assert summary["dropouts"] > 0 and experiment.engine.state.version == 4
    assert rs.executor_jobs < summary["jobs_dispatched"] - len(rs.jobs)  # dropped jobs were never computed
    plain = build(_config(small_config, data={"num_clients": 20}, strategy={"name": "fedbuff"}))
    steps = np.full(20, 3)
    delayed = experiment.population.durations(np.arange(20), steps)
    assert np.all(delayed > plain.population.durations(np.arange(20), steps))


@pytest.mark.parametrize("process", ["constant", "poisson"])
def test_open_arrivals_start_clients_at_the_arrival_rate(small_config, process):
    config = _config(
        small_config,
        data={"num_clients": 50},
        rounds=100,
        strategy={"name": "fedbuff"},
        scheduler={
            "arrivals": "rate",
            "arrival_rate": 4.0,
            "arrival_process": process,
            "buffer_size": 5,
            "max_time": 10.0,
        },
    )
    experiment = build(config)
    starts: list[float] = []
    dispatch = experiment.engine.dispatch
    experiment.engine.dispatch = lambda ids, overrides=None: (
        starts.append(experiment.engine.now),
        dispatch(ids, overrides),
    )[1]
    experiment.run()
    gaps = np.diff(starts)
    if process == "constant":
        np.testing.assert_allclose(gaps, 0.25)
    else:
        assert abs(gaps.mean() - 0.25) < 0.08 and gaps.std() > 0.1  # exponential gaps, mean 1/rate
    assert len(starts) == pytest.approx(40, abs=12)


# ---------------------------------------------------------------- anarchic participation


def test_anarchic_clients_choose_their_local_steps(small_config):
    config = _config(
        small_config,
        data={"num_clients": 10},
        rounds=5,
        strategy={"name": "afa-cd"},
        scheduler={"buffer_size": 4, "anarchic": {"min_steps": 2, "max_steps": 6}},
    )
    experiment = build(config)
    steps: list[int] = []
    aggregate = experiment.engine.strategy.aggregate

    def spy(state, results, now):
        steps.extend(r.num_steps for r in results)
        return aggregate(state, results, now)

    experiment.engine.strategy.aggregate = spy
    experiment.run()
    assert set(steps) <= set(range(2, 7)) and len(set(steps)) > 2


def test_afa_normalises_by_local_steps_and_cs_keeps_each_workers_latest():
    from fedsim.types import ClientResult, PopulationInfo  # noqa: PLC0415
    from strategies import WEIGHTINGS  # noqa: PLC0415

    population = PopulationInfo(4, num_samples=np.array([1, 1, 1, 1]))
    a = ClientResult(0, 0, torch.tensor([2.0, 0.0]), 5, 2)  # G = [1, 0]
    b = ClientResult(1, 0, torch.tensor([0.0, 8.0]), 5, 4)  # G = [0, 2]
    a_again = ClientResult(0, 0, torch.tensor([6.0, 0.0]), 5, 3)  # G = [2, 0], supersedes a in AFA-CS
    cd = WEIGHTINGS.get("afa_cd")()
    u, _ = cd.aggregate(cd.init(torch.zeros(2), population), [a, b, a_again], 0)
    torch.testing.assert_close(u, torch.tensor([(1 + 2) / 3, 2 / 3]))  # mean over the m = 3 arrivals
    cs = WEIGHTINGS.get("afa_cs")()
    u, state = cs.aggregate(cs.init(torch.zeros(2), population), [a, b, a_again], 0)
    torch.testing.assert_close(u, torch.tensor([2 / 4, 2 / 4]))  # (1/M) sum of latest G over all M = 4
    u, _ = cs.aggregate(state, [], 1)  # nobody arrives: stale entries keep contributing
    torch.testing.assert_close(u, torch.tensor([2 / 4, 2 / 4]))


def test_afa_cd_with_eta_k_and_full_arrivals_is_fedavg(small_config):
    # every worker arrives once per update, K local steps each, no delay: eta = K gives FedAvg
    sync, _ = _run(_config(small_config, strategy={"name": "fedavg", "weighting": "uniform"}))
    afa, _ = _run(
        _config(
            small_config,
            strategy={"name": "afa-cd", "server_lr": 3.0},
            scheduler={"buffer_size": 5, "concurrency": 5, "arrivals": "concurrency"},
        )
    )
    torch.testing.assert_close(afa.engine.state.params, sync.engine.state.params, rtol=0, atol=1e-6)


# ---------------------------------------------------------------- evaluation on the clock, summary


def test_time_to_accuracy_and_virtual_time_evaluation(small_config, tmp_path):
    config = _config(
        small_config,
        rounds=6,
        strategy={"name": "fedbuff"},
        scheduler={"buffer_size": 2},
        eval={"every": None, "every_time": 0.05, "target_accuracy": 0.01},
    )
    summary, out = run_experiment(config, out_dir=tmp_path / "run")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()][1:]  # [0]: initial model
    times = [r["virtual_time"] for r in rows[:-1]]
    assert times == pytest.approx([0.05 * (i + 1) for i in range(len(times))])
    saved = json.loads((out / "summary.json").read_text())
    assert saved["time_to_accuracy"]["virtual_time"] == pytest.approx(0.05)
    assert saved["executor_batch_mean"] >= 1
    config = _config(small_config, rounds=2, eval={"target_accuracy": 1.0})
    summary, _ = run_experiment(config, out_dir=tmp_path / "run2")
    assert summary["time_to_accuracy"] == {"target": 1.0, "virtual_time": None, "server_updates": None}


@pytest.mark.parametrize("strategy", ["fedbuff", "fedasync", "fedfix", "afa-cd", "afa-cs"])
def test_presets_run_from_the_cli(tmp_path, strategy, capsys):
    code = main(
        [
            "run",
            "--strategy",
            strategy,
            "--rounds",
            "3",
            "--quiet",
            "--no-tensorboard",
            "--set",
            "data.num_clients=12",
            "--out",
            str(tmp_path / strategy),
        ]
    )
    assert code == 0
    summary = json.loads((tmp_path / strategy / "summary.json").read_text())
    assert summary["rounds"] == 3 and summary["virtual_time"] > 0


# ---------------------------------------------------------------- unsupported combinations


@pytest.mark.parametrize(
    "args, message",
    [
        (["--strategy", "fedau", "--set", "scheduler.name=buffered"], "not defined for scheduler 'buffered'"),
        (["--strategy", "fedbuff", "--set", "round_deadline=1"], "round_deadline applies to scheduler 'sync'"),
        (["--set", "scheduler.over_selection=0.5", "--participation", "bernoulli"], "over_selection needs"),
        (["--strategy", "fedbuff", "--set", "scheduler.over_selection=0.5"], "over_selection applies"),
        (["--set", "scheduler.interval=1"], "interval applies to scheduler 'periodic'"),
        (["--set", "scheduler.name=periodic"], "scheduler.interval"),
        (["--strategy", "fedfix", "--set", "scheduler.arrivals=anarchic"], "does not combine"),
        (
            ["--strategy", "fedbuff", "--set", "strategy.staleness=constant", "--set", "strategy.staleness_a=2"],
            "staleness_a is not used by staleness 'constant'",
        ),
        (["--set", "scheduler.name=fast"], "valid choices: buffered, periodic, sync"),
        (["--set", "scheduler.arrivals=burst"], "valid choices"),
        (["--set", "strategy.staleness=linear"], "valid choices: constant"),
        (["--set", "scheduler.arrival_process=bursty"], "constant, poisson"),
    ],
)
def test_unsupported_combinations_exit_2_with_one_line(tmp_path, capsys, args, message):
    code = main(["run", *args, "--rounds", "1", "--quiet", "--no-tensorboard", "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert message in err and len(err.splitlines()) == 1, err
