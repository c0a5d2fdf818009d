"""Sweeps: ``fedsim run ... --seeds 0,1,2 --sweep strategy.name=fedau,fedavg_participating``.

Every combination of the swept values (cartesian product, seeds last) is one run, validated
before anything runs, written into its own folder under one sweep folder::

    runs/20261124-031500-sweep/
      sweep.yaml                              the axes and each run's folder and settings
      strategy.name=fedau,seed=0/             an ordinary run folder (config.yaml, metrics.jsonl, ...)
      strategy.name=fedau,seed=1/
      ...

Runs go one after another, or ``--jobs N`` at a time as tasks on a local Ray instance (one
CPU each). One progress line per finished run; a run that fails is reported and the others
go on (exit status 1 at the end). ``fedsim table SWEEP`` and ``fedsim plot SWEEP`` compare them.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import itertools
import logging
import os
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import yaml

from fedsim.config import ConfigError, RunConfig, load_config, parse_override

__all__ = ["parse_axes", "split_values", "expand", "label", "run_sweep", "done_line"]

log = logging.getLogger("fedsim")

Axis = tuple[str, list[str]]  # dotted key, raw value texts


def split_values(text: str) -> list[str]:
    """``"a,[1, 2],{x: 1}"`` -> ``["a", "[1, 2]", "{x: 1}"]``: commas inside brackets/braces/quotes stay."""
    values, depth, quote, current = [], 0, "", []
    for ch in text:
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "[{(":
            depth += 1
        elif ch in "]})":
            depth -= 1
        elif ch == "," and depth == 0:
            values.append("".join(current).strip())
            current = []
            continue
        current.append(ch)
    values.append("".join(current).strip())
    return values


def parse_axes(seeds: str | None, sweeps: Sequence[str]) -> list[Axis]:
    """``--sweep key=v1,v2`` (in order) then ``--seeds s1,s2`` as axes; one-line ConfigError on bad input."""
    axes: list[Axis] = []
    for text in sweeps:
        if "=" not in text:
            raise ConfigError(f"--sweep expects key=v1,v2,..., got '{text}'")
        keys, _ = parse_override(text)
        key = ".".join(keys)
        values = split_values(text.split("=", 1)[1])
        if any(not v for v in values):
            raise ConfigError(f"--sweep {key}: empty value in '{text}'")
        axes.append((key, values))
    if seeds is not None:
        values = split_values(seeds)
        if not values or any(not v.lstrip("-").isdigit() for v in values):
            raise ConfigError(f"--seeds expects integers separated by commas, e.g. 0,1,2; got '{seeds}'")
        axes.append(("seed", values))
    keys = [key for key, _ in axes]
    if "output.out" in keys:
        raise ConfigError("--sweep output.out: each run's folder is made under the sweep folder; give --out instead")
    for key in keys:
        if keys.count(key) > 1:
            raise ConfigError(f"--sweep: {key} is swept twice (--seeds sweeps seed)")
    for key, values in axes:
        if len(set(values)) != len(values):
            raise ConfigError(f"--sweep {key}: a value is repeated in {','.join(values)}")
    return axes


def label(settings: dict[str, str]) -> str:
    """The folder name and progress label of one run: ``strategy.name=fedau,seed=0``."""
    return ",".join(f"{key}={value}" for key, value in settings.items()).replace("/", "_") or "run"


def expand(
    config_path: str | None,
    overrides: Sequence[str],
    axes: Sequence[Axis],
    values: dict[str, Any] | None = None,
) -> list[tuple[dict[str, str], RunConfig]]:
    """One validated config per combination; a bad combination fails before anything runs."""
    runs = []
    for combo in itertools.product(*[[(key, v) for v in vals] for key, vals in axes]):
        settings = dict(combo)
        try:
            config = load_config(config_path, [*overrides, *(f"{k}={v}" for k, v in settings.items())], values=values)
        except ConfigError as exc:
            raise ConfigError(f"{label(settings)}: {exc}") from None
        runs.append((settings, config))
    folders = [label(settings) for settings, _ in runs]
    for folder in folders:
        if len(folder.encode()) > 255:  # the usual file-name limit; mkdir would fail after earlier runs ran
            raise ConfigError(
                f"--sweep: the run folder name {folder[:60]}... is longer than 255 bytes; sweep fewer keys"
            )
        if folders.count(folder) > 1:
            raise ConfigError(f"--sweep: two runs would share the folder {folder} ('/' becomes '_' in folder names)")
    return runs


def done_line(summary: dict[str, Any], out: Path | str) -> str:
    final = summary.get("final") or {}
    acc = final.get("test_accuracy")
    if acc is None:
        return f"done -> {out}"
    best = summary.get("best_test_accuracy")
    best_text = f" (best {best:.4f})" if best is not None else ""
    timings = summary.get("executor_timings") or {}
    compiled = f" (compile {timings['compile_s']:.1f}s of it)" if timings.get("compile_s") else ""
    startup = f", ray start-up {timings['ray_startup_s']:.1f}s before" if timings.get("ray_startup_s") else ""
    return (
        f"done: {summary['rounds']} rounds, virtual time {summary['virtual_time']:.1f}s, "
        f"wall {summary['wall_time']:.1f}s{compiled}{startup}, test accuracy {acc:.4f}{best_text}, "
        f"dropouts {summary['dropouts']} -> {out}"
    )


def _sweep_dir(out: str | None) -> Path:
    if out:
        path = Path(out)
        if (path.exists() or path.is_symlink()) and not path.is_dir():
            raise ConfigError(f"--out {path} is a file, not a folder; the sweep folder must be new or empty")
        try:
            if path.exists() and any(path.iterdir()):
                raise ConfigError(f"sweep folder {path} already exists and is not empty; choose another --out")
        except OSError as exc:
            raise ConfigError(f"--out {path}: cannot read it ({exc.strerror or exc})") from None
        return path
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    path, k = Path("runs") / f"{stamp}-sweep", 2
    while path.exists():
        path, k = Path("runs") / f"{stamp}-sweep-{k}", k + 1
    return path


def run_sweep(runs: list[tuple[dict[str, str], RunConfig]], out: str | None = None, jobs: int = 1) -> list[str]:
    """Run every config into its own folder under one sweep folder; returns the labels of failed runs."""
    if jobs < 1:
        raise ConfigError(f"--jobs must be >= 1, got {jobs}")
    if jobs > 1 and any(config.executor.name == "ray" for _, config in runs):
        raise ConfigError("--jobs runs experiments as Ray tasks; use executor auto, vmap or serial inside them")
    root = _sweep_dir(out)
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"--out {root}: cannot create the sweep folder ({exc.strerror or exc})") from None
    planned = []
    for settings, config in runs:
        config.output.out = str(root / label(settings))
        config.output.progress = False  # the console shows one [i/N] line per run, no bars between them
        planned.append((settings, config))
    axes: dict[str, list[str]] = {}
    for settings, _ in planned:
        for key, value in settings.items():
            if value not in axes.setdefault(key, []):
                axes[key].append(value)
    (root / "sweep.yaml").write_text(
        yaml.safe_dump(
            {
                "command": "fedsim " + " ".join(sys.argv[1:]),
                "axes": axes,
                "runs": [{"folder": label(s), "settings": s} for s, _ in planned],
            },
            sort_keys=False,
        )
    )
    shape = " x ".join(f"{key}: {len(v)}" for key, v in axes.items())
    how = "one after another" if jobs == 1 else f"{jobs} at a time on Ray"
    print(f"sweep: {len(planned)} runs ({shape}) into {root}, {how}", file=sys.stderr, flush=True)
    with _console_quiet():
        if jobs == 1:
            return _run_sequential(planned)
        return _run_on_ray(planned, jobs)


@contextlib.contextmanager
def _console_quiet() -> Iterator[None]:
    """Warnings and errors only on the console while a sweep runs: its output is the [i/N] lines.
    Each run's log.txt still gets its INFO lines (its file handler has its own level)."""
    consoles = [h for h in logging.getLogger("fedsim").handlers if not isinstance(h, logging.FileHandler)]
    levels = [h.level for h in consoles]
    for handler in consoles:
        handler.setLevel(max(handler.level, logging.WARNING))
    try:
        yield
    finally:
        for handler, level in zip(consoles, levels):
            handler.setLevel(level)


