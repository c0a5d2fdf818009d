"""Reproduce the FedAU paper's qualitative claim offline: FedAU vs its baselines.

Wang & Ji, "A Lightweight Method for Tackling Unknown Participation Statistics in Federated
Averaging" (arXiv 2306.03401). Runs FedAU (K -> infinity and K = 50) and the baselines
(average over participants, divide by N, known probabilities (oracle), MIFA, FedVARP) under
Bernoulli, Markov and cyclic participation for several seeds, on the config in
experiments/fedau_participation.yaml, and writes:

    experiments/results/fedau_participation/results.csv   one row per run
    experiments/results/fedau_participation/results.md    mean +- std table
    experiments/results/fedau_participation/results.png   accuracy curves + FedAU weights vs 1/p_n

    python experiments/fedau_participation.py [--seeds 1 2 3] [--rounds 300] [--jobs 2]
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
STRATEGIES: dict[str, dict[str, Any]] = {  # label -> strategy config
    "FedAU (K=inf)": {"name": "fedau"},
    "FedAU (K=50)": {"name": "fedau", "cutoff": 50},
    "average participants": {"name": "fedavg_participating"},
    "divide by N": {"name": "fedavg_all"},
    "known p (oracle)": {"name": "fedavg_known"},
    "MIFA": {"name": "mifa"},
    "FedVARP": {"name": "fedvarp"},
}
PARTICIPATION = ("bernoulli", "markov", "cyclic")
LAST_EVALS = 4  # final accuracy = mean over the last evaluations (smooths round-to-round noise)


def run_one(args: tuple[str, str, int, int, str]) -> dict[str, Any]:
    label, participation, seed, rounds, config_path = args
    overrides = {"seed": seed, "rounds": rounds, "strategy": STRATEGIES[label],
                 "population": {"participation": participation},
                 "output": {"progress": False, "tensorboard": False}}
    config = load_config(config_path, values=overrides)
    experiment = build(config)
    start = time.perf_counter()
    experiment.run()
    history = experiment.engine.history
    tail = history[-LAST_EVALS:]
    row: dict[str, Any] = {
        "strategy": label, "participation": participation, "seed": seed, "rounds": rounds,
        "test_accuracy": statistics.fmean(h["test_accuracy"] for h in tail),
        "client_accuracy_mean": statistics.fmean(h.get("client_accuracy_mean", float("nan")) for h in tail),
        "client_accuracy_worst10": statistics.fmean(h.get("client_accuracy_worst10", float("nan")) for h in tail),
        "wall_s": time.perf_counter() - start,
        "curve": [(h["round"], h["test_accuracy"]) for h in history],
    }
    state = experiment.engine.state
    aggregator = experiment.engine.strategy.aggregator
    if hasattr(aggregator, "weights"):  # FedAU: learned weights vs the truth
        row["weights"] = aggregator.weights(state.aggregator, state.version).tolist()
        row["inv_p"] = (1.0 / experiment.population.participation.probabilities).tolist()
    return row


def write_table(rows: list[dict[str, Any]], out: Path) -> str:
    with (out / "results.csv").open("w", newline="") as f:
        fields = ["strategy", "participation", "seed", "rounds", "test_accuracy", "client_accuracy_mean",
                  "client_accuracy_worst10", "wall_s"]
        writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    lines = ["| strategy | " + " | ".join(PARTICIPATION) + " |", "|---|" + "---|" * len(PARTICIPATION)]
    for label in STRATEGIES:
        cells = []
        for participation in PARTICIPATION:
            acc = [r["test_accuracy"] for r in rows if r["strategy"] == label and r["participation"] == participation]
            if acc:
                std = statistics.stdev(acc) if len(acc) > 1 else 0.0
                cells.append(f"{100 * statistics.fmean(acc):.1f} ± {100 * std:.1f}")
            else:
                cells.append("")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    table = "\n".join(lines)
    (out / "results.md").write_text(
        "Test accuracy (%), mean ± std over seeds, averaged over the last "
        f"{LAST_EVALS} evaluations.\n\n{table}\n"
    )
    return table


def plot(rows: list[dict[str, Any]], out: Path) -> None:
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    fig, axes = plt.subplots(1, len(PARTICIPATION) + 1, figsize=(5 * (len(PARTICIPATION) + 1), 4.2))
    for ax, participation in zip(axes, PARTICIPATION):
        for label in STRATEGIES:
            curves = [r["curve"] for r in rows if r["strategy"] == label and r["participation"] == participation]
            if not curves:
                continue
            x = [p[0] for p in curves[0]]
            y = np.mean([[p[1] for p in c] for c in curves], axis=0)
            ax.plot(x, y, label=label, linestyle="--" if "oracle" in label else "-")
        ax.set_title(f"{participation} participation")
        ax.set_xlabel("round")
        ax.set_ylabel("test accuracy (mean over seeds)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    ax = axes[-1]
    weighted = [r for r in rows if r["strategy"] == "FedAU (K=inf)" and r["participation"] == "bernoulli" and "weights" in r]
    if weighted:
        r = weighted[0]
        ax.scatter(r["inv_p"], r["weights"], s=10, alpha=0.7)
        top = max(max(r["inv_p"]), max(r["weights"]))
        ax.plot([1, top], [1, top], color="grey", linestyle=":", label="omega = 1/p")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("1 / p_n (true)")
        ax.set_ylabel("FedAU weight omega_n (learned)")
        ax.set_title(f"FedAU weights after {r['rounds']} rounds (bernoulli, seed {r['seed']})")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "results.png", dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(HERE / "fedau_participation.yaml"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--rounds", type=int, default=None, help="default: the config's rounds")
    parser.add_argument("--jobs", type=int, default=2, help="parallel processes")
    parser.add_argument("--strategies", nargs="+", default=list(STRATEGIES), choices=list(STRATEGIES), metavar="LABEL")
    parser.add_argument("--participation", nargs="+", default=list(PARTICIPATION), choices=PARTICIPATION)
    parser.add_argument("--out", default=str(HERE / "results" / "fedau_participation"))
    args = parser.parse_args()
    rounds = args.rounds or load_config(args.config).rounds
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    runs = [(label, part, seed, rounds, args.config)
            for part in args.participation for label in args.strategies for seed in args.seeds]
    print(f"{len(runs)} runs ({len(args.strategies)} strategies x {len(args.participation)} participation models "
          f"x {len(args.seeds)} seeds), {rounds} rounds each, {args.jobs} processes")
    start = time.perf_counter()
    rows = []
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        for i, row in enumerate(pool.map(run_one, runs), 1):
            rows.append(row)
            print(f"[{i}/{len(runs)}] {row['participation']:<9} {row['strategy']:<22} seed {row['seed']}: "
                  f"test accuracy {row['test_accuracy']:.4f}", flush=True)
    print(write_table(rows, out))
    plot(rows, out)
    print(f"wrote {out}/results.csv, results.md, results.png in {time.perf_counter() - start:.0f}s")


if __name__ == "__main__":
    main()
