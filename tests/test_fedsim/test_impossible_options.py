"""Options that cannot work are refused before a run starts, in one line naming the field.

Caps on sizes, dropout 1, speed tiers that are not shares, a non-SGD optimizer for algorithms
defined over SGD steps, availability traces in which nobody is ever online, deadlines no job
can meet, and runs whose memory estimate cannot fit the machine (unless --force).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from clients import CLIENTS
from fedsim import resources
from fedsim.cli import main
from fedsim.config import MAX_LOCAL_STEPS, ConfigError, load_config
from fedsim.run import build, task_spec
from fedsim.tasks import build_task

EXPERIMENTS = Path(__file__).resolve().parents[2] / "experiments"
TINY = [
    "data.num_clients=4",
    "population.clients_per_round=2",
    "task.max_samples=60",
    "eval.every=null",
    "stop.divergence_factor=null",
]


def config_error(*overrides: str) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(overrides=list(overrides))
    message = str(info.value)
    assert "\n" not in message
    return message


def run_cli(capsys, *argv: str) -> tuple[int, str]:
    code = main(["run", "--quiet", "--no-tensorboard", *argv])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("fedsim:")]
    assert len(lines) <= 1 and "Traceback" not in err, err
    return code, lines[0] if lines else ""


# --------------------------------------------------------------------------- caps


@pytest.mark.parametrize(
    "override, field",
    [
        (f"scheduler.anarchic.max_steps={10**11}", "scheduler.anarchic.max_steps"),
        (f"scheduler.anarchic.min_steps={MAX_LOCAL_STEPS + 1}", "scheduler.anarchic.min_steps"),
        (f"data.num_clients={10**9}", "data.num_clients"),
        (f"client.batch_size={10**9}", "client.batch_size"),
        (f"scheduler.buffer_size={10**9}", "scheduler.buffer_size"),
        (f"scheduler.concurrency={10**9}", "scheduler.concurrency"),
        (f"eval.max_clients={10**9}", "eval.max_clients"),
        (f"rounds={10**12}", "rounds"),
        (f"population.clients_per_round={10**9}", "population.clients_per_round"),
    ],
)
def test_sizes_above_their_cap_are_refused_naming_the_field(override, field):
    assert f"config error: {field}: " in config_error(override)


def test_anarchic_max_steps_is_capped_at_the_local_step_limit():
    cfg = load_config(
        overrides=[
            "scheduler.name=buffered",
            "scheduler.arrivals=anarchic",
            f"scheduler.anarchic.max_steps={MAX_LOCAL_STEPS}",
        ]
    )
    assert cfg.scheduler.anarchic.max_steps == MAX_LOCAL_STEPS
    assert str(MAX_LOCAL_STEPS) in config_error(f"scheduler.anarchic.max_steps={MAX_LOCAL_STEPS + 1}")


# --------------------------------------------------------------------------- nobody can finish


def test_dropout_one_is_refused_at_load_time():
    message = config_error("population.dropout_prob=1")
    assert (
        message.startswith("config error: population.dropout_prob: must be < 1")
        and "no client ever finishes" in message
    )
    assert load_config(overrides=["population.dropout_prob=0.99"]).population.dropout_prob == 0.99


def test_trace_in_which_nobody_is_ever_available_is_refused(tmp_path, capsys):
    trace = tmp_path / "trace.csv"
    trace.write_text("client_id,start,end\n0,5,5\n1,7,7\n2,0,0\n")  # every interval is empty
    code, line = run_cli(
        capsys,
        *sum((["--set", o] for o in TINY), []),
        "--set",
        "population.participation=trace",
        "--set",
        f"population.trace_path={trace}",
        "--rounds",
        "1",
        "--out",
        str(tmp_path / "run"),
    )
    assert code == 2 and "population.trace_path" in line and "ever available" in line
    assert not (tmp_path / "run").exists()


def test_round_deadline_shorter_than_any_job_is_refused(tmp_path, capsys):
    code, line = run_cli(
        capsys,
        *sum((["--set", o] for o in TINY), []),
        "--set",
        "round_deadline=0.001",
        "--set",
        "population.step_time=1",
        "--rounds",
        "1",
        "--out",
        str(tmp_path / "run"),
    )
    assert code == 2 and line.startswith("fedsim: error: round_deadline (0.001") and "no client" in line


# --------------------------------------------------------------------------- speed tiers


@pytest.mark.parametrize(
    "tiers, needle",
    [
        ("[[1.5, 1.0], [0.2, 2.0]]", "fraction 1.5"),
        ("[[-0.5, 1.0], [1.5, 2.0]]", "fraction -0.5"),
        ("[[0.5, 1.0], [0.2, 2.0]]", "sum to 0.7"),
        ("[[0.5, 1.0], [0.5, 0.0]]", "slowdown 0"),
        ("[[0.5, 1.0, 3.0]]", "pairs"),
    ],
)
def test_speed_tiers_must_be_shares_summing_to_one(tiers, needle):
    message = config_error("population.speed=tiered", f"population.speed_tiers={tiers}")
    assert message.startswith("config error: population.speed_tiers: ") and needle in message


# --------------------------------------------------------------------------- optimizers


SGD_STEP_ALGORITHMS = ("fedprox", "scaffold", "feddyn", "fedspeed", "fedsam", "mofedsam", "fedcm")


@pytest.mark.parametrize("algorithm", SGD_STEP_ALGORITHMS)
def test_algorithms_defined_over_sgd_steps_refuse_another_optimizer(algorithm, capsys, tmp_path):
    assert CLIENTS.get(algorithm).optimizers == ("sgd",)
    strategy = {
        "scaffold": "scaffold",
        "feddyn": "feddyn",
        "fedspeed": "fedspeed",
        "fedcm": "fedcm",
        "mofedsam": "mofedsam",
    }.get(algorithm, "fedavg")
    code, line = run_cli(
        capsys,
        "--strategy",
        strategy,
        "--set",
        f"client.algorithm={algorithm}",
        "--set",
        "client.optimizer=adam",
        "--out",
        str(tmp_path / "run"),
    )
    assert code == 2
    assert f"client.optimizer 'adam' does not apply to client algorithm '{algorithm}'" in line
    assert line.endswith("it accepts: sgd")


def test_sgd_step_algorithms_refuse_sgd_options_they_would_ignore():
    assert "client.momentum" in config_error("client.algorithm=fedprox", "client.momentum=0.9")
    assert "client.optimizer_kwargs" in config_error(
        "client.algorithm=fedprox", "client.optimizer_kwargs={nesterov: true}"
    )


def test_the_sgd_client_takes_any_torch_optimizer():
    assert CLIENTS.get("sgd").optimizers is None
    assert load_config(overrides=["client.optimizer=adam"]).client.optimizer == "adam"
    assert load_config(overrides=["client.momentum=0.9"]).client.momentum == 0.9


# --------------------------------------------------------------------------- the memory estimate


def test_a_huge_model_is_refused_before_it_is_allocated(capsys, tmp_path):
    code, line = run_cli(
        capsys, "--set", "task.num_features=100000000", "--rounds", "1", "--out", str(tmp_path / "run")
    )
    assert code == 2
    assert line.startswith("fedsim: error: resources: this run needs about ")
    assert "1,000,000,010 parameters" in line and "task.num_features" in line and "--force" in line
    assert not (tmp_path / "run").exists()


def _estimate_inputs(*overrides: str):
    cfg = load_config(overrides=[*TINY, *overrides])
    return cfg, build_task(task_spec(cfg)), CLIENTS.get(cfg.client.algorithm)()


def test_force_skips_the_refusal(monkeypatch):
    cfg, task, algorithm = _estimate_inputs()
    monkeypatch.setattr(resources, "available_memory", lambda: 1024)  # a machine with 1 KiB free
    with pytest.raises(
        ValueError, match="resources: .*more than 80% of the 1 KiB available; it grows with task.max_samples"
    ):
        resources.check_resources(cfg, task, algorithm)
    estimate = resources.check_resources(cfg, task, algorithm, force=True)
    assert estimate is not None and estimate.total_bytes > 1024


def test_force_reaches_build_from_the_cli_flag(monkeypatch, tmp_path):
    monkeypatch.setattr(resources, "available_memory", lambda: 1024)
    cfg = load_config(overrides=TINY)
    with pytest.raises(ValueError, match="resources:"):
        build(cfg)
    experiment = build(cfg, force=True)
    experiment.executor.close()
    argv = [
        "run",
        "--quiet",
        "--no-tensorboard",
        "--rounds",
        "1",
        "--out",
        str(tmp_path / "run"),
        *sum((["--set", o] for o in TINY), []),
    ]
    assert main(argv) == 2 and not (tmp_path / "run").exists()
    assert main([*argv, "--force"]) == 0


def test_a_tiny_config_fits():
    cfg, task, algorithm = _estimate_inputs()
    estimate = resources.check_resources(cfg, task, algorithm)
    assert estimate is not None and estimate.num_params == 610  # logreg 60 features x 10 classes + bias
    assert estimate.total_bytes < 2**30


def test_estimate_grows_with_client_state_and_storing_weightings():
    cfg, _, _ = _estimate_inputs("data.num_clients=1000", "rounds=1000")
    plain = resources.estimate(cfg, 10**6)
    stateful = resources.estimate(cfg, 10**6, state_vectors=1)
    storing = resources.estimate(cfg, 10**6, weighting="mifa")
    assert stateful.total_bytes - plain.total_bytes >= 1000 * 4 * 10**6  # one c_i per client seen
    assert storing.total_bytes - plain.total_bytes >= 1000 * 4 * 10**6
    capped = load_config(overrides=[*TINY, "data.num_clients=1000", "rounds=1000", "client_state.memory_limit_mb=10"])
    assert resources.estimate(capped, 10**6, state_vectors=1).total_bytes < stateful.total_bytes  # spills to disk


def test_estimate_counts_versions_in_flight_for_asynchronous_schedulers():
    sync, _, _ = _estimate_inputs()
    buffered = load_config(
        overrides=[*TINY, "scheduler.name=buffered", "scheduler.concurrency=50", "scheduler.buffer_size=2"]
    )
    assert resources.estimate(buffered, 10**6).copies >= resources.estimate(sync, 10**6).copies + 50


def test_serial_executor_trains_one_client_at_a_time():
    vmap = load_config(overrides=[*TINY, "executor.name=vmap"])
    serial = load_config(overrides=[*TINY, "executor.name=serial"])
    assert resources.estimate(serial, 1000).copies < resources.estimate(vmap, 1000).copies


def test_model_size_allocates_nothing():
    _, task, _ = _estimate_inputs("task.num_features=100000000")
    assert resources.model_size(task) == 10**9 + 10  # on the meta device: instant, no 4 GB allocation


def test_available_memory_reads_this_machine():
    available = resources.available_memory()
    assert available is None or available > 0


# --------------------------------------------------------------------------- what must keep working


@pytest.mark.parametrize("path", sorted(EXPERIMENTS.glob("*.yaml")), ids=lambda p: p.name)
def test_experiment_configs_still_load(path):
    load_config(path)


def test_every_strategy_preset_still_loads():
    from fedsim import registries  # noqa: PLC0415

    for name in registries.get("strategy").names():
        load_config(overrides=[f"strategy.name={name}"])
