"""``fedsim table``: compare runs, grouped by the settings that differ, mean ± std over seeds.

Runs are read from their folders (``config.yaml``, ``metrics.jsonl``, ``summary.json``); a
sweep folder (or any folder holding run folders) stands for all its runs. Two runs belong to
the same group when their resolved configs agree on everything except ``seed`` and ``output.*``;
the group's columns are the config keys that differ between groups.

Per run: the final and best value of the metric (from the evaluations in metrics.jsonl), the
first evaluated round and virtual time at which it reached the target (time to accuracy, at the
resolution of ``eval.every``), and the number of dropouts. Per group: mean ± sample std over
its runs (no ± with one run).
"""

from __future__ import annotations

import csv
import io
import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import yaml

from fedsim.metrics import flatten

__all__ = ["Run", "find_runs", "load_run", "group_runs", "compare_table", "differing_keys"]



@dataclass
class Run:
    path: Path
    config: dict[str, Any]  # flat, dotted keys
    evals: list[dict[str, Any]]  # metrics.jsonl rows
    summary: dict[str, Any] | None  # None: no summary.json (still running or interrupted)
    settings: dict[str, Any] = field(default_factory=dict)  # the differing keys' values (set by group_runs)


def find_runs(paths: Sequence[str | Path]) -> list[Path]:
    """Run folders (holding config.yaml and metrics.jsonl) among ``paths`` and below them, in order."""
    found: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if not path.exists():
            raise FileNotFoundError(f"no such run or sweep folder: {raw}")
        if (path / "metrics.jsonl").is_file():
            found.append(path)
            continue
        below = sorted(p.parent for p in path.rglob("metrics.jsonl"))
        if not below:
            raise FileNotFoundError(f"{raw} is not a run folder and holds none (no metrics.jsonl below it)")
        found.extend(below)
    return list(dict.fromkeys(found))


def load_run(path: Path) -> Run:
    config_file = path / "config.yaml"
    config = flatten(yaml.safe_load(config_file.read_text()) or {}) if config_file.is_file() else {}
    evals = [json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines() if line.strip()]
    summary_file = path / "summary.json"
    summary = json.loads(summary_file.read_text()) if summary_file.is_file() else None
    return Run(path=path, config=config, evals=evals, summary=summary)


def _ignored(key: str) -> bool:
    """What may differ inside a group: the seed, where the output went, and how the run was started."""
    return key == "seed" or key.startswith(("output.", "provenance."))


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def differing_keys(runs: Sequence[Run]) -> list[str]:
    """Config keys (except seed and output.*) whose values are not the same in every run."""
    keys = sorted({k for run in runs for k in run.config})
    return [k for k in keys if not _ignored(k) and len({_text(run.config.get(k)) for run in runs}) > 1]


def group_runs(runs: Sequence[Run]) -> tuple[list[str], list[list[Run]]]:
    """(differing keys, groups of runs in first-seen order); each run's ``settings`` is filled in."""
    keys = differing_keys(runs)
    groups: dict[tuple[str, ...], list[Run]] = {}
    for run in runs:
        run.settings = {k: run.config.get(k) for k in keys}
        groups.setdefault(tuple(_text(run.config.get(k)) for k in keys), []).append(run)
    return keys, list(groups.values())


def short_keys(keys: Sequence[str]) -> list[str]:
    """``data.alpha`` -> ``alpha``, ``strategy.name`` -> ``strategy``, where that is unique among ``keys``."""
    def short(key: str) -> str:
        parts = key.split(".")
        return parts[-2] if parts[-1] == "name" and len(parts) > 1 else parts[-1]

    shorts = [short(k) for k in keys]
    return [s if shorts.count(s) == 1 else key for key, s in zip(keys, shorts)]


def group_label(keys: Sequence[str], run: Run) -> str:
    return ", ".join(f"{short}={_text(run.settings[key])}" for key, short in zip(keys, short_keys(keys))) or "all runs"


# --------------------------------------------------------------------------- per-run numbers


def _values(run: Run, metric: str) -> list[tuple[dict[str, Any], float]]:
    return [(row, float(row[metric])) for row in run.evals if isinstance(row.get(metric), (int, float))]


def run_numbers(run: Run, metric: str, target: float | None, higher_is_better: bool) -> dict[str, float | None]:
    values = _values(run, metric)
    final = values[-1][1] if values else None
    best = (max if higher_is_better else min)(v for _, v in values) if values else None
    reached = None
    if target is not None:
        reached = next((row for row, v in values if (v >= target if higher_is_better else v <= target)), None)
    last = run.evals[-1] if run.evals else {}
    dropouts = (run.summary or {}).get("dropouts", last.get("dropouts"))
    return {
        "final": final,
        "best": best,
        "rounds_to_target": float(reached["round"]) if reached else None,
        "vtime_to_target": float(reached["virtual_time"]) if reached else None,
        "dropouts": float(dropouts) if dropouts is not None else None,
    }