def _progress(i: int, n: int, settings: dict[str, str], summary: dict[str, Any] | None, error: str | None) -> None:
    head = f"[{i}/{n}] {label(settings)}"
    if error is not None:
        print(f"{head}: FAILED: {error}", flush=True)
        return
    final = (summary or {}).get("final") or {}
    acc, best = final.get("test_accuracy"), (summary or {}).get("best_test_accuracy")
    metrics = f"test accuracy {acc:.4f}" if acc is not None else "no evaluation"
    if best is not None:
        metrics += f" (best {best:.4f})"
    status = (summary or {}).get("status", "completed")
    ended = "" if status == "completed" else f" [{status}: {(summary or {}).get('reason', '')}]"
    print(
        f"{head}: {metrics}, dropouts {(summary or {}).get('dropouts', 0)}, "
        f"wall {(summary or {}).get('wall_time', 0.0):.1f}s{ended}",
        flush=True,
    )


def _run_sequential(planned: list[tuple[dict[str, str], RunConfig]]) -> list[str]:
    from fedsim.run import run_experiment  # noqa: PLC0415

    failed = []
    for i, (settings, config) in enumerate(planned, 1):
        try:
            summary, _ = run_experiment(config)
        except (ConfigError, ValueError, RuntimeError) as exc:
            failed.append(label(settings))
            _progress(i, len(planned), settings, None, str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
            continue
        _progress(i, len(planned), settings, summary, None)
    return failed


def _remote_run(config: dict[str, Any], cwd: str, sys_paths: list[str]) -> dict[str, Any]:
    """One run inside a Ray worker process (same folder and import path as the driver)."""
    os.chdir(cwd)
    logging.getLogger("fedsim").setLevel(logging.INFO)  # notices go to the run's log.txt, as in the driver
    for path in sys_paths:
        if path not in sys.path:
            sys.path.append(path)
    from fedsim.config import validate  # noqa: PLC0415
    from fedsim.run import run_experiment  # noqa: PLC0415

    summary, _ = run_experiment(validate(config))
    return summary


def _run_on_ray(planned: list[tuple[dict[str, str], RunConfig]], jobs: int) -> list[str]:
    import ray  # noqa: PLC0415

    from fedsim.executors.ray import init_local_ray  # noqa: PLC0415

    owns_ray = not ray.is_initialized()
    if owns_ray:
        init_local_ray(num_cpus=jobs)
    # the driver's import path (the current folder for plugins, source checkouts) for the workers
    sys_paths = [os.getcwd()] + [p for p in sys.path if p and os.path.isdir(p)]
    remote = ray.remote(num_cpus=1, max_retries=0)(_remote_run)
    try:
        pending = {remote.remote(config.to_dict(), os.getcwd(), sys_paths): settings for settings, config in planned}
        failed, done = [], 0
        start = time.monotonic()
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            settings = pending.pop(ready[0])
            done += 1
            try:
                summary = ray.get(ready[0])
            except ray.exceptions.RayError as exc:
                failed.append(label(settings))
                cause = getattr(exc, "cause", None) or exc
                _progress(done, len(planned), settings, None, f"{type(cause).__name__}: {str(cause).splitlines()[0]}")
                continue
            _progress(done, len(planned), settings, summary, None)
        log.info("sweep: %d runs in %.1f s", len(planned), time.monotonic() - start)
        return failed
    finally:
        if owns_ray:
            ray.shutdown()
