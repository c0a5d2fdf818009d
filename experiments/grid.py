"""Shared driver for the experiment scripts: run a grid of independent runs in a process
pool with one progress line per finished run, summarise seeds as mean ± std, write a CSV.

The scripts run as ``python experiments/NAME.py``, so this module is imported as ``grid``
(the script's folder is on ``sys.path``).
"""

from __future__ import annotations

import csv
import statistics
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

__all__ = ["mean_std", "format_mean_std", "run_grid", "write_csv"]


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """(mean, sample standard deviation); std 0 for one value, (nan, nan) for none."""
    if not values:
        return float("nan"), float("nan")
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def format_mean_std(values: Sequence[float], fmt: str = "{:.3f}", scale: float = 1.0) -> str:
    """``"m ± s"`` with ``fmt`` for both numbers (after multiplying by ``scale``); "—" for no values."""
    if not values:
        return "—"
    mean, std = mean_std(values)
    return f"{fmt.format(scale * mean)} ± {fmt.format(scale * std)}"


def run_grid(
    run_one: Callable[[Any], dict[str, Any]],
    runs: Sequence[Any],
    jobs: int,
    describe: Callable[[dict[str, Any]], str] | None = None,
) -> list[dict[str, Any]]:
    """``run_one`` over ``runs`` in ``jobs`` processes, results in the order of ``runs``;
    ``describe(result)`` prints one ``[i/n] ...`` line per finished run."""
    results = []
    with ProcessPoolExecutor(max_workers=jobs) as pool:
        for i, result in enumerate(pool.map(run_one, runs), 1):
            results.append(result)
            if describe is not None:
                print(f"[{i}/{len(runs)}] {describe(result)}", flush=True)
    return results


def write_csv(path: Path, rows: Sequence[dict[str, Any]], fields: Sequence[str] | None = None) -> None:
    """``rows`` as CSV with a header (``fields``: the columns, default the first row's keys)."""
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(fields if fields is not None else rows[0]), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
