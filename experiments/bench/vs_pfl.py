"""fedsim vs pfl-research on pfl's CPU workload shape: a CIFAR-10-shaped CNN, side by side in one run.

pfl-research: Granqvist et al., "pfl-research: simulation framework for accelerating research
in Private Federated Learning", arXiv 2404.06430; code at github.com/apple/pfl-research.

Workload (pfl's CPU benchmark shape): 1000 users x 50 samples of 3x32x32 images, 10 classes,
FedAvg, cohort 50 per round, 5 local SGD steps per user (batch 10, lr 0.05: one pass over
the user's 50 samples), server learning rate 1. The model is fedsim's ``conv_net`` (the FedAU
paper's CNN: conv3x3(32)-pool-conv3x3(32)-pool-FC256-FC64-FC10, 0.4 M parameters); pfl trains
a plain-torch copy of the same layers (``cnn`` below; the script checks the shapes match).

Same on both sides: the data (class-conditional Gaussian images generated once with numpy
from a seed and saved to one .npz file that both sides load; fedsim reads it with its ``npz``
task), the initial model (fedsim's init, saved as a state dict that pfl loads), the users
each round trains (the fedsim sides run first and record their cohorts, which the pfl sides
then replay) and the local steps. Not the same: the minibatch order inside a user (pfl slices
the user's data in order, fedsim shuffles it), so final accuracies agree only in range.

Sides, each its own subprocess, timed from outside (whole process: import, load data, build,
train every round, evaluate) and from inside (steady round: mean time between consecutive
aggregations over rounds 2..R; round 1 pays one-off warm-ups):

- ``pfl``: pfl 0.6 ``SimulatedBackend`` + ``FederatedAveraging`` + ``PyTorchModel`` in its
  own virtual environment (``--pfl-python``), the images as loaded (NCHW); skipped if that
  python cannot import pfl;
- ``pfl-channels-last`` (not run by default): the same with the images stored channels-last,
  the layout fedsim's image tasks use on CPU (see ``fedsim.tasks.base.channels_last_images``):
  it shows how much of fedsim's lead is that layout, which a pfl user could also choose;
- ``serial``, ``vmap``, ``auto``: fedsim's executors.

Every side runs with the same torch intra-op thread count (``--threads``, default 1; pfl would
otherwise use torch's default, all cores). On a machine other jobs share, runs with as many
threads as cores are dominated by waiting for descheduled threads; compare those only on a
quiet machine. ``--crossover`` also times one ``executor.run(jobs)`` of the
serial and vmap executors on the CNN at 5, 10 and 50 clients per call (ms per client-step) and
shows, with the torch profiler, which convolution kernels vmap's batched step calls.

    python experiments/bench/vs_pfl.py [--rounds 3] [--threads 1,2] [--sides pfl,pfl-channels-last,serial,vmap,auto]
        [--crossover] [--pfl-python /work/venv-pfl/bin/python] [--quick]

``--quick`` is a tiny size (20 users x 50 samples, cohort 5, 2 rounds) for checking the script.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

FULL = {"users": 1000, "samples": 50, "cohort": 50, "rounds": 3, "test": 2000}
QUICK = {"users": 20, "samples": 50, "cohort": 5, "rounds": 2, "test": 200}
LOCAL_STEPS, BATCH_SIZE, LR = 5, 10, 0.05
SIDES = ("pfl", "pfl-channels-last", "serial", "vmap", "auto")
DEFAULT_SIDES = "pfl,serial,vmap,auto"
DEFAULT_PFL_PYTHON = "/work/venv-pfl/bin/python"


# ----------------------------------------------------------------------------- shared by both sides


def make_data(path: Path, users: int, samples: int, test: int, seed: int = 0) -> None:
    """Class-conditional Gaussian 3x32x32 images: x = mean[y] + noise, all N(0, 1), from one seed."""
    import numpy as np  # noqa: PLC0415

    rng = np.random.default_rng(seed)
    means = rng.normal(size=(10, 3, 32, 32)).astype(np.float32)

    def draw(n: int):
        y = rng.integers(0, 10, size=n)
        return (means[y] + rng.normal(size=(n, 3, 32, 32))).astype(np.float32), y.astype(np.int64)

    x, y = draw(users * samples)
    x_test, y_test = draw(test)
    client = np.repeat(np.arange(users), samples)
    np.savez(path, x=x, y=y, client=client, x_test=x_test, y_test=y_test)


def cnn():
    """The layers of fedsim's conv_net(3, 32, 10), in plain torch, for the pfl side."""
    from torch import nn  # noqa: PLC0415

    return nn.Sequential(
        nn.Conv2d(3, 32, 3), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 32, 3), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(32 * 6 * 6, 256), nn.ReLU(), nn.Linear(256, 64), nn.ReLU(), nn.Linear(64, 10),
    )  # fmt: skip


