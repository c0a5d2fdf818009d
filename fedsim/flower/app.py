"""A fedsim experiment as a Flower App: run config keys are fedsim's dotted config keys.

``[tool.flwr.app.config]`` (or ``flwr run --run-config``) holds fedsim config keys as Flower
flattens them: ``rounds = 10``, ``strategy.name = "fedau"``, ``client.lr = 0.05``,
``population.clients_per_round = 5``, ``task.name = "synthetic"``... They are validated by
fedsim's config loader (unknown keys and bad values fail with its one-line messages).
Keys under ``flower.`` are Flower-only settings (:data:`FLOWER_DEFAULTS`). What has no
meaning in a real federation is ignored: the executor, virtual time (speeds, deadlines).

Participation maps to samplers: ``uniform`` -> ``clients_per_round`` of the connected nodes,
``always`` -> every connected node, any other model (bernoulli, markov, cyclic, trace)
is replayed over the client indices (= partition ids), for ``data.num_clients`` clients.

Each node builds the task with ``data.num_clients`` = its ``num-partitions`` and trains on
partition ``partition-id``; the server builds it with ``data.num_clients`` for the initial
model and the central test set, so keep both equal.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

from clients import CLIENTS
from clients.personal import bind_client_config
from fedsim.attacks import plan_byzantine
from fedsim.communication import plan_communication
from fedsim.config import ConfigError, RunConfig, load_config, set_dotted
from fedsim.flower.arrays import ArrayCodec
from fedsim.flower.client import make_client_app
from fedsim.flower.sampling import AllConnected, ParticipationSampler, Sampler, UniformSampler
from fedsim.flower.strategy import FedsimStrategy
from fedsim.params import ResidentModel
from fedsim.population import PARTICIPATION
from fedsim.privacy import plan_privacy
from fedsim.run import initial_params, task_spec
from fedsim.tasks import Task, TaskSpec, build_task
from strategies import build_strategy

__all__ = [
    "FLOWER_DEFAULTS",
    "config_from_run_config",
    "make_sampler",
    "make_strategy",
    "make_server_app",
    "make_node_client_app",
    "task_for",
]

log = logging.getLogger("flwr.fedsim")  # shown by Flower's log handlers in Flower processes

FLOWER_DEFAULTS: dict[str, Any] = {
    "fraction_evaluate": 0.0,  # federated evaluation on this fraction of nodes each round
    "round_timeout": 600.0,  # seconds to wait for replies; late nodes count as absent
    "min_nodes": 1,  # each round waits until this many nodes are connected
}


def config_from_run_config(run_config: Mapping[str, Any]) -> tuple[RunConfig, dict[str, Any]]:
    """(fedsim RunConfig, Flower options) from a flat Flower run config with dotted keys."""
    tree: dict[str, Any] = {}
    flower = dict(FLOWER_DEFAULTS)
    for key, value in run_config.items():
        if key.startswith("flower."):
            name = key[len("flower.") :].replace("-", "_")
            if name not in FLOWER_DEFAULTS:
                raise ConfigError(f"config error: flower.{name}: unknown key; valid keys: {', '.join(FLOWER_DEFAULTS)}")
            flower[name] = value
        else:
            set_dotted(tree, key.split("."), value)
    tree.setdefault("output", {}).setdefault("progress", False)
    return load_config(values=tree), flower


@functools.lru_cache(maxsize=4)
def _cached_task(spec_json: str) -> Task:
    return build_task(TaskSpec(**json.loads(spec_json)))


def task_for(config: RunConfig, num_clients: int | None = None) -> Task:
    """The config's task (built once per process), optionally for another number of partitions."""
    spec = task_spec(config)
    if num_clients is not None:
        spec = dataclasses.replace(spec, num_clients=int(num_clients))
    return _cached_task(json.dumps(dataclasses.asdict(spec), sort_keys=True))


def make_sampler(config: RunConfig, task: Task) -> Sampler:
    participation = config.population.participation
    if participation == "uniform":
        return UniformSampler(config.population.clients_per_round, config.seed)
    if participation == "always":
        return AllConnected()
    return ParticipationSampler(PARTICIPATION.get(participation)(config.population, task.data, config.seed))


