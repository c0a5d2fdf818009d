"""The compile cache (directory, recorded costs) and compile: auto's decisions from it."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest

from fedsim.config import ConfigError, load_config
from fedsim.executors import compile_cache
from fedsim.executors.auto import SHORT_RUN_S, compile_pays, serial_step_s, why_serial
from fedsim.executors.serial import SerialExecutor
from fedsim.run import build


def test_cache_dir_resolution_order(monkeypatch, tmp_path):
    monkeypatch.delenv("FEDSIM_CACHE_DIR", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert compile_cache.cache_dir() == tmp_path / "home" / ".cache" / "fedsim"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert compile_cache.cache_dir() == tmp_path / "xdg" / "fedsim"
    monkeypatch.setenv("FEDSIM_CACHE_DIR", str(tmp_path / "env"))
    assert compile_cache.cache_dir() == tmp_path / "env"
    assert compile_cache.cache_dir(str(tmp_path / "config")) == tmp_path / "config"


def test_inductor_cache_dir_is_set_only_when_the_user_has_not(monkeypatch, tmp_path):
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR")
    assert compile_cache.use_inductor_cache(tmp_path) == str(tmp_path / "inductor")
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "inductor")
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", "/somewhere/mine")
    assert compile_cache.use_inductor_cache(tmp_path) == "/somewhere/mine"
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == "/somewhere/mine"


def test_costs_round_trip_and_a_second_compile_is_recorded_as_warm(tmp_path):
    compile_cache.record(tmp_path, "abc", {"compile_s": 3.5, "compiled_step_s": 0.001})
    compile_cache.record(tmp_path, "abc", {"compile_s": 1.25, "compiled_step_s": 0.0005})
    compile_cache.record(tmp_path, "abc", {"eager_step_s": 0.002})
    assert compile_cache.load_costs(tmp_path) == {
        "abc": {"compile_s": 3.5, "warm_compile_s": 1.25, "compiled_step_s": 0.0005, "eager_step_s": 0.002}
    }


@pytest.mark.parametrize(
    "text",
    [
        "{not json",
        "[1, 2]",
        json.dumps({"abc": [1]}),
        json.dumps({"abc": {"compile_s": -1}}),
        json.dumps({"abc": {"compile_s": "__import__('os').system('false')"}}),
        "[" * 100_000,
    ],
)
def test_a_corrupt_costs_file_is_ignored_with_one_warning(tmp_path, caplog, text):
    compile_cache._warned.clear()
    (tmp_path / compile_cache.COSTS_FILE).write_text(text)
    with caplog.at_level(logging.WARNING, logger="fedsim"):
        assert compile_cache.load_costs(tmp_path) == {}
        assert compile_cache.load_costs(tmp_path) == {}
    assert caplog.text.count("compile cache: ignoring") == 1, caplog.text


def test_unknown_keys_are_dropped(tmp_path):
    (tmp_path / compile_cache.COSTS_FILE).write_text(json.dumps({"k": {"compile_s": 2, "cmd": "rm -rf /"}}))
    assert compile_cache.load_costs(tmp_path) == {"k": {"compile_s": 2.0}}


def test_signature_depends_on_shapes_and_batch_width():
    a = compile_cache.signature([(10, 60), (10,)], 10, "cpu")
    assert a == compile_cache.signature([(10, 60), (10,)], 10, "cpu")
    assert a != compile_cache.signature([(10, 61), (10,)], 10, "cpu")
    assert a != compile_cache.signature([(10, 60), (10,)], 20, "cpu")
    assert a != compile_cache.signature([(10, 60), (10,)], 10, "cuda")


def test_compile_pays_with_estimates_and_with_recorded_numbers():
    # nothing recorded: 5 s / 0.5 ms
    assert compile_pays(9_999)[0] is False
    pays, why = compile_pays(10_000)
    assert pays and "10,000 steps x 0.50 ms saved (estimated) = 5.00 s >= 5.00 s compile estimated" in why
    # recorded cold 4 s, steps 1.5 ms -> 0.5 ms: 1 ms saved, pays from 4,000 steps
    cold = {"compile_s": 4.0, "eager_step_s": 0.0015, "compiled_step_s": 0.0005}
    assert compile_pays(3_999, cold)[0] is False and compile_pays(4_000, cold)[0] is True
    # warm compile 1.5 s: pays from 1,500 steps
    warm = {**cold, "warm_compile_s": 1.5}
    pays, why = compile_pays(1_500, warm)
    assert pays and "= 1.50 s >= 1.50 s warm compile measured" in why
    assert compile_pays(1_499, warm)[0] is False
    # a compiled step measured slower than the eager one never pays
    assert compile_pays(10**9, {"compile_s": 0.1, "eager_step_s": 0.001, "compiled_step_s": 0.002})[0] is False
    assert compile_pays(None)[0] is False


def test_serial_step_estimate():
    # 0.25 ms + 6 x 610 x 10 / 1.5e10 s
    assert serial_step_s(610, 10) == pytest.approx(2.5e-4 + 3.66e4 / 1.5e10)


def test_cache_dir_config_key_is_validated():
    assert load_config(values={"executor": {"cache_dir": "/tmp/c"}}).executor.cache_dir == "/tmp/c"
    with pytest.raises(ConfigError, match=r"executor.cache_dir: Input should be a valid string"):
        load_config(values={"executor": {"cache_dir": 5}})


def test_a_short_run_takes_serial_and_says_why(small_config, caplog):
    config = small_config(executor={"name": "auto"}, population={"clients_per_round": 10})
    with caplog.at_level(logging.INFO, logger="fedsim"):
        experiment = build(config)
    assert isinstance(experiment.executor, SerialExecutor)
    assert "executor auto: serial (a short run:" in caplog.text
    experiment.executor.close()


def test_short_run_rule_threshold(small_config):
    from fedsim.executors.worker import WorkerSpec
    from fedsim.run import task_spec
    from fedsim.tasks import build_task

    config = small_config()
    task = build_task(task_spec(config))
    spec = WorkerSpec(task=task_spec(config), client="sgd", device="cpu", threads=1)
    num_params = sum(p.numel() for p in task.build_model().parameters())
    per_step = serial_step_s(num_params, 10)
    just_long = int(SHORT_RUN_S / (10 * per_step)) + 1
    assert why_serial(spec, task, {"batch_size": 10}, 10, planned_steps=just_long) is None
    assert "a short run" in why_serial(spec, task, {"batch_size": 10}, 10, planned_steps=just_long - 2)


def test_a_vmap_run_records_its_step_cost(small_config, tmp_path):
    config = small_config(executor={"name": "vmap", "cache_dir": str(tmp_path)})
    experiment = build(config)
    experiment.run()
    costs = compile_cache.load_costs(Path(tmp_path))
    assert len(costs) == 1
    (entry,) = costs.values()
    assert set(entry) == {"eager_step_s"} and entry["eager_step_s"] > 0


def test_the_first_eager_call_of_each_step_variant_is_not_timed():
    # that call pays one-off costs (torch.func's first grad imports torch._dynamo), which would
    # make compile: auto believe every eager step is slow
    from fedsim.executors.vmap import VmapExecutor

    executor = VmapExecutor.__new__(VmapExecutor)  # only the step bookkeeping is exercised
    executor.compile, executor._eager_warm, executor.step_s, executor.step_count = False, set(), 0.0, 0
    calls = []
    executor._vstep = lambda options, weighted: lambda carry, batch: calls.append((options, weighted)) or "out"
    counts = []
    for weighted in (False, False, False, True, True):
        assert executor._step("sgd-options", weighted, {}, ()) == "out"
        counts.append(executor.step_count)
    assert len(calls) == 5 and counts == [0, 1, 2, 2, 3]
