"""What the time-to-accuracy experiments share (async_vs_sync.py, anarchic.py): one run per
(row, seed) in parallel processes, its row of results, and results.{csv,md,png} from them.

A row is a label and config overrides on the experiment's YAML; each run reports virtual time
and server updates to ``eval.target_accuracy``, final accuracy (mean of the last
``LAST_EVALS`` evaluations), counts and its accuracy curve over virtual time.
"""

from __future__ import annotations

import argparse
import csv
import statistics
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from grid import format_mean_std

from fedsim.config import deep_merge, load_config
from fedsim.run import build

LAST_EVALS = 4  # final accuracy = mean over the last evaluations
BASE_FIELDS = ["strategy", "seed", "time_to_target", "updates_to_target", "final_accuracy"]
COUNT_FIELDS = ["server_updates", "client_jobs", "dropouts", "executor_batch_mean", "wall_s"]


def measure(
    label: str,
    row: dict[str, Any],
    seed: int,
    config_path: str,
    executor: str,
    extra: Callable[[Any, Any], dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """One run of ``row`` with ``seed``; ``extra(experiment, config)`` adds columns of its own."""
    overrides = deep_merge(
        row, {"seed": seed, "executor": {"name": executor}, "output": {"progress": False, "tensorboard": False}}
    )
    config = load_config(config_path, values=overrides)
    experiment = build(config)
    start = time.perf_counter()
    summary = experiment.run()
    history = experiment.engine.history
    reached = summary["time_to_accuracy"] or {}
    result = {
        "strategy": label,
        "seed": seed,
        "time_to_target": reached.get("virtual_time"),
        "updates_to_target": reached.get("server_updates"),
        "final_accuracy": statistics.fmean(h["test_accuracy"] for h in history[-LAST_EVALS:]),
    }
    if extra is not None:
        result |= extra(experiment, config)
    return result | {
        "server_updates": summary["rounds"],
        "client_jobs": summary["jobs_dispatched"],
        "dropouts": summary["dropouts"],
        "executor_batch_mean": summary["executor_batch_mean"],
        "wall_s": time.perf_counter() - start,
        "target": config.eval.target_accuracy,
        "curve": [(h["virtual_time"], h["test_accuracy"]) for h in history],
    }


def mean_std(values: list[float], scale: float = 1.0, digits: int = 1) -> str:
    return format_mean_std(values, f"{{:.{digits}f}}", scale)


def write_table(
    rows: list[dict[str, Any]],
    out: Path,
    labels: list[str],
    extra_fields: list[str],
    extra_headers: list[str],
    extra_cells: Callable[[list[dict[str, Any]]], list[str]],
) -> str:
    """results.csv (every run) and results.md (mean ± std per row label); returns the markdown table.

    The table has the time-to-target columns, then ``extra_headers`` whose cells
    ``extra_cells(runs of one label)`` gives."""
    with (out / "results.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=BASE_FIELDS + extra_fields + COUNT_FIELDS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    target = rows[0]["target"]
    headers = [
        f"virtual s to {100 * target:.0f}%",
        f"server updates to {100 * target:.0f}%",
        "reached",
        "final accuracy (%)",
        *extra_headers,
    ]
    lines = ["| strategy | " + " | ".join(headers) + " |", "|---" * (len(headers) + 1) + "|"]
    for label in labels:
        mine = [r for r in rows if r["strategy"] == label]
        if not mine:
            continue
        hit = [r for r in mine if r["time_to_target"] is not None]
        cells = [
            mean_std([r["time_to_target"] for r in hit], digits=0),
            mean_std([r["updates_to_target"] for r in hit], digits=0),
            f"{len(hit)}/{len(mine)}",
            mean_std([r["final_accuracy"] for r in mine], 100),
            *extra_cells(mine),
        ]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    table = "\n".join(lines)
    (out / "results.md").write_text(
        f"Mean ± std over seeds {sorted({r['seed'] for r in rows})}; time to target over the seeds that reached it; "
        f"final accuracy averaged over the last {LAST_EVALS} evaluations.\n\n{table}\n"
    )
    return table


def plot(rows: list[dict[str, Any]], out: Path, labels: list[str], title: str, linestyle: Callable[[str], str]) -> None:
    """results.png: each label's accuracy over virtual time, mean over seeds, and the target."""
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for label in labels:
        curves = [r["curve"] for r in rows if r["strategy"] == label]
        if not curves:
            continue
        length = min(len(c) for c in curves)
        x = [p[0] for p in curves[0][:length]]
        y = np.mean([[p[1] for p in c[:length]] for c in curves], axis=0)
        ax.plot(x, y, label=label, linestyle=linestyle(label))
    ax.axhline(rows[0]["target"], color="grey", linestyle=":", linewidth=1)
    ax.set_xlabel("virtual time (s)")
    ax.set_ylabel("test accuracy (mean over seeds)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "results.png", dpi=110)
    plt.close(fig)


def main(
    description: str,
    labels: list[str],
    run_one: Callable[[tuple[str, int, str, str]], dict[str, Any]],
    config: Path,
    executor: str,
    out: Path,
    report: Callable[[list[dict[str, Any]], Path], str],
) -> None:
    """Parse the common flags, run every (row, seed) with ``run_one`` in parallel processes,
    print progress, then ``report(rows, out)`` (writes the results, returns the table to print)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--config", default=str(config))
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--jobs", type=int, default=2, help="parallel processes")
    parser.add_argument("--executor", default=executor)
    parser.add_argument("--rows", nargs="+", default=list(labels), choices=list(labels), metavar="LABEL")
    parser.add_argument("--out", default=str(out))
    args = parser.parse_args()
    folder = Path(args.out)
    folder.mkdir(parents=True, exist_ok=True)
    runs = [(label, seed, args.config, args.executor) for label in args.rows for seed in args.seeds]
    print(f"{len(runs)} runs ({len(args.rows)} rows x {len(args.seeds)} seeds), {args.jobs} processes")
    start = time.perf_counter()
    rows = []
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        for i, row in enumerate(pool.map(run_one, runs), 1):
            rows.append(row)
            reached = f"{row['time_to_target']:.0f} s" if row["time_to_target"] is not None else "not reached"
            print(
                f"[{i}/{len(runs)}] {row['strategy']:<32} seed {row['seed']}: target {reached}, "
                f"final accuracy {row['final_accuracy']:.4f}, {row['client_jobs']} jobs",
                flush=True,
            )
    print(report(rows, folder))
    print(f"wrote {folder}/results.csv, results.md, results.png in {time.perf_counter() - start:.0f}s")
