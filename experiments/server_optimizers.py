"""Server optimizers from the literature (and three client optimizers), small offline tasks.

Each server optimizer steps the global model with the negative aggregated delta as its
gradient (strategies/library_optimizers.py). Arms, with the paper each comes from:

    SGD         FedAvg, McMahan et al. 2017 (arXiv 1602.05629)       hand-written ``sgd``
    SGDm        FedAvgM, Hsu et al. 2019 (arXiv 1909.06335), m 0.9    hand-written ``sgd``
    FedAdam     Reddi et al. 2021 (arXiv 2003.00295), tau 1e-3        hand-written ``adam``
    FedYogi     Reddi et al. 2021                                      hand-written ``yogi``
    FedAdagrad  Reddi et al. 2021                                      hand-written ``adagrad``
    AdaBelief   Zhuang et al. 2020 (arXiv 2010.07468)                  pytorch-optimizer ``adabelief``
    Lion        Chen et al. 2023 (arXiv 2302.06675)                    pytorch-optimizer ``lion``
    ADOPT       Taniguchi et al. 2024 (arXiv 2411.02853)               pytorch-optimizer ``adopt``
    Adan        Xie et al. 2022 (arXiv 2208.06677)                     pytorch-optimizer ``adan``
    MARS        Yuan et al. 2024 (arXiv 2411.10438)                    pytorch-optimizer ``mars`` (optimize_1d)

plus client Adam, client Lion and client SGD under server SGD (lr 1: FedAvg).

Learning rates (the documented rule): each arm gets a half-decade grid centre x {10^-0.5, 1,
10^0.5}. Centres: 1 for server SGD (FedAvg's lr); 0.3 for SGDm (momentum 0.9 makes the
effective step lr/(1 - m) = 10 lr, so a centre of 1 would overshoot; 0.3 keeps lr 1 in the grid);
0.1 for FedAdagrad and 0.01 for the other Adam-like server optimizers (Reddi et al.'s best
regions); Lion 10x smaller than Adam's (0.001), as the Lion paper prescribes. Client
optimizers: SGD 0.1 (the yaml's), Adam 0.01 and Lion 0.001 (same 10x rule). The best lr
per arm and task is the one with the best mean final accuracy over seeds.

Tasks (experiments/server_optimizers.yaml): digits CNN, 50 clients, Dirichlet 0.1 label skew,
10 clients a round, 10 local steps of batch 10 at client lr 0.1; LEAF Synthetic(1, 1) with a one-hidden-layer
MLP (64), same population. Both are tiny and the runs are short (40 rounds; --quick: 6 rounds,
1 seed, 1 lr). Pace on 2 cores: ~0.2 s a round for a digits run and ~0.05 s for a synthetic
one on a quiet machine, two at once; the full sweep (234 runs) took 18 minutes at 40 rounds on a
machine shared with other jobs. An interrupted sweep resumes: finished run folders whose
row.json records the same job are reused. Conclusions about which
optimizer wins in the papers' regimes (hundreds to thousands of rounds, CNNs/Transformers on
CIFAR/StackOverflow) do not follow from it. Writes (raw run folders under raw/, git-ignored):

    experiments/results/server_optimizers/results.csv   one row per run
    experiments/results/server_optimizers/results.md    best-tuned final accuracy, rounds to target
    experiments/results/server_optimizers/results.png   accuracy curves of each arm's best lr

    python experiments/server_optimizers.py [--quick] [--seeds 1 2 3] [--rounds 40] [--jobs 2]
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
GRID = (10**-0.5, 1.0, 10**0.5)
# label -> (config values, lr centre, which lr it sweeps: "server" or "client")
ARMS: dict[str, tuple[dict[str, Any], float, str]] = {
    "SGD": ({"strategy": {"server_optimizer": "sgd"}}, 1.0, "server"),
    "SGDm": ({"strategy": {"server_optimizer": "sgd", "momentum": 0.9}}, 0.3, "server"),
    "FedAdam": ({"strategy": {"server_optimizer": "adam", "tau": 1e-3}}, 0.01, "server"),
    "FedYogi": ({"strategy": {"server_optimizer": "yogi", "tau": 1e-3}}, 0.01, "server"),
    "FedAdagrad": ({"strategy": {"server_optimizer": "adagrad", "tau": 1e-3}}, 0.1, "server"),
    "AdaBelief": ({"strategy": {"server_optimizer": "adabelief"}}, 0.01, "server"),
    "Lion": ({"strategy": {"server_optimizer": "lion"}}, 0.001, "server"),
    "ADOPT": ({"strategy": {"server_optimizer": "adopt"}}, 0.01, "server"),
    "Adan": ({"strategy": {"server_optimizer": "adan"}}, 0.01, "server"),
    # the server steps one flat (1-D) vector, and MARS steps 1-D parameters with AdamW at its own
    # lr_1d (3e-3, ignoring lr) unless optimize_1d is set
    "MARS": (
        {"strategy": {"server_optimizer": "mars", "server_optimizer_kwargs": {"optimize_1d": True}}},
        0.01,
        "server",
    ),
    "client SGD": ({"client": {"optimizer": "sgd"}}, 0.1, "client"),
    "client Adam": ({"client": {"optimizer": "adam"}}, 0.01, "client"),
    "client Lion": ({"client": {"optimizer": "lion"}}, 0.001, "client"),
}
TASKS: dict[str, dict[str, Any]] = {
    "digits-cnn-dir0.1": {"name": "digits", "model": "cnn"},
    "synthetic-mlp": {"name": "synthetic", "model": "mlp", "hidden": 64, "max_samples": 200},
}
LAST_EVALS = 3  # final accuracy = mean of the last evaluations


def run_one(job: dict[str, Any]) -> dict[str, Any]:
    """One run (in a worker process): returns its row with the accuracy curve.

    A run folder whose row.json records the same job (a finished run of an interrupted sweep) is
    reused instead of run again; the row says so in ``reused``.
    """
    saved = Path(job["out"]) / "row.json"
    if saved.exists():
        row = json.loads(saved.read_text())
        if row.get("job") == job:
            return {**row, "reused": True}
    import torch  # noqa: PLC0415

    from fedsim.config import (
        deep_merge,  # noqa: PLC0415
        load_config,  # noqa: PLC0415
    )
    from fedsim.run import run_experiment  # noqa: PLC0415

    torch.set_num_threads(1)
    values, centre, side = ARMS[job["arm"]]
    lr = centre * job["scale"]
    values = deep_merge(
        values,
        {
            "seed": job["seed"],
            "rounds": job["rounds"],
            "task": TASKS[job["task"]],
            "strategy": {"server_lr": lr} if side == "server" else {"server_lr": 1.0},
        },
    )
    if side == "client":
        values = deep_merge(values, {"client": {"lr": lr}})
    config = load_config(job["config"], values=values)
    start = time.perf_counter()
    summary, out = run_experiment(config, out_dir=job["out"], overwrite=True)
    wall = time.perf_counter() - start
    rows = [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]
    curve = [(r["round"], r["test_accuracy"]) for r in rows if "test_accuracy" in r]
    accuracy = [a for _, a in curve]
    final = statistics.fmean(accuracy[-LAST_EVALS:]) if accuracy and summary.get("status") == "completed" else 0.0
    row = {
        "task": job["task"],
        "arm": job["arm"],
        "lr": lr,
        "seed": job["seed"],
        "rounds": job["rounds"],
        "status": summary.get("status"),
        "final_accuracy": final,
        "best_accuracy": max(accuracy, default=0.0),
        "wall_s": wall,
        "curve": curve,
        "job": job,
    }
    saved.write_text(json.dumps(row))
    return {**row, "reused": False}


def rounds_to(curve: list[tuple[int, float]], target: float) -> int | None:
    return next((r for r, a in curve if r > 0 and a >= target), None)


def summarize(rows: list[dict[str, Any]], out: Path) -> str:
    with (out / "results.csv").open("w", newline="") as f:
        fields = ["task", "arm", "lr", "seed", "rounds", "status", "final_accuracy", "best_accuracy", "wall_s"]
        writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    lines = []
    best_curves: dict[tuple[str, str], list[list[tuple[int, float]]]] = {}
    for task in dict.fromkeys(r["task"] for r in rows):
        per_arm: dict[str, tuple[float, list[dict[str, Any]]]] = {}
        for arm in dict.fromkeys(r["arm"] for r in rows if r["task"] == task):
            by_lr: dict[float, list[dict[str, Any]]] = {}
            for r in rows:
                if r["task"] == task and r["arm"] == arm:
                    by_lr.setdefault(r["lr"], []).append(r)
            lr, sel = max(by_lr.items(), key=lambda kv: statistics.fmean(r["final_accuracy"] for r in kv[1]))
            per_arm[arm] = (lr, sel)
            best_curves[(task, arm)] = [r["curve"] for r in sel]
        top = max(statistics.fmean(r["final_accuracy"] for r in sel) for _, sel in per_arm.values())
        target = np.floor(0.9 * top * 20) / 20  # 90% of the best arm's final accuracy, rounded down to 0.05
        lines += [
            f"\n**{task}** (target {100 * target:.0f}% = 90% of the best final accuracy, rounded down to 5%)\n",
            "| arm | best lr | final acc. (%) mean ± std | rounds to target (seeds reaching it) | all lrs: final acc. |",
            "|---|---|---|---|---|",
        ]
        for arm, (lr, sel) in per_arm.items():
            finals = [100 * r["final_accuracy"] for r in sel]
            std = statistics.stdev(finals) if len(finals) > 1 else 0.0
            hits = [rounds_to(r["curve"], target) for r in sel]
            reached = [h for h in hits if h is not None]
            rtt = f"{statistics.fmean(reached):.1f} ({len(reached)}/{len(hits)})" if reached else f"- (0/{len(hits)})"
            all_lrs = ", ".join(
                f"{r_lr:.3g}: {statistics.fmean(100 * r['final_accuracy'] for r in rows if r['task'] == task and r['arm'] == arm and r['lr'] == r_lr):.1f}"
                for r_lr in sorted({r["lr"] for r in rows if r["task"] == task and r["arm"] == arm})
            )
            lines.append(f"| {arm} | {lr:.3g} | {statistics.fmean(finals):.1f} ± {std:.1f} | {rtt} | {all_lrs} |")
    seeds = sorted({r["seed"] for r in rows})
    rounds = sorted({r["rounds"] for r in rows})
    text = (
        f"Test accuracy, seeds {seeds}, {rounds} rounds; final = mean of the last {LAST_EVALS} evaluations; "
        f"each arm at its best lr of the grid (mean final accuracy over seeds). Runs: {len(rows)}, "
        f"{sum(r['wall_s'] for r in rows) / 60:.1f} minutes of run wall time summed over runs.\n"
        + "\n".join(lines)
        + "\n"
    )
    (out / "results.md").write_text(text)
    plot(best_curves, out)
    return text


def plot(curves: dict[tuple[str, str], list[list[tuple[int, float]]]], out: Path) -> None:
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    tasks = list(dict.fromkeys(t for t, _ in curves))
    fig, axes = plt.subplots(1, len(tasks), figsize=(6 * len(tasks), 4.5), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        for (t, arm), runs in curves.items():
            if t != task:
                continue
            x = [r for r, _ in runs[0]]
            ax.plot(
                x,
                np.mean([[a for _, a in run] for run in runs], axis=0),
                label=arm,
                linestyle="--" if arm.startswith("client") else "-",
            )
        ax.set_title(task)
        ax.set_xlabel("round")
        ax.set_ylabel("test accuracy (mean over seeds, best lr)")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(out / "results.png", dpi=110)
    plt.close(fig)


def jobs_for(args: argparse.Namespace, out: Path) -> list[dict[str, Any]]:
    scales = (1.0,) if args.quick else GRID
    jobs = []
    for task in args.tasks:
        for arm in args.arms:
            for scale in scales:
                for seed in args.seeds:
                    name = f"{task}_{arm.replace(' ', '-')}_lr{ARMS[arm][1] * scale:.3g}_s{seed}"
                    jobs.append(
                        {
                            "task": task,
                            "arm": arm,
                            "scale": scale,
                            "seed": seed,
                            "rounds": args.rounds,
                            "config": args.config,
                            # the arm's settings too, so that a changed arm is not reused from raw/
                            "settings": json.loads(json.dumps(ARMS[arm])),
                            "out": str(out / "raw" / name),
                        }
                    )
    return jobs


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(HERE / "server_optimizers.yaml"))
    parser.add_argument("--quick", action="store_true", help="6 rounds, seed 1, the grid's centre lr only")
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="default 1 2 3 (--quick: 1)")
    parser.add_argument("--rounds", type=int, default=None, help="default 40 (--quick: 6)")
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS), metavar="ARM")
    parser.add_argument("--jobs", type=int, default=2, help="runs at once (processes, one torch thread each)")
    parser.add_argument("--out", default=str(HERE / "results" / "server_optimizers"))
    args = parser.parse_args(argv)
    args.seeds = args.seeds or ([1] if args.quick else [1, 2, 3])
    args.rounds = args.rounds or (6 if args.quick else 40)
    out = Path(args.out)
    (out / "raw").mkdir(parents=True, exist_ok=True)
    jobs = jobs_for(args, out)
    print(f"{len(jobs)} runs, {args.rounds} rounds each, {args.jobs} at once", flush=True)
    start = time.perf_counter()
    rows = []
    if args.jobs > 1:
        with ProcessPoolExecutor(args.jobs) as pool:
            for row in pool.map(run_one, jobs):
                rows.append(row)
                print(
                    f"{row['task']:<18} {row['arm']:<11} lr {row['lr']:<8.3g} seed {row['seed']}: "
                    f"final {100 * row['final_accuracy']:.1f}  {row['wall_s']:.1f}s"
                    + (" (reused)" if row["reused"] else ""),
                    flush=True,
                )
    else:
        rows = [run_one(job) for job in jobs]
    reused = sum(row["reused"] for row in rows)
    if reused:
        print(f"reused {reused} finished runs from {out}/raw (delete it to run them again)")
    print(summarize(rows, out))
    print(f"wrote {out}/results.csv, results.md, results.png in {time.perf_counter() - start:.0f}s")


if __name__ == "__main__":
    main()
