"""Personalized FL on digits: FedAvg, FedAvg + fine-tuning, APFL, Ditto, FedPer, FedRep.

Every client is evaluated on its own held-out split by its own model (``eval.per_client``
with a personalizing client algorithm, or ``eval.finetune_steps``): the table reports the
mean and worst-10% of those accuracies, the global model's on the same splits, and its
accuracy on the global test set. Partitions: Dirichlet 0.1, Dirichlet 1.0 and the
pathological 2 classes per client (``data.partition: shards``); Bernoulli participation
(mean 0.1) on 50 clients; 3 seeds. The config is experiments/personalization.yaml.

Sized to finish in ~30 minutes on 2 CPU cores: 50 clients with ~29 training samples each,
100 rounds of 10 local steps. The papers use 100-1000 clients, CIFAR/FEMNIST and hundreds to
thousands of rounds; this is a small, honest replica of the comparison, not of their numbers.

    experiments/results/personalization/results.csv   one row per run
    experiments/results/personalization/results.md    mean ± std table
    experiments/results/personalization/results.png   personalized vs global accuracy
    experiments/results/personalization/raw/          the run folders (git-ignored; `fedsim table` reads them)

    python experiments/personalization.py [--seeds 1 2 3] [--rounds 100] [--jobs 2]
    python experiments/personalization.py --quick          # 1 seed, 6 rounds, 2 partitions: a smoke run
    python experiments/personalization.py --replot         # redraw results.png from results.csv
"""

from __future__ import annotations

import argparse
import csv
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import torch

from fedsim.config import deep_merge, load_config
from fedsim.run import run_experiment

HERE = Path(__file__).resolve().parent
METHODS: dict[str, dict[str, Any]] = {  # label -> config overrides
    "FedAvg": {},
    "FedAvg + fine-tune (10 steps)": {"eval": {"finetune_steps": 10}},
    "local models (APFL, alpha=1)": {"client": {"algorithm": "apfl", "alpha": 1.0}},
    "APFL (alpha=0.25 fixed)": {"client": {"algorithm": "apfl", "alpha": 0.25}},
    "APFL (adaptive alpha)": {"client": {"algorithm": "apfl", "alpha": 0.5, "alpha_lr": 0.05}},
    "Ditto (lambda=0.1)": {"client": {"algorithm": "ditto", "lamb": 0.1}},
    "FedPer": {"client": {"algorithm": "fedper"}},
    "FedRep (10 head steps)": {"client": {"algorithm": "fedrep", "head_steps": 10}},
}
PARTITIONS: dict[str, dict[str, Any]] = {
    "dirichlet 0.1": {"partition": "dirichlet", "alpha": 0.1},
    "dirichlet 1.0": {"partition": "dirichlet", "alpha": 1.0},
    "2 classes/client": {"partition": "shards", "shards_per_client": 2},
}
COLUMNS = ("client_accuracy_mean", "client_accuracy_worst10", "global_client_accuracy_mean", "test_accuracy")
TITLES = ("personalized mean", "personalized worst 10%", "global model, client mean", "global model, test set")


def run_one(args: tuple[str, str, int, int, str, str]) -> dict[str, Any]:
    label, partition, seed, rounds, config_path, raw = args
    torch.set_num_threads(
        1
    )  # a tiny MLP in 2 processes on 2 cores: more threads only contend (evaluation, fine-tuning)
    overrides = deep_merge(
        METHODS[label],
        {
            "seed": seed,
            "rounds": rounds,
            "data": PARTITIONS[partition],
            "output": {"progress": False, "tensorboard": False},
        },
    )
    config = load_config(config_path, values=overrides)
    name = f"{label}-{partition}-s{seed}".replace(" ", "_").replace("/", "_per_").replace("(", "").replace(")", "")
    start = time.perf_counter()
    summary, _ = run_experiment(config, out_dir=Path(raw) / name, overwrite=True)
    final = summary["final"]
    row: dict[str, Any] = {
        "method": label,
        "partition": partition,
        "seed": seed,
        "rounds": rounds,
        "clients_unseen": final.get("clients_unseen", 0),
        "wall_s": time.perf_counter() - start,
    }
    for key in COLUMNS:
        # FedAvg has no personal model: its clients' model is the global one
        row[key] = final.get(key, final.get(key.replace("global_", ""))) if key != "test_accuracy" else final[key]
    return row


def _cell(values: list[float]) -> str:
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * statistics.fmean(values):.1f} ± {100 * std:.1f}"


def write_table(rows: list[dict[str, Any]], out: Path) -> str:
    with (out / "results.csv").open("w", newline="") as f:
        writer = csv.DictWriter(
            f, fieldnames=["method", "partition", "seed", "rounds", *COLUMNS, "clients_unseen", "wall_s"]
        )
        writer.writeheader()
        writer.writerows(rows)
    parts = [p for p in PARTITIONS if any(r["partition"] == p for r in rows)]
    blocks = []
    for partition in parts:
        lines = [f"**{partition}**", "", "| method | " + " | ".join(TITLES) + " |", "|---|" + "---|" * len(TITLES)]
        for label in METHODS:
            group = [r for r in rows if r["method"] == label and r["partition"] == partition]
            if group:
                lines.append(f"| {label} | " + " | ".join(_cell([float(r[k]) for r in group]) for k in COLUMNS) + " |")
        blocks.append("\n".join(lines))
    seeds = sorted({int(r["seed"]) for r in rows})
    table = "\n\n".join(blocks)
    (out / "results.md").write_text(
        f"Accuracy (%) after {rows[0]['rounds']} rounds, mean ± std over seeds {seeds}: each client's own model on its "
        "own test split (mean, mean of the worst 10% of clients), the global model on the same splits, and the "
        f"global model on the global test set.\n\n{table}\n"
    )
    return table


