"""FedSpeed vs its FL-Simulator peers under label skew: accuracy and per-round cost, offline.

Sun et al., "FedSpeed: Larger Local Interval, Less Communication Round, and Higher
Generalization Accuracy" (ICLR 2023, arXiv 2302.10429) report on CIFAR-10 (FL-Simulator
README): FedSpeed >= MoFedSAM > SCAFFOLD, FedDyn > FedAvg ~ FedProx, as best-over-rounds
("Top-1") test accuracy. This script runs FedAvg, FedProx, SCAFFOLD, FedDyn, FedSAM, MoFedSAM
and FedSpeed (each preset with its FL-Simulator defaults: lr 0.1 decayed 0.998/round, FedDyn
0.9995, weight decay 1e-3, clip 10, mu = lamb = rho = 0.1, alpha 0.1) on the scaled-down
setting of experiments/fedspeed_noniid.yaml (digits MLP, 100 clients, 10 per round, 5 local
epochs) for Dirichlet 0.1, Dirichlet 0.6 and IID splits and several seeds. FedAvg here is
the ``sgd`` client with the same clip / weight decay / lr decay and an unweighted mean (the
reference's FedAvg). Each (partition, seed) builds its task once and every algorithm trains
on it. Writes:

    experiments/results/fedspeed_noniid/results.csv   one row per run
    experiments/results/fedspeed_noniid/results.md    best and final accuracy, mean +- std; s/round
    experiments/results/fedspeed_noniid/results.png   accuracy curves per partition

    python experiments/fedspeed_noniid.py [--seeds 1 2 3] [--rounds 30] [--executor vmap]
"""

from __future__ import annotations

import argparse
import csv
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedsim.config import load_config
from fedsim.run import build, task_spec
from fedsim.tasks import build_task
from strategies import FL_SIMULATOR_CLIENT

HERE = Path(__file__).resolve().parent
ALGORITHMS: dict[str, dict[str, Any]] = {  # label -> config values
    "FedAvg": {"strategy": {"name": "fedavg_participating"}, "client": {"algorithm": "sgd", **FL_SIMULATOR_CLIENT}},
    "FedProx": {"strategy": {"name": "fedprox"}},
    "SCAFFOLD": {"strategy": {"name": "scaffold"}},
    "FedDyn": {"strategy": {"name": "feddyn"}},
    "FedSAM": {"strategy": {"name": "fedsam"}},
    "MoFedSAM": {"strategy": {"name": "mofedsam"}},
    "FedSpeed": {"strategy": {"name": "fedspeed"}},
}
PARTITIONS: dict[str, dict[str, Any]] = {
    "Dir-0.1": {"partition": "dirichlet", "alpha": 0.1},
    "Dir-0.6": {"partition": "dirichlet", "alpha": 0.6},
    "IID": {"partition": "iid"},
}
LAST_EVALS = 5  # final accuracy = mean over the last evaluations (smooths round-to-round noise)


def config_for(path: str, label: str, partition: str, seed: int, rounds: int, executor: str):
    values = ALGORITHMS[label] | {
        "seed": seed, "rounds": rounds, "data": PARTITIONS[partition], "executor": {"name": executor},
        "output": {"progress": False, "tensorboard": False},
    }  # fmt: skip
    config = load_config(path, values=values)
    file_client = load_config(path).client  # the yaml's local work wins over the preset's
    for key in ("local_epochs", "batch_size", "lr"):
        setattr(config.client, key, getattr(file_client, key))
    return config


def run_partition_seed(
    path: str, labels: list[str], partition: str, seed: int, rounds: int, executor: str
) -> list[dict[str, Any]]:
    rows = []
    task = build_task(task_spec(config_for(path, labels[0], partition, seed, rounds, executor)))
    for label in labels:
        config = config_for(path, label, partition, seed, rounds, executor)
        torch.manual_seed(seed)
        experiment = build(config, task=task)
        start = time.perf_counter()
        experiment.run()
        wall = time.perf_counter() - start
        history = experiment.engine.history
        accuracy = [h["test_accuracy"] for h in history]
        rows.append({
            "algorithm": label, "partition": partition, "seed": seed, "rounds": rounds,
            "best_accuracy": max(accuracy),
            "final_accuracy": statistics.fmean(accuracy[-LAST_EVALS:]),
            "s_per_round": wall / rounds,
            "dropouts": experiment.engine.dropouts if hasattr(experiment.engine, "dropouts") else 0,
            "curve": [(h["round"], h["test_accuracy"]) for h in history],
        })  # fmt: skip
        print(
            f"{partition:<8} {label:<9} seed {seed}: best {100 * rows[-1]['best_accuracy']:.1f}  final "
            f"{100 * rows[-1]['final_accuracy']:.1f}  {1000 * rows[-1]['s_per_round']:.0f} ms/round",
            flush=True,
        )
    return rows


