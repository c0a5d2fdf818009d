"""Command line: ``python -m fedsim run | list | show | table | plot``.

Bad input exits with status 2 and one line on stderr naming the field and the valid choices.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fedsim import __version__
from fedsim.config import ConfigError, load_config
from fedsim.errors import RunFailed
from fedsim.registry import UnknownNameError, unknown_name_message

__all__ = ["main"]

# CLI flag -> (dotted config key, registry kind whose names are its choices, or None)
FLAG_KEYS: dict[str, tuple[str, str | None]] = {
    "strategy": ("strategy.name", "strategy"),
    "task": ("task.name", "task"),
    "rounds": ("rounds", None),
    "seed": ("seed", None),
    "participation": ("population.participation", "participation"),
    "executor": ("executor.name", "executor"),
    "workers": ("executor.workers", None),
    "ray_address": ("executor.ray_address", None),
    "gpus_per_client": ("executor.gpus_per_client", None),
    "device": ("executor.device", None),
    "compile": ("executor.compile", None),
    "out": ("output.out", None),
    "checkpoint_every": ("output.checkpoint_every", None),
}
FLAG_HELP = {
    "strategy": "strategy preset",
    "task": "task",
    "rounds": "number of server rounds",
    "seed": "experiment seed",
    "participation": "participation model",
    "executor": "how client jobs are computed",
    "workers": "ray: number of actors (default: CPU count)",
    "ray_address": "ray: address of an existing cluster (auto | host:port)",
    "gpus_per_client": "ray: fraction of a GPU per actor",
    "device": "cpu | cuda | cuda:N",
    "compile": "vmap: torch.compile the batched client step (auto | on | off; compile time is reported apart)",
    "out": "run folder (default runs/<timestamp>-<strategy>); with --seeds/--sweep, the sweep folder",
    "checkpoint_every": "save checkpoint.pt every N server updates (always on SIGINT/SIGTERM), for --resume",
}
FLAG_TYPES = {"checkpoint_every": int, "rounds": int, "seed": int, "workers": int, "gpus_per_client": float}


def _config_default(key: str) -> Any:
    from fedsim.config import RunConfig  # noqa: PLC0415

    node: Any = RunConfig().to_dict()
    for part in key.split("."):
        node = node[part]
    return node


def _flag_help(flag: str, detailed: bool) -> str:
    text = FLAG_HELP[flag]
    if not detailed:
        return text
    from fedsim import registries  # noqa: PLC0415

    key, kind = FLAG_KEYS[flag]
    parts = [f"{text}; config key {key}"]
    if kind is not None:
        parts.append(f"choices: {', '.join(registries.get(kind).names())}")
    default = _config_default(key)
    if default is not None:
        parts.append(
            f"default: {default}"
            + (" (a strategy preset may suggest another: fedsim show NAME)" if key in _preset_keys() else "")
        )
    return "; ".join(parts)


def _preset_keys() -> set[str]:
    from fedsim import registries  # noqa: PLC0415
    from fedsim.metrics import flatten  # noqa: PLC0415

    keys: set[str] = set()
    for name in registries.get("strategy").names():
        keys |= set(flatten(registries.strategy_config_defaults(name)))
    return keys


def _parser(detailed_help: bool = False) -> argparse.ArgumentParser:
    """``detailed_help`` (only when --help is asked for) lists each option's choices and default,
    which imports every registry (torch included): too slow for every call."""
    parser = argparse.ArgumentParser(prog="fedsim", description="Federated-learning simulation.")
    parser.add_argument("--version", action="version", version=f"fedsim {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser(
        "run",
        help="run one experiment, or a sweep over seeds and settings",
        description="Run one experiment (or, with --seeds/--sweep, one per combination).",
    )
    run.add_argument("--config", help="YAML config file")
    run.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set strategy.server_lr=0.5 (repeatable, applied in order)",
    )
    _add_plugin_flag(run)
    for flag in FLAG_KEYS:
        metavar = "NAME" if FLAG_KEYS[flag][1] else {int: "N", float: "F"}.get(FLAG_TYPES.get(flag, str), None)
        run.add_argument(
            f"--{flag.replace('_', '-')}",
            type=FLAG_TYPES.get(flag, str),
            metavar=metavar,
            help=_flag_help(flag, detailed_help),
        )
    run.add_argument("--quiet", action="store_true", help="no progress bar")
    run.add_argument("--no-tensorboard", action="store_true", help="do not write TensorBoard events")
    run.add_argument("--overwrite", action="store_true", help="replace the run already in --out (else refused)")
    run.add_argument(
        "--resume",
        metavar="RUN_DIR",
        help="continue a killed or interrupted run from RUN_DIR/checkpoint.pt (config from RUN_DIR/config.yaml)",
    )
    run.add_argument(
        "--force", action="store_true", help="run even if the memory estimate says the run does not fit this machine"
    )
    run.add_argument("--dry-run", action="store_true", help="print the fully resolved config (YAML) and exit")
    run.add_argument("--seeds", metavar="S1,S2,...", help="run once per seed, e.g. --seeds 0,1,2")
    run.add_argument(
        "--sweep",
        action="append",
        default=[],
        metavar="KEY=V1,V2,...",
        help="run once per value (repeatable: every combination), e.g. --sweep strategy.name=fedau,fedavg",
    )
    run.add_argument(
        "--jobs",
        type=int,
        default=1,
        metavar="N",
        help="sweeps: run N experiments at once on a local Ray instance (default 1: one after another)",
    )

    lst = sub.add_parser("list", help="list strategies, clients, tasks, partitioners, executors, ...")
    lst.add_argument("kind", nargs="?", help="only this kind (e.g. strategy, weighting, task, participation)")
    _add_plugin_flag(lst)

    show = sub.add_parser("show", help="what a name is: a preset's parts and options, a task's options, ...")
    show.add_argument("name", help="any name `fedsim list` prints")
    _add_plugin_flag(show)

    table = sub.add_parser("table", help="compare runs: final/best metrics, time to accuracy, mean ± std over seeds")
    table.add_argument("runs", nargs="+", metavar="RUN_OR_SWEEP", help="run folders or folders holding runs")
    table.add_argument("--metric", default="test_accuracy", help="metric to compare (default test_accuracy)")
    table.add_argument(
        "--target",
        type=float,
        help="time-to-accuracy threshold (default: the best value every run reached, rounded down to 0.01)",
    )
    table.add_argument("--csv", action="store_true", help="CSV (one column per mean and std) instead of markdown")

    plot = sub.add_parser("plot", help="plot a metric for runs (mean ± std band over seeds per group) into a PNG")
    plot.add_argument("runs", nargs="+", metavar="RUN_OR_SWEEP", help="run folders or folders holding runs")
    plot.add_argument("--metric", default="test_accuracy", help="default test_accuracy")
    plot.add_argument(
        "--x", default="round", help="round | virtual_time | wall_time | bytes_up | bytes_down (default round)"
    )
    plot.add_argument("--out", default="plot.png", help="PNG path (default plot.png)")
    plot.add_argument(
        "--label",
        action="append",
        metavar="TEXT",
        help="legend label per group, in the order the groups are listed (repeatable)",
    )
    plot.add_argument("--title", help="plot title")
    return parser


def _add_plugin_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--plugin",
        dest="plugins",
        action="append",
        default=[],
        metavar="MODULE",
        help="import MODULE first, so the names it registers can be used (repeatable)",
    )


def _cli_overrides(args: argparse.Namespace) -> list[str]:
    values = [f"{key}={getattr(args, flag)}" for flag, (key, _) in FLAG_KEYS.items() if getattr(args, flag) is not None]
    if args.quiet:
        values.append("output.progress=false")
    if args.no_tensorboard:
        values.append("output.tensorboard=false")
    return values + list(args.overrides)


def _cmd_run(args: argparse.Namespace) -> int:
    import yaml  # noqa: PLC0415

    from fedsim import sweep  # noqa: PLC0415

    overrides = _cli_overrides(args)
    if args.resume:
        return _resume(args, overrides)
    values = {"plugins": list(args.plugins)} if args.plugins else None
    axes = sweep.parse_axes(args.seeds, args.sweep)
    if axes:
        runs = sweep.expand(args.config, overrides, axes, values)
        if args.dry_run:
            for settings, config in runs:
                print(f"# {sweep.label(settings)}")
                print(yaml.safe_dump(config.to_dict(), sort_keys=False))
            return 0
        failed = sweep.run_sweep(runs, out=args.out, jobs=args.jobs)
        return 1 if failed else 0
    if args.jobs != 1:
        raise ConfigError("--jobs runs several experiments at once: use it with --seeds or --sweep")
    config = load_config(args.config, overrides, values=values)
    if args.dry_run:
        print(yaml.safe_dump(config.to_dict(), sort_keys=False), end="")
        return 0
    from fedsim.run import run_experiment  # noqa: PLC0415

    summary, out = run_experiment(config, overwrite=args.overwrite, argv=["fedsim", *sys.argv[1:]], force=args.force)
    return _report(summary, out)


def _report(summary: dict, out: Any) -> int:
    """The run's last line (stdout when it completed, stderr otherwise) and its exit code."""
    from fedsim import sweep  # noqa: PLC0415
    from fedsim.run import exit_code  # noqa: PLC0415

    status = summary.get("status", "completed")
    if status == "completed":
        print(sweep.done_line(summary, out))
        return 0
    hint = f" (continue it with --resume {out})" if status == "interrupted" and summary.get("checkpoint") else ""
    print(
        f"fedsim: run {status} at round {summary['rounds']}: {summary.get('reason', '')} -> {out}{hint}",
        file=sys.stderr,
    )
    return exit_code(summary)


