"""``executor.name: auto`` (the default) and ``executor.compile: auto``: the fastest path for
the workload, from what the run knows before it starts, with one log line saying what was
chosen and why.

What it knows: whether the client algorithm, its optimizer and the model can be batched at all
(:func:`fedsim.executors.vmap.why_not_batched`), the model's size, the device, the clients per
executor call the scheduler will produce (a sync round's participants, a buffer's K...) and the
batched steps the run plans (server updates x local steps of a mean client).

The rules are the crossovers measured by ``experiments/bench/vmap_vs_serial.py`` (README,
benchmarks) on one CPU thread:

- **short runs**: serial when the run's planned serial training time (planned batched steps x
  clients per call x an estimated serial step, ``serial_step_s``: ``SERIAL_STEP_OVERHEAD_S`` plus
  6 x parameters x batch flops at ``SERIAL_FLOPS``) is under ``SHORT_RUN_S`` = 2.5 s. The batched
  path has a one-off cost of about 1.1 s (importing and tracing ``torch.func``/``torch._dynamo``;
  vs_flower's logistic regression: vmap 2.04 s in-process vs serial 1.81 s while saving 29 ms in
  each of 30 rounds) and, uncompiled at ~10 clients per call, saves about half of serial's time
  (57.6 -> 28.5 ms a round), so it pays from about twice that one-off cost.
- **compile** (``auto``, :func:`compile_pays`): compile when planned batched steps x (uncompiled
  - compiled seconds per batched step) >= the compile's seconds. The numbers are this
  machine's, measured by earlier runs of the same model shape and recorded in the cache
  directory (:mod:`fedsim.executors.compile_cache`); when a shape compiled before, inductor's
  cache there holds its graph and the recorded warm compile cost is used. With nothing
  recorded: ``DEFAULT_COMPILE_S`` = 5 s to compile and ``DEFAULT_STEP_SAVED_S`` = 0.5 ms saved per
  step (a cold compile costs 3-15 s on CPU and saves ~1 ms per step on small models:
  ``COMPILE_PAYS_AFTER`` = 10,000 steps).
- **vmap, compiled**: at least as fast as serial from one client per call, as long as the
  stacked models stay small: the compiled step pads the stack to a power of two, so
  ``bucket(clients per call) x parameters <= COMPILED_MAX_STACK`` (past that the padding and
  the bigger batched kernels cost more than they save: the 200k-parameter MLP is 1.6x serial
  at 2 clients per call and 0.8x at 5).
- **vmap, uncompiled**: its per-step overhead (~1 ms of ``torch.func`` dispatch) pays from
  ``EAGER_MIN_CLIENTS`` clients per call, and only for models up to ``EAGER_MAX_PARAMS``
  parameters (the batched kernels of bigger models are slower than serial's).
- **convolutions on CPU**: serial. vmap over ``Conv2d`` becomes one grouped convolution per
  layer, which measured 1.3-1.8x slower than serial's convolutions at 5 to 50 clients per call
  (``experiments/bench/vs_pfl.py --crossover``), so there is no crossover to wait for.
- **cuda**: vmap whenever the clients batch (one kernel launch for many clients).

Otherwise serial. Ray is never chosen automatically (it pays off only for big models or many
cores; ``executor.name: ray`` runs batched chunks inside its actors anyway).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import Any

from torch import nn

from fedsim.executors import compile_cache
from fedsim.executors.base import EXECUTORS, Executor
from fedsim.executors.worker import WorkerSpec
from fedsim.tasks import Task, build_task

__all__ = [
    "build_executor", "choose_executor", "resolve_compile", "why_not_vmap", "why_serial", "vmap_pays",
    "compile_pays", "serial_step_s", "COMPILE_PAYS_AFTER", "COMPILED_MAX_STACK", "EAGER_MIN_CLIENTS",
    "EAGER_MAX_PARAMS", "DEFAULT_COMPILE_S", "DEFAULT_STEP_SAVED_S", "SHORT_RUN_S",
]  # fmt: skip

log = logging.getLogger("fedsim")

DEFAULT_COMPILE_S = 5.0  # compile seconds assumed when none is recorded for the model shape
DEFAULT_STEP_SAVED_S = 5e-4  # seconds a compiled batched step saves, when none is recorded
COMPILE_PAYS_AFTER = math.ceil(DEFAULT_COMPILE_S / DEFAULT_STEP_SAVED_S)  # planned steps, with nothing recorded
SHORT_RUN_S = 2.5  # planned serial training seconds under which serial beats the batched path's one-off cost
SERIAL_STEP_OVERHEAD_S = 2.5e-4  # serial: python + autograd seconds per client step (logreg: ~0.29 ms a step)
SERIAL_FLOPS = 1.5e10  # serial: flops per second of one thread on small matmuls (200k MLP: ~1.1 ms a step)
COMPILED_MAX_STACK = 1_000_000  # padded stack x parameters up to which the compiled batched step wins
EAGER_MIN_CLIENTS = 4  # clients per call from which the uncompiled batched step wins ...
EAGER_MAX_PARAMS = 50_000  # ... for models up to this many parameters


def why_not_vmap(
    spec: WorkerSpec, task: Task, client_config: Mapping[str, Any], model: nn.Module | None = None
) -> str | None:
    """Why these clients cannot take the vmap executor's batched path (None: they can)."""
    from fedsim.executors import vmap  # noqa: PLC0415

    return vmap.why_not_batched(spec, task, dict(client_config), model)


