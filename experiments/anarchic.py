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

import statistics
from pathlib import Path
from typing import Any

import time_to_target

HERE = Path(__file__).resolve().parent
ROWS: dict[str, dict[str, Any]] = {  # label -> config overrides
    "FedAvg, anarchic arrivals": {"strategy": {"name": "fedavg"}},
    "AFA-CD (eta=10)": {"strategy": {"name": "afa-cd", "server_lr": 10.0}},
    "AFA-CS (eta=10)": {"strategy": {"name": "afa-cs", "server_lr": 10.0}},
    "sync FedAvg, server-chosen (reference)": {
        "strategy": {"name": "fedavg"},
        "scheduler": {"name": "sync"},
        "population": {"participation": "uniform", "clients_per_round": 10},
    },
}


def run_one(args: tuple[str, int, str, str]) -> dict[str, Any]:
    label, seed, config_path, executor = args
    return time_to_target.measure(label, ROWS[label], seed, config_path, executor, extra=_fairness)


def _fairness(experiment: Any, config: Any) -> dict[str, float]:
    last = experiment.engine.history[-time_to_target.LAST_EVALS :]
    return {
        "worst10_accuracy": statistics.fmean(h["client_accuracy_worst10"] for h in last),
        "top10_share": _top_share(experiment.engine.run_state.dispatch_counts, config.data.num_clients),
    }


def _top_share(counts: dict[int, int], num_clients: int) -> float:
    """Fraction of all jobs run by the 10% most active clients (1 = extremely biased arrivals)."""
    jobs = sorted(counts.values(), reverse=True)
    return sum(jobs[: max(1, num_clients // 10)]) / max(1, sum(jobs))


def report(rows: list[dict[str, Any]], out: Path) -> str:
    table = time_to_target.write_table(
        rows,
        out,
        list(ROWS),
        ["worst10_accuracy", "top10_share"],
        ["worst-10% client accuracy (%)", "jobs by the 10% most active clients"],
        lambda mine: [
            time_to_target.mean_std([r["worst10_accuracy"] for r in mine], 100),
            f"{100 * statistics.fmean(r['top10_share'] for r in mine):.0f}%",
        ],
    )
    time_to_target.plot(
        rows,
        out,
        list(ROWS),
        "anarchic clients: biased arrivals, 1..20 local steps",
        lambda label: ":" if label.startswith("sync") else "-",
    )
    return table


if __name__ == "__main__":
    time_to_target.main(
        __doc__.splitlines()[0],
        list(ROWS),
        run_one,
        HERE / "anarchic.yaml",
        "serial",
        HERE / "results" / "anarchic",
        report,
    )
