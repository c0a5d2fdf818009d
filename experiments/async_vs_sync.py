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

import statistics
from pathlib import Path
from typing import Any

import time_to_target

HERE = Path(__file__).resolve().parent
ASYNC = {"concurrency": 20}
ROWS: dict[str, dict[str, Any]] = {  # label -> config overrides
    "sync FedAvg": {"strategy": {"name": "fedavg"}},
    "sync FedAvg, deadline 3 s": {"strategy": {"name": "fedavg"}, "round_deadline": 3.0},
    "sync FedAvg, over-selection 30%": {"strategy": {"name": "fedavg"}, "scheduler": {"over_selection": 0.3}},
    "FedAsync (K=1)": {"strategy": {"name": "fedasync"}, "scheduler": ASYNC},
    "FedBuff (K=10)": {"strategy": {"name": "fedbuff"}, "scheduler": ASYNC},
    "FedFix (every 3 s)": {"strategy": {"name": "fedfix"}, "scheduler": ASYNC | {"interval": 3.0}},
    "FedFix (every 3 s), mean over arrivals": {
        "strategy": {"name": "fedfix", "weighting": "uniform"},
        "scheduler": ASYNC | {"interval": 3.0},
    },
}


def run_one(args: tuple[str, int, str, str]) -> dict[str, Any]:
    label, seed, config_path, executor = args
    return time_to_target.measure(label, ROWS[label], seed, config_path, executor)


def report(rows: list[dict[str, Any]], out: Path) -> str:
    table = time_to_target.write_table(
        rows,
        out,
        list(ROWS),
        [],
        ["client jobs"],
        lambda mine: [f"{statistics.fmean(r['client_jobs'] for r in mine):.0f}"],
    )
    time_to_target.plot(
        rows,
        out,
        list(ROWS),
        "heavy-tailed client speeds (lognormal sigma 1.5)",
        lambda label: "-" if label.startswith("sync") else "--",
    )
    return table


if __name__ == "__main__":
    time_to_target.main(
        __doc__.splitlines()[0],
        list(ROWS),
        run_one,
        HERE / "async_vs_sync.yaml",
        "vmap",
        HERE / "results" / "async_vs_sync",
        report,
    )
