"""Noisy links: FedAvg against federated ADMM when the model and the updates cross noisy channels.

FedAvg and ``fedadmm`` (clients/admm.py: standard federated ADMM, penalty rho = client.mu = 0.1)
on the digits CNN, 50 clients, Dirichlet(0.5), 10 per round, 20 local steps, 10 rounds, with
additive Gaussian noise on the downloaded model AND on the uploaded update at the same SNR
(``communication.downlink_snr_db`` = ``uplink_snr_db`` in {30, 20, 10} dB), plus a clean row.
3 seeds per row.

Expectation (Lari et al., "Noise-Robust and Resource-Efficient ADMM-based Federated Learning",
arXiv 2409.13451): standard ADMM is hurt by channel noise because the noisy global model enters
both its local solve and its dual update (noise accumulates in lambda_i); the paper's variant,
which is NOT implemented here, removes the dual variable to avoid that. So this experiment
measures the baseline the paper improves on, not the paper's algorithm.

Writes experiments/results/noisy_links/results.{csv,md,png}; raw runs in raw/.

    python experiments/noisy_links.py [--seeds 1 2 3] [--jobs 2] [--quick]

Sized for ~15 CPU-minutes on 2 cores (8 rows x 3 seeds); ``--quick``: 2 rounds, 2 rows, 1 seed.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from grid import format_mean_std, run_grid, write_csv

HERE = Path(__file__).resolve().parent
SNRS = (None, 30.0, 20.0, 10.0)  # dB, both links; None: clean
ALGORITHMS = ("fedavg", "fedadmm")
ROWS: dict[str, tuple[str, float | None]] = {
    f"{algo} {'clean' if snr is None else f'{snr:g} dB'}": (algo, snr) for algo in ALGORITHMS for snr in SNRS
}
QUICK_ROWS = ["fedavg 10 dB", "fedadmm 10 dB"]


def run_one(args: tuple[str, int, str, int | None]) -> dict[str, Any]:
    from fedsim.config import load_config  # noqa: PLC0415  (in the worker process)
    from fedsim.run import build  # noqa: PLC0415

    label, seed, config_path, rounds = args
    algo, snr = ROWS[label]
    values: dict[str, Any] = {"seed": seed, "strategy": {"name": algo}, "executor": {"name": "serial"}}
    if algo == "fedadmm":
        values["client"] = {"mu": 0.1}
    if snr is not None:
        values["communication"] = {"uplink_snr_db": snr, "downlink_snr_db": snr}
    if rounds is not None:
        values |= {"rounds": rounds, "eval": {"every": 1}}
    experiment = build(load_config(config_path, values=values))
    start = time.perf_counter()
    summary = experiment.run()
    history = experiment.engine.history
    return {
        "label": label,
        "algorithm": algo,
        "snr_db": snr,
        "seed": seed,
        "final_accuracy": history[-1]["test_accuracy"],
        "best_accuracy": max(h["test_accuracy"] for h in history),
        "rounds": summary["rounds"],
        "status": summary["status"],
        "wall_s": time.perf_counter() - start,
        "curve": [{k: h[k] for k in ("round", "test_accuracy")} for h in history],
    }


def report(results: list[dict[str, Any]], out: Path) -> str:
    keys = ("label", "algorithm", "snr_db", "seed", "final_accuracy", "best_accuracy", "rounds", "status", "wall_s")
    write_csv(out / "results.csv", results, keys)
    lines = ["| SNR (both links) | " + " | ".join(ALGORITHMS) + " |", "|---" * (1 + len(ALGORITHMS)) + "|"]
    for snr in SNRS:
        cells = []
        for algo in ALGORITHMS:
            mine = [r for r in results if r["algorithm"] == algo and r["snr_db"] == snr]
            cells.append(format_mean_std([r["final_accuracy"] for r in mine]) if mine else "—")
        lines.append(f"| {'clean' if snr is None else f'{snr:g} dB'} | " + " | ".join(cells) + " |")
    table = "\n".join(lines)
    seeds = sorted({r["seed"] for r in results})
    (out / "results.md").write_text(
        f"Final test accuracy (mean ± std over seeds {seeds}) after the run's rounds; noise on the "
        f"downloaded model and on the uploaded update at the same SNR.\n\n{table}\n"
    )
    _plot(results, out / "results.png")
    return table


def _plot(results: list[dict[str, Any]], path: Path) -> None:
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415
    import numpy as np  # noqa: PLC0415

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, (algo, _snr) in ROWS.items():
        curves = [r["curve"] for r in results if r["label"] == label]
        if not curves:
            continue
        acc = np.mean([[p["test_accuracy"] for p in c] for c in curves], axis=0)
        x = [p["round"] for p in curves[0]]
        style = "-" if algo == "fedavg" else "--"
        ax.plot(x, acc, style, marker="o", markersize=2, label=label)
    ax.set_xlabel("round")
    ax.set_ylabel("test accuracy (mean over seeds)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title("digits CNN, 50 clients: noise on both links")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(HERE / "noisy_links.yaml"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="2 rounds, 2 rows, 1 seed (smoke test)")
    parser.add_argument("--out", default=str(HERE / "results" / "noisy_links"))
    args = parser.parse_args()
    rows, seeds, rounds = (QUICK_ROWS, args.seeds[:1], 2) if args.quick else (list(ROWS), args.seeds, None)
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
            f"{r['label']:<18} seed {r['seed']}: accuracy {r['final_accuracy']:.4f} ({r['status']}), "
            f"{r['wall_s']:.0f} s wall"
        ),
    )
    (out / "raw" / "runs.json").write_text(json.dumps(results))
    print(report(results, out))
    print(f"wrote {out}/results.csv, results.md, results.png in {time.perf_counter() - start:.0f}s")


if __name__ == "__main__":
    main()
