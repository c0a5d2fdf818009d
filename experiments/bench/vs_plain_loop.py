"""fedsim's serial step vs a plain PyTorch SGD loop: the same model, data, clients and minibatches.

The user's own model and NCHW data go to fedsim through its Python API (a ``Task`` built from
an ``ArrayFederatedData`` and a ``build_model``, run by the serial executor: the step every Ray
worker runs too), not through a built-in task, so nothing about the layout comes from fedsim's
data loaders. The plain loop is what a user would write: for each client, load the global
model, ``torch.optim.SGD`` over the same index batches fedsim draws (``clients.batch_schedule``
seeded by the job's seed), read the delta. Sides, timed interleaved, one cohort round each:

- ``fedsim``: ``SerialExecutor.run(jobs)`` on the cohort (client ``sgd``, plain SGD);
- ``plain``: the loop above on the NCHW data as given;
- ``plain-cl`` (CNN only): the same loop with the model and data converted to channels-last,
  the layout fedsim picks on CPU for a model with a ``Conv2d`` (fedsim/params.py).

Workloads: pfl's CPU CNN shape (experiments/bench/vs_pfl.py: fedsim's ``conv_net`` on 3x32x32
images, 50 samples a user, cohort 50, 5 local steps of batch 10, lr 0.05) and an MLP
784-200-200-10 on 784-feature vectors with the same schedule. One torch thread. The script
prints the median over repetitions of the per-repetition ratio fedsim / plain side, and checks
that the two sides trained the same model (max |difference| of the averaged deltas).

    python experiments/bench/vs_plain_loop.py [--reps 7] [--models cnn,mlp] [--quick]

``--quick`` is a tiny size (cohort 3, 2 repetitions) for checking the script.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from clients import batch_schedule  # noqa: E402
from fedsim.data.federated import ArrayFederatedData  # noqa: E402
from fedsim.executors.serial import SerialExecutor  # noqa: E402
from fedsim.executors.worker import WorkerSpec  # noqa: E402
from fedsim.tasks import Task, TaskSpec  # noqa: E402
from fedsim.tasks.base import conv_net, mlp  # noqa: E402
from fedsim.types import ClientJob  # noqa: E402

FULL = {"users": 50, "samples": 50, "cohort": 50, "reps": 7}
QUICK = {"users": 3, "samples": 20, "cohort": 3, "reps": 2}
LOCAL_STEPS, BATCH_SIZE, LR = 5, 10, 0.05
CONFIG = {"lr": LR, "batch_size": BATCH_SIZE, "local_steps": LOCAL_STEPS, "optimizer": "sgd"}
MODELS: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...]]] = {
    "cnn": (lambda: conv_net(3, 32, 10), (3, 32, 32)),  # pfl's CPU CNN shape
    "mlp": (lambda: mlp(784, 200, 10, hidden_layers=2), (784,)),
}


def make_task(name: str, users: int, samples: int) -> Task:
    """The user's own model and data (NCHW images for the CNN), handed to fedsim as a Task."""
    build, shape = MODELS[name]
    g = torch.Generator().manual_seed(0)
    x = torch.randn(users * samples, *shape, generator=g)
    y = torch.randint(0, 10, (users * samples,), generator=g)
    offsets = torch.arange(0, users * samples + 1, samples).numpy()
    data = ArrayFederatedData(x, y, offsets, x[:0], y[:0], offsets * 0, 10)
    return Task(f"user-{name}", data, build, 10, shape)


def fedsim_round(executor: SerialExecutor, jobs: list[ClientJob]) -> torch.Tensor:
    return torch.stack([r.delta for r in executor.run(jobs)]).mean(0)


def plain_round(model: nn.Module, task: Task, jobs: list[ClientJob], channels_last: bool) -> torch.Tensor:
    """What a user writes: per client, load the global model, SGD over the same batches, read the delta."""
    params = list(model.parameters())
    deltas = []
    for job in jobs:
        x, y = task.data.train(job.client_id)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.no_grad():  # (vector_to_parameters would make the parameters views of job.params)
            for p, v in zip(params, job.params.split([p.numel() for p in params])):
                p.copy_(v.view_as(p))
        optimizer = torch.optim.SGD(params, lr=LR)
        rng = torch.Generator().manual_seed(job.seed)
        for idx in batch_schedule(len(x), BATCH_SIZE, LOCAL_STEPS, rng):
            optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(model(x[idx]), y[idx]).backward()
            optimizer.step()
        deltas.append(torch.cat([p.detach().reshape(-1) for p in params]) - job.params)
    return torch.stack(deltas).mean(0)


def bench(name: str, size: dict[str, int]) -> dict[str, float]:
    task = make_task(name, size["users"], size["samples"])
    torch.manual_seed(0)
    executor = SerialExecutor(WorkerSpec(TaskSpec(task.name, size["users"], "iid"), "sgd", threads=1), task)
    start = executor.worker.model.read()
    jobs = [ClientJob(i, i, 0, start, CONFIG, seed=1000 + i) for i in range(size["cohort"])]
    sides: dict[str, Callable[[], torch.Tensor]] = {"fedsim": lambda: fedsim_round(executor, jobs)}
    for side, channels_last in (("plain", False), ("plain-cl", True)):
        if channels_last and name != "cnn":
            continue
        model = MODELS[name][0]()
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        sides[side] = lambda m=model, cl=channels_last: plain_round(m, task, jobs, cl)
    times: dict[str, list[float]] = {side: [] for side in sides}
    deltas = {side: fn() for side, fn in sides.items()}  # warm-up; also the models to compare
    order = list(sides)
    for rep in range(size["reps"]):
        for side in order[rep % len(order) :] + order[: rep % len(order)]:  # rotate who goes first
            t0 = time.perf_counter()
            sides[side]()
            times[side].append(time.perf_counter() - t0)
    out = {"diff": max(float((deltas[s] - deltas["fedsim"]).abs().max()) for s in sides)}
    for side in sides:
        if side != "fedsim":
            out[side] = statistics.median(f / p for f, p in zip(times["fedsim"], times[side]))
    out["fedsim_ms_per_step"] = 1e3 * statistics.median(times["fedsim"]) / (size["cohort"] * LOCAL_STEPS)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=None)
    parser.add_argument("--models", default="cnn,mlp")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    size = dict(QUICK if args.quick else FULL)
    if args.reps:
        size["reps"] = args.reps
    torch.set_num_threads(1)
    print(f"cohort {size['cohort']}, {LOCAL_STEPS} steps of batch {BATCH_SIZE}, 1 thread, {size['reps']} reps")
    print(f"{'model':6} {'fedsim/plain':>13} {'fedsim/plain-cl':>16} {'fedsim ms/step':>15} {'max |diff|':>11}")
    for name in args.models.split(","):
        r = bench(name, size)
        cl = f"{r['plain-cl']:.2f}x" if "plain-cl" in r else "-"
        print(f"{name:6} {r['plain']:>12.2f}x {cl:>16} {r['fedsim_ms_per_step']:>15.2f} {r['diff']:>11.1e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
