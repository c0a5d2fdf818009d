"""Communication: the ``communication:`` config section expanded into the update pipeline and the clock.

``plan_communication(config, layout)`` gives:

- client transforms appended after the privacy ones (the compressor, ``compress``; then the noisy
  uplink, ``link_noise``), so compression and error feedback run in every executor and in
  Flower's ClientApp on the client's side;
- a :class:`Payload`: the bytes a job moves, **known at dispatch** (the engine fixes a job's
  virtual duration then): download = the dense fp32 model (4 d bytes; the broadcast is not
  compressed), upload = the compressor's ``upload_bytes(layout, client state)`` (4 d without
  one). The engine records them per update (``bytes_up``/``bytes_down`` in a result's metrics)
  and as run totals in rounds.jsonl, metrics.jsonl and summary.json;
- the noisy downlink (``communication.downlink_snr_db``): the model a job starts from is
  z + n, n ~ N(0, sigma^2 I), sigma^2 = |z|^2 / (d 10^(SNR/10)), drawn from the job's seed at
  dispatch (:meth:`Payload.receive`); the noise stays in the model the client sends back, so on
  arrival the engine adds it to the delta (:meth:`Payload.received_noise`): the server gets
  local model - z, as when clients upload models and the server averages them;
- a :class:`Link`: each client's uplink and downlink bandwidth and latency, so a job takes
  download + compute + upload virtual seconds, each transfer bits / bandwidth + latency.

Bandwidth models (``communication.link``; uplink Mbit/s, downlink = uplink x ``asymmetry``):
``constant`` (``up_mbps`` for everyone), ``lognormal`` (median ``up_mbps``, log-sd
``bandwidth_sigma``), ``tiers`` (``bandwidth_tiers``: [fraction, uplink Mbit/s] rows), ``trace``
(``bandwidth_trace``: a CSV of ``time,mbps`` rows for every client, or ``client,time,mbps`` rows
per client; piecewise constant, the rate at the start of each transfer applies to all of it).
Per-client draws are keyed by (seed, client), so they never depend on who else ran.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedsim.config import ConfigError
from fedsim.params import ParamLayout
from fedsim.rng import derive_seed, uniform_per_client

__all__ = ["Payload", "Link", "CommunicationPlan", "plan_communication", "load_bandwidth_trace", "compressor_options"]

MAX_TRACE_ROWS = 10_000_000


DOWNLINK_NOISE_KEY = "downlink_noise_std"  # job config key: sigma of the noise on the job's downloaded model


class Payload:
    """Bytes each job moves (dense fp32 both ways unless a compressor is in the client transforms),
    and the noise on the downloaded model (``downlink_snr_db``; None: a clean downlink)."""

    def __init__(
        self,
        layout: ParamLayout | int,
        compressor: Any = None,
        prefix: str = "",
        downlink_snr_db: float | None = None,
    ):
        self.layout = layout
        self.numel = layout if isinstance(layout, int) else layout.numel
        self.compressor, self.prefix = compressor, prefix
        self.downlink_snr_db = downlink_snr_db

    def receive(self, params: torch.Tensor, seed: int) -> tuple[torch.Tensor, dict[str, float]]:
        """(the model a job with this seed downloads, config entries recording its noise)."""
        if self.downlink_snr_db is None:
            return params, {}
        from clients.transforms.link_noise import noise_std  # noqa: PLC0415

        std = float(noise_std(torch.linalg.vector_norm(params.double()), params.numel(), self.downlink_snr_db))
        return params + std * _downlink_noise(seed, params), {DOWNLINK_NOISE_KEY: std}

    def received_noise(self, job: Any, like: torch.Tensor) -> torch.Tensor | None:
        """The noise the job's download added (regenerated from its seed), or None for a clean one."""
        std = (job.config or {}).get(DOWNLINK_NOISE_KEY)
        return None if std is None else float(std) * _downlink_noise(job.seed, like)

    def down_bytes(self, job: Any) -> float:
        return 4.0 * self.numel

    def up_bytes(self, job: Any) -> float:
        if self.compressor is None:
            return 4.0 * self.numel
        from clients.transforms import transform_state  # noqa: PLC0415

        return float(self.compressor.upload_bytes(self.layout, transform_state(job.state, self.prefix)))


