"""vmap executor: many clients of one small model trained at once with ``torch.func``.

It runs the client algorithm's own step function (clients/base.py) over a stack of clients:
each client's carry (local model, start point, learning rate, correction vectors...) is
stacked into ``[B, ...]`` tensors, and every local step is one call of
``vmap(algorithm.step)`` whose gradient oracle is a ``torch.func`` gradient of the model
under ``functional_call``. The executor knows nothing about any algorithm: start, step and
finish are the algorithm's, and are the functions the serial worker loops. Minibatches are
the serial worker's too: each job's indices are ``clients.base.batch_schedule``'s for a
generator seeded by ``job.seed`` (drawn by :func:`flat_batch_schedule`, which makes the same
draws without building the batch list).

How clients that differ are batched together:

- **Start points**: each job starts from its own ``job.params``, state and broadcast, so
  jobs from different model versions (asynchronous modes) share a kernel call.
- **Groups**: jobs are grouped by batch size and the algorithm's static options (what
  shapes the computation: clipping, momentum, coefficients); the learning rate (with its
  per-version decay) lives in the carry and may differ per client inside a group.
- **Slots, refilled as clients finish** (continuous batching, as LLM inference servers do
  with sequences): a group runs on a stack of at most ``max_batch`` slots (by default a
  memory estimate: carry tensors, activations and data per client, against a budget). Its
  jobs are queued longest first; each slot carries its own job's carry (step counter,
  learning rate, state), loss sum and position in that job's minibatch schedule. Every step
  runs ``vmap(step)`` over the stack; a slot whose client has done its last step hands its
  carry to the algorithm's ``finish`` and takes the next queued job (its ``start`` written
  into the slot's row). Once the queue is empty the stack shrinks to the slots still
  training. Jobs are independent, so a result does not depend on its slot or neighbours.
- **Different data and batch sizes**: all batch indices of a group are precomputed as one
  ``[sum of steps, W]`` tensor of rows into the group's data (job k's step s at row
  offset_k + s; a slot reads the row it points at); short batches (last batch of an
  epoch) are padded with one of the client's own rows and masked by per-sample weights
  (loss = sum(w * l) / sum(w), which equals the serial mean over the real batch).

What cannot be batched runs on a serial :class:`Worker` built lazily from the same spec and
task, with one logged notice per reason: optimizers other than SGD for the ``sgd`` client
(torch.optim), models with float buffers, dropout or batch normalisation, frozen
parameters, invalid configs, clients without data. If a batched group raises, its clients
are recomputed serially (so a failure is attributed to the client that caused it; out of
memory halves the slots and retries); a client whose update is not finite gets ``error`` set
by ``check_result`` while the others in its group are unaffected.

**Compiled** (``compile=True``, ``executor.compile``): the vmapped step goes through
``torch.compile`` (Ansel et al., "PyTorch 2", ASPLOS 2024) as one graph: forward, backward,
the algorithm's update and the masking. vmap fixes a graph's stack size, so a compiled
stack is a power of two: idle slots hold a copy of a client (results discarded), and once
the queue is empty the stack is compacted by halving when half of it is idle; a run
compiles one graph per (stack size, batch width) it meets. Python floats of the options are
graph constants. Compile seconds are reported by :meth:`VmapExecutor.timings`; if compiling
fails the executor logs one notice and runs the step uncompiled from then on.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.func import vmap
from torch.nn.modules.batchnorm import _NormBase
from torch.nn.modules.dropout import _DropoutNd

from clients import CLIENTS, local_lr, make_grad_fn
from clients.transforms import algorithm_state, apply_client_transforms, build_client_transforms
from fedsim.attacks import client_train_data
from fedsim.data import ArrayFederatedData
from fedsim.executors.base import EXECUTORS
from fedsim.executors.serial import SerialExecutor
from fedsim.executors.worker import WorkerSpec, check_result, resolve_device, torch_threads
from fedsim.params import ParamLayout
from fedsim.tasks import Task, build_task
from fedsim.types import ClientJob, ClientResult

__all__ = [
    "VmapExecutor",
    "why_not_batched",
    "model_reason",
    "flat_batch_schedule",
    "DEFAULT_CPU_BUDGET",
    "MAX_BATCH_CAP",
]

log = logging.getLogger("fedsim")

DEFAULT_CPU_BUDGET = 1 << 30  # bytes of working memory per chunk on CPU
GPU_BUDGET_FRACTION = 0.3  # of the free GPU memory at start-up
MAX_BATCH_CAP = 4096  # clients per kernel call, whatever the memory estimate says
RESIDENT_DATA_LIMIT = 2 << 30  # copy an in-memory dataset to the GPU once if it is smaller than this
RECOMPILE_LIMIT = 32  # compiled graphs per step variant (stack sizes 1, 2, 4, ... 4096 and specialisations)
STEP_TEMPORARIES = 4  # model-sized temporaries per client inside one step (gradients, the new carry)


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
    options: Hashable  # the algorithm's static options (equal within a batched group)
    lr: float  # this job's local learning rate (decayed by model version)

    @property
    def group_key(self) -> tuple:
        return (self.batch_size, self.options)


class _Fallback(Exception):
    """This job cannot take the batched path; ``reason`` names why (for the one-time notice)."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def _own_code(fn: Callable) -> Callable:
    """``fn`` behind a wrapper with a code object of its own.

    torch.compile keeps compiled graphs per code object, at most ``recompile_limit`` of them;
    every ``vmap``-wrapped function shares one code object, so without this the step variants
    compiled in one process (a sweep, a test session) would add up to that limit and the run
    would fall back to the uncompiled step.
    """
    namespace: dict[str, Any] = {}
    exec("def batched_step(carry, batch):\n    return fn(carry, batch)\n", {"fn": fn}, namespace)  # noqa: S102
    return namespace["batched_step"]


