"""Population scale: memory and time per round for 10^3 .. 10^6 clients, side by side.

Synthetic logistic regression (LEAF Synthetic(1,1), 60 -> 10) generated lazily per client,
`uniform` participation with 10 or 100 clients per round, FedAvg (or --strategy fedau, whose
interval statistics are three numbers per client). Each configuration runs in a fresh
subprocess so its peak RSS is its own; time per round excludes set-up and the final evaluation.

``--presets fedavg fedau`` instead measures exactly what ``python -m fedsim run --strategy S
--set data.num_clients=N`` runs: the preset's own participation model and partition (FedAU's
is Bernoulli participation with expected clients_per_round = 10 clients per round), only the
population size set, side by side.

    python experiments/bench/scale.py [--populations 1000 10000 1000000] [--per-round 10 100] [--rounds 20]
    python experiments/bench/scale.py --presets fedavg fedau --populations 100000
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time


def measure(population: int, per_round: int, rounds: int, strategy: str, device: str, preset: bool = False) -> dict:
    from fedsim.config import load_config  # noqa: PLC0415
    from fedsim.run import build  # noqa: PLC0415

    start = time.perf_counter()
    if preset:  # what `fedsim run --strategy S --set data.num_clients=N` runs, evaluation aside
        values = {
            "rounds": rounds,
            "strategy": {"name": strategy},
            "data": {"num_clients": population},
            "eval": {"every": 10**9},
            "executor": {"device": device},
            "output": {"progress": False, "tensorboard": False},
        }
    else:
        values = {
            "rounds": rounds,
            "task": {"name": "synthetic"},
            "data": {"num_clients": population, "partition": "natural"},
            "population": {"participation": "uniform", "clients_per_round": per_round},
            "strategy": {"name": strategy},
            "eval": {"every": 10**9},
            "client": {"local_epochs": 1, "batch_size": 10},
            "executor": {"device": device},
            "output": {"progress": False, "tensorboard": False},
        }
    config = load_config(values=values)
    experiment = build(config)
    setup = time.perf_counter() - start
    engine = experiment.engine
    engine.evaluate = lambda: {}  # time the rounds, not the final evaluation
    start = time.perf_counter()
    experiment.run()
    elapsed = time.perf_counter() - start
    return {
        "population": population,
        "per_round": per_round,
        "strategy": strategy,
        "setup_s": setup,
        "round_ms": 1000 * elapsed / rounds,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--populations", type=int, nargs="+", default=[1000, 10_000, 1_000_000])
    parser.add_argument("--per-round", type=int, nargs="+", default=[10, 100])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--strategy", default="fedavg")
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--presets", nargs="+", help="measure these presets as the CLI runs them (population size only)"
    )
    parser.add_argument("--child", nargs=2, type=int, help=argparse.SUPPRESS)
    parser.add_argument("--child-preset", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(
            json.dumps(
                measure(args.child[0], args.child[1], args.rounds, args.strategy, args.device, args.child_preset)
            )
        )
        return
    if args.presets:
        print(
            f"`fedsim run --strategy S --set data.num_clients=N`, {args.rounds} rounds, device {args.device}; "
            "presets run one after another on the same machine"
        )
        print("| strategy | population | set-up (s) | time/round (ms) | peak RSS (MB) |")
        print("|---|---:|---:|---:|---:|")
        for population in args.populations:
            for strategy in args.presets:
                out = (
                    subprocess.run(
                        [
                            sys.executable,
                            __file__,
                            "--child",
                            str(population),
                            "0",
                            "--child-preset",
                            "--rounds",
                            str(args.rounds),
                            "--strategy",
                            strategy,
                            "--device",
                            args.device,
                        ],
                        capture_output=True,
                        text=True,
                        check=True,
                    )
                    .stdout.strip()
                    .splitlines()[-1]
                )
                r = json.loads(out)
                print(
                    f"| {strategy} | {population:,} | {r['setup_s']:.1f} | {r['round_ms']:.1f} | {r['peak_rss_mb']:.0f} |",
                    flush=True,
                )
        return
    print(f"synthetic logreg, uniform participation, {args.strategy}, {args.rounds} rounds, device {args.device}")
    print("| population | clients/round | set-up (s) | time/round (ms) | peak RSS (MB) |")
    print("|---:|---:|---:|---:|---:|")
    for per_round in args.per_round:
        for population in args.populations:
            out = (
                subprocess.run(
                    [
                        sys.executable,
                        __file__,
                        "--child",
                        str(population),
                        str(per_round),
                        "--rounds",
                        str(args.rounds),
                        "--strategy",
                        args.strategy,
                        "--device",
                        args.device,
                    ],
                    capture_output=True,
                    text=True,
                    check=True,
                )
                .stdout.strip()
                .splitlines()[-1]
            )
            r = json.loads(out)
            print(
                f"| {population:,} | {per_round} | {r['setup_s']:.1f} | {r['round_ms']:.1f} | {r['peak_rss_mb']:.0f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
