"""The asynchronous engine's fast paths change no result, and the busy-client mask stays exact.

The equality tests replay small FedBuff / FedAsync / open-arrival runs with a deterministic
toy executor and compare a digest of every dispatched job (client, model version, seed,
finish time on the virtual clock), the server updates' times and the final model with
digests recorded from the engine before the fast paths existed (commit f37ef87).
"""

from __future__ import annotations

import copy
import hashlib

import numpy as np
import pytest
import torch

from fedsim.engine import Engine
from fedsim.population.base import Population
from fedsim.population.heterogeneous import BernoulliParticipation
from fedsim.population.simple import AlwaysParticipation, ConstantSpeed, LognormalSpeed
from fedsim.schedulers import Buffered, Concurrency, OpenArrivals
from fedsim.types import ClientJob, ClientResult
from strategies import FedOpt, sgd
from strategies.weighting import WEIGHTINGS

DIM = 4


class ToyClient:
    name = "toy"

    def num_steps(self, config, num_samples):
        return 1 + num_samples % 3


class ToyExecutor:
    """delta = (client id + 1) / 8 * (version + 1) in every coordinate: exact in fp32."""

    def run(self, jobs: list[ClientJob]) -> list[ClientResult]:
        return [
            ClientResult(job.client_id, job.version, torch.full((DIM,), (job.client_id + 1) / 8.0), 1, 1)
            for job in jobs
        ]

    def close(self):
        pass


class NoEval:
    def evaluate(self, params, client_states=None):
        return {}


def _engine(num_clients: int, participation=None, dropout: float = 0.0, extra_delay: float = 0.0, speed=None) -> Engine:
    population = Population(
        participation=participation or AlwaysParticipation(num_clients),
        speed=speed or LognormalSpeed(1.0, 1.0, seed=3),
        comm_time=0.25,
        num_samples=np.arange(num_clients, dtype=np.int64) + 1,
        seed=3,
        round_length=2.0,
        dropout_prob=dropout,
        extra_delay=extra_delay,
    )
    return Engine(
        strategy=FedOpt("toy", WEIGHTINGS.get("uniform")(), sgd(0.5)),
        algorithm=ToyClient(),
        client_config={},
        population=population,
        executor=ToyExecutor(),
        evaluator=NoEval(),
        params=torch.zeros(DIM),
        seed=7,
        max_updates=12,
        eval_every=None,
    )


def _digest(engine: Engine, scheduler) -> str:
    trace: list = []
    dispatch = engine.dispatch

    def spy(ids, overrides=None):
        jobs = dispatch(ids, overrides)
        trace.extend(
            (j.job_id, j.client_id, j.version, j.seed, repr(engine.now + engine.run_state.durations[j.job_id]))
            for j in jobs
        )
        return jobs

    engine.dispatch = spy  # type: ignore[method-assign]
    rounds: list = []
    engine.callbacks.append(
        type(
            "Spy",
            (),
            {
                "on_round": lambda self, e, r: rounds.append((r["round"], repr(r["virtual_time"]), r["participants"])),
                "on_eval": lambda self, e, r: None,
                "on_end": lambda self, e, s: None,
            },
        )()
    )
    summary = engine.run(scheduler)
    text = repr((trace, rounds, engine.state.params.tolist(), summary["dropouts"], repr(summary["virtual_time"])))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


CASES = {
    # name: (engine kwargs, scheduler factory, digest of the engine at f37ef87)
    "fedbuff-mostly-busy": (dict(num_clients=8), lambda: Buffered(Concurrency(6), 3), "508bf169e6216a44"),
    "fedbuff-all-busy": (dict(num_clients=6), lambda: Buffered(Concurrency(6), 2), "005cbc265d14c944"),
    "fedbuff-mostly-idle": (
        dict(num_clients=50, dropout=0.2, extra_delay=0.5),
        lambda: Buffered(Concurrency(6), 3),
        "ff3387d338276351",
    ),
    "fedasync-time-varying": (
        dict(num_clients=10, participation=BernoulliParticipation(np.full(10, 0.6), seed=1, round_length=2.0)),
        lambda: Buffered(Concurrency(7), 1),
        "400b84d509961b47",
    ),
    # equal speeds: several arrivals at one instant, refilled together while most clients are busy
    "fedbuff-ties": (
        dict(num_clients=10, speed=ConstantSpeed(1.0)),
        lambda: Buffered(Concurrency(8), 3),
        "e3f64e55bd363355",
    ),
    "open-arrivals": (
        dict(num_clients=5),
        lambda: Buffered(OpenArrivals(2.0, "poisson", seed=2), 2),
        "4016c929a0ddbe21",
    ),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_async_runs_match_the_recorded_engine(name):
    kwargs, scheduler, recorded = CASES[name]
    assert _digest(_engine(**kwargs), scheduler()) == recorded


@pytest.mark.parametrize("num_clients", [10, 200, 200_001])
def test_sampling_with_the_busy_mask_picks_the_same_idle_clients(num_clients):
    population = _engine(num_clients).population
    rng = np.random.default_rng(0)
    for counter in range(30):
        # from a few busy clients (rejection draws) to nearly all (the scan and its shuffle)
        busy_count = int(rng.integers(0, num_clients)) if num_clients < 1000 else int(rng.integers(0, 2000))
        if counter % 3 == 0:
            busy_count = num_clients - int(rng.integers(0, min(num_clients, 6)))
        busy = {int(c): 1 for c in rng.choice(num_clients, size=busy_count, replace=False)}
        mask = np.zeros(num_clients, dtype=bool)
        mask[list(busy)] = True
        k = int(rng.integers(1, 9))
        with_mask = population.sample(k, 0.0, busy, 5, counter, busy_mask=mask)
        assert with_mask.dtype == np.int64
        assert with_mask.tolist() == population.sample(k, 0.0, busy, 5, counter).tolist()
        assert len(with_mask) == min(k, num_clients - busy_count)
        assert len(set(with_mask.tolist())) == len(with_mask)  # no client twice
        assert not set(with_mask.tolist()) & busy.keys()  # only idle clients


def test_the_busy_mask_follows_dispatch_release_and_resume():
    engine = _engine(8)
    masks: list = []
    engine.callbacks.append(
        type(
            "Check",
            (),
            {
                "on_round": lambda self, e, r: masks.append(
                    (e._busy_mask.copy(), sorted(e.run_state.busy), copy.deepcopy(e.state_dict()))
                ),
                "on_eval": lambda self, e, r: None,
                "on_end": lambda self, e, s: None,
            },
        )()
    )
    engine.run(Buffered(Concurrency(6), 3))
    assert masks
    for mask, busy, snapshot in masks:
        assert np.flatnonzero(mask).tolist() == busy
        resumed = _engine(8)
        resumed.load_state_dict(snapshot)
        assert np.array_equal(resumed._busy_mask, mask)
