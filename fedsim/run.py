"""Assemble and run one experiment from a validated RunConfig.

``build(config)`` makes the task, population, strategy, executor and engine;
``run_experiment(config)`` runs it and writes the run folder.

Run folder rules: a folder that already holds files is never written into unless
``overwrite`` (and then only if it is a fedsim run folder); a lock (``.lock``, ``flock``)
refuses a second run into the same folder while the first is alive; ``config.yaml`` is the
resolved config (every option as used, plus provenance) with ``output.out`` cleared, so
running it again makes a new folder; ``summary.json`` always says how the run ended
(``status``); ``checkpoint.pt`` (every ``output.checkpoint_every`` updates and on SIGINT/SIGTERM)
lets ``resume_experiment`` continue the run in the same folder (only a checkpoint taken in that
folder, under the same resolved config and data: see ``run_fingerprint``); the final model is
saved as ``model.pt2`` (``torch.export``) and ``model_state.pt`` (a plain state dict).
"""

from __future__ import annotations

import datetime as dt
import errno
import fcntl
import hashlib
import inspect
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from clients import CLIENTS, check_optimizer_options
from clients.personal import bind_client_config
from clients.pgd import PGD
from fedsim.attacks import ByzantineMonitor, plan_byzantine
from fedsim.checkpoint import (
    CHECKPOINT_NAME,
    Checkpointer,
    CheckpointError,
    decode,
    encode,
    load_checkpoint,
    registered_classes,
)
from fedsim.communication import plan_communication
from fedsim.config import MAX_LOCAL_STEPS, ConfigError, RunConfig, load_config
from fedsim.data import PARTITIONERS
from fedsim.engine import Engine
from fedsim.errors import RunFailed
from fedsim.evaluation import Evaluator
from fedsim.executors import WorkerSpec, build_executor, resolve_device
from fedsim.guard import RunGuard
from fedsim.metrics import LogBuffer, RunRecorder, flatten, hparams_of
from fedsim.params import ParamLayout, all_finite
from fedsim.population import Population, build_population
from fedsim.population.heterogeneous import correlates_with_data
from fedsim.privacy import PrivacyAccountant, plan_privacy
from fedsim.registry import UnknownNameError
from fedsim.resources import check_resources
from fedsim.rng import derive_seed
from fedsim.schedulers import build_scheduler
from fedsim.state import ClientStateStore
from fedsim.tasks import Task, TaskSpec, build_task
from strategies import build_strategy
from strategies.fedopt import resolved_options

__all__ = [
    "Experiment",
    "build",
    "run_experiment",
    "task_spec",
    "initial_params",
    "default_out_dir",
    "resolved_config",
    "RunFailed",
    "save_model",
    "exit_code",
    "resume_experiment",
    "snapshot",
    "restore",
    "run_fingerprint",
    "data_fingerprint",
    "check_fingerprint",
]

log = logging.getLogger("fedsim")

NATURAL_SPLIT_TASKS = ("synthetic", "femnist")  # tasks whose data comes already split by client


def task_spec(config: RunConfig) -> TaskSpec:
    partition = config.data.partition
    if partition == "auto":
        partition = "natural" if config.task.name in NATURAL_SPLIT_TASKS else "dirichlet"
    accepted = list(inspect.signature(PARTITIONERS.get(partition)).parameters)[3:]
    data_fields = config.data.model_dump()
    return TaskSpec(
        name=config.task.name,
        num_clients=config.data.num_clients,
        partition=partition,
        partition_params={k: data_fields[k] for k in accepted if k in data_fields},
        test_fraction=config.data.test_fraction,
        seed=config.seed,
        options=config.task.options,
    )


def initial_params(task: Task, seed: int) -> torch.Tensor:
    with torch.random.fork_rng(devices=[]):  # seeded init; the caller's global RNG is left as it was
        torch.manual_seed(derive_seed(seed, "model-init"))
        model = task.build_model()
        return ParamLayout.of(model).flatten(model)


def run_name(config: RunConfig) -> str:
    """What was run, for the folder name: the strategy, or the plugin parts it was run with
    (``fedavg`` with a plugin weighting ``myweight`` is ``myweight``, not ``fedavg``)."""
    from fedsim import registries  # noqa: PLC0415

    parts = (
        ("strategy", config.strategy.name),
        ("weighting", config.strategy.weighting),
        ("server_optimizer", config.strategy.server_optimizer),
        ("client", config.client.algorithm),
    )
    plugins = []
    for kind, name in parts:
        if name is None or name not in registries.get(kind):
            continue
        module = getattr(registries.get(kind).get(name), "__module__", "") or ""
        if module.split(".")[0] not in ("fedsim", "strategies", "clients") and name not in plugins:
            plugins.append(name)
    return "+".join(plugins) if plugins else config.strategy.name