def make_strategy(config: RunConfig, task: Task, flower: Mapping[str, Any] | None = None) -> FedsimStrategy:
    """The FedsimStrategy for a fedsim config; only synchronous strategies (scheduler ``sync``)."""
    if config.scheduler.name != "sync":
        raise ConfigError(
            f"config error: scheduler.name: Flower runs synchronous rounds; strategy '{config.strategy.name}' "
            f"uses scheduler '{config.scheduler.name}' (choose a synchronous strategy, e.g. fedavg, fedau, mifa)"
        )
    flower = {**FLOWER_DEFAULTS, **(flower or {})}
    privacy = plan_privacy(config, task.data.num_clients)  # client transforms travel in each job's config
    byzantine = plan_byzantine(config, task.data.num_clients)  # attackers are node indices, as fedsim's client ids
    strategy = build_strategy(config.strategy, privacy=privacy, seed=config.seed, byzantine=byzantine)
    if config.communication.downlink_snr_db is not None:
        raise ConfigError(
            "config error: communication.downlink_snr_db: a noisy downlink is simulated by fedsim's engine only; "
            "a Flower deployment has its own channel (remove the key)"
        )
    codec = ArrayCodec(task.build_model())
    payload = plan_communication(config, codec.layout, task.data.num_clients).attach(
        strategy
    )  # compression: the ClientApp compresses, the strategy decodes the compressed arrays with payload.compressor
    return FedsimStrategy(
        strategy,
        codec,
        make_sampler(config, task),
        bind_client_config(CLIENTS.get(config.client.algorithm)(), config.client.model_dump(), codec.layout),
        config.seed,
        fraction_evaluate=float(flower["fraction_evaluate"]),
        min_nodes=int(flower["min_nodes"]),
        query_timeout=float(flower["round_timeout"]),
        compressor=payload.compressor,
    )


def central_evaluation(task: Task, codec: ArrayCodec, every: int, rounds: int):
    """Flower ``evaluate_fn``: the global model on the task's test set every ``every`` rounds and at the end."""
    model = ResidentModel(task.build_model())
    x, y = task.data.global_test()

    def evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        if server_round % every and server_round != rounds:
            return None
        flat, _ = codec.decode(arrays)
        model.load(flat)
        scores = task.evaluate(model.model, x, y)
        return MetricRecord({"test_loss": scores["loss"], "test_accuracy": scores["accuracy"]})

    return evaluate


def make_server_app() -> ServerApp:
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        config, flower = config_from_run_config(context.run_config)
        task = task_for(config)
        strategy = make_strategy(config, task, flower)
        initial = strategy.codec.encode(initial_params(task, config.seed))
        result = strategy.start(
            grid,
            initial_arrays=initial,
            num_rounds=config.rounds,
            timeout=float(flower["round_timeout"]),
            train_config=ConfigRecord(),
            evaluate_fn=central_evaluation(task, strategy.codec, config.eval.every, config.rounds),
        )
        summary = {
            "strategy": config.strategy.name,
            "rounds": config.rounds,
            "train": [dict(record) for record in strategy.history],
            "eval": {str(r): dict(m) for r, m in sorted(result.evaluate_metrics_serverapp.items())},
            "federated_eval": {str(r): dict(m) for r, m in sorted(result.evaluate_metrics_clientapp.items())},
            "clients_indexed": len(strategy.nodes),
        }
        final = result.evaluate_metrics_serverapp.get(config.rounds)
        if final is not None:
            log.info(
                "fedsim %s: final test accuracy %.4f after %d rounds",
                config.strategy.name,
                final["test_accuracy"],
                config.rounds,
            )
        if config.output.out:  # the server's run folder: where the ServerApp runs
            out = Path(config.output.out)
            out.mkdir(parents=True, exist_ok=True)
            (out / "flower_summary.json").write_text(json.dumps(summary, indent=1))

    return app


def make_node_client_app() -> ClientApp:
    """The ClientApp of the fedsim Flower App: task and algorithm from the run config."""

    def node_task(context: Context) -> Task:
        config, _ = config_from_run_config(context.run_config)
        return task_for(config, context.node_config.get("num-partitions"))

    def algorithm(context: Context) -> str:
        return config_from_run_config(context.run_config)[0].client.algorithm

    def client_config(context: Context) -> dict[str, Any]:
        return config_from_run_config(context.run_config)[0].client.model_dump()

    return make_client_app(node_task, algorithm, client_config)