def _downlink_noise(seed: int, like: torch.Tensor) -> torch.Tensor:
    g = torch.Generator(device="cpu")
    g.manual_seed(derive_seed(seed, "link-noise-down"))
    return torch.randn(like.numel(), generator=g).to(like)


@dataclass
class Link:
    """Per-client uplink rate (bits/s) at a virtual time, the downlink a fixed multiple of it, and a latency."""

    up_bps: np.ndarray | None  # per client (None: from the trace)
    asymmetry: float = 1.0  # downlink / uplink
    latency: float = 0.0  # virtual seconds per transfer
    trace: dict[int, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)  # client (-1: all) -> (times, bps)

    def up_rate(self, ids: np.ndarray, now: np.ndarray | float) -> np.ndarray:
        if self.up_bps is not None:
            return self.up_bps[ids]
        now = np.broadcast_to(np.asarray(now, dtype=np.float64), ids.shape)
        out = np.empty(len(ids))
        for i, (cid, t) in enumerate(zip(ids.tolist(), now.tolist())):
            times, bps = self.trace[cid] if cid in self.trace else self.trace[-1]
            out[i] = bps[max(0, int(np.searchsorted(times, t, side="right")) - 1)]
        return out

    def seconds(
        self, ids: np.ndarray, up_bits: np.ndarray, down_bits: np.ndarray, now: float, compute: np.ndarray
    ) -> np.ndarray:
        """Communication seconds of each job dispatched at ``now``: download, then (after ``compute``) upload."""
        down = down_bits / (self.asymmetry * self.up_rate(ids, now)) + self.latency
        up = up_bits / self.up_rate(ids, now + down + compute) + self.latency
        return down + up


def load_bandwidth_trace(path: str | Path, num_clients: int) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """``time,mbps`` (everyone) or ``client,time,mbps`` rows -> client (-1: everyone) -> (times, bits/s)."""
    where = f"communication.bandwidth_trace {path}"
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise ConfigError(f"{where}: cannot read it ({exc})") from None
    if not rows or len(rows) > MAX_TRACE_ROWS:
        raise ConfigError(f"{where}: needs 1 to {MAX_TRACE_ROWS} rows, got {len(rows)}")
    header = set(rows[0])
    if header not in ({"time", "mbps"}, {"client", "time", "mbps"}):
        raise ConfigError(f"{where}: columns must be time,mbps or client,time,mbps, got {','.join(rows[0])}")
    series: dict[int, list[tuple[float, float]]] = {}
    for number, row in enumerate(rows, 2):
        try:
            cid = int(row["client"]) if "client" in row else -1
            t, mbps = float(row["time"]), float(row["mbps"])
        except (TypeError, ValueError):
            raise ConfigError(f"{where}, line {number}: not numbers: {row}") from None
        if not (math.isfinite(t) and math.isfinite(mbps) and mbps > 0) or (cid != -1 and not 0 <= cid < num_clients):
            raise ConfigError(f"{where}, line {number}: needs finite time, mbps > 0 and 0 <= client < {num_clients}")
        series.setdefault(cid, []).append((t, mbps))
    if -1 not in series and len(series) < num_clients:
        missing = next(c for c in range(num_clients) if c not in series)
        raise ConfigError(f"{where}: client {missing} has no rows (every client needs one, or use time,mbps rows)")
    out = {}
    for cid, points in series.items():
        points.sort()
        out[cid] = (np.array([p[0] for p in points]), np.array([p[1] * 1e6 for p in points]))
    return out


