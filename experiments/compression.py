"""Compressed uploads: accuracy against rounds, bytes uploaded and virtual time.

FedAvg on the digits CNN (tensors of 10 to 32,768 entries), 50 clients, Dirichlet(0.5), 10 per
round, over lognormal client links (median uplink 1 Mbit/s, sigma 1, downlink 5x, 50 ms
latency), so that the upload time of a compressed update changes when a round ends. Rows: no
compression; top-k 1 % and 10 % with and without error feedback; QSGD with 4 and 8 levels;
sign with error feedback; PowerSGD rank 1 and 4; L-GreCo (PowerSGD ranks around 2) at error
budgets 1 and 2.

Literature expectation: error feedback recovers most of top-k's and sign's loss of accuracy
(Karimireddy et al. 2019, Stich et al. 2018); PowerSGD of low rank with error feedback is close
to uncompressed per round at a fraction of the bytes (Vogels et al. 2019); L-GreCo at budget 1
moves fewer bytes than uniform PowerSGD at the same rank for about the same error (Markov et al.
2024). Per round, compression can only lose accuracy; per byte and per virtual second it gains.

Writes experiments/results/compression/results.{csv,md,png}; raw per-run curves in raw/.

    python experiments/compression.py [--seeds 1 2 3] [--jobs 2] [--quick]

Sized for ~30 CPU-minutes on 2 cores (12 rows x 3 seeds x 10 rounds: the machine is shared, so it is kept short); ``--quick`` runs 2
rounds of 3 rows with one seed (the test suite's smoke test).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

from grid import format_mean_std, run_grid, write_csv

HERE = Path(__file__).resolve().parent
ROWS: dict[str, dict[str, Any]] = {  # label -> communication.* overrides
    "none": {},
    "top-k 1%": {"compressor": "topk", "ratio": 0.01, "error_feedback": False},
    "top-k 1% + EF": {"compressor": "topk", "ratio": 0.01, "error_feedback": True},
    "top-k 10%": {"compressor": "topk", "ratio": 0.10, "error_feedback": False},
    "top-k 10% + EF": {"compressor": "topk", "ratio": 0.10, "error_feedback": True},
    "QSGD s=4": {"compressor": "qsgd", "levels": 4},
    "QSGD s=8": {"compressor": "qsgd", "levels": 8},
    "sign + EF": {"compressor": "sign", "error_feedback": True},
    "PowerSGD r=1": {"compressor": "powersgd", "rank": 1},
    "PowerSGD r=4": {"compressor": "powersgd", "rank": 4},
    "L-GreCo r=2, alpha=1": {"compressor": "lgreco", "rank": 2, "error_budget": 1.0},
    "L-GreCo r=2, alpha=2": {"compressor": "lgreco", "rank": 2, "error_budget": 2.0},
}
QUICK_ROWS = ["none", "top-k 10% + EF", "PowerSGD r=1"]


def run_one(args: tuple[str, int, str, int | None]) -> dict[str, Any]:
    from fedsim.config import load_config  # noqa: PLC0415  (in the worker process)
    from fedsim.run import build  # noqa: PLC0415

    label, seed, config_path, rounds = args
    values: dict[str, Any] = {"seed": seed, "communication": ROWS[label], "executor": {"name": "serial"}}
    if rounds is not None:
        values |= {"rounds": rounds, "eval": {"every": 1}}
    experiment = build(load_config(config_path, values=values))
    start = time.perf_counter()
    summary = experiment.run()
    history = experiment.engine.history
    return {
        "label": label,
        "seed": seed,
        "final_accuracy": history[-1]["test_accuracy"],
        "bytes_up": summary["bytes_up"],
        "bytes_down": summary["bytes_down"],
        "virtual_time": summary["virtual_time"],
        "rounds": summary["rounds"],
        "wall_s": time.perf_counter() - start,
        "curve": [{k: h[k] for k in ("round", "virtual_time", "bytes_up", "test_accuracy")} for h in history],
    }


def report(results: list[dict[str, Any]], out: Path) -> str:
    labels = [label for label in ROWS if any(r["label"] == label for r in results)]
    dense = [r["bytes_up"] for r in results if r["label"] == "none"]
    lines = ["| compression | final accuracy | uploaded (MB) | vs none | virtual time (s) |", "|---|---|---|---|---|"]
    fields = ("label", "seed", "final_accuracy", "bytes_up", "bytes_down", "virtual_time", "rounds", "wall_s")
    write_csv(out / "results.csv", results, fields)
    for label in labels:
        mine = [r for r in results if r["label"] == label]
        up = statistics.fmean(r["bytes_up"] for r in mine)
        ratio = f"{statistics.fmean(dense) / up:.1f}x less" if dense and label != "none" else "—"
        lines.append(
            f"| {label} | {format_mean_std([r['final_accuracy'] for r in mine])} | {up / 1e6:.3f} | {ratio} | "
            f"{format_mean_std([r['virtual_time'] for r in mine], '{:.1f}')} |"
        )
    table = "\n".join(lines)
    seeds = sorted({r["seed"] for r in results})
    (out / "results.md").write_text(
        f"Final test accuracy (mean ± std over seeds {seeds}), bytes uploaded in the run "
        f"(fp32 = 4 B/entry; see docs/pages/communication.md for each compressor's count), "
        f"virtual time of the run.\n\n{table}\n"
    )
    _plot(results, labels, out / "results.png")
    return table


def _plot(results: list[dict[str, Any]], labels: list[str], path: Path) -> None:
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415
    import numpy as np  # noqa: PLC0415

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.8), sharey=True)
    for label in labels:
        curves = [r["curve"] for r in results if r["label"] == label]
        acc = np.mean([[p["test_accuracy"] for p in c] for c in curves], axis=0)
        style = "-" if label == "none" else "--" if "EF" in label or "PowerSGD" in label or "L-GreCo" in label else ":"
        for ax, key, scale in zip(axes, ("round", "bytes_up", "virtual_time"), (1.0, 1e-6, 1.0)):
            x = np.mean([[p[key] for p in c] for c in curves], axis=0) * scale
            ax.plot(x, acc, style, marker="o", markersize=2, label=label)
    for ax, name in zip(axes, ("round", "MB uploaded (all clients)", "virtual time (s)")):
        ax.set_xlabel(name)
        ax.grid(alpha=0.3)
    axes[1].set_xscale("log")
    axes[0].set_ylabel("test accuracy (mean over seeds)")
    axes[2].legend(fontsize=7, loc="lower right")
    fig.suptitle("FedAvg, digits CNN, 50 clients, lognormal links: compressed uploads")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(HERE / "compression.yaml"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS), metavar="LABEL")
    parser.add_argument("--quick", action="store_true", help="2 rounds, 3 rows, 1 seed (smoke test)")
    parser.add_argument("--out", default=str(HERE / "results" / "compression"))
    args = parser.parse_args()
    rows, seeds, rounds = (QUICK_ROWS, args.seeds[:1], 2) if args.quick else (args.rows, args.seeds, None)
    out = Path(args.out)
    (out / "raw").mkdir(parents=True, exist_ok=True)
    runs = [(label, seed, args.config, rounds) for label in rows for seed in seeds]
    print(f"{len(runs)} runs ({len(rows)} rows x {len(seeds)} seeds), {args.jobs} processes", flush=True)
    start = time.perf_counter()
    results = run_grid(
        run_one,
        runs,
        args.jobs,
        lambda r: (
            f"{r['label']:<22} seed {r['seed']}: accuracy {r['final_accuracy']:.4f}, "
            f"{r['bytes_up'] / 1e6:.3f} MB up, {r['virtual_time']:.1f} virtual s, {r['wall_s']:.0f} s wall"
        ),
    )
    (out / "raw" / "runs.json").write_text(json.dumps(results))
    print(report(results, out))
    print(f"wrote {out}/results.csv, results.md, results.png in {time.perf_counter() - start:.0f}s")


if __name__ == "__main__":
    main()
