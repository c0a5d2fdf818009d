"""Reproduce the FedAU paper's qualitative claim offline: FedAU vs its baselines.

Wang & Ji, "A Lightweight Method for Tackling Unknown Participation Statistics in Federated
Averaging" (arXiv 2306.03401). Runs FedAU (K -> infinity and K = 50) and the baselines
(average over participants, divide by N, known probabilities (oracle), MIFA, FedVARP) under
Bernoulli, Markov and cyclic participation for several seeds, on the config in
experiments/fedau_participation.yaml, and writes:

    experiments/results/fedau_participation/results.csv   one row per run
    experiments/results/fedau_participation/results.md    mean +- std table
    experiments/results/fedau_participation/results.png   final accuracy per seed, mean ± std

    python experiments/fedau_participation.py [--seeds 1 2 3] [--rounds 300] [--jobs 2]
    python experiments/fedau_participation.py --replot     # redraw results.png from results.csv
"""

from __future__ import annotations

import argparse
import csv
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

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
    overrides = {
        "seed": seed,
        "rounds": rounds,
        "strategy": STRATEGIES[label],
        "population": {"participation": participation},
        "output": {"progress": False, "tensorboard": False},
    }
    config = load_config(config_path, values=overrides)
    experiment = build(config)
    start = time.perf_counter()
    experiment.run()
    history = experiment.engine.history
    tail = history[-LAST_EVALS:]
    row: dict[str, Any] = {
        "strategy": label,
        "participation": participation,
        "seed": seed,
        "rounds": rounds,
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
        fields = [
            "strategy",
            "participation",
            "seed",
            "rounds",
            "test_accuracy",
            "client_accuracy_mean",
            "client_accuracy_worst10",
            "wall_s",
        ]
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
        f"Test accuracy (%), mean ± std over seeds, averaged over the last {LAST_EVALS} evaluations.\n\n{table}\n"
    )
    return table


def read_rows(out: Path) -> list[dict[str, Any]]:
    """The per-run rows of a previous run of this script (results.csv)."""
    with (out / "results.csv").open() as f:
        return [
            {**row, "seed": int(row["seed"]), "test_accuracy": float(row["test_accuracy"])} for row in csv.DictReader(f)
        ]


def plot(rows: list[dict[str, Any]], out: Path) -> None:
    """Final accuracy per strategy and participation model: one dot per seed, mean ± std bar.

    The x axis is zoomed on the competitive strategies (the gaps that matter are 1-2 points);
    a strategy far below is printed as text at the left edge instead of squashing the axis.
    """
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    labels = [label for label in STRATEGIES if any(r["strategy"] == label for r in rows)]
    participations = [p for p in PARTICIPATION if any(r["participation"] == p for r in rows)]
    means = [
        statistics.fmean(r["test_accuracy"] for r in rows if r["strategy"] == lab and r["participation"] == p)
        for lab in labels
        for p in participations
        if any(r["strategy"] == lab and r["participation"] == p for r in rows)
    ]
    top = 100 * max(means) + 1.5
    low = 100 * sorted(means)[len(means) // 4] - 3.0  # most strategies in view; outliers as text
    plt.rcParams.update({"font.size": 11})
    fig, axes = plt.subplots(
        1,
        len(participations),
        figsize=(3.2 * len(participations) + 1.8, 0.45 * len(labels) + 1.5),
        sharey=True,
        squeeze=False,
    )
    for ax, participation in zip(axes[0], participations):
        for y, label in enumerate(labels):
            acc = [
                100 * r["test_accuracy"] for r in rows if r["strategy"] == label and r["participation"] == participation
            ]
            if not acc:
                continue
            mean = statistics.fmean(acc)
            std = statistics.stdev(acc) if len(acc) > 1 else 0.0
            color = "tab:red" if label.startswith("FedAU") else ("tab:gray" if "oracle" in label else "tab:blue")
            if mean < low:
                ax.text(low + 0.1, y, f"← {mean:.1f} ± {std:.1f}", va="center", fontsize=10, color=color)
                continue
            ax.scatter(acc, [y] * len(acc), s=14, color=color, alpha=0.45, zorder=2)
            ax.errorbar(mean, y, xerr=std, fmt="o", color=color, markersize=6, capsize=3, zorder=3)
            ax.text(top - 0.1, y, f"{mean:.1f}", va="center", ha="right", fontsize=10)
        ax.set_xlim(low, top)
        ax.set_title(f"{participation} participation", fontsize=11)
        ax.set_xlabel("test accuracy (%)")
        ax.grid(axis="x", alpha=0.3)
    axes[0][0].set_yticks(range(len(labels)), labels)
    axes[0][0].invert_yaxis()
    seeds = sorted({r["seed"] for r in rows})
    rounds = rows[0]["rounds"]
    fig.suptitle(
        f"digits, {rounds} rounds; accuracy = mean of the last {LAST_EVALS} evaluations; "
        f"dots: {len(seeds)} seeds, bar: mean ± std",
        fontsize=11,
    )
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
    parser.add_argument("--replot", action="store_true", help="only redraw results.png from results.csv")
    args = parser.parse_args()
    if args.replot:
        plot(read_rows(Path(args.out)), Path(args.out))
        print(f"wrote {args.out}/results.png")
        return
    rounds = args.rounds or load_config(args.config).rounds
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    runs = [
        (label, part, seed, rounds, args.config)
        for part in args.participation
        for label in args.strategies
        for seed in args.seeds
    ]
    print(
        f"{len(runs)} runs ({len(args.strategies)} strategies x {len(args.participation)} participation models "
        f"x {len(args.seeds)} seeds), {rounds} rounds each, {args.jobs} processes"
    )
    start = time.perf_counter()
    rows = []
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        for i, row in enumerate(pool.map(run_one, runs), 1):
            rows.append(row)
            print(
                f"[{i}/{len(runs)}] {row['participation']:<9} {row['strategy']:<22} seed {row['seed']}: "
                f"test accuracy {row['test_accuracy']:.4f}",
                flush=True,
            )
    print(write_table(rows, out))
    plot(rows, out)
    print(f"wrote {out}/results.csv, results.md, results.png in {time.perf_counter() - start:.0f}s")


if __name__ == "__main__":
    main()