def _resume(args: argparse.Namespace, overrides: list[str]) -> int:
    from fedsim.run import resume_experiment  # noqa: PLC0415

    given = [flag for flag in ("config", "seeds", "dry_run", "overwrite", "plugins") if getattr(args, flag)]
    if given or args.sweep or args.jobs != 1:
        raise ConfigError(
            f"--resume takes its config from RUN_DIR/config.yaml; drop --{(given or ['sweep'])[0].replace('_', '-')}"
        )
    from fedsim.metrics import check_resumable  # noqa: PLC0415

    run_dir = Path(args.resume).expanduser()
    check_resumable(run_dir)  # before building anything (the recorder checks again)
    try:
        summary, out = resume_experiment(args.resume, overrides, argv=["fedsim", *sys.argv[1:]])
    except ConfigError:
        _keep_plugin_traceback(run_dir / "log.txt")
        raise
    return _report(summary, out)


def _keep_plugin_traceback(log_file: Path) -> None:
    """A plugin (from the run's config.yaml) failed to import: its traceback goes to the run's log.txt."""
    from fedsim.plugins import take_failure_traceback  # noqa: PLC0415

    text = take_failure_traceback()
    if text is None or not log_file.parent.is_dir() or (log_file.exists() and not log_file.is_file()):
        return
    try:
        handler = logging.FileHandler(log_file)
    except OSError:
        return  # the one-line error is printed all the same
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    handler.handle(
        logging.makeLogRecord(
            {
                "name": "fedsim",
                "levelno": logging.ERROR,
                "levelname": "ERROR",
                "msg": f"--resume: a plugin failed to import\n{text.rstrip()}",
            }
        )
    )
    handler.close()


