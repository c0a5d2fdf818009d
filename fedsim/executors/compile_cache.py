"""Where fedsim keeps what outlives a run: torch.compile's (inductor's) cache and the measured
cost of compiling each model shape, so ``executor.compile: auto`` can decide from this
machine's numbers and the second run of a sweep pays no cold compile.

Directory, first that is set: ``executor.cache_dir``, ``$FEDSIM_CACHE_DIR``,
``$XDG_CACHE_HOME/fedsim``, ``~/.cache/fedsim``. Inside it:

- ``inductor/``: ``TORCHINDUCTOR_CACHE_DIR`` (set before compiling, unless the user set it);
  inductor's FX-graph cache there makes a later process's compile of the same graph "warm";
- ``compile_costs.json``: per model-shape signature (parameter shapes, batch width, torch
  version, device), the measured compile seconds (first and warm) and seconds per batched step
  compiled and uncompiled, written when a vmap executor closes. It is read with ``json`` only;
  a file that does not parse or has the wrong shape is ignored with one warning.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from pathlib import Path

log = logging.getLogger("fedsim")

__all__ = ["cache_dir", "use_inductor_cache", "signature", "load_costs", "record", "COSTS_FILE", "COST_KEYS"]

COSTS_FILE = "compile_costs.json"
# what one signature's entry may hold (seconds); anything else in the file is dropped
COST_KEYS = ("compile_s", "warm_compile_s", "eager_step_s", "compiled_step_s")
MAX_ENTRIES = 1_000  # a bigger file is not ours (or has grown past any real use): ignored
_warned: set[str] = set()


def cache_dir(configured: str | None = None) -> Path:
    """The cache directory (see the module docstring for the order)."""
    if configured:
        return Path(configured).expanduser()
    if os.environ.get("FEDSIM_CACHE_DIR"):
        return Path(os.environ["FEDSIM_CACHE_DIR"]).expanduser()
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "fedsim"
    return Path.home() / ".cache" / "fedsim"


def use_inductor_cache(directory: Path) -> str:
    """Point inductor's cache at ``directory/inductor`` unless the user chose one; returns the one in use."""
    if not os.environ.get("TORCHINDUCTOR_CACHE_DIR"):
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(directory / "inductor")
    return os.environ["TORCHINDUCTOR_CACHE_DIR"]


def signature(param_shapes: list[tuple[int, ...]], batch_size: int, device: str) -> str:
    """A short key for one model shape on this torch and device."""
    import torch  # noqa: PLC0415

    text = json.dumps([[list(s) for s in param_shapes], int(batch_size), torch.__version__, device])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _warn_once(path: Path, why: str) -> None:
    if str(path) not in _warned:
        _warned.add(str(path))
        log.warning("compile cache: ignoring %s (%s); compile: auto uses its default estimates", path, why)


def load_costs(directory: Path) -> dict[str, dict[str, float]]:
    """The recorded costs, validated: finite non-negative numbers under the known keys only."""
    path = directory / COSTS_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError) as exc:
        _warn_once(path, f"unreadable: {type(exc).__name__}")
        return {}
    try:
        raw = json.loads(text)
    except (ValueError, RecursionError):
        _warn_once(path, "not valid JSON")
        return {}
    if not isinstance(raw, dict) or len(raw) > MAX_ENTRIES:
        _warn_once(path, "not an object of signatures")
        return {}
    costs: dict[str, dict[str, float]] = {}
    for key, entry in raw.items():
        if not isinstance(entry, dict):
            _warn_once(path, f"entry {str(key)[:40]!r} is not an object")
            return {}
        clean = {}
        for name in COST_KEYS:
            value = entry.get(name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                _warn_once(path, f"{name} of entry {str(key)[:40]!r} is not a non-negative number")
                return {}
            clean[name] = float(value)
        costs[str(key)] = clean
    return costs


def record(directory: Path, key: str, measured: dict[str, float]) -> None:
    """Merge ``measured`` into the entry of ``key``: a compile measured when one was already
    recorded is a warm one (inductor's cache holds the graph). Best effort: never raises."""
    try:
        costs = load_costs(directory)
        entry = costs.setdefault(key, {})
        compile_s = measured.get("compile_s")
        if compile_s is not None:
            entry["warm_compile_s" if "compile_s" in entry else "compile_s"] = compile_s
        for name in ("eager_step_s", "compiled_step_s"):
            if name in measured:
                entry[name] = measured[name]
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / COSTS_FILE
        tmp = path.with_name(f"{COSTS_FILE}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(costs, indent=1, sort_keys=True), encoding="utf-8")
        tmp.replace(path)  # atomic: a concurrent reader sees the old file or the new one
    except OSError as exc:
        log.debug("compile cache: could not record costs in %s (%s)", directory, exc)
