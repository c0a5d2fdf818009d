"""fedsim vs Flower's simulation runtime: the same FedAvg workload, side by side in one run.

Two workloads (the synthetic task, natural split, every client the same size):

1. multinomial logistic regression 60 -> 10, 100 clients x 200 samples, 10 clients per round,
   1 local epoch, batch 10, lr 0.05, 30 rounds;
2. MLP 784-200-200-10, 20 clients x 600 samples, 5 clients per round, 1 local epoch,
   batch 10, lr 0.05, 5 rounds.

Each workload runs through Flower (``flwr.simulation.run_simulation``, Ray backend, one CPU
per ClientApp) and through fedsim with the serial, vmap and ray executors, the vmap executor
with its step compiled (``compiled``: ``executor.compile: on``) and the default ``auto``. Client data, model
init, client sampling and minibatch order are identical: the Flower run uses fedsim's
``FedsimStrategy`` and fedsim's ClientApp, which sample and seed jobs exactly as fedsim's
engine does, so the client code is the same and what differs is the runtime around it. The
script checks that every run ends with the same model (within float tolerance) and the same
test accuracy, and prints:

- whole process: wall seconds of a fresh Python process that imports, builds the task,
  starts what it needs (Ray), runs every round and evaluates the final model (each run is
  its own subprocess, timed from outside);
- in-process run: the same without the interpreter start and imports (from building the
  task to the evaluated final model, timed inside the child); compile seconds (torch.compile
  of the batched step, included in both) are shown apart;
- steady round: mean wall time between consecutive aggregations over rounds 2..R (round 1
  pays one-off warm-ups; Flower's one ``query`` round trip to index nodes comes before it);
- ratios: Flower / fedsim.

``--reps 2`` runs everything twice, interleaved (rep 1 of every runner, then rep 2), with one
fedsim cache directory (``FEDSIM_CACHE_DIR``, emptied at the start: measured compile costs and
inductor's cache) shared by the reps: rep 1 is a sweep's first run (cold cache), rep 2 its
second (warm cache). A last table puts the reps' whole-process times and ratios side by side.

    python experiments/bench/vs_flower.py [--workloads logreg,mlp] [--runners flower,serial,vmap,compiled,auto,ray]
        [--threads N] [--reps R]

Timings on a shared machine are noisy; the ratios are measured side by side in one run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

WORKLOADS: dict[str, dict[str, Any]] = {
    "logreg": {
        "label": "logreg 60->10, 100 clients x 200, 10/round, 30 rounds",
        "values": {
            "rounds": 30,
            "task": {
                "name": "synthetic",
                "model": "logreg",
                "num_features": 60,
                "num_classes": 10,
                "min_samples": 250,
                "max_samples": 250,
            },
            "data": {"num_clients": 100, "partition": "natural", "test_fraction": 0.2},
            "population": {"participation": "uniform", "clients_per_round": 10},
        },
    },
    "mlp": {
        "label": "MLP 784-200-200-10, 20 clients x 600, 5/round, 5 rounds",
        "values": {
            "rounds": 5,
            "task": {
                "name": "synthetic",
                "model": "mlp",
                "num_features": 784,
                "num_classes": 10,
                "hidden": 200,
                "hidden_layers": 2,
                "min_samples": 750,
                "max_samples": 750,
            },
            "data": {"num_clients": 20, "partition": "natural", "test_fraction": 0.2},
            "population": {"participation": "uniform", "clients_per_round": 5},
        },
    },
}
RUNNERS = ("flower", "serial", "vmap", "compiled", "auto", "ray")
WORKERS = 2


def config_values(workload: str, runner: str, threads: int = 1) -> dict[str, Any]:
    values = json.loads(json.dumps(WORKLOADS[workload]["values"]))
    if runner == "flower":
        executor = {"name": "serial", "threads": 1}
    elif runner == "compiled":
        executor = {"name": "vmap", "threads": threads, "compile": "on"}
    else:
        executor = {"name": runner, "threads": threads}
    if runner == "ray":
        executor["workers"] = WORKERS
    return values | {
        "seed": 0,
        "client": {"lr": 0.05, "local_epochs": 1, "batch_size": 10},
        "strategy": {"name": "fedavg"},
        "executor": executor,
        "eval": {"every": values["rounds"]},
        "output": {"progress": False, "tensorboard": False},
    }


# ----------------------------------------------------------------------------- one run (child process)


def run_one(workload: str, runner: str, out: Path, threads: int) -> None:
    import torch  # noqa: PLC0415

    from fedsim.config import load_config  # noqa: PLC0415
    from fedsim.params import ResidentModel  # noqa: PLC0415

    torch.set_num_threads(1 if runner == "flower" else threads)
    config = load_config(values=config_values(workload, runner, threads))
    stamps: list[float] = []
    timings: dict[str, float] = {}
    started = time.perf_counter()
    if runner == "flower":
        task, params = _run_flower(config, stamps)
    else:
        from fedsim.run import build  # noqa: PLC0415

        experiment = build(config)

        class Stamp:
            def on_round(self, engine, record):
                stamps.append(time.perf_counter())

            def on_eval(self, engine, record):
                pass

            def on_end(self, engine, summary):
                pass

        experiment.engine.callbacks.append(Stamp())
        experiment.run()
        task, params = experiment.task, experiment.engine.state.params
        timings = getattr(experiment.executor, "timings", dict)()
        executor_name = type(experiment.executor).__name__
        if getattr(experiment.executor, "compile", False):
            executor_name += ", compiled"
    model = ResidentModel(task.build_model())
    model.load(params)
    x, y = task.data.global_test()
    accuracy = task.evaluate(model.model, x, y)["accuracy"]
    in_process = time.perf_counter() - started
    rounds = [b - a for a, b in zip(stamps, stamps[1:])]  # round r's time = aggregation r - aggregation r-1
    torch.save(params, out.with_suffix(".pt"))
    out.write_text(
        json.dumps(
            {
                "in_process_s": in_process,
                "compile_s": timings.get("compile_s", 0.0),
                "executor": "flower" if runner == "flower" else executor_name,
                "round_ms": 1000 * statistics.mean(rounds) if rounds else float("nan"),
                "round_ms_stdev": 1000 * statistics.stdev(rounds) if len(rounds) > 1 else 0.0,
                "accuracy": accuracy,
                "rounds": len(stamps),
            }
        )
    )


def _run_flower(config: Any, stamps: list[float]):
    import logging  # noqa: PLC0415

    from flwr.serverapp import ServerApp  # noqa: PLC0415
    from flwr.simulation import run_simulation  # noqa: PLC0415

    from fedsim.flower import make_client_app, make_strategy, task_for  # noqa: PLC0415
    from fedsim.run import initial_params  # noqa: PLC0415

    logging.getLogger("flwr").setLevel(logging.WARNING)
    task = task_for(config)
    strategy = make_strategy(config, task)
    aggregate = strategy.aggregate_train

    def stamped(server_round, replies):
        result = aggregate(server_round, replies)
        stamps.append(time.perf_counter())
        return result

    strategy.aggregate_train = stamped
    server = ServerApp()

    @server.main()
    def main(grid, context):
        strategy.start(
            grid,
            initial_arrays=strategy.codec.encode(initial_params(task, config.seed)),
            num_rounds=config.rounds,
            timeout=600,
        )

    run_simulation(
        server,
        make_client_app(task),
        num_supernodes=config.data.num_clients,
        backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0}},
    )
    if strategy.state is None or strategy.state.version != config.rounds:
        raise RuntimeError("the Flower simulation did not complete its rounds")
    lost = sum(record["absent"] for record in strategy.history)
    if lost:
        raise RuntimeError(f"{lost} Flower client jobs failed or did not reply; the runs are not comparable")
    return task, strategy.state.params


# ----------------------------------------------------------------------------- driver


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workloads", default="logreg,mlp")
    parser.add_argument("--runners", default=",".join(RUNNERS))
    parser.add_argument("--out", default="runs/bench-vs-flower", help="folder for the per-run results")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads of the fedsim runners (Flower: 1 per ClientApp)"
    )
    parser.add_argument("--reps", type=int, default=1, help="run everything R times (cache shared, see above)")
    parser.add_argument("--one", nargs=2, metavar=("WORKLOAD", "RUNNER"), help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        run_one(args.one[0], args.one[1], Path(args.result), args.threads)
        return 0

    workloads = [w for w in args.workloads.split(",") if w]
    runners = [r for r in args.runners.split(",") if r]
    for name in workloads:
        if name not in WORKLOADS:
            parser.error(f"unknown workload {name!r}; valid choices: {', '.join(WORKLOADS)}")
    for name in runners:
        if name not in RUNNERS:
            parser.error(f"unknown runner {name!r}; valid choices: {', '.join(RUNNERS)}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cache = out / "cache"
    shutil.rmtree(cache, ignore_errors=True)  # rep 1 = a first run: nothing measured, nothing compiled
    env = os.environ | {
        "FLWR_TELEMETRY_ENABLED": "0",
        "FLWR_DISABLE_UPDATE_CHECK": "1",
        "RAY_DEDUP_LOGS": "1",
        "FEDSIM_CACHE_DIR": str(cache.resolve()),
    }
    env.pop("TORCHINDUCTOR_CACHE_DIR", None)  # fedsim's: <cache>/inductor
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    results: dict[tuple[int, str, str], dict[str, Any]] = {}
    for rep in range(1, args.reps + 1):
        for workload in workloads:
            for runner in runners:
                result = out / f"{workload}-{runner}-{rep}.json"
                print(f"[vs_flower] rep {rep}: {workload} / {runner} ...", flush=True)
                command = [
                    sys.executable,
                    __file__,
                    "--one",
                    workload,
                    runner,
                    "--result",
                    str(result),
                    "--threads",
                    str(args.threads),
                ]
                start = time.perf_counter()  # whole process: from creating the child until it exits
                proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=1800)
                if proc.returncode != 0:
                    print(proc.stdout[-2000:], proc.stderr[-4000:], sep="\n")
                    raise SystemExit(f"{workload} / {runner} failed (exit {proc.returncode})")
                data = json.loads(result.read_text())
                data["whole_s"] = time.perf_counter() - start
                import torch  # noqa: PLC0415

                data["params"] = torch.load(result.with_suffix(".pt"))
                results[rep, workload, runner] = data

    import torch  # noqa: PLC0415

    print(
        f"\nfedsim vs Flower simulation (FedAvg; {os.cpu_count()} CPUs, load average at start {load:.1f}; "
        f"torch {torch.__version__}; fedsim {args.threads} thread(s) per worker, ray executor {WORKERS} workers; "
        f"Flower: Ray backend, 1 CPU per ClientApp)"
    )
    ok = True
    for rep in range(1, args.reps + 1):
        if args.reps > 1:
            print(f"\nrep {rep} ({'first run: cold cache' if rep == 1 else 'warm cache'})")
        print(
            "\n| workload | runner | whole process (s) | in-process run (s) | compile (s) | steady round (ms) "
            "| Flower / this, whole | Flower / this, in-process | Flower / this, round | test accuracy "
            "| max param diff vs Flower |"
        )
        print("|---|---|---|---|---|---|---|---|---|---|---|")
        for workload in workloads:
            reference = results.get((rep, workload, "flower")) or results[rep, workload, runners[0]]
            for runner in runners:
                r = results[rep, workload, runner]
                diff = float((r["params"] - reference["params"]).abs().max())
                same = diff <= 1e-4 and abs(r["accuracy"] - reference["accuracy"]) <= 1e-3
                ok &= same
                flower = results.get((rep, workload, "flower"))
                whole_ratio = f"{flower['whole_s'] / r['whole_s']:.1f}x" if flower else "-"
                inside_ratio = f"{flower['in_process_s'] / r['in_process_s']:.1f}x" if flower else "-"
                round_ratio = f"{flower['round_ms'] / r['round_ms']:.1f}x" if flower else "-"
                label = runner if runner != "auto" else f"auto ({r['executor']})"
                print(
                    f"| {WORKLOADS[workload]['label']} | {label} | {r['whole_s']:.1f} | {r['in_process_s']:.2f} | "
                    f"{r['compile_s']:.1f} | {r['round_ms']:.1f} ± {r['round_ms_stdev']:.1f} | {whole_ratio} | "
                    f"{inside_ratio} | {round_ratio} | {r['accuracy']:.4f} | {diff:.1e}{'' if same else ' DIFFERENT'} |"
                )
    if args.reps > 1:
        reps = range(1, args.reps + 1)
        print("\nfirst run vs later runs of the sweep (one cache dir; Flower / this from the same rep's Flower run)\n")
        print(
            "| workload | runner | "
            + " | ".join(f"whole (s), rep {k}" for k in reps)
            + " | "
            + " | ".join(f"Flower / this, whole, rep {k}" for k in reps)
            + " | "
            + " | ".join(f"Flower / this, round, rep {k}" for k in reps)
            + " | compile (s) per rep |"
        )
        print("|---|---|" + "---|" * (3 * args.reps + 1))
        for workload in workloads:
            for runner in runners:
                rows = [results[k, workload, runner] for k in reps]
                flowers = [results.get((k, workload, "flower")) for k in reps]
                whole = " | ".join(f"{r['whole_s']:.1f}" for r in rows)
                whole_ratio = " | ".join(
                    f"{f['whole_s'] / r['whole_s']:.1f}x" if f else "-" for r, f in zip(rows, flowers)
                )
                round_ratio = " | ".join(
                    f"{f['round_ms'] / r['round_ms']:.1f}x" if f else "-" for r, f in zip(rows, flowers)
                )
                label = runner if runner != "auto" else "auto (" + "/".join(r["executor"] for r in rows) + ")"
                compiles = " / ".join(f"{r['compile_s']:.1f}" for r in rows)
                print(
                    f"| {WORKLOADS[workload]['label']} | {label} | {whole} | {whole_ratio} | {round_ratio} | {compiles} |"
                )
    print("\nsame final model and accuracy in every run:", "yes" if ok else "NO")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
