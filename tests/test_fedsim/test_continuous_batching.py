"""Continuous batching in the vmap executor: a stack of few slots, refilled from the queue as
clients finish, gives the serial executor's results for every client algorithm, in job order,
whatever slot each job lands in."""

import dataclasses
import logging
import random

import pytest
import torch

from clients import CLIENTS
from fedsim.config import load_config
from fedsim.executors import SerialExecutor, WorkerSpec
from fedsim.executors.vmap import VmapExecutor
from fedsim.rng import derive_seed
from fedsim.run import initial_params, task_spec
from fedsim.tasks import build_task
from fedsim.types import ClientJob

pytestmark = pytest.mark.usefixtures("one_torch_thread")

NUM_CLIENTS = 14
# logreg 60 -> 10 on synthetic: weight [600], bias [10]; the bias is the personal head
HEAD = ((600, 610),)
EXTRA_CONFIG = {"fedper": {"personal_spans": HEAD}, "fedrep": {"personal_spans": HEAD}}
NOT_BATCHED: dict[str, str] = {}  # name -> why the vmap path cannot take it (none today)
# the registered algorithms of the clients package (other test modules register test-only clients)
ALGORITHMS = [name for name in CLIENTS.names() if CLIENTS.get(name).__module__.startswith("clients.")]


def setup(client: str):
    config = load_config(values={
        "task": {"name": "synthetic", "min_samples": 3, "max_samples": 500},
        "data": {"num_clients": NUM_CLIENTS, "test_fraction": 0.2},
        "population": {"clients_per_round": 10},
        "client": {"lr": 0.05, "batch_size": 10, "weight_decay": 1e-3},
        "output": {"progress": False, "tensorboard": False},
    })  # fmt: skip
    spec = task_spec(config)
    task = build_task(spec)
    params = initial_params(task, 0)
    d = params.numel()
    gen = torch.Generator().manual_seed(1)
    broadcast = {"c": 0.01 * torch.randn(d, generator=gen), "momentum": 0.01 * torch.randn(d, generator=gen)}
    jobs = []
    for cid in range(NUM_CLIENTS):
        state = {
            "c": 0.01 * torch.randn(d, generator=gen),
            "h": 0.01 * torch.randn(d, generator=gen),
            "v": params + 0.01 * torch.randn(d, generator=gen),
            "alpha": torch.tensor(0.3),
            "head": 0.01 * torch.randn(10, generator=gen),
        }
        config_k = config.client.model_dump() | {"algorithm": client} | EXTRA_CONFIG.get(client, {})
        jobs.append(ClientJob(job_id=cid, client_id=cid, version=cid % 3, params=params, config=config_k,
                              seed=derive_seed(0, "test-cbatch", cid), state=state, broadcast=broadcast))  # fmt: skip
    return task, WorkerSpec(task=spec, client=client), jobs


def fallbacks(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if "cannot be batched" in r.getMessage()]


def assert_results_equal(expected, got, atol=1e-5):
    assert [r.client_id for r in got] == [r.client_id for r in expected]
    for a, b in zip(expected, got):
        assert a.ok and b.ok, (a.error, b.error)
        assert (a.num_samples, a.num_steps, a.base_version) == (b.num_samples, b.num_steps, b.base_version)
        torch.testing.assert_close(b.delta, a.delta, atol=atol, rtol=1e-4)
        assert b.metrics["train_loss"] == pytest.approx(a.metrics["train_loss"], rel=1e-5, abs=1e-6)
        assert (a.state is None) == (b.state is None)
        for key in a.state or {}:
            torch.testing.assert_close(b.state[key], a.state[key], atol=atol, rtol=1e-4)


@pytest.mark.parametrize("client", ALGORITHMS)
def test_few_slots_and_mixed_step_counts_equal_serial(client, caplog):
    if client in NOT_BATCHED:
        pytest.skip(NOT_BATCHED[client])
    task, spec, jobs = setup(client)
    steps = sorted({max(1, -(-len(task.data.train(j.client_id)[0]) // 10)) for j in jobs})
    assert steps[0] <= 2 and steps[-1] >= 30 and len(steps) >= 8  # mixed: slots finish at different times
    with caplog.at_level(logging.INFO, logger="fedsim"):
        batched = VmapExecutor(spec, task, max_batch=3).run(jobs)  # 14 jobs through 3 slots
    assert fallbacks(caplog) == []
    assert_results_equal(SerialExecutor(spec, task).run(jobs), batched)


@pytest.mark.parametrize("client", ["scaffold", "apfl"])
def test_results_do_not_depend_on_slot_assignment(client):
    task, spec, jobs = setup(client)
    reference = VmapExecutor(spec, task, max_batch=3).run(jobs)
    shuffled = jobs[:]
    random.Random(0).shuffle(shuffled)
    for max_batch in (1, 5, None):  # one slot, a few, the whole group in one stack
        got = VmapExecutor(spec, task, max_batch=max_batch).run(shuffled)
        assert [r.client_id for r in got] == [j.client_id for j in shuffled]  # job order, not finishing order
        by_id = {r.client_id: r for r in got}
        assert_results_equal(reference, [by_id[j.client_id] for j in jobs], atol=1e-6)


def test_groups_and_fallbacks_interleave_in_job_order(caplog):
    task, spec, jobs = setup("sgd")
    # two groups (batch sizes 10 and 7) and one job the batched path cannot take (rmsprop)
    jobs = [
        dataclasses.replace(j, config=j.config | {"batch_size": 7}) if k % 3 == 1 else j for k, j in enumerate(jobs)
    ]
    jobs[4] = dataclasses.replace(jobs[4], config=jobs[4].config | {"optimizer": "rmsprop"})
    with caplog.at_level(logging.INFO, logger="fedsim"):
        batched = VmapExecutor(spec, task, max_batch=2).run(jobs)
    assert len(fallbacks(caplog)) == 1
    assert_results_equal(SerialExecutor(spec, task).run(jobs), batched)


def test_a_non_finite_client_fails_alone_and_its_slot_is_reused():
    task, spec, jobs = setup("sgd")
    jobs[0] = dataclasses.replace(jobs[0], config=jobs[0].config | {"lr": 1e38})  # overflows: delta not finite
    batched = VmapExecutor(spec, task, max_batch=2).run(jobs)
    assert batched[0].error is not None and "finite" in batched[0].error
    assert_results_equal(SerialExecutor(spec, task).run(jobs[1:]), batched[1:])


def test_compiled_slots_equal_serial(caplog):
    task, spec, jobs = setup("scaffold")
    executor = VmapExecutor(spec, task, max_batch=3, compile=True)  # stacks of 4 (one idle slot), 2, 1
    with caplog.at_level(logging.INFO, logger="fedsim"):
        batched = executor.run(jobs)
    assert not any("compile" in r.getMessage() and "failed" in r.getMessage() for r in caplog.records)
    assert executor.timings()["compile_s"] > 0
    assert_results_equal(SerialExecutor(spec, task).run(jobs), batched)
