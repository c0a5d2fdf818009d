"""Synchronous FedAvg vs FedAsync, FedBuff and FedFix under heavy-tailed client speeds.

Literature expectation (FedBuff, Nguyen et al., AISTATS 2022, arXiv 2106.06639, abstract):
buffered asynchronous aggregation reaches a target accuracy in less time than synchronous
FedAvg when stragglers are heavy; FedAsync (Xie et al., arXiv 1903.03934) converges fast but
less stably; FedFix (Fraboni et al., arXiv 2206.10189) improves on both.

Every run gets the same virtual-time budget (``scheduler.max_time`` in
experiments/async_vs_sync.yaml: digits MLP, 100 clients, Dirichlet(0.3), lognormal step times
with sigma 1.5) and is evaluated on a virtual-time grid. Rows:

- sync FedAvg, 10 clients per round (plain; with a 3 s deadline; with 30% over-selection);
- FedAsync (K = 1), FedBuff (K = 10) and FedFix (every 3 s), 20 clients training at once;
  FedFix once with Fraboni et al.'s weights (population share x windows spanned, designed for
  every client training at once) and once averaging the window's arrivals.

Writes experiments/results/async_vs_sync/results.{csv,md,png}: virtual time and server
updates to the target accuracy, final accuracy, client jobs run.

    python experiments/async_vs_sync.py [--seeds 1 2 3] [--jobs 2] [--executor vmap]

Scaled down to ~10 CPU-minutes on 2 cores: 150 virtual seconds per run, 3 seeds.
"""

from __future__ import annotations

import argparse
import csv
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from fedsim.config import load_config
from fedsim.run import build

HERE = Path(__file__).resolve().parent
ASYNC = {"concurrency": 20}
ROWS: dict[str, dict[str, Any]] = {  # label -> config overrides
    "sync FedAvg": {"strategy": {"name": "fedavg"}},
    "sync FedAvg, deadline 3 s": {"strategy": {"name": "fedavg"}, "round_deadline": 3.0},
    "sync FedAvg, over-selection 30%": {"strategy": {"name": "fedavg"}, "scheduler": {"over_selection": 0.3}},
    "FedAsync (K=1)": {"strategy": {"name": "fedasync"}, "scheduler": ASYNC},
    "FedBuff (K=10)": {"strategy": {"name": "fedbuff"}, "scheduler": ASYNC},
    "FedFix (every 3 s)": {"strategy": {"name": "fedfix"}, "scheduler": ASYNC | {"interval": 3.0}},
    "FedFix (every 3 s), mean over arrivals": {"strategy": {"name": "fedfix", "weighting": "uniform"},
                                               "scheduler": ASYNC | {"interval": 3.0}},
}
LAST_EVALS = 4  # final accuracy = mean over the last evaluations


def run_one(args: tuple[str, int, str, str]) -> dict[str, Any]:
    label, seed, config_path, executor = args
    from fedsim.config import deep_merge  # noqa: PLC0415

    overrides = deep_merge(ROWS[label], {"seed": seed, "executor": {"name": executor},
                                         "output": {"progress": False, "tensorboard": False}})
    config = load_config(config_path, values=overrides)
    experiment = build(config)
    start = time.perf_counter()
    summary = experiment.run()
    history = experiment.engine.history
    reached = summary["time_to_accuracy"] or {}
    return {
        "strategy": label, "seed": seed,
        "time_to_target": reached.get("virtual_time"), "updates_to_target": reached.get("server_updates"),
        "final_accuracy": statistics.fmean(h["test_accuracy"] for h in history[-LAST_EVALS:]),
        "server_updates": summary["rounds"], "client_jobs": summary["jobs_dispatched"],
        "dropouts": summary["dropouts"], "executor_batch_mean": summary["executor_batch_mean"],
        "wall_s": time.perf_counter() - start, "target": config.eval.target_accuracy,
        "curve": [(h["virtual_time"], h["test_accuracy"]) for h in history],
    }


def _mean_std(values: list[float], scale: float = 1.0, digits: int = 1) -> str:
    if not values:
        return "—"
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{scale * statistics.fmean(values):.{digits}f} ± {scale * std:.{digits}f}"


def write_table(rows: list[dict[str, Any]], out: Path) -> str:
    fields = ["strategy", "seed", "time_to_target", "updates_to_target", "final_accuracy", "server_updates",
              "client_jobs", "dropouts", "executor_batch_mean", "wall_s"]
    with (out / "results.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    target = rows[0]["target"]
    lines = [f"| strategy | virtual s to {100 * target:.0f}% | server updates to {100 * target:.0f}% | reached "
             "| final accuracy (%) | client jobs |", "|---|---|---|---|---|---|"]
    for label in ROWS:
        mine = [r for r in rows if r["strategy"] == label]
        if not mine:
            continue
        hit = [r for r in mine if r["time_to_target"] is not None]
        lines.append(
            f"| {label} | {_mean_std([r['time_to_target'] for r in hit], digits=0)} "
            f"| {_mean_std([r['updates_to_target'] for r in hit], digits=0)} | {len(hit)}/{len(mine)} "
            f"| {_mean_std([r['final_accuracy'] for r in mine], 100)} "
            f"| {statistics.fmean(r['client_jobs'] for r in mine):.0f} |"
        )
    table = "\n".join(lines)
    (out / "results.md").write_text(
        f"Mean ± std over seeds {sorted({r['seed'] for r in rows})}; time to target over the seeds that reached it; "
        f"final accuracy averaged over the last {LAST_EVALS} evaluations.\n\n{table}\n"
    )
    return table


def plot(rows: list[dict[str, Any]], out: Path) -> None:
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for label in ROWS:
        curves = [r["curve"] for r in rows if r["strategy"] == label]
        if not curves:
            continue
        length = min(len(c) for c in curves)
        x = [p[0] for p in curves[0][:length]]
        y = np.mean([[p[1] for p in c[:length]] for c in curves], axis=0)
        ax.plot(x, y, label=label, linestyle="-" if label.startswith("sync") else "--")
    ax.axhline(rows[0]["target"], color="grey", linestyle=":", linewidth=1)
    ax.set_xlabel("virtual time (s)")
    ax.set_ylabel("test accuracy (mean over seeds)")
    ax.set_title("heavy-tailed client speeds (lognormal sigma 1.5)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "results.png", dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(HERE / "async_vs_sync.yaml"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--jobs", type=int, default=2, help="parallel processes")
    parser.add_argument("--executor", default="vmap")
    parser.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS), metavar="LABEL")
    parser.add_argument("--out", default=str(HERE / "results" / "async_vs_sync"))
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    runs = [(label, seed, args.config, args.executor) for label in args.rows for seed in args.seeds]
    print(f"{len(runs)} runs ({len(args.rows)} rows x {len(args.seeds)} seeds), {args.jobs} processes")
    start = time.perf_counter()
    rows = []
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        for i, row in enumerate(pool.map(run_one, runs), 1):
            rows.append(row)
            reached = f"{row['time_to_target']:.0f} s" if row["time_to_target"] is not None else "not reached"
            print(f"[{i}/{len(runs)}] {row['strategy']:<32} seed {row['seed']}: target {reached}, "
                  f"final accuracy {row['final_accuracy']:.4f}, {row['client_jobs']} jobs", flush=True)
    print(write_table(rows, out))
    plot(rows, out)
    print(f"wrote {out}/results.csv, results.md, results.png in {time.perf_counter() - start:.0f}s")


if __name__ == "__main__":
    main()