def default_out_dir(config: RunConfig, root: str = "runs") -> Path:
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    base = Path(root) / f"{stamp}-{run_name(config)}"
    path, k = base, 2
    while path.exists():
        path = Path(f"{base}-{k}")
        k += 1
    return path


@dataclass
class Experiment:
    config: RunConfig
    task: Task
    population: Population
    engine: Engine
    scheduler: Any
    executor: Any
    guard: RunGuard

    def run(self) -> dict[str, Any]:
        try:
            return self.engine.run(self.scheduler)
        finally:
            self.executor.close()
            self.engine.client_states.close()  # algos: remove spilled client state


def build(config: RunConfig, task: Task | None = None, force: bool = False) -> Experiment:
    """Everything a run needs; raises ValueError with a one-line message on bad input.

    ``task`` reuses an already built task (it must match ``task_spec(config)``), e.g. to
    compare strategies on the same data without generating it again. Callbacks (e.g. a
    RunRecorder) are appended to ``experiment.engine.callbacks`` afterwards. A run whose
    memory estimate does not fit this machine is refused before the model is allocated
    (fedsim/resources.py), unless ``force``.
    """
    resolve_device(config.executor.device)
    client_config = config.client.model_dump()
    check_optimizer_options(client_config)
    spec = task_spec(config)
    task = task if task is not None else build_task(spec)
    algorithm = CLIENTS.get(config.client.algorithm)()
    check_resources(config, task, algorithm, force=force)
    layout = ParamLayout.of(_fresh_model(task))  # once the memory estimate allows building the model
    client_config = bind_client_config(algorithm, client_config, layout)  # FedPer/FedRep: the head's spans
    params = initial_params(task, config.seed)
    population = build_population(
        config.population, task.data, config.seed, model_bits=32.0 * params.numel(), batch_size=config.client.batch_size
    )
    privacy = plan_privacy(config, population.num_clients)  # None unless privacy.mode is set
    byzantine = plan_byzantine(config, population.num_clients)  # attackers, attack, robust aggregators' f
    for note in byzantine.notes:
        log.info("%s", note)
    strategy = build_strategy(config.strategy, privacy=privacy, seed=config.seed, byzantine=byzantine)
    communication = plan_communication(config, layout, population.num_clients)
    payload = communication.attach(strategy)  # compression after privacy's transforms; bytes known at dispatch
    population.link = communication.link
    scheduler = build_scheduler(config)
    check_rounds_only(strategy, config)
    if not hasattr(algorithm, "train") and any(layout.is_buffer):
        raise ValueError(
            f"client.algorithm '{config.client.algorithm}' needs a model without float buffers "
            f"(BatchNorm running statistics); use GroupNorm/LayerNorm or client.algorithm sgd"
        )
    _check_local_steps(algorithm, client_config, population)
    _check_someone_finishes(config, algorithm, client_config, population)
    worker_spec = WorkerSpec(
        task=spec,
        client=config.client.algorithm,
        device=config.executor.device,
        threads=config.executor.threads,
        client_transforms=strategy.client_transforms,
    )
    mean_samples = max(1, int(population.num_samples.mean())) if len(population.num_samples) else 1
    planned_steps = config.rounds * algorithm.num_steps(client_config, mean_samples)  # for executor.compile=auto
    executor = build_executor(
        config.executor,
        worker_spec,
        task,
        client_config,
        planned_steps,
        _clients_per_call(config, population.num_clients),
    )  # resolves "auto"
    evaluator = Evaluator(
        task,
        config.eval.per_client,
        config.eval.max_clients,
        config.seed,
        algorithm=algorithm,
        client_config=client_config,
        finetune_steps=config.eval.finetune_steps,
        adversarial=None if config.eval.adversarial is None else PGD(**config.eval.adversarial.model_dump()),
    )
    initial_loss = evaluator.evaluate(params)["test_loss"] if config.stop.divergence_factor is not None else None
    guard = RunGuard(config.stop.max_dropout_fraction, config.stop.divergence_factor, task.num_classes, initial_loss)
    engine = Engine(
        strategy=strategy,
        algorithm=algorithm,
        client_config=client_config,
        population=population,
        executor=guard.watch(executor),
        evaluator=evaluator,
        params=params,
        seed=config.seed,
        max_updates=config.rounds,
        max_time=config.scheduler.max_time,
        max_staleness=config.scheduler.max_staleness,
        eval_every=config.eval.every,
        eval_every_time=config.eval.every_time,
        target_accuracy=config.eval.target_accuracy,
        callbacks=[guard]
        + ([PrivacyAccountant(privacy)] if privacy is not None else [])
        + ([ByzantineMonitor(byzantine)] if byzantine.attackers else []),
        payload=payload,
    )
    limit = config.client_state.memory_limit_mb  # algos: SCAFFOLD/FedDyn/FedSpeed state spills to disk past this
    engine.client_states = ClientStateStore(
        None if limit is None else int(limit * 2**20), config.client_state.spill_dir
    )
    for note in privacy.notes if privacy is not None else ():  # once the run is valid: bad input stays one line
        log.info("%s", note)
    return Experiment(config, task, population, engine, scheduler, executor, guard)