def _cell(values: list[float]) -> str:
    if not values:
        return ""
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * statistics.fmean(values):.1f} ± {100 * std:.1f}"


def write_table(rows: list[dict[str, Any]], out: Path, labels: list[str], partitions: list[str]) -> str:
    with (out / "results.csv").open("w", newline="") as f:
        fields = ["algorithm", "partition", "seed", "rounds", "best_accuracy", "final_accuracy", "s_per_round"]
        writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    header = "| algorithm | " + " | ".join(f"{p} best | {p} final" for p in partitions) + " | s/round | × FedAvg |"
    lines = [header, "|---|" + "---|---|" * len(partitions) + "---|---|"]
    cost = {label: statistics.fmean(r["s_per_round"] for r in rows if r["algorithm"] == label) for label in labels}
    for label in labels:
        cells = []
        for p in partitions:
            sel = [r for r in rows if r["algorithm"] == label and r["partition"] == p]
            cells += [_cell([r["best_accuracy"] for r in sel]), _cell([r["final_accuracy"] for r in sel])]
        ratio = cost[label] / cost["FedAvg"] if "FedAvg" in cost else float("nan")
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {cost[label]:.3f} | {ratio:.2f} |")
    table = "\n".join(lines)
    seeds = sorted({r["seed"] for r in rows})
    (out / "results.md").write_text(
        f"Test accuracy (%), mean ± std over seeds {seeds}; best = max over rounds (the reference's Top-1), "
        f"final = mean of the last {LAST_EVALS} rounds; s/round = wall-clock seconds per round (mean over all "
        f"runs, training + evaluation).\n\n{table}\n"
    )
    return table


def plot(rows: list[dict[str, Any]], out: Path, labels: list[str], partitions: list[str]) -> None:
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    fig, axes = plt.subplots(1, len(partitions), figsize=(5 * len(partitions), 4.2), squeeze=False)
    for ax, p in zip(axes[0], partitions):
        for label in labels:
            curves = [r["curve"] for r in rows if r["algorithm"] == label and r["partition"] == p]
            if curves:
                x = [c[0] for c in curves[0]]
                ax.plot(x, np.mean([[c[1] for c in curve] for curve in curves], axis=0), label=label)
        ax.set_title(p)
        ax.set_xlabel("round")
        ax.set_ylabel("test accuracy (mean over seeds)")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "results.png", dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(HERE / "fedspeed_noniid.yaml"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--rounds", type=int, default=None, help="default: the config's rounds")
    parser.add_argument("--executor", default="vmap", help="serial | vmap | ray")
    parser.add_argument("--algorithms", nargs="+", default=list(ALGORITHMS), choices=list(ALGORITHMS), metavar="LABEL")
    parser.add_argument("--partitions", nargs="+", default=list(PARTITIONS), choices=list(PARTITIONS))
    parser.add_argument("--out", default=str(HERE / "results" / "fedspeed_noniid"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    rounds = args.rounds or load_config(args.config).rounds
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    total = len(args.algorithms) * len(args.partitions) * len(args.seeds)
    print(
        f"{total} runs ({len(args.algorithms)} algorithms x {len(args.partitions)} partitions x "
        f"{len(args.seeds)} seeds), {rounds} rounds each, executor {args.executor}"
    )
    start = time.perf_counter()
    rows: list[dict[str, Any]] = []
    for partition in args.partitions:
        for seed in args.seeds:
            rows += run_partition_seed(args.config, args.algorithms, partition, seed, rounds, args.executor)
    print(write_table(rows, out, args.algorithms, args.partitions))
    plot(rows, out, args.algorithms, args.partitions)
    print(f"wrote {out}/results.csv, results.md, results.png in {time.perf_counter() - start:.0f}s")


if __name__ == "__main__":
    main()
