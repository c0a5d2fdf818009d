"""The vmap executor: same results as the serial sgd client, fallbacks, failures, devices."""

import dataclasses
import itertools
import logging

import pytest
import torch
from torch import nn

from clients.sgd import batch_schedule
from fedsim.config import load_config
from fedsim.executors import EXECUTORS, SerialExecutor, WorkerSpec
from fedsim.executors.vmap import VmapExecutor, flat_batch_schedule
from fedsim.rng import derive_seed
from fedsim.run import build, initial_params, task_spec
from fedsim.tasks import build_task
from fedsim.types import ClientJob

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def make_config(task="synthetic", num_clients=12, client=None, options=None, data=None, **top):
    values = {
        "task": {"name": task, **(options or {})},
        "data": {"num_clients": num_clients, **(data or {})},
        "population": {"clients_per_round": min(10, num_clients)},
        "client": {"lr": 0.02, "batch_size": 10, **(client or {})},
        "output": {"progress": False, "tensorboard": False},
        **top,
    }
    return load_config(values=values)


def setup(config, client="sgd"):
    spec = task_spec(config)
    task = build_task(spec)
    worker_spec = WorkerSpec(task=spec, client=client, device=config.executor.device)
    return task, worker_spec, initial_params(task, config.seed)


def make_jobs(config, params, client_ids, overrides=None, seed=0):
    base = config.client.model_dump()
    overrides = overrides or [{}] * len(client_ids)
    return [
        ClientJob(job_id=i, client_id=cid, version=0, params=params, config=base | extra,
                  seed=derive_seed(seed, "test-vmap", cid, i))
        for i, (cid, extra) in enumerate(zip(client_ids, overrides))
    ]  # fmt: skip


def assert_same(serial_results, vmap_results, atol=1e-5):
    assert len(serial_results) == len(vmap_results)
    for a, b in zip(serial_results, vmap_results):
        assert a.ok and b.ok, (a.error, b.error)
        assert (a.client_id, a.base_version) == (b.client_id, b.base_version)
        assert (a.num_samples, a.num_steps) == (b.num_samples, b.num_steps)
        assert b.delta.dtype == torch.float32 and b.delta.device.type == "cpu"
        torch.testing.assert_close(b.delta, a.delta, atol=atol, rtol=1e-4)
        assert b.metrics["train_loss"] == pytest.approx(a.metrics["train_loss"], rel=1e-5, abs=1e-6)


# ---------------------------------------------------------------- minibatch order


def test_flat_batch_schedule_draws_the_same_batches_as_batch_schedule():
    for n, bs, steps in itertools.product([1, 3, 10, 17], [1, 4, 10], [1, 2, 5, 21]):
        seed = n + 100 * bs + steps
        g1, g2 = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed)
        assert torch.equal(flat_batch_schedule(n, bs, steps, g2), torch.cat(batch_schedule(n, bs, steps, g1)))
        assert torch.equal(torch.randperm(7, generator=g1), torch.randperm(7, generator=g2))  # same RNG state after


# ---------------------------------------------------------------- same math as serial


def no_fallback(caplog):
    return not any("vmap executor" in r.getMessage() for r in caplog.records)


def test_vmap_equals_serial_logistic_regression_heterogeneous_clients(caplog):
    config = make_config(options={"min_samples": 5, "max_samples": 120})  # client sizes differ (LEAF sizes)
    task, spec, params = setup(config)
    other = params + 0.01 * torch.randn(params.shape, generator=torch.Generator().manual_seed(1))
    overrides = [
        {},
        {"local_steps": 7},
        {"local_epochs": 2},
        {"momentum": 0.5, "weight_decay": 1e-3},
        {"momentum": 0.5, "optimizer_kwargs": {"nesterov": True}},
        {"momentum": 0.3, "optimizer_kwargs": {"dampening": 0.2}},
        {"lr": 0.05, "weight_decay": 1e-2},
        {"batch_size": 16},
        {"batch_size": 16, "local_steps": 3},
        {"lr": 0.01, "momentum": 0.5},
        {"optimizer_kwargs": {"maximize": True}, "lr": 0.001},
        {"local_steps": 30},
    ]
    jobs = make_jobs(config, params, list(range(12)), overrides)
    jobs[2] = dataclasses.replace(jobs[2], params=other, version=1)  # a job from another model version
    jobs[5] = dataclasses.replace(jobs[5], params=other, version=1)
    assert len({int(task.data.num_samples[c]) for c in range(12)}) > 3
    serial = SerialExecutor(spec, task).run(jobs)
    with caplog.at_level(logging.INFO, logger="fedsim"):
        batched = EXECUTORS.get("vmap")(config.executor, spec, task).run(jobs)
    assert_same(serial, batched)
    assert no_fallback(caplog)
    assert [r.base_version for r in batched] == [0, 0, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0]