def _fresh_model(task: Task) -> Any:
    """A model only to read its layout: built without touching the caller's global RNG."""
    with torch.random.fork_rng(devices=[]):
        return task.build_model()


def check_rounds_only(strategy: Any, config: RunConfig) -> None:
    """Refuse weightings defined only for synchronous rounds under an asynchronous scheduler."""
    if config.scheduler.name != "sync" and getattr(strategy.aggregator, "requires_rounds", False):
        raise ValueError(
            f"strategy '{config.strategy.name}' (weighting '{config.strategy.weighting or 'fedau'}') counts "
            f"participation in synchronous rounds and is not defined for scheduler '{config.scheduler.name}'; "
            "use scheduler sync, or weighting mifa / fedvarp / uniform"
        )


def _clients_per_call(config: RunConfig, num_clients: int) -> float:
    """About how many jobs the scheduler hands the executor at once (for ``executor.name: auto``)."""
    scheduler = config.scheduler
    if scheduler.name == "buffered":
        return float(scheduler.buffer_size)
    if scheduler.name == "periodic":
        return float(scheduler.concurrency)
    population = config.population
    per_round = population.mean_prob * num_clients if population.mean_prob else population.clients_per_round
    return float(min(per_round, num_clients)) * (1.0 + scheduler.over_selection)


def _check_someone_finishes(
    config: RunConfig, algorithm: Any, client_config: dict[str, Any], population: Population
) -> None:
    """Refuse a round deadline or a time limit shorter than the fastest job any client could run.

    The fastest job is a lower bound: the fewest local steps (smallest client, or
    ``scheduler.anarchic.min_steps``) at each client's step time, plus communication.
    """
    limits = [
        (name, value)
        for name, value in (
            ("round_deadline", config.round_deadline),
            ("scheduler.max_time", config.scheduler.max_time),
        )
        if value is not None
    ]
    if not limits or population.num_clients == 0:
        return
    sizes = population.num_samples[population.num_samples > 0]
    if config.scheduler.arrivals == "anarchic":
        steps = config.scheduler.anarchic.min_steps
    else:
        steps = algorithm.num_steps(client_config, int(sizes.min()) if len(sizes) else 1)
    ids = np.arange(population.num_clients, dtype=np.int64)
    fastest = float(population.durations(ids, np.full(len(ids), steps)).min())
    for name, value in limits:
        if value < fastest:
            raise ValueError(
                f"{name} ({value:g} virtual s) is shorter than the fastest job any client can run "
                f"({fastest:.4g} s: {steps} local steps, step time and communication); no client "
                f"could ever finish (raise {name} or lower population.step_time)"
            )


def _check_local_steps(algorithm: Any, client_config: dict[str, Any], population: Population) -> None:
    """Refuse jobs so long that their batch schedule alone would exhaust memory."""
    largest = int(population.num_samples.max()) if len(population.num_samples) else 0
    steps = algorithm.num_steps(client_config, max(largest, 1))
    if steps > MAX_LOCAL_STEPS:
        field = "client.local_steps" if client_config.get("local_steps") else "client.local_epochs"
        raise ValueError(
            f"{field}: the largest client ({largest} samples) would take {steps:,} local steps per job; "
            f"at most {MAX_LOCAL_STEPS:,} (lower {field} or raise client.batch_size)"
        )


# ----------------------------------------------------------------------------- checkpoints

GUARD_STATE = ("jobs", "failed", "failed_since_update", "first_failure")
HISTORY_FILES = ("metrics", "rounds")  # <name>.jsonl: their lines up to a checkpoint belong to it


def snapshot(
    experiment: Experiment,
    recorder: RunRecorder | None = None,
    fingerprint: dict[str, Any] | None = None,
    history: _History | None = None,
) -> dict[str, Any]:
    """The run's state between two events, as plain containers and tensors (see fedsim.checkpoint).

    The population keeps no state (its randomness is counter-based; the Markov participation
    chain is a cache it replays), nor do the evaluator and the executor. ``fingerprint``
    (:func:`run_fingerprint`) and ``history`` (sha256 of the metrics/rounds lines written so
    far) let ``--resume`` refuse a checkpoint that does not belong to the run.
    """
    guard = experiment.guard
    lines = recorder.state_dict() if recorder is not None else None
    return {
        "engine": encode(experiment.engine.state_dict()),
        "scheduler": encode(_parts_state(experiment.scheduler)),
        "guard": encode({name: getattr(guard, name) for name in GUARD_STATE}),
        "recorder": {**lines, **history.digests()} if lines is not None and history is not None else lines,
        "fingerprint": fingerprint,
    }