def read_rows(out: Path) -> list[dict[str, Any]]:
    with (out / "results.csv").open() as f:
        return [{**row, **{k: float(row[k]) for k in COLUMNS}, "seed": int(row["seed"])} for row in csv.DictReader(f)]


def plot(rows: list[dict[str, Any]], out: Path) -> None:
    """Per partition: personalized mean and worst-10% accuracy per method, the global model's as a marker."""
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    parts = [p for p in PARTITIONS if any(r["partition"] == p for r in rows)]
    labels = [m for m in METHODS if any(r["method"] == m for r in rows)]
    fig, axes = plt.subplots(
        1, len(parts), figsize=(4.2 * len(parts) + 2.2, 0.45 * len(labels) + 1.6), sharey=True, squeeze=False
    )
    for ax, partition in zip(axes[0], parts):
        for y, label in enumerate(labels):
            group = [r for r in rows if r["method"] == label and r["partition"] == partition]
            if not group:
                continue
            for key, color, marker, dy in (
                ("client_accuracy_mean", "tab:blue", "o", -0.15),
                ("client_accuracy_worst10", "tab:red", "v", 0.0),
                ("global_client_accuracy_mean", "tab:gray", "s", 0.15),
            ):
                values = [100 * float(r[key]) for r in group]
                std = statistics.stdev(values) if len(values) > 1 else 0.0
                ax.errorbar(
                    statistics.fmean(values),
                    y + dy,
                    xerr=std,
                    fmt=marker,
                    color=color,
                    markersize=5,
                    capsize=2,
                    label=key if y == 0 else None,
                )
        ax.set_title(partition, fontsize=11)
        ax.set_xlabel("accuracy (%)")
        ax.grid(axis="x", alpha=0.3)
    axes[0][0].set_yticks(range(len(labels)), labels)
    axes[0][0].invert_yaxis()
    handles, names = axes[0][0].get_legend_handles_labels()
    fig.legend(
        handles,
        ["personalized, client mean", "personalized, worst 10%", "global model, client mean"],
        loc="lower center",
        ncol=3,
        fontsize=9,
    )
    fig.suptitle(
        f"digits, 50 clients, Bernoulli 0.1, {rows[0]['rounds']} rounds; "
        f"{len({r['seed'] for r in rows})} seeds, mean ± std",
        fontsize=11,
    )
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    fig.savefig(out / "results.png", dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(HERE / "personalization.yaml"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--rounds", type=int, default=None, help="default: the config's rounds")
    parser.add_argument("--jobs", type=int, default=2, help="parallel processes")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS), metavar="LABEL")
    parser.add_argument("--partitions", nargs="+", default=list(PARTITIONS), choices=list(PARTITIONS), metavar="NAME")
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 seed, 6 rounds, 2 partitions")
    parser.add_argument("--out", default=str(HERE / "results" / "personalization"))
    parser.add_argument("--replot", action="store_true", help="only redraw results.png from results.csv")
    args = parser.parse_args(argv)
    out = Path(args.out)
    if args.replot:
        plot(read_rows(out), out)
        print(f"wrote {out}/results.png")
        return
    if args.quick:
        args.seeds, args.rounds, args.partitions = args.seeds[:1], args.rounds or 6, args.partitions[::2]
    rounds = args.rounds or load_config(args.config).rounds
    out.mkdir(parents=True, exist_ok=True)
    runs = [
        (label, part, seed, rounds, args.config, str(out / "raw"))
        for part in args.partitions
        for label in args.methods
        for seed in args.seeds
    ]
    print(
        f"{len(runs)} runs ({len(args.methods)} methods x {len(args.partitions)} partitions x {len(args.seeds)} seeds), "
        f"{rounds} rounds each, {args.jobs} processes"
    )
    start = time.perf_counter()
    rows = []
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        results = pool.map(run_one, runs) if args.jobs > 1 else map(run_one, runs)  # --jobs 1: in this process
        for i, row in enumerate(results, 1):
            rows.append(row)
            print(
                f"[{i}/{len(runs)}] {row['partition']:<16} {row['method']:<30} seed {row['seed']}: personalized "
                f"{row['client_accuracy_mean']:.3f} (worst10 {row['client_accuracy_worst10']:.3f}), "
                f"global {row['global_client_accuracy_mean']:.3f}, {row['wall_s']:.0f}s",
                flush=True,
            )
    print(write_table(rows, out))
    plot(rows, out)
    print(f"wrote {out}/results.csv, results.md, results.png in {time.perf_counter() - start:.0f}s")


if __name__ == "__main__":
    main()
