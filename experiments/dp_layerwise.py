"""DP federated learning on a deep model: flat vs per-layer vs per-layer normalized clipping,
server SGD vs server Adam, at equal epsilon.

Pelikan et al., "Enabling Differentially Private Federated Learning for Speech Recognition:
Benchmarks, Adaptive Optimizers and Gradient Clipping" (Apple 2023, arXiv 2310.00098; code
apple/ml-pfl4asr) report that on deep transformers, per-layer clipping with layer-wise
normalization plus an adaptive server optimizer (Adam/LAMB) closes most of the gap between
DP-FedAvg and non-private training. This script runs, on experiments/dp_layerwise.yaml (a
6-layer MLP on LEAF Synthetic IID, 10^5 lazily generated clients, Poisson cohorts of ~100):

- server optimizer: SGD lr 1.0 (``dp-fedavg``) or Adam lr 0.01 (``dp-fedadam``);
- clipping: ``flat``, ``per_layer``, ``per_layer_normalized`` (uniform layer budgets C/sqrt(L));
- epsilon 2, 8 (``privacy.target_epsilon``: z calibrated for the run's rounds, delta 1/N^1.1)
  and inf (clipping only, no noise);
- a non-private reference per optimizer (no clipping, no noise, same fixed denominator);

for several seeds, and writes:

    experiments/results/dp_layerwise/results.csv   one row per run (final/best accuracy, epsilon, z)
    experiments/results/dp_layerwise/results.md    mean ± std table
    experiments/results/dp_layerwise/results.png   final accuracy per cell, one panel per optimizer
    experiments/results/dp_layerwise/raw/<run>/    fedsim run folders (git-ignored)

    python experiments/dp_layerwise.py [--seeds 1 2 3] [--rounds 40] [--jobs 2]
    python experiments/dp_layerwise.py --quick            # 1 seed, 6 rounds: a smoke test
    python experiments/dp_layerwise.py --calibrate-clip   # median update norm of a non-private run
    python experiments/dp_layerwise.py --replot           # redraw results.png from results.csv
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from fedsim.config import load_config
from fedsim.run import build, run_experiment

HERE = Path(__file__).resolve().parent
OPTIMIZERS = {"server SGD": "dp-fedavg", "server Adam": "dp-fedadam"}  # label -> preset
CLIPPINGS = ("flat", "per_layer", "per_layer_normalized")
NON_PRIVATE = "non-private"  # clipping column of the reference runs (privacy off)
EPSILONS = (2.0, 8.0, math.inf)
LAST_EVALS = 2  # final accuracy = mean over the last evaluations (smooths round-to-round noise)


def cell_values(optimizer: str, clipping: str, epsilon: float, seed: int, rounds: int) -> dict[str, Any]:
    """Config values of one run on top of the yaml."""
    values: dict[str, Any] = {
        "seed": seed,
        "rounds": rounds,
        "strategy": {"name": OPTIMIZERS[optimizer]},
        "output": {"progress": False, "tensorboard": False},
    }
    if clipping == NON_PRIVATE:
        values["privacy"] = {"mode": "off", "target_epsilon": None}
    elif math.isinf(epsilon):
        values["privacy"] = {"clipping": clipping, "target_epsilon": None, "noise_multiplier": 0.0}
    else:
        values["privacy"] = {"clipping": clipping, "target_epsilon": epsilon}
    return values


def run_name(optimizer: str, clipping: str, epsilon: float, seed: int) -> str:
    return f"{OPTIMIZERS[optimizer]}-{clipping}-eps{epsilon:g}-seed{seed}"


def run_one(args: tuple[str, str, float, int, int, str, str, dict[str, Any] | None]) -> dict[str, Any]:
    optimizer, clipping, epsilon, seed, rounds, config_path, raw_dir, extra = args
    values = cell_values(optimizer, clipping, epsilon, seed, rounds)
    config = load_config(config_path, values=_merge(values, extra or {}))
    out = Path(raw_dir) / run_name(optimizer, clipping, epsilon, seed)
    start = time.perf_counter()
    summary, _ = run_experiment(config, out, overwrite=True)
    wall = time.perf_counter() - start
    evals = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    evals = [e for e in evals if e.get("test_accuracy") is not None]
    accuracy = [e["test_accuracy"] for e in evals]
    privacy = summary.get("privacy") or {}
    return {
        "optimizer": optimizer, "clipping": clipping, "epsilon": epsilon, "seed": seed, "rounds": rounds,
        "status": summary["status"],
        "final_accuracy": statistics.fmean(accuracy[-LAST_EVALS:]) if accuracy else float("nan"),
        "best_accuracy": max(accuracy) if accuracy else float("nan"),
        "epsilon_reached": privacy.get("epsilon") if privacy else None,
        "noise_multiplier": privacy.get("noise_multiplier", 0.0) if privacy else 0.0,
        "wall_s": wall,
        "curve": [(e["round"], e["test_accuracy"]) for e in evals],
    }  # fmt: skip


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def calibrate_clip(config_path: str, rounds: int, seed: int = 1) -> float:
    """Median L2 norm of the client deltas of a non-private server-SGD run (no clip binds, no noise)."""
    values = cell_values("server SGD", "flat", math.inf, seed, rounds)
    values["privacy"] |= {"clip": 1e9}
    experiment = build(load_config(config_path, values=values))
    norms: list[float] = []
    aggregate = experiment.engine.aggregate

    def recording(results, dropped=0):  # the clip transform reports each delta's norm before clipping
        norms.extend(r.metrics["update_norm"] for r in results if r.ok)
        return aggregate(results, dropped)

    experiment.engine.aggregate = recording
    experiment.run()
    return statistics.median(norms)


def _cells(rows: list[dict[str, Any]], optimizer: str, clipping: str, epsilon: float, key: str) -> list[float]:
    return [
        float(r[key])
        for r in rows
        if r["optimizer"] == optimizer
        and r["clipping"] == clipping
        and (clipping == NON_PRIVATE or float(r["epsilon"]) == epsilon)
    ]


def _mean_std(values: list[float]) -> str:
    if not values:
        return ""
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * statistics.fmean(values):.1f} ± {100 * std:.1f}"


def _gap(rows: list[dict[str, Any]], optimizer: str, clipping: str, epsilon: float) -> str:
    """Final accuracy minus the same seed's non-private run with the same optimizer (seeds differ in data)."""
    reference = {
        int(r["seed"]): float(r["final_accuracy"])
        for r in rows
        if r["optimizer"] == optimizer and r["clipping"] == NON_PRIVATE
    }
    gaps = [
        100 * (float(r["final_accuracy"]) - reference[int(r["seed"])])
        for r in rows
        if r["optimizer"] == optimizer
        and r["clipping"] == clipping
        and int(r["seed"]) in reference
        and (clipping == NON_PRIVATE or float(r["epsilon"]) == epsilon)
    ]
    if not gaps or clipping == NON_PRIVATE:
        return "—" if clipping == NON_PRIVATE else ""
    std = statistics.stdev(gaps) if len(gaps) > 1 else 0.0
    return f"{statistics.fmean(gaps):+.1f} ± {std:.1f}"