def accuracy(model, x, y) -> float:
    import torch  # noqa: PLC0415

    with torch.no_grad():
        return float((model(x).argmax(dim=1) == y).float().mean())


# ----------------------------------------------------------------------------- fedsim side (child process)


def fedsim_config(side: str, threads: int, size: dict[str, int], data_file: Path) -> Any:
    from fedsim.config import load_config  # noqa: PLC0415

    return load_config(values={
        "seed": 0,
        "rounds": size["rounds"],
        "task": {"name": "npz", "path": str(data_file), "model": "cnn"},
        "data": {"num_clients": size["users"], "partition": "natural", "test_fraction": 0.0},
        "population": {"participation": "uniform", "clients_per_round": size["cohort"]},
        "client": {"lr": LR, "local_steps": LOCAL_STEPS, "batch_size": BATCH_SIZE},
        "strategy": {"name": "fedavg"},
        "executor": {"name": side, "threads": threads},
        "eval": {"every": None},
        "output": {"progress": False, "tensorboard": False},
    })  # fmt: skip


def save_initial_model(size: dict[str, int], data_file: Path, out: Path) -> None:
    """fedsim's initial CNN as a state dict of the plain-torch copy (what the pfl side loads)."""
    import torch  # noqa: PLC0415

    from fedsim.params import ResidentModel  # noqa: PLC0415
    from fedsim.run import initial_params, task_spec  # noqa: PLC0415
    from fedsim.tasks import build_task  # noqa: PLC0415

    task = build_task(task_spec(fedsim_config("serial", 1, size, data_file)))
    model = ResidentModel(task.build_model())
    model.load(initial_params(task, 0))
    state = model.model.state_dict()
    copy = cnn()
    if [v.shape for v in copy.state_dict().values()] != [v.shape for v in state.values()]:
        raise RuntimeError("the plain-torch CNN of this script no longer matches fedsim's conv_net")
    copy.load_state_dict(dict(zip(copy.state_dict(), state.values())))
    torch.save(copy.state_dict(), out)


def run_fedsim(side: str, threads: int, size: dict[str, int], data_file: Path) -> dict[str, Any]:
    import torch  # noqa: PLC0415

    from fedsim.params import ResidentModel  # noqa: PLC0415
    from fedsim.run import build  # noqa: PLC0415

    torch.set_num_threads(threads)
    experiment = build(fedsim_config(side, threads, size, data_file))
    stamps: list[float] = []

    class Stamp:
        def on_round(self, engine, record):
            stamps.append(time.perf_counter())

        def on_eval(self, engine, record):
            pass

        def on_end(self, engine, summary):
            pass

    cohorts: list[list[int]] = []
    aggregate = experiment.engine.strategy.aggregate

    def recorded(state, results, now):  # which clients each round trained, for the pfl side to train the same
        cohorts.append(sorted(r.client_id for r in results))
        return aggregate(state, results, now)

    experiment.engine.strategy.aggregate = recorded
    experiment.engine.callbacks.append(Stamp())
    start = time.perf_counter()
    experiment.run()
    model = ResidentModel(experiment.task.build_model())
    model.load(experiment.engine.state.params)
    x, y = experiment.task.data.global_test()
    return {
        "start": start,
        "stamps": stamps,
        "accuracy": accuracy(model.model, x, y),
        "threads": torch.get_num_threads(),
        "cohorts": cohorts,
    }


