"""vmap executor: many clients of one small model trained at once with ``torch.func``.

The clients' flat parameter vectors are stacked into one ``[B, d]`` tensor; every local step
is one batched forward (``vmap`` over ``functional_call``) and one backward for all of them,
followed by the SGD update as tensor arithmetic on the stack. The math is the serial ``sgd``
client's (``torch.optim.SGD``: weight decay added to the gradient, momentum buffer set to the
first gradient, dampening, nesterov, maximize), on the same minibatches: each job's indices are
``clients.sgd.batch_schedule``'s for a generator seeded by ``job.seed`` (drawn by
:func:`flat_batch_schedule`, which makes the same draws without building the batch list).

How clients that differ are batched together:

- **Start points**: each job starts from its own ``job.params`` (stacked, deduplicated by
  tensor), so jobs from different model versions (asynchronous modes) share a kernel call.
- **Groups**: jobs are grouped by what changes the shape or structure of the computation
  (batch size; whether momentum is used; dampening, nesterov, maximize); lr, momentum and
  weight decay may differ per client inside a group.
- **Different step counts**: a group is sorted by number of steps, longest first, so the
  clients still training at step t are a prefix of the stack; finished clients simply drop
  out of the computation (no wasted work, no update).
- **Different data and batch sizes**: all batch indices of a chunk are precomputed as one
  ``[steps, B, W]`` tensor of rows into the chunk's data; short batches (last batch of an
  epoch) are padded with one of the client's own rows and masked by per-sample weights
  (loss = sum(w * l) / sum(w), which equals the serial mean over the real batch).
- **Chunks**: at most ``max_batch`` clients per kernel call; by default a memory estimate
  (parameters, optimizer buffers, activations and data per client) against a budget.

Anything this path cannot express runs on a serial :class:`Worker` built lazily from the same
spec and task, with one logged notice per reason: client algorithms other than ``sgd``,
optimizers other than ``sgd``, jobs carrying client state, models with float buffers,
dropout or batch normalisation, frozen parameters, invalid configs, clients without data. If
a batched chunk raises, its clients are recomputed serially (so a failure is attributed to
the client that caused it); a client whose update is not finite gets ``error`` set by
``check_result`` while the others in its chunk are unaffected.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, vmap
from torch.nn.modules.batchnorm import _NormBase
from torch.nn.modules.dropout import _DropoutNd

from clients.sgd import LocalSGD, check_optimizer_options
from fedsim.data import ArrayFederatedData
from fedsim.executors.base import EXECUTORS
from fedsim.executors.serial import SerialExecutor
from fedsim.executors.worker import WorkerSpec, check_result, resolve_device
from fedsim.params import ParamLayout
from fedsim.tasks import Task, build_task
from fedsim.types import ClientJob, ClientResult

__all__ = ["VmapExecutor", "why_not_batched", "model_reason", "flat_batch_schedule", "DEFAULT_CPU_BUDGET", "MAX_BATCH_CAP"]

log = logging.getLogger("fedsim")

DEFAULT_CPU_BUDGET = 1 << 30  # bytes of working memory per chunk on CPU
GPU_BUDGET_FRACTION = 0.3  # of the free GPU memory at start-up
MAX_BATCH_CAP = 4096  # clients per kernel call, whatever the memory estimate says
RESIDENT_DATA_LIMIT = 2 << 30  # copy an in-memory dataset to the GPU once if it is smaller than this
_SGD_KWARGS = {
    "lr", "momentum", "weight_decay", "dampening", "nesterov", "maximize", "foreach", "fused", "differentiable",
}  # torch.optim.SGD's options; foreach/fused/differentiable do not change the math


def flat_batch_schedule(num_samples: int, batch_size: int, num_steps: int, rng: torch.Generator) -> Tensor:
    """``torch.cat(batch_schedule(num_samples, batch_size, num_steps, rng))``, drawing the same numbers.

    ``batch_schedule`` draws one permutation per epoch and splits it into batches; building
    and concatenating thousands of tiny batch views costs more than the batched training
    step itself, so this draws the same permutations and only truncates. The batch sizes
    follow from (num_samples, batch_size): full batches, then the epoch's remainder.
    """
    per_epoch = -(-num_samples // batch_size)
    epochs = -(-num_steps // per_epoch)
    perms = [torch.randperm(num_samples, generator=rng, device=rng.device) for _ in range(epochs)]
    tail_steps = num_steps - (epochs - 1) * per_epoch
    length = (epochs - 1) * num_samples + min(tail_steps * batch_size, num_samples)
    flat = perms[0] if epochs == 1 else torch.cat(perms)
    return flat[:length]


@dataclass
class _Item:
    """One job prepared for the batched path."""

    pos: int  # index of the job in the run() call
    job: ClientJob
    x: Tensor
    y: Tensor
    n: int
    steps: int
    batch_size: int
    lr: float
    momentum: float
    weight_decay: float
    dampening: float
    nesterov: bool
    maximize: bool

    @property
    def group_key(self) -> tuple:
        uses_momentum = self.momentum != 0
        return (
            self.batch_size,
            uses_momentum,
            self.dampening if uses_momentum else 0.0,
            self.nesterov,
            self.maximize,
        )


class _Fallback(Exception):
    """This job cannot take the batched path; ``reason`` names why (for the one-time notice)."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class VmapExecutor:
    """Batched local SGD over stacked client parameters; see the module docstring.

    ``max_batch`` fixes the number of clients per kernel call (default: memory-aware);
    ``memory_budget`` (bytes) is what the default estimate aims to stay under.
    """

    def __init__(
        self,
        spec: WorkerSpec,
        task: Task | None = None,
        max_batch: int | None = None,
        memory_budget: int | None = None,
    ):
        if spec.threads is not None:
            torch.set_num_threads(spec.threads)
        if max_batch is not None and max_batch < 1:
            raise ValueError(f"executor.max_batch must be >= 1, got {max_batch}")
        self.spec = spec
        self.device = resolve_device(spec.device)
        self.task = task if task is not None else build_task(spec.task)
        self.max_batch = max_batch
        self.algorithm = LocalSGD()
        self.model = self.task.build_model().to(self.device)
        self.model.train()
        self.layout = ParamLayout.of(self.model)
        self.numel = self.layout.numel
        self.loss_fn = self.task.loss_fn
        self._serial: SerialExecutor | None = None
        self._noticed: set[str] = set()
        self._option_checks: dict[Any, Exception | None] = {}
        self._resident_data: tuple[Any, ...] | None = None  # (x_train, y_train, their copies on the device)
        self.model_reason = self._model_reason()
        self._in_numel, self._act_numel = self._activation_estimate()
        self.memory_budget = memory_budget if memory_budget is not None else self._default_budget()
        self._vforward = vmap(self._client_forward)
        self._vloss = vmap(self.loss_fn)
        self._vloss_per_sample = vmap(vmap(lambda o, t: self.loss_fn(o.unsqueeze(0), t.unsqueeze(0))))
        self._native_ce = self.loss_fn is F.cross_entropy

    # ------------------------------------------------------------------ public

    def run(self, jobs: Sequence[ClientJob]) -> list[ClientResult]:
        results: list[ClientResult | None] = [None] * len(jobs)
        to_serial: list[int] = []
        groups: dict[tuple, list[_Item]] = {}
        for pos, job in enumerate(jobs):
            try:
                item = self._prepare(pos, job)
            except _Fallback as fb:
                self._notice(fb.reason)
                to_serial.append(pos)
                continue
            groups.setdefault(item.group_key, []).append(item)
        for items in groups.values():
            items.sort(key=lambda it: (-it.steps, it.pos))  # clients still training = a prefix
            size = self._chunk_size(items)
            for start in range(0, len(items), size):
                for item, result in self._run_chunk_safely(items[start : start + size]):
                    results[item.pos] = result
        if to_serial:
            for pos, result in zip(to_serial, self._serial_executor().run([jobs[p] for p in to_serial])):
                results[pos] = result
        return results  # type: ignore[return-value]

    def close(self) -> None:
        if self._serial is not None:
            self._serial.close()

    # ------------------------------------------------------------------ routing

    def _notice(self, reason: str) -> None:
        if reason not in self._noticed:
            self._noticed.add(reason)
            log.warning("vmap executor: %s cannot be batched; running those clients with the serial worker", reason)

    def _serial_executor(self) -> SerialExecutor:
        if self._serial is None:
            self._serial = SerialExecutor(self.spec, self.task)
        return self._serial

    def _model_reason(self) -> str | None:
        return model_reason(self.model, self.layout)

    def _prepare(self, pos: int, job: ClientJob) -> _Item:
        if self.spec.client != "sgd":
            raise _Fallback(f"client algorithm '{self.spec.client}'")
        if self.model_reason is not None:
            raise _Fallback(self.model_reason)
        if job.state is not None:
            raise _Fallback("a job carrying client state")
        config = job.config
        optimizer = config.get("optimizer")
        if optimizer != "sgd":
            raise _Fallback(f"optimizer '{optimizer}'")
        try:
            extra = dict(config.get("optimizer_kwargs") or {})
            if set(extra) - _SGD_KWARGS:
                raise ValueError("unknown optimizer option")
            self._check_options(config, extra)
            opts = {
                "lr": config["lr"],
                "momentum": config.get("momentum", 0.0),
                "weight_decay": config.get("weight_decay", 0.0),
            } | extra
            x, y = self.task.data.train(job.client_id)
            n = len(x)
            batch_size = int(config["batch_size"])
            steps = self.algorithm.num_steps(config, n) if n else 0
            item = _Item(
                pos=pos, job=job, x=x, y=y, n=n, steps=steps, batch_size=batch_size,
                lr=float(opts["lr"]), momentum=float(opts["momentum"]), weight_decay=float(opts["weight_decay"]),
                dampening=float(opts.get("dampening", 0.0)), nesterov=bool(opts.get("nesterov", False)),
                maximize=bool(opts.get("maximize", False)),
            )  # fmt: skip
            params_ok = isinstance(job.params, Tensor) and job.params.shape == (self.numel,)
        except Exception:  # the serial worker reports the exact error for this client
            raise _Fallback("a job with an invalid config or client id") from None
        if not params_ok:
            raise _Fallback("a job whose parameters do not match the model")
        if n == 0 or steps < 1:
            raise _Fallback("a client without training data or local steps")
        return item

    def _check_options(self, config: dict[str, Any], extra: dict[str, Any]) -> None:
        """torch.optim.SGD's own validation (e.g. nesterov needs momentum), cached per option set."""
        fields = ("optimizer", "lr", "momentum", "weight_decay")
        try:
            key: Any = (tuple(config.get(k) for k in fields), tuple(sorted(extra.items())))
            hash(key)
        except TypeError:
            key = None
        if key is None or key not in self._option_checks:
            try:
                check_optimizer_options(config)
                error = None
            except Exception as exc:
                error = exc
            if key is None:
                if error is not None:
                    raise error
                return
            self._option_checks[key] = error
        if self._option_checks[key] is not None:
            raise self._option_checks[key]  # type: ignore[misc]

    # ------------------------------------------------------------------ sizing

    def _default_budget(self) -> int:
        if self.device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(self.device)
            return int(GPU_BUDGET_FRACTION * free)
        return DEFAULT_CPU_BUDGET

    def _activation_estimate(self) -> tuple[int, int]:
        """(input numel, sum of leaf-module output numels) per sample, from one probe forward."""
        in_numel = 1
        for s in self.task.input_shape:
            in_numel *= int(s)
        total = [0]

        def hook(_module: nn.Module, _inputs: Any, output: Any) -> None:
            if isinstance(output, Tensor):
                total[0] += output.numel()

        handles = [m.register_forward_hook(hook) for m in self.model.modules() if not list(m.children())]
        try:
            with torch.no_grad():
                self.model(torch.zeros(1, *self.task.input_shape, device=self.device))
        except Exception:
            total[0] = 4 * in_numel
        finally:
            for h in handles:
                h.remove()
        return in_numel, max(total[0], 1)

    def _chunk_size(self, items: list[_Item]) -> int:
        if self.max_batch is not None:
            return self.max_batch
        bs = items[0].batch_size
        n_max = max(it.n for it in items)
        steps = items[0].steps
        per_client = 4 * (6 * self.numel + bs * (self._in_numel + 3 * self._act_numel) + n_max * self._in_numel)
        per_client += 12 * steps * min(bs, n_max)  # batch indices + weights
        return int(max(1, min(MAX_BATCH_CAP, self.memory_budget // per_client)))

    # ------------------------------------------------------------------ batched training

    def _run_chunk_safely(self, items: list[_Item]) -> list[tuple[_Item, ClientResult]]:
        try:
            return list(zip(items, self._run_chunk(items)))
        except torch.cuda.OutOfMemoryError:
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            if len(items) > 1:
                half = len(items) // 2
                self.max_batch = half
                log.warning("vmap executor: out of memory with %d clients per call; using %d", len(items), half)
                return self._run_chunk_safely(items[:half]) + self._run_chunk_safely(items[half:])
            self._notice("a client that runs out of memory even alone")
        except Exception as exc:
            message = str(exc).splitlines()[0] if str(exc) else ""
            self._notice(f"a chunk that failed in the batched path ({type(exc).__name__}: {message})")
        return list(zip(items, self._serial_executor().run([it.job for it in items])))

    def _client_forward(self, params: dict[str, Tensor], x: Tensor) -> Tensor:
        return functional_call(self.model, params, (x,))

    def _losses(self, out: Tensor, y: Tensor, w: Tensor | None) -> Tensor:
        """Per-client batch losses [A] from outputs [A, W, ...]; ``w`` [A, W] masks padded samples."""
        if self._native_ce:
            per_sample = F.cross_entropy(out.flatten(0, 1), y.flatten(0, 1), reduction="none").view(y.shape[:2])
            return per_sample.mean(1) if w is None else (per_sample * w).sum(1) / w.sum(1)
        if w is None:
            return self._vloss(out, y)
        per_sample = self._vloss_per_sample(out, y)  # any batch-mean loss, on batches of one sample
        return (per_sample * w).sum(1) / w.sum(1)

    def _start_points(self, items: list[_Item]) -> tuple[Tensor, Tensor]:
        """(start [B, d] or [d] broadcastable, working copy P [B, d]) on the device."""
        unique: dict[int, int] = {}
        tensors: list[Tensor] = []
        rows = []
        for it in items:
            key = id(it.job.params)
            if key not in unique:
                unique[key] = len(tensors)
                tensors.append(it.job.params)
            rows.append(unique[key])
        if len(tensors) == 1:
            start = tensors[0].to(self.device, torch.float32)
            return start, start.expand(len(items), -1).clone()
        stacked = torch.stack([t.to(self.device, torch.float32) for t in tensors])
        start = stacked[torch.tensor(rows, device=self.device)]
        return start, start.clone()

    def _chunk_data(self, items: list[_Item]) -> tuple[Tensor, Tensor, Tensor]:
        """(X, Y, base): rows base[k] .. base[k] + n_k - 1 of X, Y are client k's train data."""
        data = self.task.data
        if isinstance(data, ArrayFederatedData):
            if data.x_train.device == self.device:
                x_all, y_all = data.x_train, data.y_train
            else:
                source = (data.x_train, data.y_train)
                cached = self._resident_data
                if cached is None or cached[0] is not source[0] or cached[1] is not source[1]:
                    size = data.x_train.element_size() * data.x_train.numel()
                    moved = tuple(t.to(self.device) for t in source) if size < RESIDENT_DATA_LIMIT else None
                    self._resident_data = cached = (*source, moved)
                x_all, y_all = cached[2] if cached[2] is not None else (None, None)
            if x_all is not None:
                cids = np.fromiter((it.job.client_id for it in items), dtype=np.int64, count=len(items))
                base = torch.from_numpy(data.train_offsets[cids]).to(self.device)
                return x_all, y_all, base
        sizes = torch.tensor([it.n for it in items], dtype=torch.int64)
        base = (torch.cumsum(sizes, 0) - sizes).to(self.device)
        x = torch.cat([it.x for it in items]).to(self.device, non_blocking=True)
        y = torch.cat([it.y for it in items]).to(self.device, non_blocking=True)
        return x, y, base

    def _schedule(self, items: list[_Item], base: Tensor) -> tuple[Tensor, Tensor, list[int], list[bool]]:
        """All minibatches of the chunk: rows [T, B, W], weights [T, B, W], active prefix per step, partial flags."""
        device = self.device
        flats = []
        for it in items:
            rng = torch.Generator(device=device)
            rng.manual_seed(it.job.seed)
            flats.append(flat_batch_schedule(it.n, it.batch_size, it.steps, rng))
        B = len(items)
        n = np.fromiter((it.n for it in items), dtype=np.int64, count=B)
        steps = np.fromiter((it.steps for it in items), dtype=np.int64, count=B)
        bs = items[0].batch_size
        per_epoch = -(-n // bs)  # batches per epoch
        last = n - (per_epoch - 1) * bs  # size of an epoch's last batch
        T, W = int(steps.max()), int(np.minimum(n, bs).max())
        t = np.arange(T)[None, :]
        active_mask = t < steps[:, None]
        lens = np.where((t % per_epoch[:, None]) < (per_epoch - 1)[:, None], bs, last[:, None])
        partial = ((lens < W) & active_mask).any(axis=0).tolist()
        active = active_mask.sum(axis=0).tolist()

        # element e of client k's index stream sits in epoch e // n, step epoch * per_epoch + (e % n) // bs
        flat = torch.cat(flats) if B > 1 else flats[0]
        counts = torch.tensor([len(f) for f in flats], device=device)
        client_of = torch.repeat_interleave(torch.arange(B, device=device), counts)
        e = torch.arange(flat.numel(), device=device) - (torch.cumsum(counts, 0) - counts)[client_of]
        n_of = torch.from_numpy(n).to(device)[client_of]
        within = e % n_of
        step_of = (e // n_of) * torch.from_numpy(per_epoch).to(device)[client_of] + within // bs
        slot = within % bs
        rows = base.view(1, B, 1).expand(T, B, W).clone()  # padding: the client's first row
        rows[step_of, client_of, slot] = flat.to(device) + base[client_of]
        weights = torch.zeros(T, B, W, device=device)
        weights[step_of, client_of, slot] = 1.0
        return rows, weights, active, partial

    @staticmethod
    def _per_client(values: list[float], device: torch.device) -> float | Tensor:
        """A Python scalar if all clients agree (cheaper, bitwise like torch.optim), else a [B, 1] column."""
        if all(v == values[0] for v in values):
            return values[0]
        return torch.tensor(values, dtype=torch.float32, device=device).unsqueeze(1)

    def _run_chunk(self, items: list[_Item]) -> list[ClientResult]:
        device = self.device
        num_clients = len(items)
        start, P = self._start_points(items)
        X, Y, base = self._chunk_data(items)
        rows, weights, active, partial = self._schedule(items, base)
        T = len(active)

        lr = self._per_client([it.lr for it in items], device)
        wd = self._per_client([it.weight_decay for it in items], device)
        momentum = self._per_client([it.momentum for it in items], device)
        first = items[0]
        uses_momentum, dampening, nesterov, maximize = first.group_key[1:]
        buf = torch.empty_like(P) if uses_momentum else None
        loss_sum = torch.zeros(num_clients, device=device)
        names, shapes, spans = self.layout.names, self.layout.shapes, self.layout.offsets()
        G = torch.empty_like(P)  # flat gradients of the active clients
        feature_shape = X.shape[1:]

        def cut(value: float | Tensor, a: int) -> float | Tensor:
            return value[:a] if isinstance(value, Tensor) else value

        for t in range(T):
            a = active[t]
            p = P[:a] if a < num_clients else P
            g = G[:a] if a < num_clients else G
            r = rows[t, :a].reshape(-1)
            xb = X.index_select(0, r).view(a, -1, *feature_shape)
            yb = Y.index_select(0, r).view(a, -1)
            leaves = [p[:, s:e].detach().view(a, *shape).requires_grad_(True) for shape, (s, e) in zip(shapes, spans)]
            with torch.enable_grad():
                out = self._vforward(dict(zip(names, leaves)), xb)
                losses = self._losses(out, yb, weights[t, :a] if partial[t] else None)
                grads = torch.autograd.grad(losses.sum(), leaves)
            for grad, (s, e) in zip(grads, spans):
                g[:, s:e].copy_(grad.reshape(a, -1))
            with torch.no_grad():
                loss_sum[:a] += losses.detach()
                if maximize:
                    g.neg_()
                wd_t = cut(wd, a)
                if isinstance(wd_t, Tensor):
                    g.addcmul_(p, wd_t)
                elif wd_t != 0:
                    g.add_(p, alpha=wd_t)
                if uses_momentum:
                    m_t = cut(momentum, a)
                    b = buf[:a]  # type: ignore[index]
                    if t == 0:
                        b.copy_(g)
                    else:
                        b.mul_(m_t).add_(g, alpha=1 - dampening)
                    if nesterov:
                        if isinstance(m_t, Tensor):
                            g.addcmul_(b, m_t)
                        else:
                            g.add_(b, alpha=m_t)
                    else:
                        g = b
                lr_t = cut(lr, a)
                if isinstance(lr_t, Tensor):
                    p.addcmul_(g, lr_t, value=-1)
                else:
                    p.add_(g, alpha=-lr_t)

        delta = (P - start).to("cpu", torch.float32)
        finite = torch.isfinite(delta).all(1).tolist()
        losses_cpu = loss_sum.to("cpu").tolist()
        results = []
        for k, it in enumerate(items):
            result = ClientResult(
                client_id=it.job.client_id,
                base_version=it.job.version,
                delta=delta[k].clone(),
                num_samples=it.n,
                num_steps=it.steps,
                metrics={"train_loss": losses_cpu[k] / it.steps},
            )
            results.append(result if finite[k] else check_result(result, self.numel))
        return results


@EXECUTORS.register("vmap", "many clients of a small model per kernel call (torch.func.vmap)")
def vmap_executor(config: Any, spec: WorkerSpec, task: Task | None = None) -> VmapExecutor:
    return VmapExecutor(spec, task, max_batch=getattr(config, "max_batch", None))


# ----------------------------------------------------------------------------- capability check


def model_reason(model: nn.Module, layout: ParamLayout | None = None) -> str | None:
    """Why this model cannot be trained batched (None: it can)."""
    layout = layout if layout is not None else ParamLayout.of(model)
    if any(layout.is_buffer):
        return "a model with float buffers (e.g. BatchNorm running statistics)"
    for module in model.modules():
        if isinstance(module, _DropoutNd):
            return "a model with dropout"
        if isinstance(module, _NormBase):
            return "a model with batch/instance normalisation"
    if any(not p.requires_grad for p in model.parameters()):
        return "a model with frozen parameters"
    return None


def why_not_batched(spec: WorkerSpec, task: Task, client_config: dict[str, Any]) -> str | None:
    """Capability check (used by ``executor: auto``): why jobs of this client algorithm, client
    config and task would all fall back to serial here (None: they take the batched path)."""
    from clients import CLIENTS  # noqa: PLC0415

    reason = model_reason(task.build_model())
    if reason is not None:
        return reason
    algorithm = CLIENTS.get(spec.client)()
    options = getattr(algorithm, "options", None)
    if options is not None:  # a client algorithm with a batched step says itself (None: not this config)
        try:
            batchable = options(dict(client_config)) is not None
        except Exception as exc:  # noqa: BLE001  (the serial worker reports it per client)
            return f"this client config ({type(exc).__name__}: {exc})"
        return None if batchable else f"optimizer '{client_config.get('optimizer')}' with client '{spec.client}'"
    if spec.client != "sgd":
        return f"client algorithm '{spec.client}'"
    optimizer = client_config.get("optimizer", "sgd")
    if optimizer != "sgd":
        return f"optimizer '{optimizer}'"
    if set(client_config.get("optimizer_kwargs") or {}) - _SGD_KWARGS:
        return "optimizer options torch.optim.SGD does not take"
    return None
