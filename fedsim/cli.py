"""Command line: ``python -m fedsim run | list | plot``.

Bad input exits with status 2 and one line on stderr naming the field and the valid choices.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Any, Sequence

from fedsim.config import ConfigError, load_config
from fedsim.errors import RunFailed
from fedsim.registry import UnknownNameError

__all__ = ["main"]

# CLI flag -> dotted config key
FLAG_KEYS: dict[str, str] = {
    "strategy": "strategy.name",
    "task": "task.name",
    "rounds": "rounds",
    "seed": "seed",
    "participation": "population.participation",
    "executor": "executor.name",
    "workers": "executor.workers",
    "ray_address": "executor.ray_address",
    "gpus_per_client": "executor.gpus_per_client",
    "device": "executor.device",
    "out": "output.out",
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fedsim", description="Federated-learning simulation.")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run one experiment")
    run.add_argument("--config", help="YAML config file")
    run.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                     help="override a config value, e.g. --set strategy.server_lr=0.5 (repeatable)")
    run.add_argument("--strategy", help="strategy preset (see `fedsim list`)")
    run.add_argument("--task", help="task name")
    run.add_argument("--rounds", type=int, help="number of rounds")
    run.add_argument("--seed", type=int, help="experiment seed")
    run.add_argument("--participation", help="participation model")
    run.add_argument("--executor", help="serial | vmap | ray")
    run.add_argument("--workers", type=int, help="ray: number of actors (default: CPU count)")
    run.add_argument("--ray-address", help="ray: address of an existing cluster (auto | host:port)")
    run.add_argument("--gpus-per-client", type=float, help="ray: fraction of a GPU per actor")
    run.add_argument("--device", help="cpu | cuda | cuda:N")
    run.add_argument("--out", help="run folder (default runs/<timestamp>-<strategy>)")
    run.add_argument("--quiet", action="store_true", help="no progress bar")
    run.add_argument("--no-tensorboard", action="store_true", help="do not write TensorBoard events")
    run.add_argument("--overwrite", action="store_true", help="replace the run already in --out (else refused)")
    run.add_argument("--resume", metavar="RUN_DIR", help="continue a stopped run (not available yet)")

    sub.add_parser("list", help="list strategies, clients, tasks, partitioners, executors, ...")

    plot = sub.add_parser("plot", help="plot a metric for one or more run folders into a PNG")
    plot.add_argument("runs", nargs="+", help="run folders")
    plot.add_argument("--metric", default="test_accuracy")
    plot.add_argument("--x", default="round", help="round | virtual_time | wall_time")
    plot.add_argument("--out", default="plot.png", help="PNG path (default plot.png)")
    return parser


def _cli_overrides(args: argparse.Namespace) -> list[str]:
    values = [f"{key}={getattr(args, flag)}" for flag, key in FLAG_KEYS.items() if getattr(args, flag) is not None]
    if args.quiet:
        values.append("output.progress=false")
    if args.no_tensorboard:
        values.append("output.tensorboard=false")
    return values + list(args.overrides)


def _cmd_run(args: argparse.Namespace) -> int:
    from fedsim.run import run_experiment  # noqa: PLC0415

    from fedsim.run import exit_code  # noqa: PLC0415

    if args.resume:
        raise ConfigError("--resume is not available yet (checkpointing is not implemented); "
                          "start a new run or pass --overwrite to replace the old one")
    config = load_config(args.config, _cli_overrides(args))
    summary, out = run_experiment(config, overwrite=args.overwrite, argv=["fedsim", *sys.argv[1:]])
    status = summary.get("status", "completed")
    if status != "completed":
        print(f"fedsim: run {status} at round {summary['rounds']}: {summary.get('reason', '')} -> {out}",
              file=sys.stderr)
        return exit_code(summary)
    final = summary.get("final", {})
    acc = final.get("test_accuracy")
    print(
        f"done: {summary['rounds']} rounds, virtual time {summary['virtual_time']:.1f}s, "
        f"wall {summary['wall_time']:.1f}s, test accuracy {acc:.4f}, dropouts {summary['dropouts']} -> {out}"
        if acc is not None else f"done -> {out}"
    )
    return 0


def _cmd_list(args: argparse.Namespace) -> int:
    from fedsim import registries  # noqa: PLC0415

    for kind, (_, _, heading) in registries.KINDS.items():
        if kind == "optimizer":
            names = registries.get(kind).names()
            print(f"{heading}:\n  {', '.join(names)}\n")
            continue
        print(f"{heading}:")
        entries = registries.get(kind).describe()
        width = max(len(name) for name, _ in entries)
        for name, description in entries:
            print(f"  {name:<{width}}  {description}")
        print()
    return 0


def _cmd_plot(args: argparse.Namespace) -> int:
    from fedsim.plot import plot_runs  # noqa: PLC0415

    try:
        out = plot_runs(args.runs, metric=args.metric, x=args.x, out=args.out)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    print(f"wrote {out}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    handler = logging.StreamHandler(sys.stderr)
    if args.command == "run":
        from fedsim.metrics import TqdmLoggingHandler  # noqa: PLC0415

        handler = TqdmLoggingHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    logger = logging.getLogger("fedsim")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    commands: dict[str, Any] = {"run": _cmd_run, "list": _cmd_list, "plot": _cmd_plot}
    try:
        return commands[args.command](args)
    except (ConfigError, UnknownNameError, FileNotFoundError) as exc:
        print(f"fedsim: error: {exc}", file=sys.stderr)
        return 2
    except RunFailed as exc:
        print(f"fedsim: run failed: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("fedsim: interrupted", file=sys.stderr)
        return 130
    finally:
        logger.removeHandler(handler)


if __name__ == "__main__":
    sys.exit(main())
