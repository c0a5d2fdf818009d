"""``fedsim table``: compare runs, grouped by the settings that differ, mean ± std over seeds.

Runs are read from their folders (``config.yaml``, ``metrics.jsonl``, ``summary.json``); a
sweep folder (or any folder holding run folders) stands for all its runs. Two runs belong to
the same group when their resolved configs agree on everything except ``seed`` and ``output.*``;
the group's columns are the config keys that differ between groups. A folder with a
metrics.jsonl but no config.yaml is skipped with a warning; a malformed file (not JSON, a line
that is not an object, a value that is not a number) is a one-line error naming the file.

Per run: the final and best value of the metric (from the evaluations in metrics.jsonl), the
first evaluated round and virtual time at which it reached the target (time to accuracy, at the
resolution of ``eval.every``), and the number of dropouts; with ``eval.adversarial``, the final
``test_robust_accuracy`` (accuracy under PGD); with personalization (runs that report
``global_client_accuracy_mean``), also the final personalized client accuracies (mean, worst 10%),
the global model's client mean beside them, and the clients never seen. Per group: mean ± sample std over
its runs (no ± with one run).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedsim.config import read_yaml
from fedsim.metrics import flatten, read_jsonl

__all__ = ["Run", "find_runs", "load_run", "group_runs", "compare_table", "differing_keys"]

log = logging.getLogger("fedsim")


@dataclass
class Run:
    path: Path
    config: dict[str, Any]  # flat, dotted keys
    evals: list[dict[str, Any]]  # metrics.jsonl rows
    summary: dict[str, Any] | None  # None: no summary.json (still running or interrupted)
    settings: dict[str, Any] = field(default_factory=dict)  # the differing keys' values (set by group_runs)


def find_runs(paths: Sequence[str | Path]) -> list[Path]:
    """Run folders (holding config.yaml and metrics.jsonl) among ``paths`` and below them, in order.

    A folder with a metrics.jsonl but no config.yaml is no fedsim run: it is skipped with a
    warning (one line), and an error if nothing else is left.
    """
    found: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if not path.exists():
            raise FileNotFoundError(f"no such run or sweep folder: {raw}")
        if not path.is_dir():
            raise ValueError(f"{raw} is a file; give the run folder (or sweep folder) that holds it")
        if _has(path, "metrics.jsonl"):
            found.append(path)
            continue
        below = sorted(p.parent for p in path.rglob("metrics.jsonl"))
        if not below:
            raise FileNotFoundError(f"{raw} is not a run folder and holds none (no metrics.jsonl below it)")
        found.extend(below)
    found = list(dict.fromkeys(found))
    skipped = [p for p in found if not _has(p, "config.yaml")]
    if skipped:
        log.warning(
            "skipped %d folder%s with a metrics.jsonl but no config.yaml (not fedsim runs): %s",
            len(skipped),
            "s" if len(skipped) > 1 else "",
            ", ".join(map(str, skipped)),
        )
    runs = [p for p in found if p not in skipped]
    if not runs:
        raise ValueError(f"no fedsim run folder in {', '.join(map(str, paths))} (none has a config.yaml)")
    return runs


def _has(folder: Path, name: str) -> bool:
    """``folder/name`` is there (a file, a folder, a broken link: load_run says what is wrong with it)."""
    return (folder / name).exists() or (folder / name).is_symlink()


def _number(value: Any) -> bool:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an integer too large for a float
        return False


def _check_number(path: Path, where: str, key: str, value: Any) -> None:
    if value is not None and not _number(value):
        raise ValueError(f"{path}{where}: {key!r} is {json.dumps(value, default=str)[:60]}, expected a number or null")


def _read_json_object(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ValueError(f"{path} is {'a directory' if path.is_dir() else 'not a regular file'}, not a JSON file")
    try:
        data = json.loads(path.read_bytes().decode("utf-8"), parse_constant=lambda _: None)
    except OSError as exc:
        raise ValueError(f"{path}: cannot read it ({exc.strerror or exc})") from None
    except UnicodeDecodeError:
        raise ValueError(f"{path} is not UTF-8 text (binary content)") from None
    except (ValueError, RecursionError) as exc:
        reason = "nested too deeply" if isinstance(exc, RecursionError) else str(exc).splitlines()[0]
        raise ValueError(f"{path} is not valid JSON ({reason})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object {{...}}, got {type(data).__name__}")
    return data


def load_run(path: Path) -> Run:
    """A run folder's files, checked: anything malformed is a one-line ValueError naming the file."""
    path = Path(path)
    config_file = path / "config.yaml"
    if not config_file.is_file():
        raise ValueError(
            f"{config_file} is {'a directory' if config_file.is_dir() else 'not a regular file'}, not a file"
        )
    config = flatten(read_yaml(config_file))
    evals = []
    for number, row in read_jsonl(path / "metrics.jsonl"):
        if not _number(row.get("round")):
            raise ValueError(
                f"{path / 'metrics.jsonl'} line {number}: 'round' is {json.dumps(row.get('round'))[:60]} "
                "(missing or not a number: not a fedsim evaluation row)"
            )
        for key, value in row.items():  # every field the recorder writes is a number or null
            _check_number(path / "metrics.jsonl", f" line {number}", key, value)
        evals.append(row)
    summary_file = path / "summary.json"
    summary = None
    if summary_file.exists() or summary_file.is_symlink():
        summary = _read_json_object(summary_file)
        _check_number(summary_file, "", "dropouts", summary.get("dropouts"))
        if not isinstance(summary.get("status", ""), str):
            raise ValueError(f"{summary_file}: 'status' is {summary['status']!r}, expected a string")
    return Run(path=path, config=config, evals=evals, summary=summary)


