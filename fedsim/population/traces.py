"""Client availability traces: when each client is online, in virtual seconds.

Two file formats are read:

- CSV ``client_id,start,end`` with one row per availability interval ``[start, end)`` and an
  optional header line. The trace length (period) is the largest ``end`` in the file.
- FedScale's client availability trace (``client_behave_trace``; Lai et al., "FedScale:
  Benchmarking Model and System Performance of Federated Learning at Scale", ICML 2022,
  arXiv 2105.11367): a pickled dict ``client id -> {'active': [start times], 'inactive':
  [end times], 'finish_time': trace length, ...}``. As in FedScale, the k-th interval is
  ``active[k] <= t <= inactive[k]`` (closed) and time wraps modulo the client's own
  ``finish_time``. FedScale scans intervals with a per-client cursor that advances by one
  per query; we test membership in any interval directly, which is what the cursor
  approximates when queried densely.

A trace is stored in CSR form (``offsets`` into ``starts``/``ends``), O(intervals) memory.
Overlapping intervals of a client are merged on load, so availability fractions are exact.
Pickles are read with :func:`fedsim.safe_pickle.load`, which only accepts plain containers,
numbers, strings and numpy arrays, so a trace file cannot run code.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from fedsim import safe_pickle

__all__ = ["AvailabilityTrace", "load_trace", "read_csv_trace", "read_fedscale_trace", "from_intervals"]


@dataclass
class AvailabilityTrace:
    """Availability intervals of K trace clients: client k owns rows ``offsets[k]:offsets[k+1]``."""

    client_ids: list[Any]  # original trace ids, sorted; position k = trace client k
    offsets: np.ndarray  # int64[K+1]
    starts: np.ndarray  # float64[M], sorted within each client, disjoint after merging
    ends: np.ndarray  # float64[M]
    periods: np.ndarray  # float64[K] trace length per client; time wraps modulo this
    closed: bool  # True: start <= t <= end (FedScale); False: start <= t < end (CSV)

    @property
    def num_clients(self) -> int:
        return len(self.periods)

    @cached_property
    def owners(self) -> np.ndarray:
        """Trace client index of every interval (int64[M])."""
        return np.repeat(np.arange(self.num_clients, dtype=np.int64), np.diff(self.offsets))

    def available(self, time: float) -> np.ndarray:
        """bool[K]: which trace clients are online at virtual time ``time`` (wrapped per client)."""
        owner = self.owners
        local = np.mod(time, self.periods)[owner]
        inside = (self.starts <= local) & ((local <= self.ends) if self.closed else (local < self.ends))
        online = np.zeros(self.num_clients, dtype=bool)
        online[owner[inside]] = True
        return online

    def available_clients(self, clients: np.ndarray, time: float) -> np.ndarray:
        """bool per entry of ``clients`` (trace client indices): online at ``time``; O(len(clients) log M)."""
        keys = self._interval_keys
        local = np.mod(time, self.periods[clients])
        row = np.searchsorted(keys, self._key_base[clients] + local, side="right") - 1
        inside = row >= self.offsets[clients]
        row = np.where(inside, row, 0)
        if len(self.ends):
            within = (local <= self.ends[row]) if self.closed else (local < self.ends[row])
            inside &= within & (self.starts[row] <= local)
        return inside

    @cached_property
    def _key_base(self) -> np.ndarray:
        """Per trace client, an offset that makes (offset + local time) increase across clients."""
        return np.concatenate([[0.0], np.cumsum(self.periods + 1.0)[:-1]])

    @cached_property
    def _interval_keys(self) -> np.ndarray:
        return self._key_base[self.owners] + np.clip(self.starts, 0.0, None)

    def availability_fraction(self) -> np.ndarray:
        """float64[K]: fraction of its period each trace client is online (intervals clipped to the period)."""
        owner = self.owners
        period = self.periods[owner]
        length = np.clip(np.minimum(self.ends, period) - np.maximum(self.starts, 0.0), 0.0, None)
        return np.minimum(np.bincount(owner, weights=length, minlength=self.num_clients) / self.periods, 1.0)


def from_intervals(
    ids: Any, starts: np.ndarray, ends: np.ndarray, periods: dict[Any, float] | float, closed: bool, all_ids: Any = None
) -> AvailabilityTrace:
    """Build a trace from flat per-interval arrays (any order).

    ``ids`` names each interval's client; ``all_ids`` (default: the distinct ``ids``) lists every
    trace client, including ones with no interval. ``periods``: per client id, or one value.
    """
    starts = np.asarray(starts, dtype=np.float64)
    ends = np.asarray(ends, dtype=np.float64)
    if not (np.all(np.isfinite(starts)) and np.all(np.isfinite(ends))):
        raise ValueError("availability trace has non-finite interval times")
    if np.any(ends < starts):
        raise ValueError("availability trace has an interval whose end is before its start")
    ordered = _sorted_ids(set(ids) if all_ids is None else set(all_ids) | set(ids))
    if not ordered:
        raise ValueError("availability trace has no clients")
    position = {cid: k for k, cid in enumerate(ordered)}
    owner = np.array([position[c] for c in ids], dtype=np.int64)
    if isinstance(periods, dict):
        period_array = np.array([float(periods[c]) for c in ordered], dtype=np.float64)
    else:
        period_array = np.full(len(ordered), float(periods))
    if not np.all((period_array > 0) & np.isfinite(period_array)):
        raise ValueError("availability trace length (finish_time / largest end) must be positive")
    offsets, starts, ends = _merge(owner, starts, ends, len(ordered))
    return AvailabilityTrace(ordered, offsets, starts, ends, period_array, closed)


def _sorted_ids(distinct: set[Any]) -> list[Any]:
    """Ids in sorted order; ids of mixed types that do not compare are sorted as strings."""
    try:
        return sorted(distinct)
    except TypeError:
        return sorted(distinct, key=str)


def _merge(owner: np.ndarray, starts: np.ndarray, ends: np.ndarray, num: int) -> tuple[np.ndarray, ...]:
    """Sort intervals by (owner, start) and merge overlapping or touching ones, per owner."""
    order = np.lexsort((starts, owner))
    owner, starts, ends = owner[order], starts[order], ends[order]
    if len(owner):
        # Running max of ends within each owner's run: replace ends by their rank in (owner, end)
        # order, which is an integer key that increases with the owner, so a global running max
        # never leaks from one owner into the next.
        rank = np.empty(len(owner), dtype=np.int64)
        rank[np.lexsort((ends, owner))] = np.arange(len(owner))
        end_of_rank = np.empty(len(owner))
        end_of_rank[rank] = ends
        running_end = end_of_rank[np.maximum.accumulate(rank)]
        new_group = np.ones(len(owner), dtype=bool)
        new_group[1:] = (owner[1:] != owner[:-1]) | (starts[1:] > running_end[:-1])
        first = np.flatnonzero(new_group)
        last = np.append(first[1:] - 1, len(owner) - 1)
        owner, starts, ends = owner[first], starts[first], running_end[last]
    offsets = np.zeros(num + 1, dtype=np.int64)
    offsets[1:] = np.cumsum(np.bincount(owner, minlength=num))
    return offsets, starts, ends


def read_csv_trace(path: Path) -> AvailabilityTrace:
    """``client_id,start,end`` rows (header optional); the period is the largest end."""
    try:
        text = path.read_text()
    except UnicodeDecodeError:
        raise ValueError(f"availability trace {path} is neither a pickle nor a UTF-8 CSV file") from None
    rows = [line.split(",") for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    if rows and not _is_number(rows[0][1] if len(rows[0]) > 1 else ""):
        rows = rows[1:]  # header
    if not rows:
        raise ValueError(f"availability trace {path} has no intervals")
    if any(len(r) != 3 for r in rows):
        raise ValueError(f"availability trace {path}: every CSV row must be client_id,start,end")
    try:
        times = np.array([[float(r[1]), float(r[2])] for r in rows], dtype=np.float64)
    except ValueError:
        raise ValueError(f"availability trace {path}: start and end must be numbers") from None
    ids = [_parse_id(r[0]) for r in rows]
    return from_intervals(ids, times[:, 0], times[:, 1], float(times[:, 1].max()), closed=False)


def read_fedscale_trace(path: Path) -> AvailabilityTrace:
    """FedScale ``client_behave_trace`` pickle: {id: {'active': [...], 'inactive': [...], 'finish_time': T}}."""
    raw = safe_pickle.load(path, what="availability trace")
    if not isinstance(raw, dict) or not raw:
        raise ValueError(f"availability trace {path}: expected a non-empty dict client id -> trace (FedScale format)")
    ids, starts, ends, periods = [], [], [], {}
    for cid, entry in raw.items():
        if not isinstance(entry, dict) or not {"active", "inactive", "finish_time"} <= entry.keys():
            raise ValueError(f"availability trace {path}: client {cid!r} lacks 'active', 'inactive' or 'finish_time'")
        active, inactive = list(entry["active"]), list(entry["inactive"])
        if len(active) != len(inactive):
            raise ValueError(f"availability trace {path}: client {cid!r} has unequal 'active'/'inactive' lengths")
        ids.extend([cid] * len(active))
        starts.extend(active)
        ends.extend(inactive)
        periods[cid] = entry["finish_time"]
    try:
        return from_intervals(ids, starts, ends, periods, closed=True, all_ids=raw.keys())
    except (TypeError, ValueError) as exc:
        raise ValueError(f"availability trace {path}: {str(exc).splitlines()[0]}") from None


def load_trace(path: str | Path) -> AvailabilityTrace:
    """Read a FedScale pickle (detected by its first byte) or a CSV trace."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"population.trace_path: no such file {str(path)!r}")
    with path.open("rb") as f:
        head = f.read(1)
    return read_fedscale_trace(path) if head == b"\x80" else read_csv_trace(path)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _parse_id(text: str) -> Any:
    text = text.strip()
    try:
        return int(text)
    except ValueError:
        return text