def restore(experiment: Experiment, checkpoint: dict[str, Any], spill_dir: str | None = None) -> None:
    """Put a freshly built experiment (same config) in the state ``snapshot`` saved.

    Raises CheckpointError (one line) when the saved state does not have the shape this
    run's engine, scheduler and guard have; nothing is changed then.
    """
    engine = experiment.engine
    state = decode(checkpoint.get("engine"), "engine", spill_dir=spill_dir)
    _check_keys(state, engine.state_dict(), "engine")
    _check_keys(state["run_state"], vars(engine.run_state), "engine.run_state")
    server = state["server_state"]
    if type(server) is not type(engine.state):
        raise CheckpointError(
            f"engine.server_state: a {type(server).__name__}, this run's strategy keeps a {type(engine.state).__name__}"
        )
    ours = engine.state.params
    if (
        not isinstance(server.params, torch.Tensor)
        or server.params.shape != ours.shape
        or server.params.dtype != ours.dtype
    ):
        theirs = tuple(server.params.shape) if isinstance(server.params, torch.Tensor) else type(server.params).__name__
        raise CheckpointError(
            f"engine.server_state.params: the checkpoint's model has shape {theirs}, this run's "
            f"model {tuple(ours.shape)} (was the model changed?)"
        )
    scheduler = decode(checkpoint.get("scheduler"), "scheduler")
    _check_parts(experiment.scheduler, scheduler, "scheduler")
    guard = decode(checkpoint.get("guard"), "guard")
    _check_keys(guard, dict.fromkeys(GUARD_STATE), "guard")
    engine.load_state_dict(state)
    _load_parts(experiment.scheduler, scheduler)
    for name, value in guard.items():
        setattr(experiment.guard, name, value)


def _check_keys(state: Any, expected: Any, where: str) -> None:
    if type(state) is not dict or set(state) != set(expected):
        got = sorted(map(str, state)) if isinstance(state, dict) else type(state).__name__
        raise CheckpointError(f"{where}: expected the entries {', '.join(map(str, expected))}, got {got}")


def _is_part(value: Any) -> bool:
    """A component object of the scheduler (e.g. its arrival process): restored in place, never rebuilt."""
    return (
        hasattr(value, "__dict__")
        and not isinstance(value, type)
        and type(value) not in registered_classes().values()
        and type(value).__module__.split(".")[0] in ("fedsim", "strategies", "clients")
    )


def _parts_state(obj: Any) -> dict[str, Any]:
    """``obj``'s attributes; component objects (the scheduler's arrival process) as nested ``_parts_state``."""
    attrs = {name: value for name, value in vars(obj).items() if not _is_part(value)}
    parts = {name: _parts_state(value) for name, value in vars(obj).items() if _is_part(value)}
    return {"attrs": attrs, "parts": parts}


def _check_parts(obj: Any, state: Any, where: str) -> None:
    expected = _parts_state(obj)
    _check_keys(state, expected, where)
    _check_keys(state["attrs"], expected["attrs"], f"{where} ({type(obj).__name__})")
    _check_keys(state["parts"], expected["parts"], f"{where} ({type(obj).__name__})")
    for name, part in state["parts"].items():
        _check_parts(getattr(obj, name), part, f"{where}.{name}")


def _load_parts(obj: Any, state: dict[str, Any]) -> None:
    for name, value in state["attrs"].items():
        setattr(obj, name, value)
    for name, part in state["parts"].items():
        _load_parts(getattr(obj, name), part)


def run_fingerprint(config: RunConfig, experiment: Experiment) -> dict[str, Any]:
    """What a checkpoint must match to be resumed: the resolved config (every key but output.*
    and provenance, flattened) and the task's data (client split sizes, labels)."""
    values = _resolved_values(config, experiment)
    values.pop("output", None)
    settings = json.loads(json.dumps(flatten(values)))  # tuples -> lists, as config.yaml reads back
    return {"config": settings, "data": data_fingerprint(experiment.task.data)}


def data_fingerprint(data: Any) -> dict[str, Any]:
    """Sizes of the clients' train/test splits and a sha256 over them and the labels (features are not read)."""
    digest = hashlib.sha256()
    train = np.asarray(data.num_samples, dtype=np.int64)
    digest.update(train.tobytes())
    info: dict[str, Any] = {
        "num_clients": int(data.num_clients),
        "num_classes": int(data.num_classes),
        "train_samples": int(train.sum()),
    }
    if hasattr(data, "test_offsets"):  # in-memory data: test split sizes and the labels too
        test = np.diff(np.asarray(data.test_offsets, dtype=np.int64))
        digest.update(test.tobytes())
        info["test_samples"] = int(test.sum())
        for name in ("y_train", "y_test"):
            labels = getattr(data, name, None)
            if isinstance(labels, torch.Tensor):
                digest.update(labels.detach().to("cpu", torch.int64).numpy().tobytes())
    info["partition_sha256"] = digest.hexdigest()
    return info


