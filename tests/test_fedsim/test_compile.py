"""The compiled batched step (executor.compile) and the workload-aware executor choice (auto)."""

from __future__ import annotations

import json
import logging

import pytest
import torch

from fedsim.config import ConfigError, load_config
from fedsim.executors import SerialExecutor, WorkerSpec
from fedsim.executors import auto as auto_module
from fedsim.executors.auto import COMPILE_PAYS_AFTER, resolve_compile, vmap_pays
from fedsim.executors.vmap import VmapExecutor
from fedsim.rng import derive_seed
from fedsim.run import build, initial_params, task_spec
from fedsim.tasks import build_task
from fedsim.types import ClientJob

# one per kind of step: state + broadcast + extras, two gradients per step, both (compiling each costs seconds)
ALGORITHMS = ["scaffold", "fedsam", "fedspeed"]
SERVER_OF = {
    "scaffold": "scaffold",
    "feddyn": "feddyn",
    "fedspeed": "fedspeed",
    "fedcm": "fedcm",
    "mofedsam": "mofedsam",
    "fedprox": "fedprox",
    "fedsam": "fedsam",
}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def setup(algorithm="sgd", client=None, task=None, num_clients=8):
    config = load_config(values={
        "task": {"name": "synthetic", **(task or {})}, "data": {"num_clients": num_clients},
        "population": {"clients_per_round": min(10, num_clients)},
        "client": {"algorithm": algorithm, "lr": 0.05, "batch_size": 10, **(client or {})},
        "strategy": {"name": SERVER_OF.get(algorithm, "fedavg")},
        "output": {"progress": False, "tensorboard": False},
    })  # fmt: skip
    spec = task_spec(config)
    built = build_task(spec)
    return config, built, WorkerSpec(task=spec, client=algorithm), initial_params(built, 0)


def jobs_for(config, params, num_clients, state=False, broadcast=False, overrides=None):
    gen = torch.Generator().manual_seed(5)
    d = params.numel()
    shared = {"c": 0.01 * torch.randn(d, generator=gen), "momentum": 0.1 * torch.randn(d, generator=gen)}
    base = config.client.model_dump()
    jobs = []
    for cid in range(num_clients):
        extra = (overrides or {}).get(cid, {})
        client_state = (
            {"c": 0.01 * torch.randn(d, generator=gen), "h": 0.01 * torch.randn(d, generator=gen)}
            if state and cid % 2
            else None
        )
        jobs.append(
            ClientJob(
                job_id=cid,
                client_id=cid,
                version=cid % 2,
                params=params + 0.01 * (cid % 2),
                config=base | extra,
                seed=derive_seed(0, "compile", cid),
                state=client_state,
                broadcast=shared if broadcast else None,
            )
        )
    return jobs


def assert_close_results(expected, actual, atol=2e-5):
    for a, b in zip(expected, actual):
        assert a.ok and b.ok, (a.error, b.error)
        assert a.num_steps == b.num_steps
        torch.testing.assert_close(b.delta, a.delta, atol=atol, rtol=1e-4)
        for field in ("state", "extras"):
            sa, sb = getattr(a, field), getattr(b, field)
            assert (sa is None) == (sb is None)
            for key in sa or {}:
                torch.testing.assert_close(sb[key], sa[key], atol=1e-4, rtol=1e-4)
        assert b.metrics["train_loss"] == pytest.approx(a.metrics["train_loss"], rel=1e-5)


