"""Compression of a client's delta before upload, with optional error feedback (client transforms).

Every compressor works **per tensor** of the model's layout (``per_layer: true``, the default,
as FLSim, PowerSGD and L-GreCo do), or on the flat vector (``per_layer: false``). What the
server receives is the decompressed update; what the link carries is counted by
:meth:`Compressor.upload_bytes`, a function of the layout and the client's stored state only,
so the engine knows a job's upload size when it dispatches it (before the update exists).

Byte conventions (fp32 values; every count is per tensor, then summed):

- ``topk`` / ``randomk`` (FLSim ``SparseMaskChannel``, values unscaled): k = n - int((1 - ratio) n)
  entries (FLSim's rounding, i.e. ceil(ratio n)); 8 bytes per kept entry (fp32 value + int32
  index, the epfml convention), or 4 n if sending dense is cheaper. FLSim's own "coo" (12-20 B per
  entry) and "bitmask" (n/8 + 4k) conventions count differently.
- ``qsgd`` (Alistarh et al. 2017, arXiv 1610.02132; GRACE ``qsgd.py``): s levels, stochastic
  rounding, unbiased; 4 + ceil(n (1 + ceil(log2(s + 1))) / 8) bytes (fp32 norm, then sign and
  level per entry at fixed width; no Elias coding).
- ``sign`` (EF-signSGD, Karimireddy et al. 2019, epfml/error-feedback-SGD): (||p||_1 / n) sign(p);
  4 ceil(n / 32) + 4 bytes (signs packed in 32-bit words, fp32 scale).
- ``powersgd`` (Vogels et al. 2019, as torch's ``powerSGD_hook``): a tensor viewed as
  M = (shape[0], rest); one power iteration P = M Q, P <- orth(P), Q = M^T P, M^ = P Q^T, with Q
  warm-started from the client's previous participation (per-client state; N(0, 1) at first).
  1-d tensors, and matrices where 2 r (n + m) >= n m, are sent dense. 4 r (n + m) bytes per
  compressed matrix. Orthogonalisation is QR at every rank (torch uses Gram-Schmidt for r <= 2;
  column signs differ, M^ does not).
- ``lgreco`` (Markov et al., "L-GreCo: Layerwise-Adaptive Gradient Compression", MLSys 2024;
  LGrCo/L-GreCo ``lgreco_hook.py``): per tensor, one level among candidates (PowerSGD ranks
  floor(r/2) .. ceil(2r), or top-k ratios ratio x {1/4, 1/2, 1, 2, 4}) chosen by dynamic
  programming to minimise the total size subject to total error <= alpha x (error at the default
  level). Errors are squared Frobenius norms (they add up across tensors to the update's error;
  PowerSGD's from the SVD tail, top-k's from the dropped entries), discretised into 10,000 buckets
  with ceil and a non-strict bound; when nothing is feasible after rounding (or the choice is not
  smaller) the default levels are kept. In FL the choice is per client: it is made from the
  update a client just compressed and used at that client's next participation (it is stored in
  the client's state, which is what lets the engine know the upload size at dispatch).

Error feedback (Stich et al. 2018; Karimireddy et al. 2019) is an option of every compressor:
p = delta + e, send C(p), keep e <- p - C(p) in the client's state (so sent + new residual =
delta + old residual). It is on by default for ``powersgd`` and ``lgreco`` (as in
``powerSGD_hook``), off for the others.

Wire format (what Flower's ClientApp sends instead of the dense delta; :meth:`Compressor.encode`
and :meth:`Compressor.decode`, numpy arrays per block, made from the decompressed update so
that every executor's result can be sent): top-k / random-k / L-GreCo(top-k) send the kept
entries as int32 indices + fp32 values; sign sends packed sign bits + the fp32 scale (+ the
int32 positions of exact zeros, if any); QSGD sends sign and level packed at 1 + ceil(log2(s + 1))
bits per entry + one fp32 unit (norm / s, recovered from the levels; s <= 255, else dense);
PowerSGD / L-GreCo(PowerSGD) send fp32 factors P (n x r) and Q (m x r) of the rank-r M^ (from
its SVD). Blocks a compressor sends dense are fp32 arrays. top-k, random-k and sign decode bit
for bit; QSGD and PowerSGD to float rounding (about 1e-7 relative).

Randomness (random-k's indices, QSGD's rounding, PowerSGD's first Q) comes from the job's seed
per tensor, so every executor draws the same numbers. All compressors run on the stack of rows
at once (batched ``topk``, ``bmm``, batched QR), except that rows with different L-GreCo levels
are grouped by level.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from clients.transforms import CLIENT_TRANSFORMS, ClientContext
from fedsim.params import ParamLayout
from fedsim.registry import Registry
from fedsim.rng import derive_seed

__all__ = [
    "COMPRESSORS",
    "Compressor",
    "TopK",
    "RandomK",
    "QSGD",
    "Sign",
    "PowerSGD",
    "LGreCo",
    "topk_count",
    "choose_levels",
    "blocks_of",
    "LGRECO_BUCKETS",
]

COMPRESSORS: Registry[Callable[..., Any]] = Registry("compressor")
LGRECO_BUCKETS = 10_000  # L-GreCo's discretisation of the error budget

Block = tuple[int, int, tuple[int, ...]]  # (start, end, shape) of one tensor in the flat vector


def blocks_of(layout: ParamLayout, per_layer: bool) -> list[Block]:
    if not per_layer:
        return [(0, layout.numel, (layout.numel,))]
    return [(a, b, tuple(shape)) for (a, b), shape in zip(layout.offsets(), layout.shapes)]


def topk_count(n: int, ratio: float) -> int:
    """Entries top-k keeps of n (FLSim's rounding: n - int((1 - ratio) n), 1 % of 1234 -> 13)."""
    return max(1, n - int((1.0 - ratio) * n)) if n else 0


def _generator(seed: int, purpose: str, block: int) -> torch.Generator:
    g = torch.Generator(device="cpu")
    g.manual_seed(derive_seed(seed, purpose, block))
    return g


def _rows_uniform(ctx: ClientContext, purpose: str, block: int, n: int, like: torch.Tensor) -> torch.Tensor:
    return torch.stack([torch.rand(n, generator=_generator(s, purpose, block)) for s in ctx.seeds]).to(like)


class Compressor:
    """Base: per-block compression of ``p = delta (+ residual)``; subclasses define levels, bytes and the block map."""

    name = "compressor"
    keeps_state = False  # state besides the residual (PowerSGD's Q, L-GreCo's levels)
    default_error_feedback = False

    def __init__(self, error_feedback: bool | None = None, per_layer: bool = True):
        self.error_feedback = self.default_error_feedback if error_feedback is None else bool(error_feedback)
        self.per_layer = bool(per_layer)
        self.stateful = self.error_feedback or self.keeps_state

    # ------------------------------------------------------------------ sizes (static)

    def levels(self, layout: ParamLayout, state: dict[str, torch.Tensor] | None) -> list[Any]:
        """The level each block is compressed at for a client with this stored state."""
        return [None for _ in blocks_of(layout, self.per_layer)]

    def block_bytes(self, shape: tuple[int, ...], level: Any) -> int:
        raise NotImplementedError

    def upload_bytes(self, layout: ParamLayout, state: dict[str, torch.Tensor] | None = None) -> int:
        """Bytes one upload takes for a client with this stored state (known at dispatch)."""
        return sum(
            self.block_bytes(shape, level)
            for (_, _, shape), level in zip(blocks_of(layout, self.per_layer), self.levels(layout, state))
        )

    # ------------------------------------------------------------------ the transform

    def compress(
        self,
        x: torch.Tensor,
        shape: tuple[int, ...],
        block: int,
        levels: list[Any],
        ctx: ClientContext,
        states: list[dict | None],
        new_states: list[dict],
    ) -> torch.Tensor:
        """(k, n) -> (k, n): the decompressed rows of one block."""
        raise NotImplementedError

    def after(self, p: torch.Tensor, ctx: ClientContext, states: list[dict | None], new_states: list[dict]) -> None:
        """Hook after every block is compressed (L-GreCo chooses next levels here)."""

    # ------------------------------------------------------------------ wire format (Flower)

    def encode(self, row: torch.Tensor, layout: ParamLayout, levels: list[Any]) -> dict[str, np.ndarray]:
        """The arrays that carry one decompressed update (``levels``: the client's, from its state at dispatch)."""
        out: dict[str, np.ndarray] = {}
        flat = row.detach().to("cpu", torch.float32)
        for j, ((a, b, shape), level) in enumerate(zip(blocks_of(layout, self.per_layer), levels)):
            parts = self.encode_block(flat[a:b], shape, level)
            out.update({f"{j}.{key}": value for key, value in parts.items()})
        return out

    def decode(self, arrays: dict[str, np.ndarray], layout: ParamLayout) -> torch.Tensor:
        """The flat update from :meth:`encode`'s arrays."""
        blocks = blocks_of(layout, self.per_layer)
        parts: list[dict[str, np.ndarray]] = [{} for _ in blocks]
        for key, value in arrays.items():
            j, _, name = key.partition(".")
            if not j.isdigit() or int(j) >= len(blocks):
                raise ValueError(f"compressed update: unexpected array {key!r}")
            parts[int(j)][name] = value
        out = torch.empty(layout.numel, dtype=torch.float32)
        for (a, b, shape), part in zip(blocks, parts):
            block = part["dense"] if "dense" in part else None
            value = (
                torch.from_numpy(np.asarray(block, np.float32)) if block is not None else self.decode_block(part, shape)
            )
            if value.numel() != b - a:
                raise ValueError(f"compressed update: a block decodes to {value.numel()} entries, expected {b - a}")
            out[a:b] = value.reshape(-1)
        return out

    def encode_block(self, x: torch.Tensor, shape: tuple[int, ...], level: Any) -> dict[str, np.ndarray]:
        return {"dense": x.numpy().copy()}

    def decode_block(self, part: dict[str, np.ndarray], shape: tuple[int, ...]) -> torch.Tensor:
        raise ValueError(f"compressed update: a {self.name} block without a known array ({sorted(part)})")

    def apply(self, updates: torch.Tensor, ctx: ClientContext) -> tuple:
        k = updates.shape[0]
        states = list(ctx.states) if ctx.states is not None else [None] * k
        p = updates
        if self.error_feedback:
            residual = torch.stack(
                [s["residual"].to(updates) if s and "residual" in s else torch.zeros_like(updates[0]) for s in states]
            )
            p = updates + residual
        per_row_levels = [self.levels(ctx.layout, s) for s in states]
        out = torch.empty_like(p)
        new_states: list[dict] = [{} for _ in range(k)]
        for j, (a, b, shape) in enumerate(blocks_of(ctx.layout, self.per_layer)):
            out[:, a:b] = self.compress(p[:, a:b], shape, j, [lv[j] for lv in per_row_levels], ctx, states, new_states)
        self.after(p, ctx, states, new_states)
        if self.error_feedback:
            for r in range(k):
                new_states[r]["residual"] = (p[r] - out[r]).detach().to("cpu", torch.float32).clone()
        sizes = torch.tensor([float(self.upload_bytes(ctx.layout, s)) for s in states], dtype=torch.float64)
        metrics = {"bytes_up": sizes}
        return (out, metrics, new_states) if self.stateful else (out, metrics)


def _by_level(levels: list[Any]) -> dict[Any, list[int]]:
    groups: dict[Any, list[int]] = {}
    for r, level in enumerate(levels):
        groups.setdefault(level, []).append(r)
    return groups


def _keep(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    return torch.zeros_like(x).scatter_(1, idx, x.gather(1, idx))


def _sparse_bytes(n: int, k: int) -> int:
    return min(8 * k, 4 * n)


def _encode_sparse(x: torch.Tensor, k: int) -> dict[str, np.ndarray]:
    if 8 * k >= 4 * x.numel():
        return {"dense": x.numpy().copy()}
    idx = torch.nonzero(x).reshape(-1)
    return {"idx": idx.to(torch.int32).numpy(), "val": x[idx].numpy().copy()}


def _decode_sparse(part: dict[str, np.ndarray], shape: tuple[int, ...]) -> torch.Tensor:
    out = torch.zeros(math.prod(shape), dtype=torch.float32)
    idx = torch.from_numpy(np.asarray(part["idx"], np.int64))
    if len(idx) and (int(idx.min()) < 0 or int(idx.max()) >= out.numel()):
        raise ValueError("compressed update: a sparse index is out of range")
    out[idx] = torch.from_numpy(np.asarray(part["val"], np.float32))
    return out


def _pack(values: np.ndarray, bits: int) -> np.ndarray:
    """Unsigned ints < 2**bits, packed at ``bits`` bits each (little-endian within a value)."""
    return np.packbits(((values[:, None] >> np.arange(bits)) & 1).astype(np.uint8).reshape(-1))


def _unpack(packed: np.ndarray, bits: int, n: int) -> np.ndarray:
    flat = np.unpackbits(np.asarray(packed, np.uint8))[: n * bits].reshape(n, bits).astype(np.int64)
    return flat @ (1 << np.arange(bits))


@COMPRESSORS.register("topk", "keep the ceil(ratio n) largest |entries| per tensor (FLSim SparseMaskChannel)")
class TopK(Compressor):
    name = "topk"

    def __init__(self, ratio: float = 0.01, error_feedback: bool | None = None, per_layer: bool = True):
        super().__init__(error_feedback, per_layer)
        if not 0 < ratio <= 1:
            raise ValueError(f"communication.ratio must be in (0, 1], got {ratio}")
        self.ratio = float(ratio)

    def levels(self, layout, state):
        return [topk_count(b - a, self.ratio) for a, b, _ in blocks_of(layout, self.per_layer)]

    def block_bytes(self, shape, level):
        return _sparse_bytes(math.prod(shape), level)

    def scores(self, x, block, ctx):
        return x.abs()

    def encode_block(self, x, shape, level):
        return _encode_sparse(x, level)

    def decode_block(self, part, shape):
        return _decode_sparse(part, shape)

    def compress(self, x, shape, block, levels, ctx, states, new_states):
        out = torch.empty_like(x)
        scores = self.scores(x, block, ctx)
        for k, rows in _by_level(levels).items():
            sub = x[rows] if len(rows) < len(levels) else x
            idx = torch.topk(scores[rows] if len(rows) < len(levels) else scores, k, dim=1, sorted=False).indices
            out[rows] = _keep(sub, idx)
        return out


@COMPRESSORS.register(
    "randomk", "keep ceil(ratio n) random entries per tensor, unscaled (FLSim sparsity_method=random)"
)
class RandomK(TopK):
    name = "randomk"

    def scores(self, x, block, ctx):
        return _rows_uniform(ctx, "compress-randomk", block, x.shape[1], x)


@COMPRESSORS.register("qsgd", "QSGD: unbiased stochastic quantization to s levels of |x|/||x|| (Alistarh et al. 2017)")
class QSGD(Compressor):
    name = "qsgd"

    def __init__(self, levels: int = 16, error_feedback: bool | None = None, per_layer: bool = True):
        super().__init__(error_feedback, per_layer)
        if int(levels) < 1:
            raise ValueError(f"communication.levels must be >= 1, got {levels}")
        self.s = int(levels)

    def block_bytes(self, shape, level):
        bits = 1 + math.ceil(math.log2(self.s + 1))
        return 4 + math.ceil(math.prod(shape) * bits / 8)

    def compress(self, x, shape, block, levels, ctx, states, new_states):
        norm = torch.linalg.vector_norm(x, dim=1, keepdim=True)
        scaled = self.s * x.abs() / torch.where(norm > 0, norm, torch.ones_like(norm))
        low = torch.floor(scaled)
        u = _rows_uniform(ctx, "compress-qsgd", block, x.shape[1], x)
        xi = low + (u < scaled - low).to(x.dtype)
        return norm * torch.sign(x) * xi / self.s

    def encode_block(self, x, shape, level):
        v = x.double().abs()
        top = float(v.max()) if v.numel() else 0.0
        if top == 0.0 or self.s > 255:
            return super().encode_block(x, shape, level) if top else {"unit": np.zeros(1, np.float32)}
        for peak in range(1, self.s + 1):  # the smallest level of the largest entry that makes every entry a level
            q = v * (peak / top)
            if float((q - q.round()).abs().max()) < 1e-3:
                break
        else:
            return super().encode_block(x, shape, level)
        signed = (q.round().to(torch.int64) * 2 + (x < 0).to(torch.int64)).numpy()  # level, then the sign bit
        bits = 1 + math.ceil(math.log2(self.s + 1))
        return {"unit": np.array([top / peak], np.float32), "levels": _pack(signed, bits)}

    def decode_block(self, part, shape):
        n = math.prod(shape)
        unit = float(np.asarray(part["unit"], np.float32)[0])
        if "levels" not in part:
            return torch.zeros(n, dtype=torch.float32)
        signed = torch.from_numpy(_unpack(part["levels"], 1 + math.ceil(math.log2(self.s + 1)), n))
        sign = 1.0 - 2.0 * (signed % 2).to(torch.float32)
        return sign * (signed // 2).to(torch.float32) * unit


@COMPRESSORS.register("sign", "scaled sign: (||p||_1 / n) sign(p) per tensor (EF-signSGD, Karimireddy et al. 2019)")
class Sign(Compressor):
    name = "sign"

    def block_bytes(self, shape, level):
        return 4 * math.ceil(math.prod(shape) / 32) + 4

    def compress(self, x, shape, block, levels, ctx, states, new_states):
        scale = x.abs().sum(dim=1, keepdim=True) / x.shape[1]
        return scale * torch.sign(x)

    def encode_block(self, x, shape, level):
        out = {"bits": np.packbits((x > 0).numpy()), "scale": np.array([float(x.abs().max())], np.float32)}
        zeros = torch.nonzero(x == 0).reshape(-1)
        if len(zeros) and out["scale"][0] > 0:
            out["zeros"] = zeros.to(torch.int32).numpy()
        return out

    def decode_block(self, part, shape):
        n = math.prod(shape)
        positive = torch.from_numpy(np.unpackbits(np.asarray(part["bits"], np.uint8))[:n].astype(np.bool_))
        scale = torch.from_numpy(np.asarray(part["scale"], np.float32))
        out = torch.where(positive, scale, -scale)
        if "zeros" in part:
            out[torch.from_numpy(np.asarray(part["zeros"], np.int64))] = 0.0
        return out


def _matrix(shape: tuple[int, ...]) -> tuple[int, int] | None:
    if len(shape) < 2:
        return None
    n = shape[0]
    return n, math.prod(shape) // n


def _orth(a: torch.Tensor) -> torch.Tensor:
    return torch.linalg.qr(a, mode="reduced").Q


def powersgd_rows(m: torch.Tensor, q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One PowerSGD step on a stack of matrices: (k, n, m), (k, m, r) -> (M^, new Q)."""
    p = _orth(torch.bmm(m, _orth(q)))
    q = torch.bmm(m.transpose(1, 2), p)
    return torch.bmm(p, q.transpose(1, 2)), q


class _LowRank(Compressor):
    """PowerSGD's block map: rank r per matrix, warm-started Q per client and tensor."""

    keeps_state = True
    default_error_feedback = True

    def compressible(self, shape, rank) -> bool:
        mn = _matrix(shape)
        return mn is not None and rank is not None and 2 * rank * (mn[0] + mn[1]) < mn[0] * mn[1]

    def block_bytes(self, shape, level):
        if not self.compressible(shape, level):
            return 4 * math.prod(shape)
        n, m = _matrix(shape)
        return 4 * level * (n + m)

    def compress(self, x, shape, block, levels, ctx, states, new_states):
        out = x.clone()
        for rank, rows in _by_level(levels).items():
            if not self.compressible(shape, rank):
                continue  # sent dense
            n, m = _matrix(shape)
            qs = []
            for r in rows:
                q = (states[r] or {}).get(f"q{block}")
                q = q.to(x) if q is not None else torch.empty(m, 0, dtype=x.dtype)
                if q.shape[1] < rank:  # first participation, or L-GreCo raised the rank: fresh N(0, 1) columns
                    g = _generator(ctx.seeds[r], "compress-powersgd-q", block)
                    q = torch.cat([q, torch.randn(m, rank - q.shape[1], generator=g).to(x)], dim=1)
                qs.append(q[:, :rank])
            approx, q_new = powersgd_rows(x[rows].reshape(len(rows), n, m), torch.stack(qs))
            out[rows] = approx.reshape(len(rows), n * m)
            for i, r in enumerate(rows):
                new_states[r][f"q{block}"] = q_new[i].detach().to("cpu", torch.float32).clone()
        return out

    def encode_block(self, x, shape, level):
        if self.base_is_topk():
            return _encode_sparse(x, level)
        if not self.compressible(shape, level):
            return super().encode_block(x, shape, level)
        n, m = _matrix(shape)
        u, sv, vh = torch.linalg.svd(x.double().reshape(n, m), full_matrices=False)
        return {
            "P": (u[:, :level] * sv[:level]).to(torch.float32).numpy(),
            "Q": vh[:level].T.to(torch.float32).contiguous().numpy(),
        }

    def decode_block(self, part, shape):
        if "idx" in part:
            return _decode_sparse(part, shape)
        p, q = (torch.from_numpy(np.asarray(part[k], np.float32)) for k in ("P", "Q"))
        n, m = _matrix(shape) or (0, 0)
        if p.ndim != 2 or q.ndim != 2 or p.shape[0] != n or q.shape[0] != m or p.shape[1] != q.shape[1]:
            raise ValueError(f"compressed update: factors {tuple(p.shape)}, {tuple(q.shape)} do not fit {shape}")
        return (p @ q.T).reshape(-1)

    def base_is_topk(self) -> bool:
        return getattr(self, "base", "powersgd") == "topk"


@COMPRESSORS.register("powersgd", "rank-r PowerSGD per matrix, warm-started Q per client (Vogels et al. 2019)")
class PowerSGD(_LowRank):
    name = "powersgd"

    def __init__(self, rank: int = 1, error_feedback: bool | None = None, per_layer: bool = True):
        super().__init__(error_feedback, per_layer)
        if int(rank) < 1:
            raise ValueError(f"communication.rank must be >= 1, got {rank}")
        self.rank = int(rank)

    def levels(self, layout, state):
        return [self.rank for _ in blocks_of(layout, self.per_layer)]


def choose_levels(
    sizes: Sequence[Sequence[float]],
    errors: Sequence[Sequence[float]],
    default: Sequence[int],
    alpha: float,
    buckets: int = LGRECO_BUCKETS,
) -> list[int]:
    """L-GreCo's choice: one candidate index per layer minimising sum(size) s.t. sum(error) <= alpha * default error.

    Errors are discretised into ``buckets`` units of (alpha x default error) / buckets, rounded up;
    the bound is non-strict. If nothing is feasible after rounding, or the choice is not smaller
    than the default, the default is returned.
    """
    budget = alpha * sum(errors[layer][c] for layer, c in enumerate(default))
    default_size = sum(sizes[layer][c] for layer, c in enumerate(default))
    if not budget > 0:
        return list(default)
    unit = budget / buckets
    dp = np.full(buckets + 1, np.inf)
    dp[0] = 0.0
    choices, units = [], []
    for size_l, err_l in zip(sizes, errors):
        e = [min(buckets + 1, int(math.ceil(err / unit - 1e-9))) for err in err_l]
        new = np.full(buckets + 1, np.inf)
        arg = np.full(buckets + 1, -1, dtype=np.int64)
        for c, (s, ec) in enumerate(zip(size_l, e)):
            if ec > buckets:
                continue
            cand = np.full(buckets + 1, np.inf)
            cand[ec:] = dp[: buckets + 1 - ec] + s
            better = cand < new
            new[better], arg[better] = cand[better], c
        dp = new
        choices.append(arg)
        units.append(e)
    b = int(np.argmin(dp))
    if not np.isfinite(dp[b]) or dp[b] >= default_size:
        return list(default)
    picked = []
    for arg, e in zip(reversed(choices), reversed(units)):
        c = int(arg[b])
        picked.append(c)
        b -= e[c]
    return picked[::-1]


@COMPRESSORS.register(
    "lgreco", "L-GreCo: per-tensor PowerSGD rank / top-k ratio chosen by DP under an error budget (Markov et al. 2024)"
)
class LGreCo(_LowRank):
    name = "lgreco"

    def __init__(
        self,
        base: str = "powersgd",
        rank: int = 1,
        ratio: float = 0.01,
        error_budget: float = 1.0,
        error_feedback: bool | None = None,
        per_layer: bool = True,
    ):
        super().__init__(error_feedback, per_layer)
        if base not in ("powersgd", "topk"):
            raise ValueError(f"communication.lgreco_base '{base}' is not one of powersgd, topk")
        if not error_budget > 0:
            raise ValueError(f"communication.error_budget must be > 0, got {error_budget}")
        self.base, self.rank, self.ratio, self.alpha = base, int(rank), float(ratio), float(error_budget)

    def candidates(self, shape: tuple[int, ...]) -> tuple[list[int], int]:
        """(candidate levels, index of the default) for one tensor."""
        n = math.prod(shape)
        if self.base == "topk":
            ks = sorted({topk_count(n, min(1.0, self.ratio * f)) for f in (0.25, 0.5, 1.0, 2.0, 4.0)})
            return ks, ks.index(topk_count(n, self.ratio))
        if not self.compressible(shape, self.rank):
            return [self.rank], 0  # sent dense whatever the rank: nothing to choose
        n0, m = _matrix(shape)
        ranks = [
            r
            for r in range(max(1, self.rank // 2), math.ceil(2 * self.rank) + 1)
            if r <= min(n0, m) and self.compressible(shape, r)
        ]
        return ranks, ranks.index(self.rank)

    def levels(self, layout, state):
        blocks = blocks_of(layout, self.per_layer)
        if state and "levels" in state and len(state["levels"]) == len(blocks):
            return [int(v) for v in state["levels"].tolist()]
        return [self.candidates(shape)[0][self.candidates(shape)[1]] for _, _, shape in blocks]

    def block_bytes(self, shape, level):
        if self.base == "topk":
            return _sparse_bytes(math.prod(shape), level)
        return super().block_bytes(shape, level)

    def compress(self, x, shape, block, levels, ctx, states, new_states):
        if self.base == "powersgd":
            return super().compress(x, shape, block, levels, ctx, states, new_states)
        out = torch.empty_like(x)
        for k, rows in _by_level(levels).items():
            out[rows] = _keep(x[rows], torch.topk(x[rows].abs(), k, dim=1, sorted=False).indices)
        return out

    def errors(self, x: torch.Tensor, shape: tuple[int, ...], levels: list[int]) -> torch.Tensor:
        """(k, candidates): squared error of each candidate level on each row of one block."""
        if self.base == "topk":
            sq = torch.sort(x.double() ** 2, dim=1, descending=True).values
            total, kept = sq.sum(dim=1, keepdim=True), torch.cumsum(sq, dim=1)
            return torch.clamp(total - kept[:, [k - 1 for k in levels]], min=0.0)
        n0, m = _matrix(shape)
        sv = torch.linalg.svdvals(x.reshape(-1, n0, m)).double() ** 2
        tail = torch.flip(torch.cumsum(torch.flip(sv, [1]), 1), [1])  # tail[:, i] = sum_{j >= i} s_j^2
        return torch.stack([tail[:, r] if r < sv.shape[1] else torch.zeros_like(tail[:, 0]) for r in levels], dim=1)

    def after(self, p, ctx, states, new_states):
        blocks = blocks_of(ctx.layout, self.per_layer)
        table = [self.candidates(shape) for _, _, shape in blocks]
        sizes = [[self.block_bytes(shape, lv) for lv in cands] for (_, _, shape), (cands, _) in zip(blocks, table)]
        errs = [
            self.errors(p[:, a:b], shape, cands).tolist() if len(cands) > 1 else [[0.0]] * p.shape[0]
            for (a, b, shape), (cands, _) in zip(blocks, table)
        ]
        default = [d for _, d in table]
        for r in range(p.shape[0]):
            picked = choose_levels(sizes, [e[r] for e in errs], default, self.alpha)
            new_states[r]["levels"] = torch.tensor(
                [cands[c] for (cands, _), c in zip(table, picked)], dtype=torch.int64
            )


@CLIENT_TRANSFORMS.register("compress", "compress the delta with a registered compressor (communication.compressor)")
def compress_transform(compressor: str, **options: Any) -> Compressor:
    return COMPRESSORS.get(compressor)(**options)
