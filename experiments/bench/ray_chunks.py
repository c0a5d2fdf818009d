"""Ray actors running batched chunks vs serial, vmap and one-job Ray calls, side by side in one run.

Workload: multinomial logistic regression (synthetic 60 -> 10, the vs_flower workload) with
1000 clients x 250 samples (200 train), 100 clients per round, 1 local epoch, batch 10, lr 0.05.
Every side computes the same jobs (same data, init, client sampling and minibatches).

- **serial**, **vmap**: one process, ``executor.threads`` torch threads;
- **ray, serial inner**: ``--workers`` actors, one job per remote call (``ray_inner: serial``);
- **ray, vmap chunks**: ``--workers`` actors, each runs an even share of the round's jobs as one
  batched chunk per remote call (``ray_inner: vmap``).

Steady seconds per round = the executor's ``run`` call of a round, mean over rounds 2..R. Ray's
start-up (the local instance, once, then each executor's actors) is reported separately. Per
remote call and per job: the driver's wall time in ``run`` minus the busiest actor's time in its
calls (dispatch, transfer and waiting), divided by calls or jobs.

    nice -n 10 python experiments/bench/ray_chunks.py --rounds 15 --workers 2
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from typing import Any

import torch

from fedsim.config import load_config
from fedsim.run import build


def workload(args: argparse.Namespace, executor: dict[str, Any]) -> dict[str, Any]:
    return {
        "seed": 0,
        "rounds": args.rounds,
        "task": {
            "name": "synthetic",
            "model": "logreg",
            "num_features": 60,
            "num_classes": 10,
            "min_samples": 250,
            "max_samples": 250,
        },
        "data": {"num_clients": args.clients, "partition": "natural", "test_fraction": 0.2},
        "population": {"participation": "uniform", "clients_per_round": args.clients_per_round},
        "client": {"lr": 0.05, "local_epochs": 1, "batch_size": 10},
        "eval": {"every": args.rounds},
        "executor": executor | {"threads": args.threads},
        "output": {"progress": False, "tensorboard": False},
    }


def timed_run(values: dict[str, Any]) -> dict[str, Any]:
    experiment = build(load_config(values=values))
    executor = experiment.executor
    rounds: list[float] = []
    run = executor.run

    def timed(jobs):
        start = time.perf_counter()
        results = run(jobs)
        rounds.append(time.perf_counter() - start)
        return results

    executor.run = timed
    close, executor.close = executor.close, lambda: None  # read the Ray counters before closing
    summary = experiment.run()
    row: dict[str, Any] = {
        "round_s": statistics.mean(rounds[1:]),
        "round_s_stdev": statistics.stdev(rounds[1:]) if len(rounds) > 2 else 0.0,
        "params": experiment.engine.state.params.clone(),
        "dropouts": summary["dropouts"],
    }
    if hasattr(executor, "actor_stats"):
        stats = executor.actor_stats()
        beyond = executor.run_s - max(s["busy_s"] for s in stats)  # driver time beyond the busiest actor
        row |= {
            "startup_s": executor.startup_s,
            "calls": executor.calls,
            "jobs": executor.jobs_sent,
            "per_call_ms": 1000 * beyond / executor.calls,
            "per_job_ms": 1000 * beyond / executor.jobs_sent,
            "busiest_actor_s_per_round": max(s["busy_s"] for s in stats) / len(rounds),
            "cpu_per_busy": sum(s["cpu_s"] for s in stats) / max(1e-9, sum(s["busy_s"] for s in stats)),
        }
    close()
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process / actor")
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--clients-per-round", type=int, default=100)
    args = parser.parse_args(argv)
    if args.rounds < 3:
        parser.error("--rounds must be >= 3 (round 1 is warm-up)")

    from fedsim.executors.ray import init_local_ray  # noqa: PLC0415

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    start = time.perf_counter()
    init_local_ray(num_cpus=max(os.cpu_count() or 1, args.workers * args.threads))
    ray_init_s = time.perf_counter() - start

    sides = {
        "serial": {"name": "serial"},
        "vmap": {"name": "vmap"},
        "ray, serial inner (1 job per call)": {"name": "ray", "workers": args.workers, "ray_inner": "serial"},
        "ray, vmap chunks": {"name": "ray", "workers": args.workers, "ray_inner": "vmap"},
    }
    rows = {name: timed_run(workload(args, executor)) for name, executor in sides.items()}
    import ray  # noqa: PLC0415

    ray.shutdown()

    serial, vmap = rows["serial"], rows["vmap"]
    print(
        f"\nlogreg 60->10, {args.clients} clients x 200 train samples, {args.clients_per_round} clients per round, "
        f"1 epoch, batch 10; {args.rounds} rounds, steady = mean of rounds 2..{args.rounds}; "
        f"{os.cpu_count()} CPUs, {args.threads} torch thread(s) per process, torch {torch.__version__}; "
        f"load average at start {load:.1f}\n"
    )
    print(
        "| executor | s/round | vs serial | vs vmap | max abs diff vs serial params | start-up (s) | "
        "remote calls | jobs/call | ms per call | ms per job |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, row in rows.items():
        diff = float((row["params"] - serial["params"]).abs().max())
        ray_cols = "- | - | - | - | -"
        if "calls" in row:
            ray_cols = (
                f"{row['startup_s']:.1f} | {row['calls']} | {row['jobs'] / row['calls']:.1f} | "
                f"{row['per_call_ms']:.2f} | {row['per_job_ms']:.3f}"
            )
        print(
            f"| {name} | {row['round_s']:.4f} ± {row['round_s_stdev']:.4f} | {serial['round_s'] / row['round_s']:.2f}x "
            f"| {vmap['round_s'] / row['round_s']:.2f}x | {diff:.1e} | {ray_cols} |"
        )
    for name, row in rows.items():
        if "calls" in row:
            print(
                f"{name}: busiest actor computes {row['busiest_actor_s_per_round']:.4f} s per round; actors' CPU / "
                f"wall time in calls {row['cpu_per_busy']:.2f} (below 1: they wait for a core)"
            )
    chunks = rows["ray, vmap chunks"]
    print(
        f"\nlocal Ray instance start-up: {ray_init_s:.1f} s (once); each Ray executor's start-up (actors ready) "
        "is the start-up column; neither is in any round."
    )
    print(
        f"ray vmap chunks / vmap, seconds per round: {chunks['round_s'] / vmap['round_s']:.2f} "
        f"(goal <= 1.00: ray with chunks at least as fast as vmap alone); "
        f"ray vmap chunks params equal vmap's bit for bit: {torch.equal(chunks['params'], vmap['params'])}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
