"""``fedsim plot``: curves of one metric for several run folders, written to a PNG."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

__all__ = ["read_metrics", "plot_runs"]

X_AXES = ("round", "virtual_time", "wall_time")


def read_metrics(run_dir: str | Path) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"no metrics.jsonl in run folder {run_dir}")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_runs(
    run_dirs: Sequence[str | Path], metric: str = "test_accuracy", x: str = "round", out: str | Path = "plot.png",
    labels: Sequence[str] | None = None, title: str | None = None,
) -> Path:
    if x not in X_AXES:
        raise ValueError(f"--x must be one of {', '.join(X_AXES)}, got {x!r}")
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, run in enumerate(run_dirs):
        rows = [r for r in read_metrics(run) if r.get(metric) is not None]
        if not rows:
            available = sorted({k for r in read_metrics(run) for k in r})
            raise ValueError(f"run {run} has no metric {metric!r}; available: {', '.join(available)}")
        label = labels[i] if labels else Path(run).name
        ax.plot([r[x] for r in rows], [r[metric] for r in rows], marker="o", markersize=3, label=label)
    ax.set_xlabel(x.replace("_", " ") + (" (s)" if x.endswith("time") else ""))
    ax.set_ylabel(metric.replace("_", " "))
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