def _freeze(config: dict[str, Any]) -> Hashable:
    return tuple(sorted((k, repr(v)) for k, v in config.items()))


def _bucket(n: int) -> int:
    """The smallest power of two >= n."""
    return 1 << max(0, n - 1).bit_length()


def _own(t: Tensor) -> Tensor:
    """A tensor that does not keep a whole stacked [B, d] tensor alive."""
    return t.clone() if t._base is not None else t


class VmapExecutor:
    """The client algorithm's step, vmapped over stacked clients; see the module docstring.

    ``max_batch`` fixes the number of clients per kernel call (default: memory-aware);
    ``memory_budget`` (bytes) is what the default estimate aims to stay under.
    """

    def __init__(
        self,
        spec: WorkerSpec,
        task: Task | None = None,
        max_batch: int | None = None,
        memory_budget: int | None = None,
        compile: bool = False,
    ):
        if max_batch is not None and max_batch < 1:
            raise ValueError(f"executor.max_batch must be >= 1, got {max_batch}")
        self.spec = spec
        self.device = resolve_device(spec.device)
        self.task = task if task is not None else build_task(spec.task)
        self.max_batch = max_batch
        self.algorithm = CLIENTS.get(spec.client)()
        with torch.random.fork_rng(devices=[]):  # leave the caller's global RNG as it was
            self.model = self.task.build_model().to(self.device)
        self.model.train()
        self.layout = ParamLayout.of(self.model)
        self.numel = self.layout.numel
        self.transforms = build_client_transforms(spec.client_transforms)
        self.loss_fn = self.task.loss_fn
        self.grad = make_grad_fn(self.model, self.layout, self.loss_fn)
        self._serial: SerialExecutor | None = None
        self._noticed: set[str] = set()
        self._options: dict[Hashable, Any] = {}  # frozen config -> options (or the exception they raised)
        self._vsteps: dict[Hashable, Callable] = {}
        self.compile = compile  # torch.compile the batched step (turned off, with one notice, if compiling fails)
        self.compile_s = 0.0  # wall seconds of the step calls that compiled (first call per step variant)
        self._compiled: dict[Hashable, Callable] = {}
        self._compiled_variants: set[Hashable] = set()
        self.step_s = 0.0  # wall seconds of the batched step calls that did not compile (for compile: auto's costs)
        self.step_count = 0
        # step variants whose first eager call has run: that call pays one-off costs (torch.func's
        # first grad imports torch._dynamo, ~1 s) that are not a step's, so it is not timed
        self._eager_warm: set[Hashable] = set()
        self.on_close: Callable[[VmapExecutor], None] | None = None  # called once by close() (records the costs)
        self._carry_vectors: dict[Hashable, float] = {}
        self._resident_data: tuple[Any, ...] | None = None  # (x_train, y_train, their copies on the device)
        self.model_reason = self._model_reason()
        self._in_numel, self._act_numel = self._activation_estimate()
        self.memory_budget = memory_budget if memory_budget is not None else self._default_budget()

    # ------------------------------------------------------------------ public

    def run(self, jobs: Sequence[ClientJob]) -> list[ClientResult]:
        with torch_threads(self.spec.threads):  # the caller's thread count is restored after
            return self._run(jobs)

    def _run(self, jobs: Sequence[ClientJob]) -> list[ClientResult]:
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
            items.sort(key=lambda it: (-it.steps, it.pos))  # the queue: longest first, then job order
            for item, result in self._run_group_safely(items):
                results[item.pos] = result
        if to_serial:
            for pos, result in zip(to_serial, self._serial_executor().run([jobs[p] for p in to_serial])):
                results[pos] = result
        return results  # type: ignore[return-value]

    def close(self) -> None:
        if self.on_close is not None:
            on_close, self.on_close = self.on_close, None
            on_close(self)
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

    def _algorithm_options(self, config: dict[str, Any]) -> Any:
        """``algorithm.options(config)``, cached per distinct config (it may run torch's validation)."""
        try:  # cheaper than _freeze: this runs once per job
            key: Hashable = tuple((k, tuple(v.items()) if isinstance(v, dict) else v) for k, v in config.items())
            hash(key)
        except TypeError:  # an unhashable value (a list, a nested dict)
            key = _freeze(config)
        if key not in self._options:
            try:
                self._options[key] = self.algorithm.options(config)
            except Exception as exc:  # noqa: BLE001  (the serial worker reports the exact error for this client)
                self._options[key] = exc
        value = self._options[key]
        if isinstance(value, Exception):
            raise value
        return value

    def _prepare(self, pos: int, job: ClientJob) -> _Item:
        if self.model_reason is not None:
            raise _Fallback(self.model_reason)
        config = job.config
        try:
            options = self._algorithm_options(config)
            if options is not None:
                x, y = client_train_data(self.task, job)
                n = len(x)
                steps = self.algorithm.num_steps(config, n) if n else 0
                item = _Item(
                    pos=pos,
                    job=job,
                    x=x,
                    y=y,
                    n=n,
                    steps=steps,
                    batch_size=int(config["batch_size"]),
                    options=options,
                    lr=local_lr(config, job.version),
                )
            params_ok = isinstance(job.params, Tensor) and job.params.shape == (self.numel,)
        except Exception:  # noqa: BLE001  (the serial worker reports the exact error for this client)
            raise _Fallback("a job with an invalid config or client id") from None
        if options is None:
            raise _Fallback(f"optimizer '{config.get('optimizer')}' (torch.optim)")
        if not params_ok:
            raise _Fallback("a job whose parameters do not match the model")
        if n == 0 or steps < 1:
            raise _Fallback("a client without training data or local steps")
        return item

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
        except Exception:  # noqa: BLE001  (any failure of the batched path falls back to the serial worker)
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
        vectors = self._carry_size(items[0]) + STEP_TEMPORARIES
        per_client = 4 * (vectors * self.numel + bs * (self._in_numel + 3 * self._act_numel) + n_max * self._in_numel)
        per_client += 12 * steps * min(bs, n_max)  # batch indices + weights
        size = int(max(1, min(MAX_BATCH_CAP, self.memory_budget // per_client)))
        if self.compile:  # a compiled chunk is padded to a power of two: make full chunks one
            size = 1 << (size.bit_length() - 1)
        return size

    def _carry_size(self, item: _Item) -> float:
        """Model-sized vectors in one client's carry (from a probe ``start``)."""
        if item.options not in self._carry_vectors:
            carry = self.algorithm.start(item.options, item.job.params, None, None, item.lr)
            self._carry_vectors[item.options] = sum(v.numel() for v in carry.values()) / self.numel
        return self._carry_vectors[item.options]

    # ------------------------------------------------------------------ batched training

    def _run_group_safely(self, items: list[_Item]) -> list[tuple[_Item, ClientResult]]:
        try:
            return list(zip(items, self._run_chunk(items)))
        except torch.cuda.OutOfMemoryError:
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            slots = min(self._chunk_size(items), len(items))
            if slots > 1:
                self.max_batch = slots // 2
                log.warning("vmap executor: out of memory with %d clients per call; using %d", slots, slots // 2)
                return self._run_group_safely(items)
            self._notice("a client that runs out of memory even alone")
        except Exception as exc:  # noqa: BLE001  (any failure of the batched path falls back to the serial worker)
            message = str(exc).splitlines()[0] if str(exc) else ""
            self._notice(f"a chunk that failed in the batched path ({type(exc).__name__}: {message})")
        return list(zip(items, self._serial_executor().run([it.job for it in items])))

    def _vstep(self, options: Hashable, weighted: bool) -> Callable:
        """``vmap`` of the algorithm's step; unweighted batches pass ``w = None`` (not mapped)."""
        key = (options, weighted)
        if key not in self._vsteps:
            algorithm, grad = self.algorithm, self.grad
            in_dims = (0, (0, 0, 0 if weighted else None))
            self._vsteps[key] = vmap(lambda carry, batch: algorithm.step(options, carry, batch, grad), in_dims=in_dims)
        return self._vsteps[key]

    def _step(self, options: Hashable, weighted: bool, carry: dict[str, Tensor], batch: tuple) -> tuple:
        """One batched step: the compiled ``vmap(step)`` when compiling, else the eager one."""
        key = (options, weighted)
        if self.compile:
            compiled = self._compiled.get(key)
            if compiled is None:
                # static shapes: vmap fixes the stack size and batch width of a graph anyway
                # (padding to powers of two keeps their number small), and python floats of the
                # options (lr factors, clip norms) become constants (vmap's batching rules
                # reject symbolic floats)
                compiled = torch.compile(_own_code(self._vstep(options, weighted)), dynamic=False, fullgraph=True)
                self._compiled[key] = compiled
            variant = (key, *batch[0].shape[:2])  # each (stack size, batch width) compiles a graph of its own
            start = time.perf_counter()
            try:
                if variant in self._compiled_variants:
                    out = compiled(carry, batch)
                    self.step_s += time.perf_counter() - start
                    self.step_count += 1
                else:  # a run meets one graph per stack size: more than dynamo's default of 8
                    with torch._dynamo.config.patch(recompile_limit=RECOMPILE_LIMIT):
                        out = compiled(carry, batch)
            except Exception as exc:  # noqa: BLE001  (no C++ compiler, an op inductor cannot lower... or the step itself raised)
                out = self._vstep(options, weighted)(carry, batch)  # raises the step's own error, if it is one
                message = str(exc).strip().splitlines()
                log.warning(
                    "vmap executor: torch.compile of the batched step failed (%s: %s); running it uncompiled",
                    type(exc).__name__,
                    message[0][:200] if message else "",
                )
                self.compile = False
                self._compiled.clear()
                return out
            else:
                if variant not in self._compiled_variants:
                    self._compiled_variants.add(variant)
                    self.compile_s += time.perf_counter() - start
                return out
        if key not in self._eager_warm:
            self._eager_warm.add(key)
            return self._vstep(options, weighted)(carry, batch)
        start = time.perf_counter()
        out = self._vstep(options, weighted)(carry, batch)
        self.step_s += time.perf_counter() - start
        self.step_count += 1
        return out

    def timings(self) -> dict[str, float]:
        """One-off costs outside the training itself (seconds), for the run summary."""
        return {"compile_s": self.compile_s} if self._compiled_variants else {}

    def _start_carry(self, items: list[_Item]) -> dict[str, Tensor]:
        """Each client's ``start`` on the device, stacked key by key into [B, ...] tensors."""
        moved: dict[int, Any] = {}  # id of a shared tensor / dict (params, broadcast) -> its copy on the device

        def to_device(obj: Any) -> Any:
            if obj is None:
                return None
            if id(obj) not in moved:
                if isinstance(obj, Tensor):
                    moved[id(obj)] = obj.to(self.device, torch.float32)
                else:
                    moved[id(obj)] = {k: v.to(self.device) for k, v in obj.items()}
            return moved[id(obj)]

        carries = []
        for it in items:
            state = algorithm_state(it.job.state)  # without the client transforms' keys
            if state is not None:
                state = {k: v.to(self.device) if isinstance(v, Tensor) else v for k, v in state.items()}
            carries.append(
                self.algorithm.start(it.options, to_device(it.job.params), state, to_device(it.job.broadcast), it.lr)
            )
        return {key: torch.stack([c[key] for c in carries]) for key in carries[0]}

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

    def _schedule(self, items: list[_Item], base: Tensor) -> tuple[Tensor, Tensor, np.ndarray, np.ndarray]:
        """All minibatches of the group: rows [L, W] and weights [L, W] (job k's step s at row
        offsets[k] + s, L the total number of steps), the partial flag of each row, the offsets."""
        device = self.device
        flats = []
        for it in items:
            rng = torch.Generator(device=device)
            rng.manual_seed(it.job.seed)
            flats.append(flat_batch_schedule(it.n, it.batch_size, it.steps, rng))
        B = len(items)
        n = np.fromiter((it.n for it in items), dtype=np.int64, count=B)
        steps = np.fromiter((it.steps for it in items), dtype=np.int64, count=B)
        offsets = np.cumsum(steps) - steps
        bs = items[0].batch_size
        per_epoch = -(-n // bs)  # batches per epoch
        last = n - (per_epoch - 1) * bs  # size of an epoch's last batch
        L, W = int(steps.sum()), int(np.minimum(n, bs).max())
        job_of_row = np.repeat(np.arange(B), steps)
        step_in_job = np.arange(L) - offsets[job_of_row]
        lens = np.where(step_in_job % per_epoch[job_of_row] < per_epoch[job_of_row] - 1, bs, last[job_of_row])
        partial = lens < W

        # element e of job k's index stream sits in epoch e // n, step epoch * per_epoch + (e % n) // bs
        flat = torch.cat(flats) if B > 1 else flats[0]
        counts = torch.tensor([len(f) for f in flats], device=device)
        job_of = torch.repeat_interleave(torch.arange(B, device=device), counts)
        e = torch.arange(flat.numel(), device=device) - (torch.cumsum(counts, 0) - counts)[job_of]
        n_of = torch.from_numpy(n).to(device)[job_of]
        within = e % n_of
        step_of = (e // n_of) * torch.from_numpy(per_epoch).to(device)[job_of] + within // bs
        row_of = torch.from_numpy(offsets).to(device)[job_of] + step_of
        slot = within % bs
        row_base = base[torch.from_numpy(job_of_row).to(device)]
        rows = row_base.view(L, 1).expand(L, W).clone()  # padding: the client's first row
        rows[row_of, slot] = flat.to(device) + base[job_of]
        weights = torch.zeros(L, W, device=device)
        weights[row_of, slot] = 1.0
        return rows, weights, partial, offsets

    def _run_chunk(self, items: list[_Item]) -> list[ClientResult]:
        """The group's jobs through a stack of at most ``_chunk_size`` slots, refilled as clients finish."""
        slots = self._chunk_size(items)
        device = self.device
        options = items[0].options
        X, Y, base = self._chunk_data(items)
        rows, weights, partial, offsets = self._schedule(items, base)
        feature_shape = X.shape[1:]
        steps = [it.steps for it in items]
        live = min(slots, len(items))
        # vmap's stack size is static in a compiled graph: powers of two only (idle slots pad)
        size = _bucket(live) if self.compile else live
        # per slot: its job (-1: idle), the schedule row it reads next, steps left
        job = np.full(size, -1, dtype=np.int64)
        job[:live] = np.arange(live)
        pointer = np.zeros(size, dtype=np.int64)
        pointer[:live] = offsets[:live]
        left = np.zeros(size, dtype=np.int64)
        left[:live] = steps[:live]
        carry = self._start_carry(items[:live])
        if live < size:  # idle slots compute on a copy of slot 0 (results discarded)
            carry = {k: torch.cat([v, v[:1].expand(size - live, *v.shape[1:])]) for k, v in carry.items()}
        loss_sum = torch.zeros(size, device=device)
        queued = live  # next job to start
        final: list[dict[str, Tensor] | None] = [None] * len(items)
        final_loss: list[Tensor | None] = [None] * len(items)
        with torch.no_grad():  # torch.func.grad inside the step ignores this; the arithmetic builds no graph
            while True:
                busy = job >= 0
                p = torch.from_numpy(pointer).to(device)
                r = rows.index_select(0, p)
                xb = X.index_select(0, r.view(-1)).view(size, -1, *feature_shape)
                yb = Y.index_select(0, r.view(-1)).view(size, -1)
                weighted = bool(partial[pointer[busy]].any())
                w = weights.index_select(0, p) if weighted else None
                carry, losses = self._step(options, weighted, carry, (xb, yb, w))
                loss_sum += losses
                pointer += busy
                left -= busy
                done = np.flatnonzero(busy & (left == 0))
                if len(done) == 0:
                    continue
                d = torch.from_numpy(done).to(device)
                last = {k: v.index_select(0, d) for k, v in carry.items()}
                last_loss = loss_sum.index_select(0, d)
                for i, s in enumerate(done.tolist()):
                    final[job[s]] = {k: v[i] for k, v in last.items()}
                    final_loss[job[s]] = last_loss[i]
                refill = done[: len(items) - queued]
                if len(refill):  # the next queued jobs take these slots
                    new = items[queued : queued + len(refill)]
                    job[refill] = np.arange(queued, queued + len(refill))
                    pointer[refill] = offsets[queued : queued + len(refill)]
                    left[refill] = steps[queued : queued + len(refill)]
                    queued += len(refill)
                    idx = torch.from_numpy(refill).to(device)
                    for k, v in self._start_carry(new).items():
                        carry[k].index_copy_(0, idx, v)
                    loss_sum.index_fill_(0, idx, 0.0)
                idle = done[len(refill) :]
                if len(idle) == 0:
                    continue
                job[idle] = -1
                pointer[idle] -= 1  # an idle slot re-reads its last row (finite, discarded)
                busy_slots = np.flatnonzero(job >= 0)
                if len(busy_slots) == 0:
                    break
                # shrink the stack; compiled: to the next power of two, once half of it is idle
                new_size = _bucket(len(busy_slots)) if self.compile else len(busy_slots)
                if new_size < size:
                    keep = np.concatenate([busy_slots, np.full(new_size - len(busy_slots), busy_slots[0])])
                    k_idx = torch.from_numpy(keep).to(device)
                    carry = {k: v.index_select(0, k_idx) for k, v in carry.items()}
                    loss_sum = loss_sum.index_select(0, k_idx)
                    job, pointer, left = job[keep], pointer[keep], left[keep]
                    job[len(busy_slots) :] = -1
                    left[len(busy_slots) :] = 0
                    size = new_size

        stacked = {k: torch.stack([f[k] for f in final]).to("cpu") for k in final[0]}  # type: ignore[index]
        losses_cpu = torch.stack(final_loss).to("cpu").tolist()  # type: ignore[arg-type]
        results = []
        for k, it in enumerate(items):
            delta, state, extras = self.algorithm.finish(options, {key: v[k] for key, v in stacked.items()})
            result = ClientResult(
                client_id=it.job.client_id,
                base_version=it.job.version,
                delta=_own(delta).to(torch.float32),
                num_samples=it.n,
                num_steps=it.steps,
                metrics={"train_loss": losses_cpu[k] / it.steps},
                state=None if state is None else {key: _own(v) for key, v in state.items()},
                extras=None if extras is None else {key: _own(v) for key, v in extras.items()},
            )
            results.append(check_result(result, self.numel))
        apply_client_transforms(self.transforms, results, [it.job for it in items], self.layout)  # one stack per group
        return results


@EXECUTORS.register("vmap", "many clients of a small model per kernel call (torch.func.vmap)")
def vmap_executor(config: Any, spec: WorkerSpec, task: Task | None = None) -> VmapExecutor:
    # "auto" was resolved to on/off by build_executor, which knows the planned work
    return VmapExecutor(
        spec, task, max_batch=getattr(config, "max_batch", None), compile=getattr(config, "compile", "off") == "on"
    )


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


def why_not_batched(
    spec: WorkerSpec, task: Task, client_config: dict[str, Any], model: nn.Module | None = None
) -> str | None:
    """Capability check (used by ``executor: auto``): why jobs of this client algorithm, client
    config and task would all fall back to serial here (None: they take the batched path).
    Asks the algorithm itself (its ``options`` are None when it is not a step function);
    ``model``: the task's model when the caller has built it already."""
    from fedsim.config import ClientConfig  # noqa: PLC0415  (defaults for keys the caller left out)

    config = ClientConfig().model_dump() | dict(client_config)
    try:
        options = CLIENTS.get(spec.client)().options(config)
    except Exception as exc:  # noqa: BLE001  (the run reports the exact error; auto just does not pick vmap)
        return f"a client config the algorithm refuses ({type(exc).__name__})"
    if options is None:
        return f"optimizer '{config.get('optimizer')}'"
    return model_reason(model if model is not None else task.build_model())