def mean_std(values: Sequence[float | None]) -> tuple[float | None, float | None, int]:
    """(mean, sample std or None for a single value, count) over the values that are not None."""
    present = [v for v in values if v is not None and math.isfinite(v)]
    if not present:
        return None, None, 0
    std = statistics.stdev(present) if len(present) > 1 else None
    return statistics.fmean(present), std, len(present)


# --------------------------------------------------------------------------- the table


def default_target(runs: Sequence[Run], metric: str, higher_is_better: bool) -> float | None:
    """The best value every run reached, rounded towards "easier" to 0.01 (so every run reaches it)."""
    bests = [run_numbers(r, metric, None, higher_is_better)["best"] for r in runs]
    bests = [b for b in bests if b is not None]
    if not bests:
        return None
    if higher_is_better:
        return math.floor(min(bests) * 100 + 1e-9) / 100
    return math.ceil(max(bests) * 100 - 1e-9) / 100


def compare_table(
    paths: Sequence[str | Path], metric: str = "test_accuracy", target: float | None = None, as_csv: bool = False,
) -> str:
    """The comparison table as markdown (or CSV with one column per mean, std and count)."""
    runs = [load_run(p) for p in find_runs(paths)]
    available = sorted({k for r in runs for row in r.evals for k, v in row.items() if isinstance(v, (int, float))})
    if not any(_values(r, metric) for r in runs):
        raise ValueError(f"no run has metric {metric!r}; available: {', '.join(available)}")
    higher_is_better = "loss" not in metric
    if target is None:
        target = default_target(runs, metric, higher_is_better)
    keys, groups = group_runs(runs)
    columns = [("final", f"final {metric}"), ("best", f"best {metric}"),
               ("rounds_to_target", f"rounds to {target:g}"), ("vtime_to_target", f"virtual s to {target:g}"),
               ("dropouts", "dropouts")]
    rows = []
    for group in groups:
        numbers = [run_numbers(r, metric, target, higher_is_better) for r in group]
        stats = {col: mean_std([n[col] for n in numbers]) for col, _ in columns}
        rows.append((group, stats))
    if as_csv:
        return _csv(keys, columns, rows, target)
    return _markdown(keys, columns, rows, runs)


def _fmt(col: str, mean: float | None, std: float | None, count: int, total: int) -> str:
    if mean is None:
        return "-" if col.endswith("target") else "n/a"
    digits = {"final": 4, "best": 4, "rounds_to_target": 1, "vtime_to_target": 1, "dropouts": 1}[col]
    if std is None and col in ("rounds_to_target", "dropouts"):
        digits = 0  # a single run's count
    text = f"{mean:.{digits}f}" + (f" ± {std:.{digits}f}" if std is not None else "")
    if count < total:
        text += f" ({count} of {total})"  # e.g. runs that never reached the target
    return text


def _markdown(keys, columns, rows, runs) -> str:
    head = [*short_keys(keys), "runs", *(title for _, title in columns)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for group, stats in rows:
        cells = [_text(group[0].settings[k]) for k in keys] + [str(len(group))]
        cells += [_fmt(col, *stats[col], len(group)) for col, _ in columns]
        lines.append("| " + " | ".join(cells) + " |")
    notes = []
    if any(len(group) > 1 for group, _ in rows):
        notes.append("mean ± sample std over the runs of each group (seeds)")
    incomplete = [str(r.path) for r in runs if r.summary is None]
    if incomplete:
        notes.append(f"no summary.json (still running or interrupted): {', '.join(incomplete)}")
    stopped = [f"{r.path} ({r.summary['status']})" for r in runs
               if r.summary is not None and r.summary.get("status", "completed") != "completed"]
    if stopped:
        notes.append(f"runs that did not complete (their last evaluation counts as final): {', '.join(stopped)}")
    return "\n".join(lines) + "\n" + "".join(f"\n{note}" for note in notes) + ("\n" if notes else "")


def _csv(keys, columns, rows, target) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    head = [*keys, "runs", "target"]
    for col, _ in columns:
        head += [f"{col}_mean", f"{col}_std", f"{col}_count"]
    writer.writerow(head)
    for group, stats in rows:
        row: list[Any] = [_text(group[0].settings[k]) for k in keys] + [len(group), target]
        for col, _ in columns:
            mean, std, count = stats[col]
            row += ["" if mean is None else mean, "" if std is None else std, count]
        writer.writerow(row)
    return buffer.getvalue()