def build_link(c: Any, num_clients: int, seed: int) -> Link | None:
    if c.link == "off":
        return None
    ids = np.arange(num_clients, dtype=np.int64)
    if c.link == "trace":
        return Link(None, c.asymmetry, c.latency, load_bandwidth_trace(c.bandwidth_trace, num_clients))
    if c.link == "constant":
        mbps = np.full(num_clients, c.up_mbps)
    else:
        u = uniform_per_client(seed, "link-bandwidth", ids, np.zeros(num_clients, dtype=np.int64))
        if c.link == "lognormal":
            from scipy.special import ndtri  # noqa: PLC0415  (~0.3 s of imports: only bandwidth spread pays it)

            mbps = c.up_mbps * np.exp(c.bandwidth_sigma * ndtri(np.clip(u, 1e-12, 1 - 1e-12)))
        else:  # tiers
            fractions = np.array([t[0] for t in c.bandwidth_tiers])
            edges = np.cumsum(fractions) / fractions.sum()
            tier = np.minimum(np.searchsorted(edges, u, side="right"), len(edges) - 1)
            mbps = np.array([t[1] for t in c.bandwidth_tiers])[tier]
    return Link(mbps * 1e6, c.asymmetry, c.latency)


def compressor_options(c: Any) -> dict[str, Any] | None:
    """The ``compress`` transform's options for a CommunicationConfig (None: no compression)."""
    if c.compressor == "none":
        return None
    opts: dict[str, Any] = {"compressor": c.compressor, "per_layer": c.per_layer}
    if c.error_feedback is not None:
        opts["error_feedback"] = c.error_feedback
    opts |= {
        "topk": {"ratio": c.ratio},
        "randomk": {"ratio": c.ratio},
        "qsgd": {"levels": c.levels},
        "powersgd": {"rank": c.rank},
        "sign": {},
        "lgreco": {"base": c.lgreco_base, "rank": c.rank, "ratio": c.ratio, "error_budget": c.error_budget},
    }.get(c.compressor, {})
    return opts


@dataclass
class CommunicationPlan:
    client_transforms: tuple[tuple[str, dict[str, Any]], ...]
    link: Link | None
    layout: ParamLayout
    downlink_snr_db: float | None = None

    def attach(self, strategy: Any) -> Payload:
        """Append the client transforms to ``strategy``'s; the Payload the engine uses to size each job."""
        from clients.transforms import build_client_transforms, state_prefix  # noqa: PLC0415

        before = tuple(strategy.client_transforms)
        strategy.client_transforms = before + self.client_transforms
        if not self.client_transforms or self.client_transforms[0][0] != "compress":
            return Payload(self.layout, downlink_snr_db=self.downlink_snr_db)
        compressor = build_client_transforms(self.client_transforms[:1])[0]
        return Payload(self.layout, compressor, state_prefix(len(before), compressor.name), self.downlink_snr_db)


def plan_communication(config: Any, layout: ParamLayout, num_clients: int) -> CommunicationPlan:
    """The plan for a RunConfig; bad combinations raise ConfigError (one line)."""
    from clients.transforms.compress import COMPRESSORS  # noqa: PLC0415

    c = config.communication
    transforms: list[tuple[str, dict[str, Any]]] = []
    opts = compressor_options(c)
    if opts is not None:
        try:
            compressor = COMPRESSORS.get(c.compressor)(**{k: v for k, v in opts.items() if k != "compressor"})
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        if compressor.error_feedback and config.privacy.mode != "off":
            raise ConfigError(
                f"communication.error_feedback: the residual carried into the next upload escapes "
                f"privacy.mode {config.privacy.mode}'s clip bound; set communication.error_feedback=false"
            )
        transforms.append(("compress", opts))
    if c.uplink_snr_db is not None:
        transforms.append(("link_noise", {"snr_db": c.uplink_snr_db}))
    if c.link != "off" and config.population.bandwidth is not None:
        raise ConfigError("communication.link: population.bandwidth is set too; use one of them")
    return CommunicationPlan(tuple(transforms), build_link(c, num_clients, config.seed), layout, c.downlink_snr_db)
