"""``executor.name: auto`` (the default) and ``executor.compile: auto``: the fastest path for
the workload, from what the run knows before it starts, with one log line saying what was
chosen and why.

What it knows: whether the client algorithm, its optimizer and the model can be batched at all
(:func:`fedsim.executors.vmap.why_not_batched`), the model's size, the device, the clients per
executor call the scheduler will produce (a sync round's participants, a buffer's K...) and the
batched steps the run plans (server updates x local steps of a mean client).

The rules are the crossovers measured by ``experiments/bench/vmap_vs_serial.py`` (README,
benchmarks) on one CPU thread:

- **compile** (``auto``): ``torch.compile`` of the batched step costs 3-15 s on CPU and saves
  about 1 ms per step on small models, so runs planning at least ``COMPILE_PAYS_AFTER`` batched
  steps compile and shorter ones do not.
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

from fedsim.executors.base import EXECUTORS, Executor
from fedsim.executors.worker import WorkerSpec
from fedsim.tasks import Task, build_task

__all__ = [
    "build_executor", "choose_executor", "resolve_compile", "why_not_vmap", "why_serial", "vmap_pays",
    "COMPILE_PAYS_AFTER", "COMPILED_MAX_STACK", "EAGER_MIN_CLIENTS", "EAGER_MAX_PARAMS",
]  # fmt: skip

log = logging.getLogger("fedsim")

COMPILE_PAYS_AFTER = 10_000  # planned batched steps from which compile=auto compiles
COMPILED_MAX_STACK = 1_000_000  # padded stack x parameters up to which the compiled batched step wins
EAGER_MIN_CLIENTS = 4  # clients per call from which the uncompiled batched step wins ...
EAGER_MAX_PARAMS = 50_000  # ... for models up to this many parameters


def why_not_vmap(spec: WorkerSpec, task: Task, client_config: Mapping[str, Any]) -> str | None:
    """Why these clients cannot take the vmap executor's batched path (None: they can)."""
    from fedsim.executors import vmap  # noqa: PLC0415

    return vmap.why_not_batched(spec, task, client_config)


def resolve_compile(mode: str, planned_steps: int | None) -> str:
    """ "on" or "off" for ``executor.compile`` (``auto`` against the planned batched steps)."""
    if mode != "auto":
        return mode
    return "on" if planned_steps is not None and planned_steps >= COMPILE_PAYS_AFTER else "off"


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
) -> str | None:
    """Why serial is the better path for these jobs (None: vmap), from the capability check and
    the measured crossovers. ``clients_per_call`` None: unknown, judged as if calls were large."""
    reason = why_not_vmap(spec, task, client_config)
    if reason is not None:
        return f"vmap cannot batch {reason}"
    model = task.build_model()
    num_params = sum(p.numel() for p in model.parameters())
    convolutions = any(isinstance(m, nn.modules.conv._ConvNd) for m in model.modules())
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
) -> str:
    """ "vmap" or "serial" for these clients, with one log line saying which and why."""
    reason = why_serial(spec, task, client_config, clients_per_call, compiled)
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


def build_executor(
    config: Any,
    spec: WorkerSpec,
    task: Task | None,
    client_config: Mapping[str, Any],
    planned_steps: int | None = None,
    clients_per_call: float | None = None,
) -> Executor:
    """The executor ``config.name`` names, resolving ``auto`` (executor and compile) first.

    ``planned_steps``: server updates x local steps of a mean client (for ``compile: auto``);
    ``clients_per_call``: the jobs the scheduler hands the executor at once (for ``name: auto``).
    """
    name = config.name
    requested = getattr(config, "compile", "off")
    mode = resolve_compile(requested, planned_steps)
    if name == "auto":
        task = task if task is not None else build_task(spec.task)
        name = choose_executor(spec, task, client_config, clients_per_call, compiled=mode == "on")
    if name == "serial" and requested == "on":
        log.warning("executor.compile=on compiles the batched client step; the serial executor runs uncompiled")
    if name != "serial" and requested == "auto" and mode == "on":
        log.info(
            "executor: compiling the batched client step (~%d steps planned >= %d; --compile off to skip)",
            planned_steps,
            COMPILE_PAYS_AFTER,
        )
    if hasattr(config, "model_copy"):
        config = config.model_copy(update={"compile": mode})
    return EXECUTORS.get(name)(config, spec, task)


@EXECUTORS.register("auto", "the fastest of vmap and serial for the workload (one line says which and why)")
def auto(config: Any, spec: WorkerSpec, task: Task | None = None) -> Executor:
    """Registry entry for listing and validation; ``build_executor`` also sees the workload."""
    task = task if task is not None else build_task(spec.task)
    compiled = getattr(config, "compile", "off") == "on"
    return EXECUTORS.get(choose_executor(spec, task, {}, compiled=compiled))(config, spec, task)