def test_compiled_step_equals_uncompiled_and_serial_with_mixed_sizes_and_options(caplog):
    """Different client sizes (short last batches: the weighted variant, a shrinking prefix of
    clients still training), momentum, weight decay, clipping and two model versions."""
    config, task, spec, params = setup(
        client={"momentum": 0.5, "weight_decay": 1e-3, "clip_norm": 1.0}, task={"min_samples": 5, "max_samples": 90}
    )
    assert len({int(task.data.num_samples[c]) for c in range(8)}) > 3
    jobs = jobs_for(config, params, 8, overrides={3: {"local_steps": 4}})
    serial = SerialExecutor(spec, task).run(jobs)
    eager = VmapExecutor(spec, task).run(jobs)
    compiled = VmapExecutor(spec, task, compile=True)
    with caplog.at_level(logging.WARNING, logger="fedsim"):
        first = compiled.run(jobs)
        again = compiled.run(jobs[:3])  # a smaller chunk, padded to a stack size already compiled
    assert not caplog.records, caplog.text  # compiled, no fallback
    assert compiled.compile and compiled.compile_s > 0 and compiled.timings()["compile_s"] == compiled.compile_s
    assert_close_results(eager, first)
    assert_close_results(serial, first)
    assert_close_results(first[:3], again, atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_every_algorithm_compiles_and_equals_uncompiled(algorithm, caplog):
    config, task, spec, params = setup(
        algorithm,
        client={"weight_decay": 1e-3, "clip_norm": 1.0, "lr_decay": 0.9},
        task={"min_samples": 50, "max_samples": 50},
    )
    jobs = jobs_for(config, params, 6, state=True, broadcast=True)
    eager = VmapExecutor(spec, task).run(jobs)
    compiled = VmapExecutor(spec, task, compile=True)
    with caplog.at_level(logging.WARNING, logger="fedsim"):
        results = compiled.run(jobs)
    assert not caplog.records, caplog.text
    assert compiled.compile_s > 0
    assert_close_results(eager, results)


def test_a_failing_compile_falls_back_to_the_uncompiled_step_with_one_notice(monkeypatch, caplog):
    config, task, spec, params = setup()
    jobs = jobs_for(config, params, 4)

    def broken_compile(fn, **kwargs):
        def call(*args):
            raise RuntimeError("InvalidCxxCompiler: no working C++ compiler found\nmore lines")

        return call

    monkeypatch.setattr(torch, "compile", broken_compile)
    executor = VmapExecutor(spec, task, compile=True)
    with caplog.at_level(logging.WARNING, logger="fedsim"):
        results = executor.run(jobs)
        executor.run(jobs)
    notices = [r.getMessage() for r in caplog.records]
    assert (
        len(notices) == 1 and "torch.compile of the batched step failed (RuntimeError: InvalidCxxCompiler" in notices[0]
    )
    assert "running it uncompiled" in notices[0] and "more lines" not in notices[0]
    assert not executor.compile and executor.timings() == {}
    assert_close_results(VmapExecutor(spec, task).run(jobs), results, atol=0)


def test_a_step_that_raises_is_the_steps_error_not_a_compile_failure(monkeypatch, caplog):
    """The eager retry raises the step's own error: the chunk goes to the serial worker as any
    failing chunk does, and compiling stays on for the chunks that work."""
    config, task, spec, params = setup()
    jobs = jobs_for(config, params, 4)

    def broken_compile(fn, **kwargs):
        def call(*args):
            raise RuntimeError("an error dynamo wrapped")

        return call

    monkeypatch.setattr(torch, "compile", broken_compile)
    executor = VmapExecutor(spec, task, compile=True)
    monkeypatch.setattr(executor.algorithm, "step", lambda *args: (_ for _ in ()).throw(ValueError("bad step")))
    with caplog.at_level(logging.WARNING, logger="fedsim"):
        results = executor.run(jobs)
    text = caplog.text
    assert "torch.compile of the batched step failed" not in text and executor.compile
    assert "a chunk that failed in the batched path (ValueError: bad step)" in text
    assert all(r.ok for r in results)  # recomputed by the serial worker (its own, unpatched algorithm object)


def test_compile_mode_is_validated_and_yaml_booleans_read_as_on_off():
    assert load_config(values={"executor": {"compile": True}}).executor.compile == "on"
    assert load_config(values={"executor": {"compile": False}}).executor.compile == "off"
    with pytest.raises(
        ConfigError, match=r"executor.compile: unknown compile mode 'fast'; valid choices: auto, on, off"
    ):
        load_config(values={"executor": {"compile": "fast"}})


def test_compile_auto_follows_the_planned_steps():
    # nothing recorded: 5 s estimated compile / 0.5 ms estimated saving = 10,000 steps
    assert COMPILE_PAYS_AFTER == 10_000
    assert resolve_compile("auto", COMPILE_PAYS_AFTER - 1) == "off"
    assert resolve_compile("auto", COMPILE_PAYS_AFTER) == "on"
    assert resolve_compile("auto", None) == "off"
    assert resolve_compile("on", 1) == "on" and resolve_compile("off", 10**9) == "off"


def test_vmap_pays_follows_the_measured_crossovers():
    assert vmap_pays(610, 10, compiled=False, device="cpu") is None
    assert "clients per call" in vmap_pays(610, 2, compiled=False, device="cpu")
    assert "parameters" in vmap_pays(200_000, 100, compiled=False, device="cpu")
    assert vmap_pays(200_000, 2, compiled=True, device="cpu") is None
    assert "a stack of 8 clients (~5 per call, padded)" in vmap_pays(200_000, 5, compiled=True, device="cpu")
    assert vmap_pays(4_554, 50, compiled=True, device="cpu") is None
    assert vmap_pays(200_000, 1, compiled=False, device="cuda") is None
    assert "convolutions" in vmap_pays(10_000, 50, compiled=True, device="cpu", convolutions=True)


def test_auto_executor_chooses_by_workload_and_says_why(small_config, caplog):
    cases = [
        ({"population": {"clients_per_round": 10}}, VmapExecutor, "executor auto: vmap (~10 clients per call"),
        ({"population": {"clients_per_round": 2}}, SerialExecutor, "executor auto: serial (about 2 clients per call"),
        (
            {
                "population": {"clients_per_round": 10},
                "task": {"name": "synthetic", "model": "mlp", "num_features": 784, "hidden": 200, "hidden_layers": 2},
            },
            SerialExecutor,
            "a 199,210-parameter model",
        ),
        (
            {"population": {"clients_per_round": 10}, "scheduler": {"name": "buffered", "buffer_size": 2}},
            SerialExecutor,
            "about 2 clients per call",
        ),
        (
            {"population": {"clients_per_round": 10}, "task": {"name": "digits", "model": "cnn"}},
            SerialExecutor,
            "a model with convolutions on CPU",
        ),
    ]
    for overrides, expected, needle in cases:
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="fedsim"):
            # compile off and many rounds: the crossovers, not compile: auto or the short-run rule
            experiment = build(small_config(executor={"name": "auto", "compile": "off"}, rounds=10_000, **overrides))
        assert isinstance(experiment.executor, expected), overrides
        assert needle in caplog.text, caplog.text
        experiment.executor.close()


