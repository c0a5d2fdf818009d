"""Run recording: metrics.jsonl, rounds.jsonl, summary.json, TensorBoard, a live progress bar, log.txt.

``metrics.jsonl``: one JSON object per evaluation (the initial model at round 0, every
``eval.every`` rounds, and after the last). ``round`` is the server model version. Fields:

- at that round: ``round``, ``virtual_time`` (virtual seconds), ``wall_time`` (seconds since
  the run started), ``test_loss``, ``test_accuracy`` (global test set),
  ``client_accuracy_mean``/``client_accuracy_worst10`` (with ``eval.per_client``),
  ``test_robust_accuracy`` (with ``eval.adversarial``: under a PGD attack),
  ``participants`` (successful updates aggregated in the latest round);
- since the previous evaluation: ``train_loss`` (sample-weighted mean of the clients' local
  training losses), ``updates`` (successful updates aggregated);
- cumulative since the start: ``dropouts`` (failed jobs and dropped stragglers).

``rounds.jsonl``: one JSON object per server update: ``round``, ``virtual_time``,
``participants``, ``dropouts`` (this round), ``train_loss`` (this round's participants),
``staleness`` (mean over the aggregated updates).
Both files and ``summary.json`` also carry ``bytes_up`` / ``bytes_down``: the run's bytes
uploaded (results that arrived) and downloaded (jobs dispatched) so far (fedsim/communication.py).
``summary.json`` is written at the end.

:func:`read_jsonl` reads these files back (``fedsim table``/``plot``, ``--resume``): a line that is
not a JSON object is a one-line error naming the file and line, never skipped.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tqdm import tqdm

__all__ = ["RunRecorder", "TqdmLoggingHandler", "LogBuffer", "flatten", "hparams_of", "read_jsonl", "check_resumable"]

RESUMED_FILES = ("metrics.jsonl", "rounds.jsonl")  # a resumed run cuts them to its checkpoint and appends
REWRITTEN_FILES = ("summary.json", "log.txt")  # a resumed run deletes / appends to them


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


def _finite_or_none(text: str) -> float | None:
    value = float(text)
    return value if math.isfinite(value) else None


def _kind(path: Path) -> str:
    return "a directory" if path.is_dir() else "a broken link" if not path.exists() else "not a regular file"


def read_jsonl(path: str | Path, complete_only: bool = False) -> list[tuple[int, dict[str, Any]]]:
    """``(line number, object)`` for each non-blank line of a JSON-lines file. A last line without
    its newline is a write cut short (a killed or still running run): ignored if it is not valid
    JSON, always with ``complete_only`` (what a resumed run cuts).

    NaN, Infinity and numbers too large for a float read as null, as the recorder writes them.
    A missing file is FileNotFoundError; anything else wrong is a one-line ValueError naming the
    file (and the line).
    """
    path = Path(path)
    if not path.exists() and not path.is_symlink():
        raise FileNotFoundError(f"{path}: no such file")
    if not path.is_file():  # a folder, a FIFO (reading would block), a device, a broken link
        raise ValueError(f"{path} is {_kind(path)}, not a JSON-lines file")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ValueError(f"{path}: cannot read it ({exc.strerror or exc})") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"{path} is not UTF-8 text (binary content)") from None
    lines = text.split("\n")
    if complete_only or not lines[-1].strip():
        lines = lines[:-1]  # after the last newline: nothing, or a line cut short
    rows = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line, parse_float=_finite_or_none, parse_constant=lambda _: None)
        except (ValueError, RecursionError) as exc:
            if number == len(lines) and not text.endswith("\n"):
                break  # a last line without its newline: a write cut short (a killed or running run)
            reason = "nested too deeply" if isinstance(exc, RecursionError) else str(exc).splitlines()[0]
            raise ValueError(f"{path} line {number} is not valid JSON ({reason})") from None
        if not isinstance(row, dict):
            raise ValueError(f"{path} line {number}: expected a JSON object {{...}}, got {type(row).__name__}")
        rows.append((number, row))
    return rows


def check_resumable(out_dir: str | Path) -> None:
    """Before ``--resume`` builds anything: the files it will cut, append to or rewrite in ``out_dir``
    are regular, readable, writable files (or absent) and the JSON-lines files hold JSON objects;
    a one-line ConfigError naming the file otherwise."""
    from fedsim.config import ConfigError  # noqa: PLC0415

    out = Path(out_dir)
    for name in (*RESUMED_FILES, *REWRITTEN_FILES):
        path = out / name
        if not path.exists() and not path.is_symlink():
            continue
        if not path.is_file():
            raise ConfigError(f"--resume: {path} is {_kind(path)}, not a file; move it away to resume")
        if not os.access(path, os.R_OK | os.W_OK):
            raise ConfigError(f"--resume: {path} cannot be read and written (permissions)")
    tensorboard = out / "tensorboard"
    if (tensorboard.exists() or tensorboard.is_symlink()) and not tensorboard.is_dir():
        raise ConfigError(f"--resume: {tensorboard} is not a folder; move it away to resume")
    for name in RESUMED_FILES:
        try:
            read_jsonl(out / name, complete_only=True)
        except FileNotFoundError:
            continue  # the checkpoint's line count decides whether that is wrong
        except ValueError as exc:
            raise ConfigError(f"--resume: {exc}") from None


def _truncate_lines(path: Path, keep: int) -> int:
    """Cut ``path`` after its first ``keep`` lines (what a resumed run wrote after its checkpoint goes)."""
    from fedsim.config import ConfigError  # noqa: PLC0415

    try:
        data = path.read_bytes() if path.exists() else b""
    except OSError as exc:
        raise ConfigError(f"--resume: cannot read {path} ({exc.strerror or exc})") from None
    lines = data.splitlines(keepends=True)
    if len(lines) < keep or (keep and not lines[keep - 1].endswith(b"\n")):
        raise ConfigError(f"--resume: {path} holds {len(lines)} complete lines, the checkpoint counts {keep}")
    path.write_bytes(b"".join(lines[:keep]))
    return keep


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
        self,
        out_dir: Path,
        total_rounds: int,
        label: str,
        progress: bool = True,
        tensorboard: bool = True,
        hparams: Mapping[str, Any] | None = None,
        early_logs: list[logging.LogRecord] | None = None,
        resume: Mapping[str, int] | None = None,
    ):
        """``resume`` (a checkpoint's ``state_dict()``): keep that many lines of metrics/rounds.jsonl, append after them."""
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self._lines = {"metrics": 0, "rounds": 0}
        if resume is not None:  # checked before anything is opened, so a refusal leaves nothing attached
            check_resumable(self.out_dir)
            for name in self._lines:
                self._lines[name] = _truncate_lines(self.out_dir / f"{name}.jsonl", int(resume[f"{name}_lines"]))
        self._file_log = logging.FileHandler(self.out_dir / "log.txt")
        self._file_log.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        for record in early_logs or []:
            self._file_log.handle(record)
        logging.getLogger("fedsim").addHandler(self._file_log)
        mode = "a" if resume is not None else "w"
        self._metrics = (self.out_dir / "metrics.jsonl").open(mode)
        self._rounds = (self.out_dir / "rounds.jsonl").open(mode)
        self._hparams = dict(hparams or {})
        self._tb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter  # noqa: PLC0415  (slow import; only when wanted)

            self._tb = SummaryWriter(log_dir=str(self.out_dir / "tensorboard"))
        self._bar = tqdm(
            total=total_rounds, desc=label, unit="round", file=sys.stderr, disable=not progress, dynamic_ncols=True
        )
        self._postfix: dict[str, str] = {}

    def on_start(self, engine: Any) -> None:
        """Evaluate the initial model: the round-0 row of metrics.jsonl."""
        record = {
            "round": engine.state.version,
            "virtual_time": engine.now,
            "wall_time": 0.0,
            "train_loss": None,
            **engine.evaluator.evaluate(engine.state.params, engine.client_states),
            "participants": 0,
            "updates": 0,
            "dropouts": 0,
        }
        self.on_eval(engine, record)

    def on_round(self, engine: Any, record: dict[str, Any]) -> None:
        self._rounds.write(json.dumps(_clean(record)) + "\n")
        self._lines["rounds"] += 1
        self._postfix.update(vtime=f"{record['virtual_time']:.1f}s", clients=str(record["participants"]))
        if record.get("train_loss") is not None:
            self._postfix["loss"] = f"{record['train_loss']:.3f}"
        self._bar.set_postfix(self._postfix, refresh=False)
        self._bar.update(record["round"] - self._bar.n)

    def on_eval(self, engine: Any, record: dict[str, Any]) -> None:
        self._metrics.write(json.dumps(_clean(record)) + "\n")
        self._lines["metrics"] += 1
        self._metrics.flush()
        self._rounds.flush()
        if record.get("test_accuracy") is not None:
            # the bar always shows the latest evaluation, and at which round it was taken
            self._postfix["acc"] = f"{record['test_accuracy']:.3f}@{record['round']}"
            if record.get("global_client_accuracy_mean") is not None:  # personalization: the clients' own models
                self._postfix["pacc"] = f"{record['client_accuracy_mean']:.3f}"
            self._bar.set_postfix(self._postfix, refresh=True)
        if self._tb is not None:
            for key, value in record.items():
                if key != "round" and isinstance(value, (int, float)) and value is not None:
                    self._tb.add_scalar(key, value, record["round"])

    def state_dict(self) -> dict[str, int]:
        """Lines written so far, on disk (flushed and synced) before a checkpoint records them."""
        for stream in (self._metrics, self._rounds):
            stream.flush()
            os.fsync(stream.fileno())
        return {"metrics_lines": self._lines["metrics"], "rounds_lines": self._lines["rounds"]}

    def on_end(self, engine: Any, summary: dict[str, Any]) -> None:
        summary["out_dir"] = str(self.out_dir)
        (self.out_dir / "summary.json").write_text(json.dumps(_clean(summary), indent=2) + "\n")
        if self._tb is not None and self._hparams:
            self._write_hparams(summary)
        self._close_outputs()  # log.txt stays attached until close(): executor shutdown notices go there too

    def _write_hparams(self, summary: dict[str, Any]) -> None:
        from torch.utils.tensorboard.summary import hparams  # noqa: PLC0415

        final = summary.get("final") or {}
        metrics = {
            "hparam/final_test_accuracy": final.get("test_accuracy"),
            "hparam/best_test_accuracy": summary.get("best_test_accuracy"),
            "hparam/final_test_loss": final.get("test_loss"),
            "hparam/dropouts": summary.get("dropouts"),
        }
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
