"""Federated adversarial training (FAL) vs FedAvg on digits: clean and robust accuracy under PGD.

Grid: client algorithm (FedAvg = ``sgd``; FAL with training PGD L-inf eps 0.05 and 0.1, 5 steps)
x partition (IID, Dirichlet alpha 0.3) x seeds (1, 2, 3). 20 digits clients (features in
[0, 1], 64 pixels), all in every round, 10 local steps of 16 samples, server lr 1 (FedAvg).
Each final model is evaluated on the global test set: clean accuracy, and robust accuracy under
PGD-10 L-inf attacks of two strengths, eps 0.05 and 0.1 (step 2.5 eps / 10, zero start: the
numbers are deterministic). The eps 0.1 column is the run's own ``test_robust_accuracy``
(``eval.adversarial`` in fal.yaml); the eps 0.05 one is computed here from the saved
``model_state.pt`` with the same function (fedsim.evaluation.robust_accuracy), and the script
checks that recomputing eps 0.1 this way gives the run's number.

Sizing (measured on 2 cores, vmap executor: a 40-round FAL run took ~10 s of training, FedAvg
~3 s, plus ~7 s of start-up each): the full grid, 18 runs of 100 rounds with 2 jobs at a time,
took 6.5 wall minutes. ``--quick`` (1 seed, FedAvg and FAL eps 0.1, Dirichlet only, 10 rounds)
took 19 s.

Writes experiments/results/fal/results{,_quick}.{csv,md,png}; run folders go to raw/ (git-ignored).

    python experiments/fal.py [--quick] [--seeds 1 2 3] [--jobs 2]
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from grid import mean_std, run_grid, write_csv

HERE = Path(__file__).resolve().parent
OUT = HERE / "results" / "fal"
METHODS = {"FedAvg": None, "FAL eps 0.05": 0.05, "FAL eps 0.1": 0.1}  # training PGD radius (None: plain SGD)
PARTITIONS = {"IID": "iid", "Dirichlet 0.3": "dirichlet"}
STRENGTHS = (0.05, 0.1)  # L-inf eps of the evaluation attacks (PGD-10)
RUN_STRENGTH = 0.1  # the one fal.yaml's eval.adversarial reports during the run


def run_one(args: tuple[str, str, int, int]) -> dict[str, Any]:
    import torch

    from clients.pgd import PGD
    from fedsim.config import load_config
    from fedsim.evaluation import robust_accuracy
    from fedsim.run import run_experiment, task_spec
    from fedsim.tasks import build_task

    method, partition, seed, rounds = args
    eps = METHODS[method]
    name = f"{'fedavg' if eps is None else f'fal{eps}'}-{PARTITIONS[partition]}-s{seed}"
    overrides = [
        f"data.partition={PARTITIONS[partition]}",
        f"seed={seed}",
        f"rounds={rounds}",
        f"eval.every={rounds}",
        f"eval.adversarial.eps={RUN_STRENGTH}",
    ]
    if eps is None:
        overrides += ["client.algorithm=sgd", "client.adv_eps=null", "client.adv_steps=null", "client.adv_norm=null"]
    else:
        overrides += [f"client.adv_eps={eps}"]
    config = load_config(HERE / "fal.yaml", overrides)
    summary, out = run_experiment(config, OUT / "raw" / name, overwrite=True)
    row: dict[str, Any] = {
        "method": method,
        "partition": partition,
        "seed": seed,
        "status": summary["status"],
        "clean": summary["final"].get("test_accuracy"),
    }
    task = build_task(task_spec(config))
    model = task.build_model()
    model.load_state_dict(torch.load(out / "model_state.pt", weights_only=True))
    x, y = task.data.global_test()
    attack = config.eval.adversarial
    assert attack is not None
    for strength in STRENGTHS:
        pgd = PGD(**(attack.model_dump() | {"eps": strength}))
        row[f"robust_{strength:g}"] = robust_accuracy(model, task.loss_fn, x, y, pgd)
    reported = summary["final"].get("test_robust_accuracy")
    if reported is not None and abs(row[f"robust_{RUN_STRENGTH:g}"] - reported) > 1e-9:
        raise RuntimeError(f"{name}: robust accuracy recomputed {row[f'robust_{RUN_STRENGTH:g}']} != run's {reported}")
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--jobs", type=int, default=2)
    args = parser.parse_args()
    if args.quick:
        methods, partitions, seeds, rounds = ["FedAvg", "FAL eps 0.1"], ["Dirichlet 0.3"], [1], 10
    else:
        methods, partitions, seeds, rounds = list(METHODS), list(PARTITIONS), args.seeds, 100
    grid = [(m, p, s, rounds) for p in partitions for m in methods for s in seeds]
    rows = run_grid(run_one, grid, args.jobs)
    OUT.mkdir(parents=True, exist_ok=True)
    suffix = "_quick" if args.quick else ""
    write_csv(OUT / f"results{suffix}.csv", rows)
    write_table(rows, methods, partitions, seeds, rounds, OUT / f"results{suffix}.md")
    plot(rows, methods, partitions, OUT / f"results{suffix}.png")


COLUMNS = {"clean": "clean accuracy", **{f"robust_{s:g}": f"robust, PGD-10 L-inf eps {s:g}" for s in STRENGTHS}}


def _mean(rows: list[dict[str, Any]], column: str, **key: Any) -> tuple[float, float]:
    values = [r[column] or 0.0 for r in rows if all(r[k] == v for k, v in key.items())]
    return mean_std(values)


def write_table(rows, methods, partitions, seeds, rounds, path: Path) -> None:
    lines = [
        f"# FAL vs FedAvg (digits MLP, 20 clients all in every round, {rounds} rounds, seeds {seeds}; "
        "final test accuracy, mean ± std over seeds)",
        "",
        "| partition | method | " + " | ".join(COLUMNS.values()) + " |",
        "|---" * (len(COLUMNS) + 2) + "|",
    ]
    for partition in partitions:
        for method in methods:
            cells = []
            for column in COLUMNS:
                m, s = _mean(rows, column, method=method, partition=partition)
                cells.append(f"{m:.3f} ± {s:.3f}")
            lines.append(f"| {partition} | {method} | " + " | ".join(cells) + " |")
    failed = [r for r in rows if r["status"] != "completed"]
    if failed:
        lines.append(f"\n{len(failed)} run(s) did not complete (diverged/failed): counted as accuracy 0.")
    path.write_text("\n".join(lines) + "\n")


def plot(rows, methods, partitions, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(partitions), figsize=(5 * len(partitions), 4), squeeze=False, sharey=True)
    width = 0.8 / len(methods)
    for ax, partition in zip(axes[0], partitions):
        for i, method in enumerate(methods):
            stats = [_mean(rows, column, method=method, partition=partition) for column in COLUMNS]
            xs = [j + (i - (len(methods) - 1) / 2) * width for j in range(len(COLUMNS))]
            ax.bar(xs, [m for m, _ in stats], width, yerr=[s for _, s in stats], label=method, capsize=2)
        ax.set_xticks(range(len(COLUMNS)), ["clean", *(f"PGD eps {s:g}" for s in STRENGTHS)])
        ax.set_ylim(0, 1)
        ax.set_title(partition, fontsize=10)
    axes[0][0].set_ylabel("final test accuracy")
    axes[0][-1].legend(fontsize=8)
    fig.savefig(path, dpi=120, bbox_inches="tight")


if __name__ == "__main__":
    main()