def write_table(rows: list[dict[str, Any]], out: Path) -> str:
    with (out / "results.csv").open("w", newline="") as f:
        fields = [
            "optimizer",
            "clipping",
            "epsilon",
            "seed",
            "rounds",
            "status",
            "final_accuracy",
            "best_accuracy",
            "epsilon_reached",
            "noise_multiplier",
            "wall_s",
        ]
        writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    lines = [
        "| optimizer | clipping | epsilon | final acc (%) | best acc (%) | gap to non-private (pts) | epsilon reached | z |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for optimizer in OPTIMIZERS:
        for clipping in (NON_PRIVATE, *CLIPPINGS):
            for epsilon in (math.inf,) if clipping == NON_PRIVATE else EPSILONS:
                final = _cells(rows, optimizer, clipping, epsilon, "final_accuracy")
                if not final:
                    continue
                best = _cells(rows, optimizer, clipping, epsilon, "best_accuracy")
                reached = [
                    r["epsilon_reached"]
                    for r in rows
                    if r["optimizer"] == optimizer
                    and r["clipping"] == clipping
                    and (clipping == NON_PRIVATE or float(r["epsilon"]) == epsilon)
                ]
                reached_text = (
                    "∞" if clipping == NON_PRIVATE or reached[0] in (None, "") else f"{float(reached[0]):.2f}"
                )
                z = _cells(rows, optimizer, clipping, epsilon, "noise_multiplier")
                eps_text = "—" if clipping == NON_PRIVATE else ("∞" if math.isinf(epsilon) else f"{epsilon:g}")
                gap = _gap(rows, optimizer, clipping, epsilon)
                lines.append(
                    f"| {optimizer} | {clipping} | {eps_text} | {_mean_std(final)} | {_mean_std(best)} | {gap} | "
                    f"{reached_text} | {statistics.fmean(z):.3f} |"
                )
    table = "\n".join(lines)
    seeds = sorted({int(r["seed"]) for r in rows})
    (out / "results.md").write_text(
        f"Test accuracy (%), mean ± std over seeds {seeds}; final = mean of the last {LAST_EVALS} evaluations, "
        f"best = best evaluation. z = noise multiplier calibrated for the run's rounds.\n\n{table}\n"
    )
    return table


def read_rows(out: Path) -> list[dict[str, Any]]:
    """The per-run rows of a previous run of this script (results.csv)."""
    with (out / "results.csv").open() as f:
        return [
            {
                **row,
                "seed": int(row["seed"]),
                "epsilon": float(row["epsilon"]),
                "rounds": int(row["rounds"]),
                "final_accuracy": float(row["final_accuracy"]),
                "best_accuracy": float(row["best_accuracy"]),
                "noise_multiplier": float(row["noise_multiplier"]),
            }
            for row in csv.DictReader(f)
        ]


def plot(rows: list[dict[str, Any]], out: Path) -> None:
    """Final accuracy vs epsilon, one line per clipping, one panel per server optimizer; the dashed
    line is the non-private reference."""
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    fig, axes = plt.subplots(1, len(OPTIMIZERS), figsize=(10, 4), sharey=True)
    epsilons = [
        eps for eps in EPSILONS if any(r["clipping"] != NON_PRIVATE and float(r["epsilon"]) == eps for r in rows)
    ]
    positions = {eps: i for i, eps in enumerate(epsilons)}
    for ax, optimizer in zip(axes, OPTIMIZERS):
        reference = _cells(rows, optimizer, NON_PRIVATE, math.inf, "final_accuracy")
        if reference:
            ax.axhline(100 * statistics.fmean(reference), color="k", ls="--", lw=1, label="non-private")
        for offset, clipping in zip((-0.08, 0.0, 0.08), CLIPPINGS):
            xs, means, stds = [], [], []
            for eps in epsilons:
                acc = [100 * a for a in _cells(rows, optimizer, clipping, eps, "final_accuracy")]
                if acc:
                    xs.append(positions[eps] + offset)
                    means.append(statistics.fmean(acc))
                    stds.append(statistics.stdev(acc) if len(acc) > 1 else 0.0)
            if xs:
                ax.errorbar(xs, means, yerr=stds, marker="o", capsize=3, label=clipping)
        ax.set_xticks(range(len(epsilons)), ["ε=∞ (clip only)" if math.isinf(e) else f"ε={e:g}" for e in epsilons])
        ax.set_title(optimizer)
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel("final test accuracy (%)")
    axes[-1].legend(fontsize=9, loc="lower right")
    seeds = sorted({int(r["seed"]) for r in rows})
    fig.suptitle(
        f"6-layer MLP, Synthetic IID, N=10^5, cohort ~100, {rows[0]['rounds']} rounds; "
        f"mean ± std over {len(seeds)} seeds",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(out / "results.png", dpi=110)
    plt.close(fig)


class _InProcess:
    """``--jobs 1``: run the cells here, one after the other (no worker process to import this file)."""

    def __enter__(self) -> _InProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def map(self, fn, items):
        return map(fn, items)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(HERE / "dp_layerwise.yaml"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--rounds", type=int, default=None, help="default: the config's rounds")
    parser.add_argument("--jobs", type=int, default=2, help="parallel processes")
    parser.add_argument("--epsilons", type=float, nargs="+", default=list(EPSILONS), help="inf = clipping, no noise")
    parser.add_argument("--optimizers", nargs="+", default=list(OPTIMIZERS), choices=list(OPTIMIZERS))
    parser.add_argument("--clippings", nargs="+", default=[NON_PRIVATE, *CLIPPINGS], choices=[NON_PRIVATE, *CLIPPINGS])
    parser.add_argument("--quick", action="store_true", help="1 seed, 6 rounds: checks the pipeline, not the claim")
    parser.add_argument("--out", default=str(HERE / "results" / "dp_layerwise"))
    parser.add_argument("--calibrate-clip", action="store_true", help="print the median update norm and exit")
    parser.add_argument("--replot", action="store_true", help="only redraw results.png from results.csv")
    args = parser.parse_args(argv)
    out = Path(args.out)
    if args.replot:
        plot(read_rows(out), out)
        print(f"wrote {out}/results.png")
        return
    rounds = args.rounds or load_config(args.config).rounds
    if args.calibrate_clip:
        print(f"median update norm over {rounds} non-private rounds: {calibrate_clip(args.config, rounds):.4f}")
        return
    seeds = args.seeds
    if args.quick:
        seeds, rounds = seeds[:1], args.rounds or 6
    out.mkdir(parents=True, exist_ok=True)
    runs = [
        (opt, clipping, eps, seed, rounds, args.config, str(out / "raw"), None)
        for seed in seeds
        for opt in args.optimizers
        for clipping in args.clippings
        for eps in ((math.inf,) if clipping == NON_PRIVATE else args.epsilons)
    ]
    print(f"{len(runs)} runs, {rounds} rounds each, {args.jobs} processes")
    start = time.perf_counter()
    rows = []
    with ProcessPoolExecutor(max_workers=args.jobs) if args.jobs > 1 else _InProcess() as pool:
        for i, row in enumerate(pool.map(run_one, runs), 1):
            rows.append(row)
            print(
                f"[{i}/{len(runs)}] {row['optimizer']:<11} {row['clipping']:<20} eps {row['epsilon']:<4g} "
                f"seed {row['seed']}: final {100 * row['final_accuracy']:.1f} best {100 * row['best_accuracy']:.1f} "
                f"({row['status']}, {row['wall_s']:.0f}s)",
                flush=True,
            )
            write_table(rows, out)  # after every run: an interrupted sweep keeps what it finished
    print(write_table(rows, out))
    plot(rows, out)
    print(f"wrote {out}/results.csv, results.md, results.png in {time.perf_counter() - start:.0f}s")


if __name__ == "__main__":
    main()