# ----------------------------------------------------------------------------- pfl side (child process, pfl's venv)


def run_pfl(
    threads: int,
    size: dict[str, int],
    data_file: Path,
    init_file: Path,
    channels_last: bool,
    cohorts: list[list[int]] | None,
) -> dict[str, Any]:
    import numpy as np  # noqa: PLC0415
    import torch  # noqa: PLC0415
    import torch.nn.functional as F  # noqa: PLC0415
    from pfl.aggregate.simulate import SimulatedBackend  # noqa: PLC0415
    from pfl.aggregate.weighting import WeightByUser  # noqa: PLC0415
    from pfl.algorithm import FederatedAveraging, NNAlgorithmParams  # noqa: PLC0415
    from pfl.callback.base import TrainingProcessCallback  # noqa: PLC0415
    from pfl.data.dataset import Dataset  # noqa: PLC0415
    from pfl.data.federated_dataset import FederatedDataset  # noqa: PLC0415
    from pfl.hyperparam import NNTrainHyperParams  # noqa: PLC0415
    from pfl.metrics import Metrics  # noqa: PLC0415
    from pfl.model.pytorch import PyTorchModel  # noqa: PLC0415

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    with np.load(data_file) as arrays:
        x, y, client = (torch.from_numpy(arrays[k]) for k in ("x", "y", "client"))
        x_test, y_test = torch.from_numpy(arrays["x_test"]), torch.from_numpy(arrays["y_test"])
    if channels_last:  # the layout fedsim's image tasks store on CPU
        x, x_test = (t.contiguous(memory_format=torch.channels_last) for t in (x, x_test))
    bounds = np.searchsorted(client.numpy(), np.arange(size["users"] + 1))
    users = {u: (x[a:b], y[a:b]) for u, (a, b) in enumerate(zip(bounds[:-1], bounds[1:]))}

    class PflCNN(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = cnn()

        def forward(self, inputs):
            return self.net(inputs)

        def loss(self, inputs, labels):
            self.train()
            return F.cross_entropy(self(inputs), labels)

        def metrics(self, inputs, labels):
            # Final accuracy is measured outside pfl on both sides; pfl's per-user evaluation on
            # its first iteration is skipped so that both sides do the same training work.
            return {}

    module = PflCNN()
    module.net.load_state_dict(torch.load(init_file))
    model = PyTorchModel(
        model=module,
        local_optimizer_create=torch.optim.SGD,
        central_optimizer=torch.optim.SGD(module.parameters(), 1.0),
    )

    def sampled_users():  # fedsim's cohorts when given, else pfl draws its own uniform ones
        if cohorts is not None:
            for cohort in cohorts:
                yield from cohort
        rng = np.random.default_rng(0)
        while True:
            yield from rng.choice(size["users"], size["cohort"], replace=False).tolist()

    user_stream = sampled_users()
    dataset = FederatedDataset(lambda u: Dataset(raw_data=list(users[u]), user_id=u), lambda: next(user_stream))
    backend = SimulatedBackend(training_data=dataset, val_data=None, postprocessors=[WeightByUser()])
    stamps: list[float] = []

    class Stamp(TrainingProcessCallback):
        def after_central_iteration(self, aggregate_metrics, model, *, central_iteration):
            stamps.append(time.perf_counter())
            return False, Metrics()

    start = time.perf_counter()
    FederatedAveraging().run(
        algorithm_params=NNAlgorithmParams(central_num_iterations=size["rounds"], evaluation_frequency=10**9,
                                           train_cohort_size=size["cohort"], val_cohort_size=None),
        backend=backend, model=model,
        model_train_params=NNTrainHyperParams(local_learning_rate=LR, local_num_epochs=None,
                                              local_num_steps=LOCAL_STEPS, local_batch_size=BATCH_SIZE),
        callbacks=[Stamp()])  # fmt: skip
    return {
        "start": start,
        "stamps": stamps,
        "accuracy": accuracy(module.net, x_test, y_test),
        "threads": torch.get_num_threads(),
    }


# ----------------------------------------------------------------------------- vmap vs serial on the CNN


def crossover(threads_list: list[int], size: dict[str, int], data_file: Path, reps: int = 3) -> list[dict[str, Any]]:
    """Median seconds of one executor.run(jobs) for serial and vmap at 5, 10 and cohort clients per call."""
    import torch  # noqa: PLC0415

    from fedsim.executors import EXECUTORS, WorkerSpec  # noqa: PLC0415
    from fedsim.rng import derive_seed  # noqa: PLC0415
    from fedsim.run import initial_params, task_spec  # noqa: PLC0415
    from fedsim.tasks import build_task  # noqa: PLC0415
    from fedsim.types import ClientJob  # noqa: PLC0415

    config = fedsim_config("serial", 1, size, data_file)
    spec = task_spec(config)
    task = build_task(spec)
    params = initial_params(task, 0)
    client_config = config.client.model_dump()
    rows = []
    for threads in threads_list:
        torch.set_num_threads(threads)
        worker_spec = WorkerSpec(task=spec, client="sgd", threads=threads)
        serial = EXECUTORS.get("serial")(config.executor, worker_spec, task)
        vmap = EXECUTORS.get("vmap")(config.executor, worker_spec, task)
        for n in sorted({5, 10, size["cohort"]}):
            jobs = [ClientJob(job_id=c, client_id=c, version=0, params=params, config=client_config,
                              seed=derive_seed(0, "client-train", c, 0, c)) for c in range(n)]  # fmt: skip
            reference, batched = serial.run(jobs), vmap.run(jobs)  # warm-up and a correctness check
            diff = max(float((a.delta - b.delta).abs().max()) for a, b in zip(reference, batched))
            times: dict[str, list[float]] = {"serial": [], "vmap": []}
            for _ in range(reps):  # interleaved, so both sides see the same machine load
                for name, executor in (("serial", serial), ("vmap", vmap)):
                    start = time.perf_counter()
                    executor.run(jobs)
                    times[name].append(time.perf_counter() - start)
            s, v = statistics.median(times["serial"]), statistics.median(times["vmap"])
            steps = n * LOCAL_STEPS
            rows.append(
                {
                    "threads": threads,
                    "clients": n,
                    "serial_ms_per_step": 1000 * s / steps,
                    "vmap_ms_per_step": 1000 * v / steps,
                    "serial_over_vmap": s / v,
                    "max_delta_diff": diff,
                }
            )
            print(
                f"  [crossover] threads {threads}, {n:3d} clients: serial {1000 * s / steps:.2f} ms/step, "
                f"vmap {1000 * v / steps:.2f} ms/step, serial/vmap {s / v:.2f}x",
                flush=True,
            )
        serial.close()
        vmap.close()
    return rows


def conv_kernels(size: dict[str, int], data_file: Path, clients: int = 5) -> list[str]:
    """The convolution ops (name and input shapes) that one vmap executor.run calls, from the torch profiler."""
    from torch.profiler import ProfilerActivity, profile  # noqa: PLC0415

    from fedsim.executors import EXECUTORS, WorkerSpec  # noqa: PLC0415
    from fedsim.run import initial_params, task_spec  # noqa: PLC0415
    from fedsim.tasks import build_task  # noqa: PLC0415
    from fedsim.types import ClientJob  # noqa: PLC0415

    config = fedsim_config("vmap", 1, size, data_file)
    spec = task_spec(config)
    task = build_task(spec)
    params = initial_params(task, 0)
    vmap = EXECUTORS.get("vmap")(config.executor, WorkerSpec(task=spec, client="sgd", threads=1), task)
    jobs = [
        ClientJob(job_id=c, client_id=c, version=0, params=params, config=config.client.model_dump(), seed=c)
        for c in range(clients)
    ]
    vmap.run(jobs)
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        vmap.run(jobs)
    vmap.close()
    seen: dict[str, int] = {}
    for event in prof.events():
        if "conv" in event.name and event.name.startswith("aten::"):
            key = f"{event.name} {[list(s) for s in event.input_shapes if s][:2]}"
            seen[key] = seen.get(key, 0) + 1
    return [f"{count} x {key}" for key, count in sorted(seen.items())]


# ----------------------------------------------------------------------------- driver


def child(args: argparse.Namespace) -> None:
    size = json.loads(args.size)
    side, threads = args.one[0], int(args.one[1])
    if side.startswith("pfl"):
        cohorts = json.loads(Path(args.cohorts).read_text()) if args.cohorts else None
        result = run_pfl(threads, size, Path(args.data), Path(args.init), side == "pfl-channels-last", cohorts)
    else:
        result = run_fedsim(side, threads, size, Path(args.data))
    Path(args.result).write_text(json.dumps(result))


def pfl_available(python: str) -> str | None:
    """None if ``python`` imports pfl and torch, else why not."""
    if not Path(python).exists():
        return f"{python} does not exist"
    proc = subprocess.run(
        [
            python,
            "-c",
            "import pfl, torch; print(pfl.__version__ if hasattr(pfl, '__version__') else '?', torch.__version__)",
        ],
        capture_output=True,
        text=True,
    )
    return None if proc.returncode == 0 else (proc.stderr.strip().splitlines() or ["import failed"])[-1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sides", default=DEFAULT_SIDES, help=f"comma-separated, from {', '.join(SIDES)}")
    parser.add_argument("--threads", default="1", help="comma-separated torch thread counts; every side runs at each")
    parser.add_argument("--rounds", type=int, default=None, help=f"rounds per side (default {FULL['rounds']})")
    parser.add_argument("--quick", action="store_true", help="tiny size, for checking the script")
    parser.add_argument(
        "--crossover", action="store_true", help="also time serial vs vmap per call and profile vmap's convs"
    )
    parser.add_argument("--pfl-python", default=DEFAULT_PFL_PYTHON, help="a python that imports pfl (its own venv)")
    parser.add_argument("--out", default="runs/bench-vs-pfl", help="folder for the data file and per-side results")
    parser.add_argument("--one", nargs=2, metavar=("SIDE", "THREADS"), help=argparse.SUPPRESS)
    for hidden in ("--size", "--data", "--init", "--result", "--cohorts"):
        parser.add_argument(hidden, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        child(args)
        return 0

    size = dict(QUICK if args.quick else FULL)
    if args.rounds is not None:
        size["rounds"] = args.rounds
    sides = [s for s in args.sides.split(",") if s]
    for side in sides:
        if side not in SIDES:
            parser.error(f"unknown side {side!r}; valid choices: {', '.join(SIDES)}")
    threads_list = [int(t) for t in args.threads.split(",") if t]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data_file, init_file = out / "data.npz", out / "init.pt"
    make_data(data_file, size["users"], size["samples"], size["test"])
    if any(side.startswith("pfl") for side in sides):
        why = pfl_available(args.pfl_python)
        if why:
            print(f"[vs_pfl] pfl sides skipped: {why}", flush=True)
            sides = [side for side in sides if not side.startswith("pfl")]
        else:
            save_initial_model(size, data_file, init_file)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")

    results: dict[tuple[str, int], dict[str, Any]] = {}
    cohorts_file = out / "cohorts.json"
    cohorts_file.unlink(missing_ok=True)
    run_order = sorted(sides, key=lambda side: side.startswith("pfl"))  # fedsim first: pfl replays its cohorts
    for threads in threads_list:
        for side in run_order:
            result = out / f"{side}-{threads}.json"
            python = args.pfl_python if side.startswith("pfl") else sys.executable
            command = [
                python,
                __file__,
                "--one",
                side,
                str(threads),
                "--size",
                json.dumps(size),
                "--data",
                str(data_file),
                "--init",
                str(init_file),
                "--result",
                str(result),
            ]
            if side.startswith("pfl") and cohorts_file.exists():
                command += ["--cohorts", str(cohorts_file)]
            print(f"[vs_pfl] {side}, {threads} thread(s) ...", flush=True)
            start = time.perf_counter()  # whole process: from creating the child until it exits
            proc = subprocess.run(command, capture_output=True, text=True, timeout=1800)
            whole = time.perf_counter() - start
            if proc.returncode != 0:
                print(proc.stdout[-2000:], proc.stderr[-4000:], sep="\n")
                raise SystemExit(f"{side} with {threads} thread(s) failed (exit {proc.returncode})")
            data = json.loads(result.read_text())
            rounds = [b - a for a, b in zip(data["stamps"], data["stamps"][1:])]
            data["whole_s"] = whole
            data["first_round_s"] = data["stamps"][0] - data["start"]
            data["round_s"] = statistics.mean(rounds) if rounds else float("nan")
            data["round_stdev"] = statistics.stdev(rounds) if len(rounds) > 1 else 0.0
            results[side, threads] = data
            if "cohorts" in data:
                if not cohorts_file.exists():
                    cohorts_file.write_text(json.dumps(data["cohorts"]))
                elif json.loads(cohorts_file.read_text()) != data["cohorts"]:
                    raise SystemExit(f"{side} sampled other clients than the first fedsim side")

    rows = crossover(threads_list, size, data_file) if args.crossover else []
    kernels = conv_kernels(size, data_file) if args.crossover else []

    import torch  # noqa: PLC0415

    print(
        f"\nfedsim vs pfl-research: CNN (conv_net, 3x32x32 -> 10), {size['users']} users x {size['samples']} samples, "
        f"cohort {size['cohort']}, {LOCAL_STEPS} local steps of batch {BATCH_SIZE}, lr {LR}, FedAvg, "
        f"{size['rounds']} rounds ({os.cpu_count()} CPUs, load average at start {load:.1f}, torch {torch.__version__})\n"
    )
    print(
        "| side | threads | whole process (s) | first round (s) | steady round (s) | pfl / this, whole "
        "| pfl / this, round | test accuracy |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for threads in threads_list:
        pfl = results.get(("pfl", threads))
        for side in sides:
            r = results[side, threads]
            whole_ratio = f"{pfl['whole_s'] / r['whole_s']:.2f}x" if pfl else "-"
            round_ratio = f"{pfl['round_s'] / r['round_s']:.2f}x" if pfl else "-"
            print(
                f"| {side} | {r['threads']} | {r['whole_s']:.1f} | {r['first_round_s']:.2f} | "
                f"{r['round_s']:.2f} ± {r['round_stdev']:.2f} | "
                f"{whole_ratio} | {round_ratio} | {r['accuracy']:.3f} |"
            )
    accuracies = [r["accuracy"] for r in results.values()]
    same_cohorts = "the same cohorts" if cohorts_file.exists() else "their own cohorts"
    print(
        f"\ntest accuracy range over sides: {min(accuracies):.3f} .. {max(accuracies):.3f} (every side trains "
        f"{same_cohorts}; the minibatch order inside a user differs between pfl and fedsim, so only the range "
        "is comparable)"
    )
    if rows:
        print("\nserial vs vmap executor on this CNN, one executor.run(jobs) from the same model, median of 3:\n")
        print(
            "| threads | clients per call | serial ms per client-step | vmap ms per client-step | serial / vmap "
            "| max delta diff |"
        )
        print("|---|---|---|---|---|---|")
        for r in rows:
            print(
                f"| {r['threads']} | {r['clients']} | {r['serial_ms_per_step']:.2f} | {r['vmap_ms_per_step']:.2f} | "
                f"{r['serial_over_vmap']:.2f}x | {r['max_delta_diff']:.1e} |"
            )
        print("\nconvolution ops in one vmap executor.run of 5 clients (count x op [input, weight shapes]):")
        for line in kernels:
            print("  " + line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