def test_vmap_equals_serial_digits_mlp_with_chunks(caplog):
    config = make_config("digits", num_clients=10, client={"momentum": 0.5, "weight_decay": 1e-3, "lr": 0.05},
                         data={"partition": "dirichlet", "alpha": 0.5})  # fmt: skip
    task, spec, params = setup(config)
    jobs = make_jobs(config, params, list(range(10)))
    serial = SerialExecutor(spec, task).run(jobs)
    with caplog.at_level(logging.INFO, logger="fedsim"):
        assert_same(serial, VmapExecutor(spec, task).run(jobs))
        assert_same(serial, VmapExecutor(spec, task, max_batch=3).run(jobs))  # chunks of 3 clients
    assert no_fallback(caplog)


def test_vmap_equals_serial_cnn_and_a_generic_loss(caplog):
    config = make_config("digits", num_clients=4, options={"model": "cnn"}, client={"batch_size": 16, "local_steps": 5},
                         data={"partition": "dirichlet", "alpha": 0.3})  # fmt: skip
    task, spec, params = setup(config)
    task.loss_fn = lambda logits, y: nn.functional.cross_entropy(logits, y, label_smoothing=0.1)  # not the native path
    jobs = make_jobs(config, params, [0, 1, 2, 3], [{}, {"local_steps": 2}, {"local_steps": None}, {"momentum": 0.5}])
    serial = SerialExecutor(spec, task).run(jobs)
    with caplog.at_level(logging.INFO, logger="fedsim"):
        assert_same(serial, VmapExecutor(spec, task).run(jobs))
    assert no_fallback(caplog)


def test_full_run_vmap_matches_serial(caplog):
    def run(executor):
        config = make_config(num_clients=20, rounds=4, eval={"every": 1}, executor={"name": executor},
                             options={"max_samples": 150}, client={"lr": 0.05})  # fmt: skip
        experiment = build(config)
        assert isinstance(experiment.executor, VmapExecutor if executor == "vmap" else SerialExecutor)
        with caplog.at_level(logging.INFO, logger="fedsim"):
            experiment.run()
        return experiment.engine.history, experiment.engine.state.params

    serial_history, serial_params = run("serial")
    vmap_history, vmap_params = run("vmap")
    assert no_fallback(caplog)
    assert len(serial_history) == len(vmap_history) == 4
    for a, b in zip(serial_history, vmap_history):
        assert b["test_accuracy"] == pytest.approx(a["test_accuracy"], abs=1e-4)
        assert b["test_loss"] == pytest.approx(a["test_loss"], rel=1e-4)
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-4)
        assert (a["participants"], a["dropouts"]) == (b["participants"], b["dropouts"])
    torch.testing.assert_close(vmap_params, serial_params, atol=1e-5, rtol=1e-4)


# ---------------------------------------------------------------- fallbacks


def test_rmsprop_falls_back_to_serial_with_one_notice(caplog):  # adam & co. batch (clients/optimizers.py)
    config = make_config(num_clients=4, client={"optimizer": "rmsprop", "lr": 0.01}, options={"max_samples": 80})
    task, spec, params = setup(config)
    jobs = make_jobs(config, params, [0, 1, 2, 3])
    serial = SerialExecutor(spec, task).run(jobs)
    executor = VmapExecutor(spec, task)
    with caplog.at_level(logging.INFO, logger="fedsim"):
        first, second = executor.run(jobs), executor.run(jobs)
    for a, b, c in zip(serial, first, second):
        assert b.ok and torch.equal(a.delta, b.delta) and torch.equal(a.delta, c.delta)
        assert a.metrics == b.metrics and a.num_steps == b.num_steps
    notices = [r for r in caplog.records if "vmap executor" in r.getMessage()]
    assert len(notices) == 1 and "optimizer 'rmsprop'" in notices[0].getMessage()
    assert "\n" not in notices[0].getMessage()


def test_mixed_jobs_fall_back_per_job_and_keep_order(caplog):
    config = make_config(num_clients=6, options={"max_samples": 80})
    task, spec, params = setup(config)
    jobs = make_jobs(config, params, [0, 1, 2, 3, 4, 5],
                     [{}, {"optimizer": "adagrad"}, {}, {"optimizer": "rmsprop"}, {}, {}])  # fmt: skip
    jobs[4] = dataclasses.replace(jobs[4], state={"anything": 1})
    serial = SerialExecutor(spec, task).run(jobs)
    with caplog.at_level(logging.INFO, logger="fedsim"):
        batched = VmapExecutor(spec, task).run(jobs)
    assert_same(serial, batched)
    messages = " | ".join(r.getMessage() for r in caplog.records)
    assert "optimizer 'adagrad'" in messages and "optimizer 'rmsprop'" in messages