def compile_pays(planned_steps: int | None, costs: Mapping[str, float] | None = None) -> tuple[bool, str]:
    """Whether compiling the batched step pays for ``planned_steps`` batched steps, and why (with the
    numbers). ``costs``: what :mod:`~fedsim.executors.compile_cache` recorded for the model shape."""
    if planned_steps is None:
        return False, "the planned steps are unknown"
    costs = costs or {}
    if "warm_compile_s" in costs or "compile_s" in costs:
        warm = "warm_compile_s" in costs
        compile_s = costs["warm_compile_s"] if warm else costs["compile_s"]
        how = "warm compile measured" if warm else "compile measured cold"
    else:
        compile_s, how = DEFAULT_COMPILE_S, "compile estimated"
    if "eager_step_s" in costs and "compiled_step_s" in costs:
        saved, saved_how = costs["eager_step_s"] - costs["compiled_step_s"], "measured"
    else:
        saved, saved_how = DEFAULT_STEP_SAVED_S, "estimated"
    gain = planned_steps * saved
    numbers = (
        f"{planned_steps:,} steps x {saved * 1e3:.2f} ms saved ({saved_how}) = {gain:.2f} s "
        f"{'>=' if gain >= compile_s else '<'} {compile_s:.2f} s {how}"
    )
    return gain >= compile_s, numbers


def resolve_compile(mode: str, planned_steps: int | None, costs: Mapping[str, float] | None = None) -> str:
    """ "on" or "off" for ``executor.compile`` (``auto``: :func:`compile_pays`)."""
    if mode != "auto":
        return mode
    return "on" if compile_pays(planned_steps, costs)[0] else "off"


def serial_step_s(num_params: int, batch_size: int) -> float:
    """Estimated seconds of one serial client step (see the module docstring)."""
    return SERIAL_STEP_OVERHEAD_S + 6.0 * num_params * batch_size / SERIAL_FLOPS


def vmap_pays(
    num_params: int, clients_per_call: float, compiled: bool, device: str, convolutions: bool = False
) -> str | None:
    """Why serial is faster for this workload (None: vmap is at least as fast)."""
    if device.startswith("cuda"):
        return None
    if convolutions:
        return "a model with convolutions on CPU: batched (grouped) convolutions are slower than serial's"
    if compiled:
        stack = (
            (1 << max(0, math.ceil(clients_per_call) - 1).bit_length()) if math.isfinite(clients_per_call) else math.inf
        )
        if stack * num_params > COMPILED_MAX_STACK:
            return (
                f"a stack of {stack:g} clients (~{clients_per_call:g} per call, padded) x {num_params:,} parameters "
                f"exceeds {COMPILED_MAX_STACK:,}: serial is faster there"
            )
        return None
    if num_params > EAGER_MAX_PARAMS:
        return (
            f"a {num_params:,}-parameter model: the uncompiled batched step is slower than serial above "
            f"{EAGER_MAX_PARAMS:,} parameters (--compile on makes it faster)"
        )
    if clients_per_call < EAGER_MIN_CLIENTS:
        return (
            f"about {clients_per_call:g} clients per call: the uncompiled batched step pays from "
            f"{EAGER_MIN_CLIENTS} (--compile on makes it faster)"
        )
    return None


def why_serial(
    spec: WorkerSpec,
    task: Task,
    client_config: Mapping[str, Any],
    clients_per_call: float | None = None,
    compiled: bool = False,
    planned_steps: int | None = None,
    model: nn.Module | None = None,
) -> str | None:
    """Why serial is the better path for these jobs (None: vmap), from the capability check and
    the measured crossovers. ``clients_per_call`` None: unknown, judged as if calls were large;
    ``planned_steps`` None: unknown, judged as a long run; ``model``: the task's model, when the
    caller has built it already."""
    model = model if model is not None else _build_model(task)
    reason = why_not_vmap(spec, task, client_config, model)
    if reason is not None:
        return f"vmap cannot batch {reason}"
    num_params = sum(p.numel() for p in model.parameters())
    convolutions = any(isinstance(m, nn.modules.conv._ConvNd) for m in model.modules())
    if planned_steps is not None and clients_per_call is not None and not spec.device.startswith("cuda"):
        batch = int(client_config.get("batch_size") or 1)
        serial_s = planned_steps * clients_per_call * serial_step_s(num_params, batch)
        if serial_s < SHORT_RUN_S:
            return (
                f"a short run: ~{serial_s:.1f} s of serial training planned ({planned_steps:,} steps x "
                f"~{clients_per_call:g} clients), under the {SHORT_RUN_S:g} s from which the batched path's "
                "one-off cost pays"
            )
    return vmap_pays(
        num_params,
        clients_per_call if clients_per_call is not None else float("inf"),
        compiled,
        spec.device,
        convolutions,
    )


