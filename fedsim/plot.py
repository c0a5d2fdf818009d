"""``fedsim plot``: one metric against round or time for runs, written to a PNG.

Runs are grouped like ``fedsim table`` groups them (same resolved config except seed and
output): each group is one curve, the mean over its runs with a ± one sample-std band, and is
labelled by the settings that differ between groups (``--label`` overrides, in group order).
Runs of a group are put on a common x grid by linear interpolation (virtual and wall times
differ between seeds), over the range every run of the group covers.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from fedsim.metrics import read_jsonl
from fedsim.table import find_runs, group_label, group_runs, load_run, shown_keys

__all__ = ["read_metrics", "plot_runs", "X_AXES"]

X_AXES = ("round", "virtual_time", "wall_time", "bytes_up", "bytes_down")
# Okabe & Ito's colour-blind-safe palette (black last), cycled; bands use the line's colour, faintly
COLOURS = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000")
BAND_ALPHA = 0.12


def read_metrics(run_dir: str | Path) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        raise FileNotFoundError(f"no metrics.jsonl in run folder {run_dir}")
    return [row for _, row in read_jsonl(path)]


def _check_out(out: Path) -> Path:
    """The PNG (or other image) path, checked before anything is drawn: a failed plot writes nothing."""
    from matplotlib.backend_bases import FigureCanvasBase  # noqa: PLC0415

    formats = FigureCanvasBase.get_supported_filetypes()
    if out.is_dir():
        raise ValueError(f"--out {out} is a folder; give a file name such as {out / 'plot.png'}")
    if not out.suffix:
        out = out.with_suffix(".png")  # what matplotlib would write anyway; say so in "wrote ..."
    if out.suffix[1:].lower() not in formats:
        raise ValueError(
            f"--out {out}: unknown image format {out.suffix!r}; choose one of {', '.join(sorted(formats))}"
        )
    if out.is_dir():
        raise ValueError(f"--out {out} is a folder; give a file name such as {out / 'plot.png'}")
    for parent in out.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ValueError(f"--out {out}: {parent} is a file, not a folder")
            break
    return out


def group_curve(curves: Sequence[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(x, mean, sample std or None) of several (x, y) curves on the union of their x values
    inside the range all of them cover."""
    if len(curves) == 1:
        x, y = curves[0]
        return x, y, None
    lo = max(float(x.min()) for x, _ in curves)
    hi = min(float(x.max()) for x, _ in curves)
    grid = np.unique(np.concatenate([x for x, _ in curves]))
    grid = grid[(grid >= lo) & (grid <= hi)]
    ys = np.stack([np.interp(grid, x, y) for x, y in curves])
    return grid, ys.mean(axis=0), ys.std(axis=0, ddof=1)


def plot_runs(
    run_dirs: Sequence[str | Path],
    metric: str = "test_accuracy",
    x: str = "round",
    out: str | Path = "plot.png",
    labels: Sequence[str] | None = None,
    title: str | None = None,
) -> Path:
    if x not in X_AXES:
        raise ValueError(f"--x must be one of {', '.join(X_AXES)}, got {x!r}")
    runs = [load_run(p) for p in find_runs(run_dirs)]
    for run in runs:
        if not run.evals:
            raise ValueError(f"run {run.path} has no evaluation yet (empty metrics.jsonl)")
        if not any(row.get(metric) is not None and row.get(x) is not None for row in run.evals):
            available = sorted({k for r in run.evals for k, v in r.items() if v is not None})
            raise ValueError(
                f"run {run.path} has no evaluation with both {metric!r} and {x!r}; available: {', '.join(available)}"
            )
    keys, groups = group_runs(runs)
    keys = shown_keys(keys, runs)  # labels name only what is not implied by another setting
    if labels and len(labels) != len(groups):
        raise ValueError(
            f"--label given {len(labels)} times for {len(groups)} groups: "
            + "; ".join(group_label(keys, g[0]) for g in groups)
        )
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    out = _check_out(Path(out))

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, group in enumerate(groups):
        curves = []
        for run in group:
            rows = sorted(
                (r for r in run.evals if r.get(metric) is not None and r.get(x) is not None), key=lambda r: r[x]
            )  # np.interp needs increasing x
            curves.append(
                (np.array([r[x] for r in rows], dtype=float), np.array([r[metric] for r in rows], dtype=float))
            )
        gx, mean, std = group_curve(curves)
        if labels:
            label = labels[i]
        elif keys:
            label = group_label(keys, group[0])
        else:
            label = group[0].path.name if len(group) == 1 else "all runs"
        if len(group) > 1:
            label += f" (n={len(group)})"
        colour = COLOURS[i % len(COLOURS)]
        ax.plot(gx, mean, marker="o", markersize=2.5, label=label, color=colour, zorder=3)
        if std is not None:
            ax.fill_between(gx, mean - std, mean + std, color=colour, alpha=BAND_ALPHA, linewidth=0, zorder=2)
    unit = " (s)" if x.endswith("time") else " (bytes, run total)" if x.startswith("bytes") else ""
    ax.set_xlabel(x.replace("_", " ") + unit)
    ylabel = metric.replace("_", " ")
    ax.set_ylabel(ylabel + (" (mean ± std over seeds)" if any(len(g) > 1 for g in groups) else ""))
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out, dpi=120)
    except OSError as exc:
        raise ValueError(f"--out {out}: cannot write it ({exc.strerror or exc})") from None
    finally:
        plt.close(fig)
    return out
