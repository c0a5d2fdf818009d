"""vmap executor vs serial executor on the same client jobs, for every client algorithm, side by side.

Workloads: LEAF Synthetic(1,1) with 200 train samples per client (min_samples = max_samples
= 250, test_fraction 0.2), batch 10, 1 local epoch (20 steps), lr 0.05, weight decay 1e-3,
clip 10; model logistic regression 60 -> 10, an MLP 60 -> 64 -> 10 and an MLP 784-200-200-10
(``mlp200``). For each algorithm
and number of clients the same jobs (one per client, all from the initial model, with client
state and the server broadcast where the algorithm takes them) go through
``executor.run(jobs)`` of both executors; each side is warmed up once, then the reps are
interleaved and the median is reported. Data is generated and cached before timing, so both
sides only train. "x sgd" is an algorithm's time over the ``sgd`` (FedAvg) client's on the
same executor (SAM-based algorithms take two gradient evaluations per step). ``--compile``
adds a third side, the vmap executor with ``executor.compile: on``; its warm-up call compiles
(the compile seconds are printed apart) and the timed calls reuse the compiled step.

    python experiments/bench/vmap_vs_serial.py [--device cpu|cuda] [--clients 10,100,1000] [--reps 3]
        [--algorithms sgd,scaffold,fedspeed] [--models logreg,mlp,mlp200] [--compile]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Any

import torch

from fedsim.config import load_config
from fedsim.executors import EXECUTORS, WorkerSpec
from fedsim.rng import derive_seed
from fedsim.run import initial_params, task_spec
from fedsim.tasks import build_task
from fedsim.types import ClientJob

MODELS = {
    "logreg": {"model": "logreg"},
    "mlp": {"model": "mlp", "hidden": 64},
    # vs_flower.py's MLP workload shape (784-200-200-10): compute-bound per client
    "mlp200": {"model": "mlp", "num_features": 784, "hidden": 200, "hidden_layers": 2},
}
ALGORITHMS = ["sgd", "fedprox", "scaffold", "feddyn", "fedsam", "fedcm", "mofedsam", "fedspeed"]
STRATEGY_OF = {
    "scaffold": "scaffold",
    "feddyn": "feddyn",
    "fedspeed": "fedspeed",
    "fedcm": "fedcm",
    "mofedsam": "mofedsam",
    "fedprox": "fedprox",
    "fedsam": "fedsam",
}


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def vmap_bench_time(executor: Any, jobs: list[ClientJob], device: str) -> float:
    _sync(device)
    start = time.perf_counter()
    executor.run(jobs)
    _sync(device)
    return time.perf_counter() - start


def make_config(model: str, num_clients: int, algorithm: str, device: str):
    return load_config(values={
        "task": {"name": "synthetic", "min_samples": 250, "max_samples": 250, **MODELS[model]},
        "data": {"num_clients": num_clients, "test_fraction": 0.2},
        "population": {"clients_per_round": min(10, num_clients)},
        "client": {"algorithm": algorithm, "lr": 0.05, "local_epochs": 1, "batch_size": 10, "weight_decay": 1e-3,
                   "clip_norm": 10.0},
        "strategy": {"name": STRATEGY_OF.get(algorithm, "fedavg")},
        "executor": {"device": device},
        "output": {"progress": False, "tensorboard": False},
    })  # fmt: skip


def bench_model(
    model: str,
    algorithms: list[str],
    clients: list[int],
    reps: int,
    device: str,
    threads: int | None,
    compiled: bool = False,
) -> list[dict[str, Any]]:
    num_clients = max(clients)
    spec = task_spec(make_config(model, num_clients, "sgd", device))
    task = build_task(spec)
    if hasattr(task.data, "cache_size"):  # keep every client's generated data in memory
        task.data.cache_size = num_clients
    for cid in range(num_clients):
        task.data.train(cid)
    params = initial_params(task, 0)
    gen = torch.Generator().manual_seed(0)
    d = params.numel()
    broadcast = {"c": 0.01 * torch.randn(d, generator=gen), "momentum": 0.01 * torch.randn(d, generator=gen)}
    states = [
        {"c": 0.01 * torch.randn(d, generator=gen), "h": 0.01 * torch.randn(d, generator=gen)}
        for _ in range(num_clients)
    ]
    rows = []
    for algorithm in algorithms:
        rows += bench_algorithm(
            model, algorithm, task, spec, params, broadcast, states, clients, reps, device, threads, compiled
        )
    return rows


def bench_algorithm(model, algorithm, task, spec, params, broadcast, states, clients, reps, device, threads, compiled):
    config = make_config(model, max(clients), algorithm, device)
    worker_spec = WorkerSpec(task=spec, client=algorithm, device=device, threads=threads)
    serial = EXECUTORS.get("serial")(config.executor, worker_spec, task)
    vmap = EXECUTORS.get("vmap")(config.executor.model_copy(update={"compile": "off"}), worker_spec, task)
    vmapc = (
        EXECUTORS.get("vmap")(config.executor.model_copy(update={"compile": "on"}), worker_spec, task)
        if compiled
        else None
    )
    client_config = config.client.model_dump()
    rows = []
    for n in clients:
        jobs = [
            ClientJob(job_id=cid, client_id=cid, version=0, params=params, config=client_config,
                      seed=derive_seed(0, "client-train", cid, 0, cid), state=states[cid], broadcast=broadcast)
            for cid in range(n)
        ]  # fmt: skip
        reference, batched = serial.run(jobs), vmap.run(jobs)  # warm-up (and a correctness check)
        max_diff = max(float((a.delta - b.delta).abs().max()) for a, b in zip(reference, batched))
        compile_before = vmapc.compile_s if vmapc else 0.0
        if vmapc:
            max_diff = max(
                max_diff, *(float((a.delta - b.delta).abs().max()) for a, b in zip(reference, vmapc.run(jobs)))
            )
        t_serial, t_vmap, t_compiled = [], [], []
        for _ in range(reps):
            t_serial.append(vmap_bench_time(serial, jobs, device))
            t_vmap.append(vmap_bench_time(vmap, jobs, device))
            if vmapc:
                t_compiled.append(vmap_bench_time(vmapc, jobs, device))
        s, v = statistics.median(t_serial), statistics.median(t_vmap)
        c = statistics.median(t_compiled) if t_compiled else float("nan")
        rows.append({
            "model": model, "algorithm": algorithm, "params": vmap.numel, "clients": n, "serial_s": s, "vmap_s": v,
            "ratio": s / v, "serial_ms_per_client": 1000 * s / n, "vmap_ms_per_client": 1000 * v / n,
            "max_abs_delta_diff": max_diff, "compiled_s": c, "compiled_ratio": s / c,
            "compile_s": (vmapc.compile_s - compile_before) if vmapc else float("nan"),
        })  # fmt: skip
        line = f"  {model:6s} {algorithm:9s} {n:5d} clients: serial {s:.3f}s  vmap {v:.3f}s  ratio {s / v:.1f}x"
        if vmapc:
            line += f"  compiled {c:.3f}s  ratio {s / c:.1f}x  (compile {rows[-1]['compile_s']:.1f}s)"
        print(line, flush=True)
    for executor in (serial, vmap, vmapc):
        if executor is not None:
            executor.close()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    parser.add_argument("--clients", default="10,100,1000", help="comma-separated clients per run() call")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--models", default="logreg,mlp", help=f"comma-separated, from {', '.join(MODELS)}")
    parser.add_argument("--algorithms", default=",".join(ALGORITHMS), help="comma-separated client algorithms")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--json", default=None, help="also write the rows to this JSON file")
    parser.add_argument("--compile", action="store_true", help="also time the vmap executor with executor.compile: on")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    clients = [int(c) for c in args.clients.split(",")]
    rows = []
    for model in args.models.split(","):
        rows += bench_model(
            model, args.algorithms.split(","), clients, args.reps, args.device, args.threads, args.compile
        )
    base = {(r["model"], r["clients"]): r for r in rows if r["algorithm"] == "sgd"}
    for r in rows:
        ref = base.get((r["model"], r["clients"]))
        r["serial_x_sgd"] = r["serial_s"] / ref["serial_s"] if ref else float("nan")
        r["vmap_x_sgd"] = r["vmap_s"] / ref["vmap_s"] if ref else float("nan")
    print()
    print(
        f"synthetic 60 features -> 10 classes, 200 train samples/client, batch 10, 1 epoch (20 steps), wd 1e-3, clip 10, "
        f"device {args.device}, {torch.get_num_threads()} thread(s), torch {torch.__version__}, "
        f"median of {args.reps}"
    )
    print()
    compiled = " compiled (s) | serial/compiled | compile (s) |" if args.compile else ""
    print(
        "| model | algorithm | clients | serial (s) | vmap (s) | serial/vmap |"
        + compiled
        + " serial x sgd | vmap x sgd "
        "| vmap ms/client | max abs delta diff |"
    )
    print("|---|---|---|---|---|---|" + ("---|---|---|" if args.compile else "") + "---|---|---|---|")
    for r in rows:
        extra = f" {r['compiled_s']:.3f} | {r['compiled_ratio']:.1f}x | {r['compile_s']:.1f} |" if args.compile else ""
        print(
            f"| {r['model']} | {r['algorithm']} | {r['clients']} | {r['serial_s']:.3f} | {r['vmap_s']:.3f} | "
            f"{r['ratio']:.1f}x |{extra} {r['serial_x_sgd']:.2f} | {r['vmap_x_sgd']:.2f} | {r['vmap_ms_per_client']:.3f} | "
            f"{r['max_abs_delta_diff']:.1e} |"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": args.device, "threads": torch.get_num_threads(), "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
