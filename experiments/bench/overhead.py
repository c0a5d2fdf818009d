"""fedsim overhead vs a hand-written PyTorch FedAvg loop, side by side in one process.

Workload (issue #3): synthetic logistic regression (LEAF Synthetic(1,1), 60 -> 10),
100 clients, 10 per round, 1 local epoch, batch 10, SGD lr 0.05, sample-weighted FedAvg.
Both sides train the same clients on the same data with the same minibatch order and
evaluate once at the end; runs are interleaved and the median is reported.

    python experiments/bench/overhead.py [--rounds 50] [--reps 5]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn
from torch.nn.utils import parameters_to_vector, vector_to_parameters

from clients.sgd import batch_schedule
from fedsim.config import load_config
from fedsim.rng import derive_seed
from fedsim.run import build, initial_params


def make_config(rounds: int, seed: int):
    return load_config(
        values={
            "seed": seed,
            "rounds": rounds,
            "task": {"name": "synthetic"},
            "data": {"num_clients": 100},
            "population": {"participation": "uniform", "clients_per_round": 10},
            "client": {"lr": 0.05, "local_epochs": 1, "batch_size": 10},
            "strategy": {"name": "fedavg"},
            "eval": {"every": rounds},
            "executor": {"name": "serial"},
            "output": {"progress": False, "tensorboard": False},
        }
    )


def run_fedsim(config, task) -> tuple[float, torch.Tensor]:
    experiment = build(config, task=task)
    start = time.perf_counter()
    experiment.run()
    return time.perf_counter() - start, experiment.engine.state.params


def run_plain(config, experiment) -> tuple[float, torch.Tensor]:
    """The same FedAvg math written directly against PyTorch (what a user would hand-roll)."""
    task, population = experiment.task, experiment.population
    model: nn.Module = task.build_model()
    global_params = initial_params(task, config.seed)
    test_x, test_y = task.data.global_test()
    start = time.perf_counter()
    dispatches: dict[int, int] = {}  # each client's dispatch count, part of its job seed
    for round_ in range(config.rounds):
        total = torch.zeros_like(global_params)
        weight_sum = 0
        for cid in population.round_participants(round_, now=0.0).tolist():  # uniform: not time-varying
            x, y = task.data.train(cid)
            vector_to_parameters(global_params.clone(), model.parameters())  # (it aliases, so clone)
            optimizer = torch.optim.SGD(model.parameters(), lr=config.client.lr)
            steps = config.client.local_epochs * -(-len(x) // config.client.batch_size)
            # same seed derivation as the engine, so both sides see identical minibatches
            count = dispatches.get(cid, 0)
            dispatches[cid] = count + 1
            rng = torch.Generator().manual_seed(derive_seed(config.seed, "client-train", cid, round_, count))
            for idx in batch_schedule(len(x), config.client.batch_size, steps, rng):
                optimizer.zero_grad(set_to_none=True)
                loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
                loss.backward()
                optimizer.step()
            total += len(x) * (parameters_to_vector(model.parameters()).detach() - global_params)
            weight_sum += len(x)
        global_params = global_params + total / weight_sum
    vector_to_parameters(global_params, model.parameters())
    task.evaluate(model, test_x, test_y)
    return time.perf_counter() - start, global_params


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=50)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads for both sides")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config = make_config(args.rounds, seed=0)
    reference = build(config)  # task + population shared by the plain loop
    fedsim_times, plain_times = [], []
    run_fedsim(config, reference.task), run_plain(config, reference)  # warm-up
    for _ in range(args.reps):
        t, plain_params = run_plain(config, reference)
        plain_times.append(t)
        t, fedsim_params = run_fedsim(config, reference.task)
        fedsim_times.append(t)
    max_diff = float((plain_params - fedsim_params).abs().max())
    f, p = statistics.median(fedsim_times), statistics.median(plain_times)
    print(
        f"workload: synthetic logreg, 100 clients, 10/round, 1 epoch, batch 10, {args.rounds} rounds, "
        f"{args.threads} thread(s), median of {args.reps}"
    )
    print("| side | time (s) | per round (ms) |")
    print("|---|---|---|")
    print(f"| plain PyTorch loop | {p:.3f} | {1000 * p / args.rounds:.1f} |")
    print(f"| fedsim (serial executor) | {f:.3f} | {1000 * f / args.rounds:.1f} |")
    print(f"ratio fedsim / plain = {f / p:.3f}   (max |param difference| = {max_diff:.2e}: same math)")


if __name__ == "__main__":
    main()
