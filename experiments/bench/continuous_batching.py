"""Whole runs of the scaffold and fedspeed presets: serial vs vmap executor (continuous batching).

Each preset's own scenario (synthetic task, 100 clients with power-law sizes, so local step
counts differ widely), 100 clients per round, 30 rounds, evaluation at the end only. Each
side is one ``fedsim`` run in a fresh subprocess (so one-off costs such as importing
torch._dynamo or compiling count); the seconds are those of ``experiment.run()`` (the task's
data is built before the clock starts). Sides are interleaved rep by rep and the median is
reported with the ratio serial/vmap (> 1: vmap is faster). ``--baseline PATH`` adds the vmap
sides of another checkout (its fedsim on PYTHONPATH in the subprocess), so before/after are
side by side; ``--no-compile`` drops the compiled sides; ``--quick`` is a seconds-long smoke
run (2 rounds of 10 clients); ``--max-batch N`` caps the vmap executor's clients per kernel
call (its slots; the baseline's chunk size), where continuous batching differs most from
chunks run one after another.

    python experiments/bench/continuous_batching.py [--rounds 30] [--clients-per-round 100] [--reps 3]
        [--presets scaffold,fedspeed] [--baseline /path/to/other/checkout] [--no-compile] [--quick]
        [--max-batch N]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run_once(
    preset: str, executor: str, compile: bool, rounds: int, clients_per_round: int, threads: int, max_batch: int = 0
) -> float:
    """Seconds of one whole run (``experiment.run()``) in this process."""
    import torch  # noqa: PLC0415  (imported here so --one measures with the checkout on PYTHONPATH)

    from fedsim.config import load_config  # noqa: PLC0415
    from fedsim.run import build  # noqa: PLC0415

    torch.set_num_threads(threads)
    config = load_config(values={
        "strategy": {"name": preset},
        "rounds": rounds,
        "population": {"clients_per_round": clients_per_round},
        "eval": {"every": rounds},
        "executor": {"name": executor, "compile": "on" if compile else "off"},
        "output": {"progress": False, "tensorboard": False},
    })  # fmt: skip
    experiment = build(config)
    if max_batch and hasattr(experiment.executor, "max_batch"):  # the vmap executor: fewer slots than clients
        experiment.executor.max_batch = max_batch
    start = time.perf_counter()
    experiment.run()
    return time.perf_counter() - start


def run_side(side: dict, preset: str, args: argparse.Namespace) -> float:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(side["path"]), env.get("PYTHONPATH")]))
    cmd = [sys.executable, __file__, "--one", preset, side["executor"], str(int(side["compile"])),
           str(args.rounds), str(args.clients_per_round), str(args.threads), str(args.max_batch)]  # fmt: skip
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"side {side['name']} failed:\n{out.stderr[-2000:]}")
    return float(json.loads(out.stdout.strip().splitlines()[-1])["seconds"])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", default="scaffold,fedspeed")
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--clients-per-round", type=int, default=100)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads in every side")
    parser.add_argument("--baseline", default=None, help="another checkout: its vmap sides run beside this one's")
    parser.add_argument("--no-compile", action="store_true", help="skip the compiled vmap sides")
    parser.add_argument("--quick", action="store_true", help="2 rounds of 10 clients, 1 rep (a smoke test)")
    parser.add_argument("--max-batch", type=int, default=0, help="vmap clients per kernel call (0: its estimate)")
    parser.add_argument("--one", nargs=7, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        preset, executor, compile, rounds, cpr, threads, max_batch = args.one
        seconds = run_once(preset, executor, compile == "1", int(rounds), int(cpr), int(threads), int(max_batch))
        print(json.dumps({"seconds": seconds}))
        return
    if args.quick:
        args.rounds, args.clients_per_round, args.reps = 2, 10, 1

    sides = [{"name": "serial", "executor": "serial", "compile": False, "path": ROOT}]
    sides.append({"name": "vmap", "executor": "vmap", "compile": False, "path": ROOT})
    if not args.no_compile:
        sides.append({"name": "vmap compiled", "executor": "vmap", "compile": True, "path": ROOT})
    if args.baseline:
        base = Path(args.baseline).resolve()
        sides.append({"name": "baseline vmap", "executor": "vmap", "compile": False, "path": base})
        if not args.no_compile:
            sides.append({"name": "baseline vmap compiled", "executor": "vmap", "compile": True, "path": base})

    print(
        f"{args.rounds} rounds x {args.clients_per_round} clients, {args.threads} thread(s), median of {args.reps}"
        + (f", vmap max_batch {args.max_batch}" if args.max_batch else "")
    )
    print()
    print("| preset | " + " | ".join(f"{s['name']} (s)" for s in sides[1:]) + " | serial (s) | "
          + " | ".join(f"serial/{s['name']}" for s in sides[1:]) + " |")  # fmt: skip
    print("|---" * (2 * len(sides)) + "|")
    for preset in args.presets.split(","):
        times: dict[str, list[float]] = {s["name"]: [] for s in sides}
        for _ in range(args.reps):
            for side in sides:
                times[side["name"]].append(run_side(side, preset, args))
        med = {name: statistics.median(ts) for name, ts in times.items()}
        serial = med["serial"]
        cells = [f"{med[s['name']]:.2f}" for s in sides[1:]] + [f"{serial:.2f}"]
        cells += [f"{serial / med[s['name']]:.2f}x" for s in sides[1:]]
        print(f"| {preset} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
