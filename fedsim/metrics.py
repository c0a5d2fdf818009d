"""Run recording: metrics.jsonl, rounds.jsonl, summary.json, TensorBoard, a live progress bar, log.txt.

``metrics.jsonl``: one JSON object per evaluation (the initial model at round 0, every
``eval.every`` rounds, and after the last). ``round`` is the server model version. Fields:

- at that round: ``round``, ``virtual_time`` (virtual seconds), ``wall_time`` (seconds since
  the run started), ``test_loss``, ``test_accuracy`` (global test set),
  ``client_accuracy_mean``/``client_accuracy_worst10`` (with ``eval.per_client``),
  ``participants`` (successful updates aggregated in the latest round);
- since the previous evaluation: ``train_loss`` (sample-weighted mean of the clients' local
  training losses), ``updates`` (successful updates aggregated);
- cumulative since the start: ``dropouts`` (failed jobs and dropped stragglers).

``rounds.jsonl``: one JSON object per server update: ``round``, ``virtual_time``,
``participants``, ``dropouts`` (this round), ``train_loss`` (this round's participants),
``staleness`` (mean over the aggregated updates).
``summary.json`` is written at the end.
"""

from __future__ import annotations

import json
import logging
import math
import sys
from pathlib import Path
from typing import Any, Mapping

from tqdm import tqdm

__all__ = ["RunRecorder", "TqdmLoggingHandler", "LogBuffer", "flatten", "hparams_of"]


class TqdmLoggingHandler(logging.Handler):
    """Writes log lines above the progress bar instead of through it."""

    def emit(self, record: logging.LogRecord) -> None:
        tqdm.write(self.format(record), file=sys.stderr)


class LogBuffer(logging.Handler):
    """Keeps the "fedsim" log records emitted before the run folder exists (while building),
    so that log.txt holds every notice the console showed."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []
        self._logger = logging.getLogger("fedsim")
        self._logger.addHandler(self)

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def close(self) -> None:
        self._logger.removeHandler(self)
        super().close()


def _clean(value: Any) -> Any:
    """JSON-safe: NaN/inf become null (json would write invalid NaN tokens), recursively."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (lists and other leaves kept as they are)."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def hparams_of(config: Mapping[str, Any]) -> dict[str, Any]:
    """A resolved config as TensorBoard hyperparameters: scalars kept, the rest as strings."""
    out: dict[str, Any] = {}
    for key, value in flatten(config).items():
        if key.startswith("output."):
            continue
        out[key] = value if isinstance(value, (bool, int, float, str)) else json.dumps(value)
    return out


class RunRecorder:
    """Engine callback writing the run folder; ``hparams`` (flat) go to TensorBoard's HPARAMS tab."""

    def __init__(
        self, out_dir: Path, total_rounds: int, label: str, progress: bool = True, tensorboard: bool = True,
        hparams: Mapping[str, Any] | None = None, early_logs: list[logging.LogRecord] | None = None,
    ):
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self._file_log = logging.FileHandler(self.out_dir / "log.txt")
        self._file_log.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        for record in early_logs or []:
            self._file_log.handle(record)
        logging.getLogger("fedsim").addHandler(self._file_log)
        self._metrics = (self.out_dir / "metrics.jsonl").open("w")
        self._rounds = (self.out_dir / "rounds.jsonl").open("w")
        self._hparams = dict(hparams or {})
        self._tb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter  # noqa: PLC0415  (slow import; only when wanted)

            self._tb = SummaryWriter(log_dir=str(self.out_dir / "tensorboard"))
        self._bar = tqdm(total=total_rounds, desc=label, unit="round", file=sys.stderr, disable=not progress, dynamic_ncols=True)
        self._postfix: dict[str, str] = {}

    def on_start(self, engine: Any) -> None:
        """Evaluate the initial model: the round-0 row of metrics.jsonl."""
        record = {
            "round": engine.state.version,
            "virtual_time": engine.now,
            "wall_time": 0.0,
            "train_loss": None,
            **engine.evaluator.evaluate(engine.state.params),
            "participants": 0,
            "updates": 0,
            "dropouts": 0,
        }
        self.on_eval(engine, record)

    def on_round(self, engine: Any, record: dict[str, Any]) -> None:
        self._rounds.write(json.dumps(_clean(record)) + "\n")
        self._postfix.update(vtime=f"{record['virtual_time']:.1f}s", clients=str(record["participants"]))
        if record.get("train_loss") is not None:
            self._postfix["loss"] = f"{record['train_loss']:.3f}"
        self._bar.set_postfix(self._postfix, refresh=False)
        self._bar.update(record["round"] - self._bar.n)

    def on_eval(self, engine: Any, record: dict[str, Any]) -> None:
        self._metrics.write(json.dumps(_clean(record)) + "\n")
        self._metrics.flush()
        self._rounds.flush()
        if record.get("test_accuracy") is not None:
            # the bar always shows the latest evaluation, and at which round it was taken
            self._postfix["acc"] = f"{record['test_accuracy']:.3f}@{record['round']}"
            self._bar.set_postfix(self._postfix, refresh=True)
        if self._tb is not None:
            for key, value in record.items():
                if key != "round" and isinstance(value, (int, float)) and value is not None:
                    self._tb.add_scalar(key, value, record["round"])

    def on_end(self, engine: Any, summary: dict[str, Any]) -> None:
        summary["out_dir"] = str(self.out_dir)
        (self.out_dir / "summary.json").write_text(json.dumps(_clean(summary), indent=2) + "\n")
        if self._tb is not None and self._hparams:
            self._write_hparams(summary)
        self._close_outputs()  # log.txt stays attached until close(): executor shutdown notices go there too

    def _write_hparams(self, summary: dict[str, Any]) -> None:
        from torch.utils.tensorboard.summary import hparams  # noqa: PLC0415

        final = summary.get("final") or {}
        metrics = {"hparam/final_test_accuracy": final.get("test_accuracy"),
                   "hparam/best_test_accuracy": summary.get("best_test_accuracy"),
                   "hparam/final_test_loss": final.get("test_loss"),
                   "hparam/dropouts": summary.get("dropouts")}
        metrics = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and math.isfinite(v)}
        # written into this run's own event file (SummaryWriter.add_hparams would start a sub-run)
        writer = self._tb._get_file_writer()
        for summary_proto in hparams(self._hparams, metrics):
            writer.add_summary(summary_proto)
        for key, value in metrics.items():
            self._tb.add_scalar(key, value, summary.get("rounds", 0))

    def _close_outputs(self) -> None:
        for stream in (self._metrics, self._rounds):
            if not stream.closed:
                stream.close()
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        self._bar.close()

    def close(self) -> None:
        self._close_outputs()
        logging.getLogger("fedsim").removeHandler(self._file_log)
        self._file_log.close()