def _ignored(key: str) -> bool:
    """What may differ inside a group: the seed, where the output went, and how the run was started."""
    return key == "seed" or key.startswith(("output.", "provenance."))


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, default=str)  # default: YAML dates, sets


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


def shown_keys(keys: Sequence[str], runs: Sequence[Run]) -> list[str]:
    """The differing keys worth a column or a label: a key whose value follows from a key already
    shown (``strategy.weighting`` from ``strategy.name`` when each preset resolves its own) is
    dropped. ``*.name`` keys are considered first, then the rest in order."""
    ordered = sorted(keys, key=lambda k: (not k.endswith(".name"), list(keys).index(k)))
    shown: list[str] = []
    for key in ordered:
        if not any(_determines(other, key, runs) for other in shown):
            shown.append(key)
    return [k for k in keys if k in shown]


def _determines(a: str, b: str, runs: Sequence[Run]) -> bool:
    """Whether the value of key ``a`` fixes the value of key ``b`` in every run."""
    seen: dict[str, str] = {}
    for run in runs:
        va, vb = _text(run.config.get(a)), _text(run.config.get(b))
        if seen.setdefault(va, vb) != vb:
            return False
    return True


def short_keys(keys: Sequence[str]) -> list[str]:
    """``data.alpha`` -> ``alpha``, ``strategy.name`` -> ``strategy``, where that is unique among ``keys``."""

    def short(key: str) -> str:
        parts = key.split(".")
        return parts[-2] if parts[-1] == "name" and len(parts) > 1 else parts[-1]

    shorts = [short(k) for k in keys]
    return [s if shorts.count(s) == 1 else key for key, s in zip(keys, shorts)]


def group_label(keys: Sequence[str], run: Run) -> str:
    """``fedau`` for one key, ``strategy=fedau, alpha=0.1`` for several."""
    if len(keys) == 1:
        return _text(run.settings[keys[0]])
    return ", ".join(f"{short}={_text(run.settings[key])}" for key, short in zip(keys, short_keys(keys))) or "all runs"


# --------------------------------------------------------------------------- per-run numbers


def _values(run: Run, metric: str) -> list[tuple[dict[str, Any], float]]:
    return [(row, float(row[metric])) for row in run.evals if row.get(metric) is not None]


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
        "vtime_to_target": float(reached["virtual_time"])
        if reached and reached.get("virtual_time") is not None
        else None,
        "dropouts": float(dropouts) if dropouts is not None else None,
    }


