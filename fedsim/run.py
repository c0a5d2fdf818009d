"""Assemble and run one experiment from a validated RunConfig.

``build(config)`` makes the task, population, strategy, executor and engine;
``run_experiment(config)`` runs it and writes the run folder.
"""

from __future__ import annotations

import datetime as dt
import inspect
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

from clients import CLIENTS, check_optimizer_options
from fedsim.config import ConfigError, RunConfig
from fedsim.data import PARTITIONERS
from fedsim.engine import Engine
from fedsim.evaluation import Evaluator
from fedsim.executors import WorkerSpec, build_executor, resolve_device
from fedsim.metrics import LogBuffer, RunRecorder, hparams_of
from fedsim.params import ParamLayout
from fedsim.population import Population, build_population
from fedsim.registry import UnknownNameError
from fedsim.rng import derive_seed
from fedsim.schedulers import build_scheduler
from fedsim.state import ClientStateStore
from fedsim.tasks import Task, TaskSpec, build_task
from strategies import build_strategy

__all__ = ["Experiment", "build", "run_experiment", "task_spec", "initial_params", "default_out_dir"]

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
    torch.manual_seed(derive_seed(seed, "model-init"))
    model = task.build_model()
    return ParamLayout.of(model).flatten(model)


def default_out_dir(config: RunConfig, root: str = "runs") -> Path:
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    base = Path(root) / f"{stamp}-{config.strategy.name}"
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

    def run(self) -> dict[str, Any]:
        try:
            return self.engine.run(self.scheduler)
        finally:
            self.executor.close()
            self.engine.client_states.close()  # algos: remove spilled client state


def build(config: RunConfig, task: Task | None = None) -> Experiment:
    """Everything a run needs; raises ValueError with a one-line message on bad input.

    ``task`` reuses an already built task (it must match ``task_spec(config)``), e.g. to
    compare strategies on the same data without generating it again. Callbacks (e.g. a
    RunRecorder) are appended to ``experiment.engine.callbacks`` afterwards.
    """
    resolve_device(config.executor.device)
    client_config = config.client.model_dump()
    check_optimizer_options(client_config)
    spec = task_spec(config)
    task = task if task is not None else build_task(spec)
    params = initial_params(task, config.seed)
    population = build_population(config.population, task.data, config.seed,
                                  model_bits=32.0 * params.numel(), batch_size=config.client.batch_size)
    strategy = build_strategy(config.strategy)
    scheduler = build_scheduler(config)
    check_rounds_only(strategy, config)
    algorithm = CLIENTS.get(config.client.algorithm)()
    if not hasattr(algorithm, "train") and any(ParamLayout.of(task.build_model()).is_buffer):
        raise ValueError(f"client.algorithm '{config.client.algorithm}' needs a model without float buffers "
                         f"(BatchNorm running statistics); use GroupNorm/LayerNorm or client.algorithm sgd")
    worker_spec = WorkerSpec(task=spec, client=config.client.algorithm, device=config.executor.device, threads=config.executor.threads)
    executor = build_executor(config.executor, worker_spec, task, client_config)  # resolves "auto"
    evaluator = Evaluator(task, config.eval.per_client, config.eval.max_clients, config.seed)
    engine = Engine(
        strategy=strategy,
        algorithm=algorithm,
        client_config=client_config,
        population=population,
        executor=executor,
        evaluator=evaluator,
        params=params,
        seed=config.seed,
        max_updates=config.rounds,
        max_time=config.scheduler.max_time,
        max_staleness=config.scheduler.max_staleness,
        eval_every=config.eval.every,
        eval_every_time=config.eval.every_time,
        target_accuracy=config.eval.target_accuracy,
    )
    limit = config.client_state.memory_limit_mb  # algos: SCAFFOLD/FedDyn/FedSpeed state spills to disk past this
    engine.client_states = ClientStateStore(None if limit is None else int(limit * 2**20), config.client_state.spill_dir)
    return Experiment(config, task, population, engine, scheduler, executor)


def check_rounds_only(strategy: Any, config: RunConfig) -> None:
    """Refuse weightings defined only for synchronous rounds under an asynchronous scheduler."""
    if config.scheduler.name != "sync" and getattr(strategy.aggregator, "requires_rounds", False):
        raise ValueError(
            f"strategy '{config.strategy.name}' (weighting '{config.strategy.weighting or 'fedau'}') counts "
            f"participation in synchronous rounds and is not defined for scheduler '{config.scheduler.name}'; "
            "use scheduler sync, or weighting mifa / fedvarp / uniform"
        )


def run_experiment(config: RunConfig, out_dir: str | Path | None = None, task: Task | None = None) -> tuple[dict[str, Any], Path]:
    """Build (bad input -> ConfigError before anything is written), then run into a run folder."""
    early_logs = LogBuffer()  # notices while building (executor choice, Ray start-up) go to log.txt too
    try:
        experiment = build(config, task=task)
    except (ValueError, UnknownNameError, FileNotFoundError) as exc:
        raise ConfigError(str(exc).splitlines()[0]) from exc
    except RuntimeError as exc:
        if "requested but not available" not in str(exc):
            raise
        raise ConfigError(str(exc)) from exc
    finally:
        early_logs.close()
    out = Path(out_dir or config.output.out or default_out_dir(config))
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
    recorder = RunRecorder(out, config.rounds, config.strategy.name, config.output.progress, config.output.tensorboard,
                           hparams=hparams_of(config.to_dict()), early_logs=early_logs.records)
    experiment.engine.callbacks.append(recorder)
    probs = experiment.population.participation.probabilities
    if probs is not None:
        log.info("participation: %s, mean probability %.3f (min %.3f, max %.3f)",
                 config.population.participation, probs.mean(), probs.min(), probs.max())
    try:
        recorder.on_start(experiment.engine)
        summary = experiment.run()
    finally:
        recorder.close()
    return summary, out