def check_fingerprint(saved: Any, current: dict[str, Any], path: Path) -> None:
    """Refuse (one line, naming the first differing key) a checkpoint taken under another config or other data."""
    if type(saved) is not dict or type(saved.get("config")) is not dict or type(saved.get("data")) is not dict:
        raise CheckpointError(f"{path}: holds no run fingerprint")
    for part, what in (
        ("config", "config.yaml changed since the checkpoint"),
        ("data", "the task's data differs from the checkpoint's"),
    ):
        old, new = saved[part], current[part]
        for key in [*old, *(k for k in new if k not in old)]:
            before, now = old.get(key, "(not set)"), new.get(key, "(not set)")
            if json.dumps(before, sort_keys=True, default=repr) != json.dumps(now, sort_keys=True, default=repr):
                name = key if part == "config" else f"data.{key}"
                raise CheckpointError(f"{what} ({path.name}): {name} was {_short(before)}, now {_short(now)}")


def _short(value: Any) -> str:
    text = json.dumps(value, default=repr) if not isinstance(value, str) else value
    return text if len(text) <= 80 else text[:77] + "..."


class _History:
    """sha256 of the lines of metrics.jsonl / rounds.jsonl written so far, read incrementally at each checkpoint."""

    def __init__(self, out: Path, prefixes: dict[str, bytes] | None = None):
        self.paths = {name: out / f"{name}.jsonl" for name in HISTORY_FILES}
        prefixes = prefixes or {}
        self.hashes = {name: hashlib.sha256(prefixes.get(name, b"")) for name in HISTORY_FILES}
        self.offsets = {name: len(prefixes.get(name, b"")) for name in HISTORY_FILES}

    def digests(self) -> dict[str, str]:
        """Call after the recorder flushed: the files then hold exactly the lines it counts."""
        out = {}
        for name, path in self.paths.items():
            with open(path, "rb") as f:
                f.seek(self.offsets[name])
                new = f.read()
            self.hashes[name].update(new)
            self.offsets[name] += len(new)
            out[f"{name}_sha256"] = self.hashes[name].hexdigest()
        return out

    @classmethod
    def verified(cls, out: Path, recorder_state: Any, path: Path) -> _History:
        """The history the checkpoint recorded, checked against the run folder's files (which are not changed)."""
        keys = {f"{name}_{what}" for name in HISTORY_FILES for what in ("lines", "sha256")}
        if type(recorder_state) is not dict or set(recorder_state) != keys:
            raise CheckpointError(f"{path}: holds no record of the run's metrics lines")
        prefixes = {}
        for name in HISTORY_FILES:
            keep, expected = recorder_state[f"{name}_lines"], recorder_state[f"{name}_sha256"]
            if type(keep) is not int or keep < 0 or type(expected) is not str:
                raise CheckpointError(f"{path}: a damaged record of {name}.jsonl")
            file = out / f"{name}.jsonl"
            lines = file.read_bytes().splitlines(keepends=True) if file.is_file() else []
            prefix = b"".join(lines[:keep])
            if (
                len(lines) < keep
                or (keep and not lines[keep - 1].endswith(b"\n"))
                or hashlib.sha256(prefix).hexdigest() != expected
            ):
                raise CheckpointError(
                    f"{path} was not taken in this run folder: {file.name} does not hold the "
                    f"{keep} lines the checkpoint recorded"
                )
            prefixes[name] = prefix
        return cls(out, prefixes)


# ----------------------------------------------------------------------------- the run folder

EXIT_CODES = {"completed": 0, "diverged": 1, "failed": 1, "interrupted": 130}
RUN_FOLDER_MARKERS = ("config.yaml", "summary.json", "metrics.jsonl")  # a folder holding one is a fedsim run


def resolved_config(config: RunConfig, experiment: Experiment, argv: list[str] | None = None) -> dict[str, Any]:
    """The config as the run actually uses it, ready to run again (``output.out`` cleared: a new folder).

    Strategy: both part names and every option they take (the parts' own defaults filled in);
    data.partition: the partition actually used; task: every option (defaults filled in);
    provenance: fedsim's version, the git commit if fedsim runs from a checkout, the command line.
    """
    values = _resolved_values(config, experiment)
    values["output"]["out"] = None
    values["provenance"] = _provenance(argv)
    values["provenance"]["pipeline"] = experiment.engine.strategy.pipeline()  # the update pipeline as run
    return values