def _cmd_list(args: argparse.Namespace) -> int:
    from fedsim import registries  # noqa: PLC0415

    kinds = list(registries.KINDS)
    if args.kind is not None:
        kind = args.kind.replace("-", "_").lower()
        for singular in (kind, kind[:-3] + "y" if kind.endswith("ies") else kind, kind.removesuffix("s")):
            if singular in registries.KINDS:
                kind = singular
                break
        else:
            raise ConfigError(unknown_name_message("kind", args.kind, registries.KINDS))
        kinds = ["optimizer", "server_optimizer"] if kind == "optimizer" else [kind]  # `list optimizers`: both sides
    for kind in kinds:
        heading = registries.KINDS[kind][2]
        registry = registries.get(kind)
        print(f"{heading}:")
        # optimizers list library entries too (registries.get(...).listing(), pytorch-optimizer imported)
        entries = registry.listing() if hasattr(registry, "listing") else registry.describe()
        width = max(len(name) for name, _ in entries)
        for name, description in entries:
            print(f"  {name:<{width}}  {description}")
        print()
    return 0


def _cmd_show(args: argparse.Namespace) -> int:
    from fedsim.show import describe  # noqa: PLC0415

    print(describe(args.name))
    return 0


def _cmd_table(args: argparse.Namespace) -> int:
    from fedsim.table import compare_table  # noqa: PLC0415

    try:
        print(compare_table(args.runs, metric=args.metric, target=args.target, as_csv=args.csv), end="")
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    return 0


def _cmd_plot(args: argparse.Namespace) -> int:
    from fedsim.plot import plot_runs  # noqa: PLC0415

    try:
        out = plot_runs(args.runs, metric=args.metric, x=args.x, out=args.out, labels=args.label, title=args.title)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    print(f"wrote {out}")
    return 0


def _early_plugins(argv: Sequence[str]) -> list[str]:
    """``--plugin`` values, imported before the parser is built (so --help lists their names)."""
    names = []
    for i, arg in enumerate(argv):
        if arg == "--plugin" and i + 1 < len(argv):
            names.append(argv[i + 1])
        elif arg.startswith("--plugin="):
            names.append(arg.split("=", 1)[1])
    return names


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    from fedsim.plugins import PluginError, check_shadowing, import_plugins, load_entry_points_once  # noqa: PLC0415

    shadow = check_shadowing()
    if shadow:
        print(f"fedsim: error: {shadow}", file=sys.stderr)
        return 2
    wants_help = "-h" in argv or "--help" in argv
    try:
        if wants_help or any(a in ("list", "show") for a in argv[:1]):
            load_entry_points_once()
            import_plugins(_early_plugins(argv))
        parser = _parser(detailed_help=wants_help)
    except PluginError as exc:
        print(f"fedsim: error: {exc}", file=sys.stderr)
        return 2
    args = parser.parse_args(argv)
    handler: logging.Handler = logging.StreamHandler(sys.stderr)
    if args.command == "run":
        from fedsim.metrics import TqdmLoggingHandler  # noqa: PLC0415

        handler = TqdmLoggingHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    logger = logging.getLogger("fedsim")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    commands: dict[str, Any] = {
        "run": _cmd_run,
        "list": _cmd_list,
        "show": _cmd_show,
        "table": _cmd_table,
        "plot": _cmd_plot,
    }
    try:
        return commands[args.command](args)
    except (ConfigError, UnknownNameError, FileNotFoundError, PluginError) as exc:
        print(f"fedsim: error: {exc}", file=sys.stderr)
        return 2
    except RunFailed as exc:
        print(f"fedsim: run failed: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("fedsim: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `fedsim list | head`: the reader left, nothing is wrong
        import os  # noqa: PLC0415

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    finally:
        logger.removeHandler(handler)


if __name__ == "__main__":
    sys.exit(main())
