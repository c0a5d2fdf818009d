"""vmap vs serial in buffered asynchronous mode: how much batching asynchrony leaves to vmap.

FedBuff (K = 10, 20 clients training, lognormal speeds) on experiments/async_vs_sync.yaml's
task, run with the serial and the vmap executor side by side in one process (interleaved,
median of the repetitions). Jobs are computed lazily: when the earliest pending finish is
popped, every job dispatched but not yet computed goes to the executor in one call, so the
mean executor batch is the number of jobs started since the previous finish. Prints both
times (process CPU time, less diluted by other processes on a shared machine), their ratio
and the mean batch size, and checks both executors reach the same model.

    python experiments/bench/async_batching.py [--max-time 40] [--reps 3]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from fedsim.config import load_config
from fedsim.run import build

CONFIG = Path(__file__).resolve().parents[1] / "async_vs_sync.yaml"


def run(executor: str, max_time: float, task=None):
    config = load_config(
        CONFIG,
        values={
            "strategy": {"name": "fedbuff"},
            "scheduler": {"concurrency": 20, "max_time": max_time},
            "executor": {"name": executor},
            "eval": {"every_time": None, "target_accuracy": None},
            "output": {"progress": False, "tensorboard": False},
        },
    )
    experiment = build(config, task=task)
    start = time.process_time()
    summary = experiment.run()
    return time.process_time() - start, summary, experiment


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-time", type=float, default=40.0, help="virtual seconds per run")
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    _, _, first = run("serial", 1.0)
    times: dict[str, list[float]] = {"serial": [], "vmap": []}
    finals: dict[str, torch.Tensor] = {}
    for _ in range(args.reps):
        for executor in times:
            seconds, summary, experiment = run(executor, args.max_time, task=first.task)
            times[executor].append(seconds)
            finals[executor] = experiment.engine.state.params
    serial, vmap = statistics.median(times["serial"]), statistics.median(times["vmap"])
    print(
        f"FedBuff, {summary['jobs_dispatched']} jobs, {summary['rounds']} server updates, "
        f"mean executor batch {summary['executor_batch_mean']:.1f} jobs"
    )
    print(f"serial {serial:.2f} CPU-s, vmap {vmap:.2f} CPU-s: vmap is {serial / vmap:.2f}x serial")
    print(f"max |serial - vmap| parameter difference: {(finals['serial'] - finals['vmap']).abs().max():.2e}")


if __name__ == "__main__":
    main()