def _resolved_values(config: RunConfig, experiment: Experiment) -> dict[str, Any]:
    """``resolved_config`` without provenance (and with ``output.out`` as given)."""
    values = config.to_dict()
    values.pop("provenance", None)
    values["strategy"] = resolved_options(config.strategy)
    values["data"]["partition"] = task_spec(config).partition
    values["population"]["correlate_with_data"] = correlates_with_data(config.population, experiment.task.data)
    values["task"] = {"name": config.task.name, **experiment.task.options}
    return values


def _provenance(argv: list[str] | None) -> dict[str, Any]:
    from importlib.metadata import PackageNotFoundError, version  # noqa: PLC0415

    try:
        fedsim_version = version("fedsim-lab")
    except PackageNotFoundError:
        fedsim_version = "unknown"
    info: dict[str, Any] = {"fedsim_version": fedsim_version, "git_commit": _git_commit()}
    info["command"] = " ".join(argv if argv is not None else [Path(sys.executable).name, *sys.argv])
    return info


def _git_commit() -> str | None:
    """The commit of the checkout fedsim runs from (+ ``-dirty`` if it has changes), or None."""
    root = Path(__file__).resolve().parents[1]
    if not (root / ".git").exists():
        return None
    try:
        commit = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ("-dirty" if dirty else "")


def _check_out_dir(out: Path, overwrite: bool) -> None:
    """Refuse a file, or a folder that already holds something, as the run folder (exit 2)."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"output.out: {out} exists and is not a folder")
    contents = [p for p in out.iterdir() if p.name != ".lock"] if out.is_dir() else []
    if not contents:
        return
    if not overwrite:
        resumable = (out / CHECKPOINT_NAME).is_file() and not (out / "summary.json").is_file()
        raise ConfigError(
            f"output.out: {out} already holds a run; pick another --out"
            + (
                f", pass --overwrite to replace it, or --resume {out} to continue it"
                if resumable
                else " or pass --overwrite to replace it"
            )
        )
    if not any((out / marker).exists() for marker in RUN_FOLDER_MARKERS):
        raise ConfigError(
            f"output.out: {out} is not empty and is not a fedsim run folder; --overwrite refuses to delete it"
        )


class _FolderLock:
    """An exclusive ``flock`` on ``<out>/.lock``, held for the run; the OS drops it if the process dies."""

    def __init__(self, out: Path):
        self.path = out / ".lock"
        self._fd: int | None = None

    def acquire(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "?"
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise ConfigError(
                    f"output.out: another fedsim run (pid {holder}) is writing to {self.path.parent}"
                ) from None
            raise
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _prepare_out_dir(out: Path, overwrite: bool) -> _FolderLock:
    """Create ``out``, lock it, and check (again, under the lock) that it is free."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        lock = _FolderLock(out)
        lock.acquire()
    except ConfigError:
        raise
    except OSError as exc:
        raise ConfigError(f"output.out: cannot write to {out} ({exc.strerror or exc})") from None
    try:
        _check_out_dir(out, overwrite)
        for entry in out.iterdir():
            if entry.name != ".lock":
                shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
    except BaseException:
        lock.release()
        raise
    return lock


class _StopOnSignal:
    """SIGINT/SIGTERM: the first asks the engine to stop after the current step; a second stops now."""

    def __init__(self, engine: Engine, guard: RunGuard):
        self.engine = engine
        self.guard = guard
        self.signal_name: str | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _StopOnSignal:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum: int, frame: Any) -> None:
        name = signal.Signals(signum).name
        if self.signal_name is not None:
            raise KeyboardInterrupt(name)
        self.signal_name = self.guard.signal = name
        log.warning("%s: stopping after the current step (send it again to stop at once)", name)
        self.guard.stop(self.engine, "interrupted", f"stopped by {name}")


def save_model(task: Task, params: torch.Tensor, out: Path) -> list[Path]:
    """Write the model as ``model.pt2`` (torch.export; loads without fedsim) and ``model_state.pt``.

    ``torch.export.load(out / "model.pt2").module()`` is a ready ``nn.Module`` (batch size
    free); ``model_state.pt`` is the state dict for ``task.build_model()``, readable with
    ``torch.load(..., weights_only=True)``.
    """
    with torch.random.fork_rng(devices=[]):
        model = task.build_model()
    layout = ParamLayout.of(model)
    state = model.state_dict()
    for name, value in layout.unflatten(params.detach().to("cpu", torch.float32)).items():
        state[name] = value.to(state[name].dtype).clone()
    model.load_state_dict(state)
    model.eval()
    written = [out / "model_state.pt"]
    torch.save(model.state_dict(), written[0])
    try:
        example = torch.zeros(2, *task.input_shape)
        batch = torch.export.Dim("batch", min=1)
        program = torch.export.export(model, (example,), dynamic_shapes=({0: batch},))
        torch.export.save(program, out / "model.pt2")
        written.append(out / "model.pt2")
    except Exception as exc:  # noqa: BLE001  (a model torch.export cannot trace still has its state dict)
        log.warning(
            "model.pt2 not written (torch.export failed: %s); model_state.pt holds the weights",
            str(exc).splitlines()[0] if str(exc) else type(exc).__name__,
        )
    return written