def test_model_with_batchnorm_falls_back(caplog):
    config = make_config(num_clients=3, options={"max_samples": 60})
    task, spec, _ = setup(config)
    task.build_model = lambda: nn.Sequential(nn.Linear(60, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 10))
    params = initial_params(task, 0)
    jobs = make_jobs(config, params, [0, 1, 2])
    serial = SerialExecutor(spec, task).run(jobs)
    with caplog.at_level(logging.INFO, logger="fedsim"):
        batched = VmapExecutor(spec, task).run(jobs)
    for a, b in zip(serial, batched):
        assert torch.equal(a.delta, b.delta)
    assert any("float buffers" in r.getMessage() for r in caplog.records)


def test_invalid_optimizer_options_give_the_serial_error():
    config = make_config(num_clients=2, options={"max_samples": 60})
    task, spec, params = setup(config)
    jobs = make_jobs(config, params, [0, 1], [{"optimizer_kwargs": {"nesterov": True}}, {}])  # nesterov needs momentum
    serial = SerialExecutor(spec, task).run(jobs)
    batched = VmapExecutor(spec, task).run(jobs)
    assert not serial[0].ok and batched[0].error == serial[0].error
    assert batched[1].ok and torch.allclose(batched[1].delta, serial[1].delta, atol=1e-6)


# ---------------------------------------------------------------- failures


def test_non_finite_client_fails_alone():
    config = make_config(num_clients=5, options={"max_samples": 80})
    task, spec, params = setup(config)
    jobs = make_jobs(config, params, [0, 1, 2, 3, 4], [{}, {}, {"lr": 1e38}, {}, {}])
    batched = VmapExecutor(spec, task).run(jobs)
    assert not batched[2].ok and "not finite" in batched[2].error
    ok = [0, 1, 3, 4]
    assert_same(SerialExecutor(spec, task).run([jobs[i] for i in ok]), [batched[i] for i in ok])


def test_nan_data_fails_only_that_client():
    config = make_config("digits", num_clients=4, data={"partition": "iid"})
    task, spec, params = setup(config)
    data = task.data
    start = int(data.train_offsets[1])
    data.x_train = data.x_train.clone()
    data.x_train[start + 3] = float("nan")  # one sample of client 1
    jobs = make_jobs(config, params, [0, 1, 2, 3])
    batched = VmapExecutor(spec, task).run(jobs)
    assert not batched[1].ok and [r.ok for r in batched] == [True, False, True, True]
    assert_same(SerialExecutor(spec, task).run([jobs[i] for i in (0, 2, 3)]), [batched[i] for i in (0, 2, 3)])


def test_a_chunk_that_raises_is_recomputed_serially(monkeypatch, caplog):
    config = make_config(num_clients=3, options={"max_samples": 60})
    task, spec, params = setup(config)
    jobs = make_jobs(config, params, [0, 1, 2])
    executor = VmapExecutor(spec, task)

    def boom(items):
        raise RuntimeError("batching rule missing\nsecond line")

    monkeypatch.setattr(executor, "_run_chunk", boom)
    with caplog.at_level(logging.INFO, logger="fedsim"):
        batched = executor.run(jobs)
    for a, b in zip(SerialExecutor(spec, task).run(jobs), batched):
        assert torch.equal(a.delta, b.delta)
    assert any("batching rule missing" in r.getMessage() and "\n" not in r.getMessage() for r in caplog.records)


# ---------------------------------------------------------------- devices


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present")
def test_cuda_without_gpu_is_a_clear_error():
    config = make_config(num_clients=2)
    task, spec, _ = setup(config)
    with pytest.raises(RuntimeError, match="cuda requested but not available"):
        VmapExecutor(dataclasses.replace(spec, device="cuda"), task)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_vmap_on_cuda_equals_serial_on_cuda():
    config = make_config(options={"min_samples": 5, "max_samples": 120}, client={"momentum": 0.5},
                         executor={"device": "cuda"})  # fmt: skip
    task, spec, params = setup(config)
    jobs = make_jobs(config, params, list(range(12)), [{}] * 6 + [{"local_steps": 4}] * 6)
    serial = SerialExecutor(spec, task).run(jobs)  # the same cuda generator draws the same batches
    batched = VmapExecutor(spec, task).run(jobs)
    assert_same(serial, batched, atol=1e-4)
