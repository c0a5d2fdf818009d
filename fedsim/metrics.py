"""Run recording: metrics.jsonl, summary.json, TensorBoard events, a live progress bar, a log file.

Each evaluation appends one JSON object to ``metrics.jsonl`` (round, virtual_time, wall_time,
train_loss, test_loss, test_accuracy, participants, ...). ``summary.json`` is written at the end.
"""

from __future__ import annotations

import json
import logging
import math
import sys
from pathlib import Path
from typing import Any

from tqdm import tqdm

__all__ = ["RunRecorder", "TqdmLoggingHandler"]


class TqdmLoggingHandler(logging.Handler):
    """Writes log lines above the progress bar instead of through it."""

    def emit(self, record: logging.LogRecord) -> None:
        tqdm.write(self.format(record), file=sys.stderr)


def _clean(value: Any) -> Any:
    """JSON-safe: NaN/inf become null (json would write invalid NaN tokens), recursively."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


class RunRecorder:
    def __init__(self, out_dir: Path, total_rounds: int, label: str, progress: bool = True, tensorboard: bool = True):
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self._metrics = (self.out_dir / "metrics.jsonl").open("w")
        self._tb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter  # noqa: PLC0415  (slow import; only when wanted)

            self._tb = SummaryWriter(log_dir=str(self.out_dir / "tensorboard"))
        self._bar = tqdm(total=total_rounds, desc=label, unit="round", file=sys.stderr, disable=not progress, dynamic_ncols=True)
        self._last_eval: dict[str, Any] = {}
        self._file_log = logging.FileHandler(self.out_dir / "log.txt")
        self._file_log.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        logging.getLogger("fedsim").addHandler(self._file_log)

    def on_round(self, engine: Any, record: dict[str, Any]) -> None:
        postfix = {"vtime": f"{record['virtual_time']:.1f}s", "clients": record["participants"]}
        if record.get("train_loss") is not None:
            postfix["loss"] = f"{record['train_loss']:.3f}"
        if "test_accuracy" in self._last_eval:
            postfix["acc"] = f"{self._last_eval['test_accuracy']:.3f}"
        self._bar.set_postfix(postfix, refresh=False)
        self._bar.update(1)

    def on_eval(self, engine: Any, record: dict[str, Any]) -> None:
        self._last_eval = record
        self._metrics.write(json.dumps(_clean(record)) + "\n")
        self._metrics.flush()
        if self._tb is not None:
            for key, value in record.items():
                if key != "round" and isinstance(value, (int, float)) and value is not None:
                    self._tb.add_scalar(key, value, record["round"])

    def on_end(self, engine: Any, summary: dict[str, Any]) -> None:
        summary["out_dir"] = str(self.out_dir)
        (self.out_dir / "summary.json").write_text(json.dumps(_clean(summary), indent=2) + "\n")
        self.close()

    def close(self) -> None:
        if not self._metrics.closed:
            self._metrics.close()
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        self._bar.close()
        logging.getLogger("fedsim").removeHandler(self._file_log)
        self._file_log.close()