def run_experiment(
    config: RunConfig,
    out_dir: str | Path | None = None,
    task: Task | None = None,
    overwrite: bool = False,
    argv: list[str] | None = None,
    force: bool = False,
) -> tuple[dict[str, Any], Path]:
    """Build (bad input -> ConfigError before anything is written), then run into a run folder.

    ``force`` runs even when the memory estimate says the run does not fit (``--force``).
    Returns ``(summary, out)``; ``summary["status"]`` says how the run ended (completed,
    diverged, failed, interrupted). A crash (e.g. a bug in client code) writes summary.json
    with status failed and the traceback into log.txt, then raises :class:`RunFailed`.
    """
    out = Path(out_dir or config.output.out or default_out_dir(config)).expanduser()
    _check_out_dir(out, overwrite)  # early, before building: fail fast on a taken folder
    early_logs = LogBuffer()  # notices while building (executor choice, Ray start-up) go to log.txt too
    try:
        experiment = build(config, task=task, force=force)
    except (ValueError, UnknownNameError, FileNotFoundError) as exc:
        raise ConfigError(str(exc).splitlines()[0]) from exc
    except RuntimeError as exc:
        if "requested but not available" not in str(exc):
            raise
        raise ConfigError(str(exc)) from exc
    finally:
        early_logs.close()
    try:
        lock = _prepare_out_dir(out, overwrite)
    except BaseException:
        experiment.executor.close()
        raise
    try:
        return _run_in_folder(config, experiment, out, argv, early_logs.records)
    finally:
        lock.release()


def _run_in_folder(
    config: RunConfig,
    experiment: Experiment,
    out: Path,
    argv: list[str] | None,
    early_logs: list[Any],
    checkpoint: dict[str, Any] | None = None,
    history: _History | None = None,
) -> tuple[dict[str, Any], Path]:
    """Run into ``out``; ``checkpoint`` (already restored, with its verified ``history``) continues a run there."""
    engine, guard = experiment.engine, experiment.guard
    try:
        fingerprint = run_fingerprint(config, experiment)
        if checkpoint is None:
            (out / "config.yaml").write_text(yaml.safe_dump(resolved_config(config, experiment, argv), sort_keys=False))
        else:
            (out / "summary.json").unlink(missing_ok=True)  # the run is running again
        recorder = RunRecorder(
            out,
            config.rounds,
            config.strategy.name,
            config.output.progress,
            config.output.tensorboard,
            hparams=hparams_of(config.to_dict()),
            early_logs=early_logs,
            resume=checkpoint["recorder"] if checkpoint is not None else None,
        )
        history = history if history is not None else _History(out)
    except BaseException:
        experiment.executor.close()
        raise
    # the checkpointer goes first: on an interrupted run's end it saves before the recorder closes its files
    engine.callbacks.append(
        Checkpointer(
            out / CHECKPOINT_NAME,
            config.output.checkpoint_every,
            lambda: snapshot(experiment, recorder, fingerprint, history),
            every_time=config.output.checkpoint_every_time,
            every_wall=config.output.checkpoint_every_wall,
        )
    )
    engine.callbacks.append(recorder)
    if checkpoint is not None:
        log.info(
            "resumed at update %d (virtual time %.1f s) from %s",
            engine.state.version,
            engine.now,
            out / CHECKPOINT_NAME,
        )
    if config.eval.every is not None and config.rounds < config.eval.every:
        log.warning(
            "rounds=%d is smaller than eval.every=%d: the model is evaluated only before the first and "
            "after the last update (set eval.every to see a curve)",
            config.rounds,
            config.eval.every,
        )
    probs = experiment.population.participation.probabilities
    if probs is not None:
        log.info(
            "participation: %s, mean probability %.3g (min %.3g, max %.3g)",
            config.population.participation,
            probs.mean(),
            probs.min(),
            probs.max(),
        )
    summary: dict[str, Any] | None = None
    crash: BaseException | None = None
    trace = ""
    with _StopOnSignal(engine, guard) as signals:
        try:
            if checkpoint is None:
                recorder.on_start(engine)
            summary = experiment.run()
        except KeyboardInterrupt:  # a second signal (or Ctrl-C outside the main thread): stop at once
            guard.signal = guard.signal or "SIGINT"
            guard.stop(engine, "interrupted", f"stopped by {signals.signal_name or 'SIGINT'}")
        except Exception as exc:  # noqa: BLE001  (recorded as status failed, then re-raised as RunFailed)
            crash, trace = exc, traceback.format_exc()
            guard.stop(engine, "failed", f"crashed: {type(exc).__name__}: {_first_line(exc)}")
    if summary is None:  # the engine did not reach its end: close the run here
        summary = engine.summary()
        guard.on_end(engine, summary)
        recorder.on_end(engine, summary)
    recorder.close()
    if trace and engine.status == "interrupted":  # e.g. Ray workers hit by the same Ctrl-C: part of the stop
        _append_log(out, f"after the interrupting signal, the run raised:\n{trace}")
    if engine.status == "failed":
        first = guard.first_failure
        if trace:
            _append_log(out, f"the run crashed at update {engine.state.version}:\n{trace}")
        elif first is not None and first.traceback:
            _append_log(out, f"first failure: client {first.client_id} at version {first.version}:\n{first.traceback}")
    if engine.status in ("completed", "interrupted") and all_finite(engine.state.params):
        save_model(experiment.task, engine.state.params, out)
    if crash is not None and engine.status != "interrupted":
        raise RunFailed(f"{type(crash).__name__}: {_first_line(crash)} (traceback in {out / 'log.txt'})") from crash
    return summary, out


