"""Engine throughput with a no-op client: jobs per second through dispatch, the event queue and aggregation.

Measures the engine's own overhead (no training): sync rounds of 1,000 clients, and buffered
asynchrony (FedBuff, K = 100) with 1,000 clients in flight, at populations of 10^3 and 10^6.
Each configuration runs in its own subprocess so its peak RSS (``ru_maxrss``) is its own; the
client returns a zero update of a 10-parameter model, so any growth with the population is
the engine's and the population's bookkeeping.

    python experiments/bench/engine_events.py [--jobs 100000]

Timings are noisy on a shared machine: besides wall-clock jobs/s the script reports jobs per
second of the process's own CPU time (``time.process_time``), which other processes on the
machine dilute much less, and the load average while it ran.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from typing import Any

import numpy as np
import torch

from fedsim.engine import Engine
from fedsim.population.base import Population
from fedsim.population.simple import LognormalSpeed, UniformParticipation
from fedsim.schedulers import Buffered, Concurrency, SyncRounds
from fedsim.types import ClientJob, ClientResult
from strategies import FedOpt, sgd
from strategies.weighting import WEIGHTINGS

IN_FLIGHT = 1000
DIM = 10


class NoOpClient:
    name = "noop"

    def num_steps(self, config: dict[str, Any], num_samples: int) -> int:
        return 1


class NoOpExecutor:
    def __init__(self) -> None:
        self.zero = torch.zeros(DIM)

    def run(self, jobs: list[ClientJob]) -> list[ClientResult]:
        return [ClientResult(job.client_id, job.version, self.zero, 1, 1) for job in jobs]

    def close(self) -> None:
        pass


class NoEval:
    def evaluate(self, params: torch.Tensor, client_states: Any = None) -> dict[str, Any]:
        return {}


def make_engine(population_size: int, jobs: int, mode: str) -> tuple[Engine, Any]:
    population = Population(
        participation=UniformParticipation(population_size, IN_FLIGHT, seed=0),
        speed=LognormalSpeed(0.01, 1.0, seed=0),
        comm_time=0.0,
        num_samples=np.ones(population_size, dtype=np.int64),
    )
    strategy = FedOpt("noop", WEIGHTINGS.get("uniform")(), sgd(1.0))
    buffer = 100
    updates = jobs // IN_FLIGHT if mode == "sync" else jobs // buffer
    engine = Engine(
        strategy=strategy,
        algorithm=NoOpClient(),
        client_config={},
        population=population,
        executor=NoOpExecutor(),
        evaluator=NoEval(),
        params=torch.zeros(DIM),
        seed=0,
        max_updates=updates,
        eval_every=None,
    )
    scheduler = SyncRounds() if mode == "sync" else Buffered(Concurrency(IN_FLIGHT), buffer)
    return engine, scheduler


def one(population_size: int, jobs: int, mode: str) -> dict[str, Any]:
    engine, scheduler = make_engine(population_size, jobs, mode)
    start, start_cpu = time.perf_counter(), time.process_time()
    summary = engine.run(scheduler)
    seconds, cpu = time.perf_counter() - start, time.process_time() - start_cpu
    done = summary["jobs_dispatched"] - engine.in_flight
    return {
        "mode": mode,
        "population": population_size,
        "jobs": done,
        "seconds": seconds,
        "jobs_per_s": done / seconds,
        "jobs_per_cpu_s": done / cpu,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "batch_mean": summary["executor_batch_mean"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--one", nargs=2, metavar=("MODE", "POPULATION"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one(int(args.one[1]), args.jobs, args.one[0])))
        return
    rows = []
    for mode in ("sync", "buffered"):
        for population in (1_000, 1_000_000):
            out = subprocess.run(
                [sys.executable, __file__, "--jobs", str(args.jobs), "--one", mode, str(population)],
                check=True,
                capture_output=True,
                text=True,
            ).stdout
            rows.append(json.loads(out.splitlines()[-1]))
            r = rows[-1]
            print(
                f"{r['mode']:>8}  N={r['population']:>9,}  {r['jobs']:>7,} jobs  {r['jobs_per_s']:>9,.0f} jobs/s  "
                f"{r['jobs_per_cpu_s']:>9,.0f} jobs/CPU-s  "
                f"peak RSS {r['peak_rss_mb']:.0f} MB  (mean executor batch {r['batch_mean']:.0f})",
                flush=True,
            )
    print(f"\nload average while measuring: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    print(
        "\n| mode | population | in flight | jobs/s (wall) | jobs per CPU-second | peak RSS (MB) |\n|---|---|---|---|---|---|"
    )
    for r in rows:
        print(
            f"| {r['mode']} | {r['population']:,} | {IN_FLIGHT:,} | {r['jobs_per_s']:,.0f} | {r['jobs_per_cpu_s']:,.0f} "
            f"| {r['peak_rss_mb']:.0f} |"
        )


if __name__ == "__main__":
    main()
