"""Ray executor vs serial: time per round where parallel clients pay off, and Ray's overhead.

Two workloads, each run with the serial executor and with the Ray executor (``--workers``
actors, one torch thread each), side by side in one process:

- **digits CNN**: the 8x8 digits task with the small CNN, several local epochs per client, so
  each round is real work; reports time per round and the serial/ray ratio;
- **near-empty jobs**: the synthetic task (a tiny linear model) with one local step per
  client, so a round is almost pure dispatch + transfer; ray minus serial per round is the
  Ray executor's overhead (ms per round and per job).

Time per round = the executor's ``run`` call of that round (evaluation excluded), averaged
over rounds 2..R (round 1 pays one-off warm-ups; the cheap near-empty workload runs at least
20 rounds). One local Ray session is shared by the Ray
runs; its start-up time is reported separately.

    python experiments/bench/ray_vs_serial.py --rounds 5 --workers 2 [--device cuda] [--serial-threads 2]
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


def workload_values(kind: str, args: argparse.Namespace) -> dict[str, Any]:
    common = {
        "seed": 0,
        "rounds": args.rounds,
        "population": {"participation": "uniform", "clients_per_round": args.clients_per_round},
        "eval": {"every": args.rounds},
        "output": {"progress": False, "tensorboard": False},
    }
    if kind == "digits":
        return common | {
            "task": {"name": "digits", "model": "cnn"},
            "data": {"num_clients": 50},
            "client": {"lr": 0.05, "local_epochs": args.local_epochs, "batch_size": 10},
        }
    rounds = max(args.rounds, 20)  # cheap rounds: more of them for a steadier mean
    return common | {  # near-empty jobs: tiny model, one step
        "rounds": rounds,
        "eval": {"every": rounds},
        "task": {"name": "synthetic"},
        "data": {"num_clients": 100},
        "client": {"lr": 0.05, "local_steps": 1, "batch_size": 10},
    }


def timed_run(values: dict[str, Any]) -> dict[str, Any]:
    start = time.perf_counter()
    experiment = build(load_config(values=values))
    built = time.perf_counter() - start
    executor = experiment.executor
    rounds: list[float] = []
    run = executor.run

    def timed(jobs):
        t = time.perf_counter()
        results = run(jobs)
        rounds.append(time.perf_counter() - t)
        return results

    executor.run = timed
    puts = stats = None
    if hasattr(executor, "actor_stats"):  # read before run() closes the executor
        close, executor.close = executor.close, lambda: None
    summary = experiment.run()
    if hasattr(executor, "actor_stats"):
        puts, stats = executor.puts, executor.actor_stats()
        close()
    steady = rounds[1:] or rounds
    return {
        "build_s": built,
        "round_ms": 1000 * statistics.mean(steady),
        "round_ms_stdev": 1000 * (statistics.stdev(steady) if len(steady) > 1 else 0.0),
        "params": experiment.engine.state.params.clone(),
        "dropouts": summary["dropouts"],
        "puts": puts,
        "actor_stats": stats,
        "rounds_ms": [1000 * r for r in rounds],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--clients-per-round", type=int, default=20)
    parser.add_argument("--local-epochs", type=int, default=5)
    parser.add_argument(
        "--serial-threads",
        type=int,
        default=0,
        help="also time serial with this many torch threads on the digits CNN (0: skip)",
    )
    args = parser.parse_args(argv)
    if args.rounds < 2:
        parser.error("--rounds must be >= 2 (round 1 is warm-up)")

    from fedsim.executors.ray import init_local_ray  # noqa: PLC0415

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    start = time.perf_counter()
    init_local_ray(num_cpus=max(os.cpu_count() or 1, args.workers))
    ray_start = time.perf_counter() - start

    executors = {
        "serial": {"name": "serial", "device": args.device, "threads": 1},
        "serial-mt": {"name": "serial", "device": args.device, "threads": max(1, args.serial_threads)},
        "ray": {"name": "ray", "device": args.device, "workers": args.workers, "threads": 1},
    }
    rows = []
    results: dict[tuple[str, str], dict[str, Any]] = {}
    for kind in ("digits", "empty"):
        for name, executor in executors.items():
            if name == "serial-mt" and (kind == "empty" or args.serial_threads <= 1 or args.device == "cuda"):
                continue
            values = workload_values(kind, args) | {"executor": executor}
            results[kind, name] = timed_run(values)
    import ray  # noqa: PLC0415

    ray.shutdown()

    labels = {
        "digits": f"digits CNN, {args.clients_per_round} clients x {args.local_epochs} epochs",
        "empty": f"near-empty jobs (synthetic, 1 step), {args.clients_per_round} clients",
    }
    for kind in ("digits", "empty"):
        serial, ray_ = results[kind, "serial"], results[kind, "ray"]
        same = torch.equal(serial["params"], ray_["params"])
        rows.append((labels[kind], "serial", "1 x 1", serial, "1.00", "-"))
        if (kind, "serial-mt") in results:
            mt = results[kind, "serial-mt"]
            speedup = f"{serial['round_ms'] / mt['round_ms']:.2f}"
            rows.append(
                (
                    labels[kind],
                    "serial",
                    f"1 x {args.serial_threads}",
                    mt,
                    speedup,
                    "yes" if torch.equal(serial["params"], mt["params"]) else "no",
                )
            )
        rows.append(
            (
                labels[kind],
                "ray",
                f"{args.workers} x 1",
                ray_,
                f"{serial['round_ms'] / ray_['round_ms']:.2f}",
                "yes" if same else "no",
            )
        )

    print(
        f"\nRay executor vs serial ({args.device}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
        f"{args.rounds} rounds (near-empty: >= 20); time per round = mean of rounds 2..R; "
        f"local Ray start-up {ray_start:.1f} s; load average at start {load:.1f})\n"
    )
    print(
        "| workload | executor | workers x threads | time/round (ms) | speed-up vs serial | same params as serial | "
        "build (s) | ray.put calls |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for label, name, shape, r, speedup, same in rows:
        puts = "-" if r["puts"] is None else str(r["puts"])
        print(
            f"| {label} | {name} | {shape} | {r['round_ms']:.1f} ± {r['round_ms_stdev']:.1f} | {speedup} | {same} | "
            f"{r['build_s']:.1f} | {puts} |"
        )
    for kind in ("digits", "empty"):
        stats = results[kind, "ray"]["actor_stats"]
        jobs = sum(s["jobs"] for s in stats)
        wall = sum(s["busy_s"] for s in stats)
        cpu = sum(s["cpu_s"] for s in stats)
        serial_job = results[kind, "serial"]["round_ms"] / args.clients_per_round
        print(
            f"\n{labels[kind]}: a ray job takes {1000 * wall / jobs:.1f} ms wall / {1000 * cpu / jobs:.1f} ms CPU "
            f"inside its actor (serial: {serial_job:.1f} ms per job); wall >> CPU means the actors wait for a core."
        )
    empty_serial, empty_ray = results["empty", "serial"], results["empty", "ray"]
    overhead = empty_ray["round_ms"] - empty_serial["round_ms"]
    # the round's wall time beyond the busiest actor's compute: dispatch, transfer, waiting
    rounds_ms = empty_ray["rounds_ms"]
    busiest_ms = 1000 * max(s["busy_s"] for s in empty_ray["actor_stats"]) / len(rounds_ms)
    beyond = statistics.mean(rounds_ms) - busiest_ms
    print(
        f"\nRay executor overhead, near-empty jobs ({args.clients_per_round} per round over {args.workers} workers, "
        f"{len(rounds_ms)} rounds): ray - serial = {overhead:.1f} ms per round; round wall time beyond the busiest "
        f"actor's compute (dispatch + transfer + waiting) = {beyond:.1f} ms per round, "
        f"{beyond / args.clients_per_round:.2f} ms per job."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