def test_compile_on_with_serial_says_it_has_no_effect(small_config, caplog):
    with caplog.at_level(logging.WARNING, logger="fedsim"):
        build(small_config(executor={"name": "serial", "compile": "on"}))
    assert "the serial executor runs uncompiled" in caplog.text


def test_a_compiled_run_reports_compile_time_apart_and_matches_the_uncompiled_run(tmp_path, monkeypatch, capsys):
    from fedsim.cli import main

    monkeypatch.setattr(auto_module, "DEFAULT_COMPILE_S", 0.0)  # compile: auto compiles this short run
    args = [
        "run",
        "--strategy",
        "fedavg",
        "--rounds",
        "3",
        "--executor",
        "vmap",
        "--no-tensorboard",
        "--quiet",
        "--set",
        "population.clients_per_round=5",
        "--set",
        "data.num_clients=10",
    ]
    assert main([*args, "--out", str(tmp_path / "compiled")]) == 0
    assert " (compile " in capsys.readouterr().out  # the last line says how much of the wall time compiled
    assert main([*args, "--compile", "off", "--out", str(tmp_path / "eager")]) == 0
    assert " (compile " not in capsys.readouterr().out
    compiled = json.loads((tmp_path / "compiled" / "summary.json").read_text())
    eager = json.loads((tmp_path / "eager" / "summary.json").read_text())
    assert compiled["executor_timings"]["compile_s"] > 0 and eager["executor_timings"] == {}
    assert "compiling the batched client step" in (tmp_path / "compiled" / "log.txt").read_text()
    assert compiled["final"]["test_loss"] == pytest.approx(eager["final"]["test_loss"], rel=1e-5)
    # both runs recorded what they measured, for the next compile: auto (conftest: a per-test cache dir)
    from fedsim.executors import compile_cache

    (entry,) = compile_cache.load_costs(compile_cache.cache_dir()).values()
    assert set(entry) == {"compile_s", "compiled_step_s", "eager_step_s"}, entry
    assert entry["compile_s"] == pytest.approx(compiled["executor_timings"]["compile_s"], abs=1e-3)