def choose_executor(
    spec: WorkerSpec,
    task: Task,
    client_config: Mapping[str, Any],
    clients_per_call: float | None = None,
    compiled: bool = False,
    planned_steps: int | None = None,
    model: nn.Module | None = None,
) -> str:
    """ "vmap" or "serial" for these clients, with one log line saying which and why."""
    reason = why_serial(spec, task, client_config, clients_per_call, compiled, planned_steps, model)
    if reason is not None:
        log.info("executor auto: serial (%s)", reason)
        return "serial"
    per_call = f"~{clients_per_call:g} clients per call, " if clients_per_call is not None else ""
    log.info(
        "executor auto: vmap (%s%s; --executor serial to debug)",
        per_call,
        "compiled batched step" if compiled else f"client '{spec.client}' with this model batches",
    )
    return "vmap"


def _build_model(task: Task) -> nn.Module:
    import torch  # noqa: PLC0415

    with torch.random.fork_rng(devices=[]):  # leave the caller's global RNG as it was
        return task.build_model()


def _record_costs(directory: Any, device: str, batch_size: int, compiling: bool) -> Any:
    """The vmap executor's ``on_close``: record the compile and step seconds it measured."""

    def on_close(executor: Any) -> None:
        if executor.step_count == 0 or executor.compile != compiling:  # nothing ran, or compiling failed
            return
        measured = {("compiled_step_s" if compiling else "eager_step_s"): executor.step_s / executor.step_count}
        if compiling and executor.compile_s > 0:
            measured["compile_s"] = executor.compile_s
        shapes = [tuple(p.shape) for p in executor.model.parameters()]
        compile_cache.record(directory, compile_cache.signature(shapes, batch_size, device), measured)

    return on_close


def build_executor(
    config: Any,
    spec: WorkerSpec,
    task: Task | None,
    client_config: Mapping[str, Any],
    planned_steps: int | None = None,
    clients_per_call: float | None = None,
) -> Executor:
    """The executor ``config.name`` names, resolving ``auto`` (executor and compile) first.

    ``planned_steps``: server updates x local steps of a mean client (for ``compile: auto`` and
    the short-run rule); ``clients_per_call``: the jobs the scheduler hands the executor at once.
    """
    name = config.name
    requested = getattr(config, "compile", "off")
    directory = compile_cache.cache_dir(getattr(config, "cache_dir", None))
    batch = int(client_config.get("batch_size") or 0)
    mode, why = requested, ""
    model = None  # the task's model, built once for the decisions below
    if name == "auto" or (requested == "auto" and name != "serial"):
        task = task if task is not None else build_task(spec.task)
        model = _build_model(task)
    if requested == "auto" and name != "serial" and model is not None:
        shapes = [tuple(p.shape) for p in model.parameters()]
        costs = compile_cache.load_costs(directory).get(compile_cache.signature(shapes, batch, spec.device))
        pays, why = compile_pays(planned_steps, costs)
        mode = "on" if pays else "off"
    if name == "auto" and task is not None:
        name = choose_executor(spec, task, client_config, clients_per_call, mode == "on", planned_steps, model)
    if name == "serial" and requested == "on":
        log.warning("executor.compile=on compiles the batched client step; the serial executor runs uncompiled")
    if name != "serial" and mode == "on":
        compile_cache.use_inductor_cache(directory)
    if hasattr(config, "model_copy"):
        config = config.model_copy(update={"compile": mode})
    executor = EXECUTORS.get(name)(config, spec, task)
    if name != "serial" and requested == "auto":  # after the executor built: a config error stays one line
        log.info(
            "executor: %s the batched client step (%s; --compile %s to override)",
            "compiling" if mode == "on" else "not compiling",
            why,
            "off" if mode == "on" else "on",
        )
    if hasattr(executor, "on_close") and hasattr(executor, "step_count"):
        executor.on_close = _record_costs(directory, spec.device, batch, mode == "on")
    return executor


@EXECUTORS.register("auto", "the fastest of vmap and serial for the workload (one line says which and why)")
def auto(config: Any, spec: WorkerSpec, task: Task | None = None) -> Executor:
    """Registry entry for listing and validation; ``build_executor`` also sees the workload."""
    task = task if task is not None else build_task(spec.task)
    compiled = getattr(config, "compile", "off") == "on"
    return EXECUTORS.get(choose_executor(spec, task, {}, compiled=compiled))(config, spec, task)
