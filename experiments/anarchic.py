"""Anarchic participation: AFA-CD and AFA-CS vs FedAvg when clients choose when and how long they train.

Yang, Zhang, Khanduri, Liu, "Anarchic Federated Learning", ICML 2022, arXiv 2108.09875. No
reference code exists; expectation from the paper's analysis: with non-uniform arrivals AFA-CD
keeps an error term from data heterogeneity that AFA-CS (which reuses every worker's latest
update) removes, and normalising updates by their local steps keeps clients that run many
steps from dominating.

Config experiments/anarchic.yaml: digits MLP, 100 clients, Dirichlet(0.1) label skew; each
client joins after exponential idle gaps whose mean varies 1:20 across clients and runs 1..20
local steps of its choosing; the server aggregates every m = 10 arrivals. Rows:

- FedAvg under the same anarchic arrivals (sample-weighted mean of raw deltas, no step
  normalisation, server lr 1);
- AFA-CD and AFA-CS (step-normalised), eta = 10, about the mean of the 1..20 local steps so
  one server update moves about as far as FedAvg's mean of raw deltas;
- sync FedAvg with server-chosen clients (10 per round, 10 local steps) as a reference.

Writes experiments/results/anarchic/results.{csv,md,png}.

    python experiments/anarchic.py [--seeds 1 2 3] [--jobs 2]

Scaled down to ~10 CPU-minutes on 2 cores: 60 virtual seconds per run, 3 seeds.
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
ROWS: dict[str, dict[str, Any]] = {  # label -> config overrides
    "FedAvg, anarchic arrivals": {"strategy": {"name": "fedavg"}},
    "AFA-CD (eta=10)": {"strategy": {"name": "afa-cd", "server_lr": 10.0}},
    "AFA-CS (eta=10)": {"strategy": {"name": "afa-cs", "server_lr": 10.0}},
    "sync FedAvg, server-chosen (reference)": {
        "strategy": {"name": "fedavg"}, "scheduler": {"name": "sync"},
        "population": {"participation": "uniform", "clients_per_round": 10}},
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
        "worst10_accuracy": statistics.fmean(h["client_accuracy_worst10"] for h in history[-LAST_EVALS:]),
        "top10_share": _top_share(experiment.engine.run_state.dispatch_counts, config.data.num_clients),
        "server_updates": summary["rounds"], "client_jobs": summary["jobs_dispatched"],
        "dropouts": summary["dropouts"], "executor_batch_mean": summary["executor_batch_mean"],
        "wall_s": time.perf_counter() - start, "target": config.eval.target_accuracy,
        "curve": [(h["virtual_time"], h["test_accuracy"]) for h in history],
    }


def _top_share(counts: dict[int, int], num_clients: int) -> float:
    """Fraction of all jobs run by the 10% most active clients (1 = extremely biased arrivals)."""
    jobs = sorted(counts.values(), reverse=True)
    return sum(jobs[: max(1, num_clients // 10)]) / max(1, sum(jobs))


def _mean_std(values: list[float], scale: float = 1.0, digits: int = 1) -> str:
    if not values:
        return "—"
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{scale * statistics.fmean(values):.{digits}f} ± {scale * std:.{digits}f}"


def write_table(rows: list[dict[str, Any]], out: Path) -> str:
    fields = ["strategy", "seed", "time_to_target", "updates_to_target", "final_accuracy", "worst10_accuracy",
              "top10_share", "server_updates",
              "client_jobs", "dropouts", "executor_batch_mean", "wall_s"]
    with (out / "results.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    target = rows[0]["target"]
    lines = [f"| strategy | virtual s to {100 * target:.0f}% | server updates to {100 * target:.0f}% | reached "
             "| final accuracy (%) | worst-10% client accuracy (%) | jobs by the 10% most active clients |",
             "|---|---|---|---|---|---|---|"]
    for label in ROWS:
        mine = [r for r in rows if r["strategy"] == label]
        if not mine:
            continue
        hit = [r for r in mine if r["time_to_target"] is not None]
        lines.append(
            f"| {label} | {_mean_std([r['time_to_target'] for r in hit], digits=0)} "
            f"| {_mean_std([r['updates_to_target'] for r in hit], digits=0)} | {len(hit)}/{len(mine)} "
            f"| {_mean_std([r['final_accuracy'] for r in mine], 100)} "
            f"| {_mean_std([r['worst10_accuracy'] for r in mine], 100)} "
            f"| {100 * statistics.fmean(r['top10_share'] for r in mine):.0f}% |"
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
        ax.plot(x, y, label=label, linestyle=":" if label.startswith("sync") else "-")
    ax.axhline(rows[0]["target"], color="grey", linestyle=":", linewidth=1)
    ax.set_xlabel("virtual time (s)")
    ax.set_ylabel("test accuracy (mean over seeds)")
    ax.set_title("anarchic clients: biased arrivals, 1..20 local steps")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "results.png", dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(HERE / "anarchic.yaml"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--jobs", type=int, default=2, help="parallel processes")
    parser.add_argument("--executor", default="serial")
    parser.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS), metavar="LABEL")
    parser.add_argument("--out", default=str(HERE / "results" / "anarchic"))
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