def resume_experiment(
    run_dir: str | Path, overrides: list[str] | None = None, argv: list[str] | None = None
) -> tuple[dict[str, Any], Path]:
    """Continue the run in ``run_dir`` from its ``checkpoint.pt``, through the same ``build()`` as a fresh run.

    The config is ``run_dir/config.yaml`` (``overrides`` may change only ``output.*``);
    metrics.jsonl and rounds.jsonl keep the lines written up to the checkpoint and go on
    after them, so the finished files match an uninterrupted run's (wall times aside).
    """
    out = Path(run_dir).expanduser()
    if not (out / "config.yaml").is_file():
        raise ConfigError(f"--resume: {out} is not a fedsim run folder (no config.yaml)")
    for text in overrides or []:
        if not text.startswith("output."):
            raise ConfigError(
                f"--resume: the config comes from {out / 'config.yaml'}; only output.* may change "
                f"(got {text.split('=')[0]})"
            )
    config = load_config(out / "config.yaml", [*(overrides or []), f"output.out={out}"])
    if (out / "summary.json").is_file() and _read_status(out / "summary.json") == "completed":
        raise ConfigError(f"--resume: the run in {out} already completed (summary.json)")
    lock = _FolderLock(out)
    try:
        lock.acquire()
    except OSError as exc:
        raise ConfigError(f"--resume: cannot write to {out} ({exc.strerror or exc})") from None
    try:
        early_logs = LogBuffer()
        path = out / CHECKPOINT_NAME
        try:
            checkpoint = load_checkpoint(path)  # the checksum, before anything else is read
            experiment = build(config)
        except CheckpointError as exc:
            raise ConfigError(f"--resume: {exc}") from None
        except (ValueError, UnknownNameError, FileNotFoundError) as exc:
            raise ConfigError(str(exc).splitlines()[0]) from exc
        finally:
            early_logs.close()
        try:
            # nothing in the run folder changes until the checkpoint is known to belong to it
            check_fingerprint(checkpoint.get("fingerprint"), run_fingerprint(config, experiment), path)
            history = _History.verified(out, checkpoint.get("recorder"), path)
            restore(experiment, checkpoint, spill_dir=config.client_state.spill_dir)
        except BaseException as exc:
            experiment.executor.close()
            if isinstance(exc, CheckpointError):
                text = str(exc) if str(path) in str(exc) or path.name in str(exc) else f"{path}: {exc}"
                raise ConfigError(f"--resume: {text}") from None
            raise
        return _run_in_folder(config, experiment, out, argv, early_logs.records, checkpoint=checkpoint, history=history)
    finally:
        lock.release()


def _read_status(path: Path) -> str | None:
    try:
        return json.loads(path.read_text()).get("status")
    except (OSError, ValueError, AttributeError):
        return None


def exit_code(summary: dict[str, Any]) -> int:
    """0 completed, 1 diverged or failed, 128 + signal number when interrupted (130 SIGINT, 143 SIGTERM)."""
    status = summary.get("status", "completed")
    if status == "interrupted":
        name = summary.get("signal") or "SIGINT"
        return 128 + int(getattr(signal, name, signal.SIGINT))
    return EXIT_CODES.get(status, 1)


def _append_log(out: Path, text: str) -> None:
    stamp = dt.datetime.now().strftime("%Y-%m-%d %H:%M:%S,%f")[:-3]
    with open(out / "log.txt", "a") as f:
        f.write(f"{stamp} ERROR {text.rstrip()}\n")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