ROBUST_KEYS = ("test_robust_accuracy",)  # eval.adversarial
PERSONAL_KEYS = ("client_accuracy_mean", "client_accuracy_worst10", "global_client_accuracy_mean", "clients_unseen")


def _final(run: Run, metric: str) -> float | None:
    values = _values(run, metric)
    return values[-1][1] if values else None


def mean_std(values: Sequence[float | None]) -> tuple[float | None, float | None, int]:
    """(mean, sample std or None for a single value, count) over the values that are not None."""
    present = [v for v in values if v is not None and math.isfinite(v)]
    if not present:
        return None, None, 0
    std = statistics.stdev(present) if len(present) > 1 else None
    return statistics.fmean(present), std, len(present)


# --------------------------------------------------------------------------- the table


def default_target(runs: Sequence[Run], metric: str, higher_is_better: bool) -> float | None:
    """The best value every run reached, rounded towards "easier" to 0.01 (so every run reaches it),
    but always past the untrained model's value (round 0): reaching what the run started from is no
    result, so a run that never improved shows "-" instead of "0 rounds"."""
    bests = [run_numbers(r, metric, None, higher_is_better)["best"] for r in runs]
    bests = [b for b in bests if b is not None]
    if not bests:
        return None
    initial = [v for r in runs for row, v in _values(r, metric) if row.get("round") == 0]
    if higher_is_better:
        target = math.floor(min(bests) * 100 + 1e-9) / 100
        if initial and target <= max(initial):
            target = math.floor(max(initial) * 100 + 1e-9) / 100 + 0.01
        return round(target, 2)
    target = math.ceil(max(bests) * 100 - 1e-9) / 100
    if initial and target >= min(initial):
        target = math.ceil(min(initial) * 100 - 1e-9) / 100 - 0.01
    return round(target, 2)


def compare_table(
    paths: Sequence[str | Path],
    metric: str = "test_accuracy",
    target: float | None = None,
    as_csv: bool = False,
) -> str:
    """The comparison table as markdown (or CSV with one column per mean, std and count)."""
    if target is not None and not math.isfinite(target):
        raise ValueError(f"--target must be a finite number, got {target}")
    runs = [load_run(p) for p in find_runs(paths)]
    available = sorted({k for r in runs for row in r.evals for k, v in row.items() if isinstance(v, (int, float))})
    if not any(_values(r, metric) for r in runs):
        raise ValueError(f"no run has metric {metric!r}; available: {', '.join(available)}")
    higher_is_better = "loss" not in metric
    if target is None:
        target = default_target(runs, metric, higher_is_better)
    keys, groups = group_runs(runs)
    columns = [
        ("final", f"final {metric}"),
        ("best", f"best {metric}"),
        ("rounds_to_target", f"rounds to {target:g}"),
        ("vtime_to_target", f"virtual s to {target:g}"),
        ("dropouts", "dropouts"),
    ]
    # robust accuracy, then personalization (the clients' own models beside the global model's): final values
    personal = [key for key in (*ROBUST_KEYS, *PERSONAL_KEYS) if key != metric and any(_values(r, key) for r in runs)]
    columns += [(key, f"final {key}") for key in personal]
    rows = []
    for group in groups:
        numbers = [
            run_numbers(r, metric, target, higher_is_better) | {key: _final(r, key) for key in personal} for r in group
        ]
        stats = {col: mean_std([n[col] for n in numbers]) for col, _ in columns}
        rows.append((group, stats))
    if as_csv:
        return _csv(keys, columns, rows, target)
    return _markdown(shown_keys(keys, runs), columns, rows, runs)


def _fmt(col: str, mean: float | None, std: float | None, count: int, total: int) -> str:
    if mean is None:
        return "-" if col.endswith("target") else "n/a"
    digits = {
        "final": 4,
        "best": 4,
        "rounds_to_target": 1,
        "vtime_to_target": 1,
        "dropouts": 1,
        "clients_unseen": 1,
    }.get(col, 4)
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
    stopped = [
        f"{r.path} ({r.summary['status']})"
        for r in runs
        if r.summary is not None and r.summary.get("status", "completed") != "completed"
    ]
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
