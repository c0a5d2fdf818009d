"""A Flower ``ClientApp`` that runs any fedsim client algorithm on one partition of a task.

``make_client_app(task, algorithm)`` returns a ClientApp with three handlers:

- ``train``: loads the global model from the message's ArrayRecord into a resident model,
  runs the client algorithm (``clients.CLIENTS``) on this node's partition with the job
  config and seed the server sent, and replies with the update as ``fedsim.delta`` (flat,
  float32, lossless) plus ``num-examples`` / ``num-steps`` / the algorithm's metrics. Client
  state the algorithm keeps between rounds (SCAFFOLD's c_i, FedSpeed's h_i, ...) lives in
  the node's ``Context.state`` as an ArrayRecord. Messages from a plain Flower strategy
  (no fedsim keys) get the base ``client_config`` and a reply in Flower's convention
  (``arrays`` = local model), so the app also works under Flower's own FedAvg.
- ``evaluate``: loss and accuracy of the global model on this partition's test split.
- ``query``: the node's partition id and train sample count (the server indexes nodes by them).

The partition comes from the node config (``partition-id``, ``num-partitions``), as Flower's
simulation and ``flower-supernode --node-config`` set it. A client that raises, or returns a
non-finite update, sends an error reply: the server counts it absent for the round.
"""

from __future__ import annotations

import inspect
import json
from typing import Any, Callable, TypeVar, Union

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from clients import CLIENTS, ClientAlgorithm, TrainContext
from fedsim.executors.worker import check_result, train_one
from fedsim.flower.arrays import ArrayCodec, record_to_state, state_to_record
from fedsim.flower.strategy import KEYS
from fedsim.params import ResidentModel
from fedsim.rng import derive_seed
from fedsim.tasks import Task

__all__ = ["make_client_app", "partition_of", "STATE_KEY"]

STATE_KEY = "fedsim.client-state"  # the algorithm's client state in Context.state

T = TypeVar("T")
PerNode = Union[T, Callable[[Context], T]]  # a value, or a function of the node's Context giving it


def _resolve(value: Any, context: Context) -> Any:
    """``value``, or ``value(context)`` when it is a function."""
    return value(context) if inspect.isfunction(value) or inspect.ismethod(value) else value


def partition_of(context: Context) -> int:
    """This node's partition id from its node config (a clear error when it is missing)."""
    if KEYS.PARTITION not in context.node_config:
        raise ValueError(
            "node config has no 'partition-id': start the SuperNode with "
            "--node-config 'partition-id=<i> num-partitions=<n>'"
        )
    return int(context.node_config[KEYS.PARTITION])


def _algorithm(chosen: Any, job_config: dict[str, Any]) -> ClientAlgorithm:
    if chosen is None:
        chosen = job_config.get("algorithm") or "sgd"
    return CLIENTS.get(chosen)() if isinstance(chosen, str) else chosen


class _NodeModel:
    """One resident model per (process, task): loading a model is one copy, as in fedsim's workers."""

    def __init__(self, task: Task, device: str):
        self.device = torch.device(device)
        self.model = ResidentModel(task.build_model(), self.device)
        self.codec = ArrayCodec(self.model.model)
        self.context = TrainContext(self.model, task.loss_fn, self.device)


def make_client_app(
    task: PerNode[Task],
    algorithm: PerNode[str] | ClientAlgorithm | None = None,
    client_config: PerNode[dict] | None = None,
    *,
    device: str = "cpu",
) -> ClientApp:
    """A ClientApp training ``algorithm`` on ``task``.

    ``algorithm`` is a ``clients.CLIENTS`` name or a client algorithm object; None (default)
    runs the one the server's job config names (fedsim's ``client.algorithm``, else sgd).
    Each argument may also be a function of the node's Context returning it (the fedsim
    App reads them from the run config). A task function is called for every message: cache
    the task it builds. ``client_config`` is the job config used when a message does not
    carry fedsim's (a plain Flower strategy).
    """
    models: dict[int, _NodeModel] = {}

    def resolve(context: Context) -> tuple[Task, _NodeModel, int]:
        node_task = _resolve(task, context)
        if id(node_task) not in models:
            models[id(node_task)] = _NodeModel(node_task, device)
        pid = partition_of(context)
        if not 0 <= pid < node_task.data.num_clients:
            raise ValueError(f"partition-id {pid} is out of range: the task has {node_task.data.num_clients} partitions")
        return node_task, models[id(node_task)], pid

    app = ClientApp()

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        node_task, node, pid = resolve(context)
        params, _ = node.codec.decode(msg.content[KEYS.ARRAYS])
        config = msg.content.config_records.get(KEYS.CONFIG, {})
        from_fedsim = KEYS.JOB_CONFIG in config
        if from_fedsim:
            job_config, seed = json.loads(config[KEYS.JOB_CONFIG]), int(config[KEYS.SEED])
        else:
            job_config = dict(_resolve(client_config, context) or {})
            seed = derive_seed(0, "flower-client-train", pid, int(config.get("server-round", 0)))
        client_algorithm = _algorithm(_resolve(algorithm, context), job_config)
        x, y = node_task.data.train(pid)
        rng = torch.Generator(device=node.device)
        rng.manual_seed(seed)
        state = record_to_state(context.state.array_records.get(STATE_KEY))
        broadcast = None
        if KEYS.BROADCAST in msg.content.array_records:
            broadcast = record_to_state(msg.content.array_records[KEYS.BROADCAST])
        params = params.to(node.device)
        # algos: the same training path as fedsim's workers (step loop or torch.optim, lr decayed by version)
        result = train_one(client_algorithm, node.context, params, (x.to(node.device), y.to(node.device)), job_config,
                           state, broadcast, rng, int(config.get(KEYS.VERSION, 0)))
        result = check_result(result, node.codec.numel)
        if not result.ok:
            raise ValueError(f"client {pid}: {result.error}")
        if result.state is not None:
            context.state[STATE_KEY] = state_to_record(result.state)
        metrics = {KEYS.NUM_EXAMPLES: int(result.num_samples), KEYS.NUM_STEPS: int(result.num_steps)}
        metrics |= {k: float(v) for k, v in result.metrics.items()}
        content = RecordDict({KEYS.METRICS: MetricRecord(metrics)})
        if from_fedsim:
            content[KEYS.DELTA] = ArrayRecord({"flat": Array(np.ascontiguousarray(result.delta.numpy()))})
            extras = getattr(result, "extras", None)
            if extras:
                content[KEYS.EXTRAS] = state_to_record(extras)
        else:
            content[KEYS.ARRAYS] = node.codec.encode(params.cpu() + result.delta)
        return Message(content, reply_to=msg)

    @app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        node_task, node, pid = resolve(context)
        params, _ = node.codec.decode(msg.content[KEYS.ARRAYS])
        node.model.load(params.to(node.device))
        x, y = node_task.data.test(pid)
        scores = node_task.evaluate(node.model.model, x, y)
        metrics = MetricRecord({
            "eval_loss": float(scores["loss"]) if len(y) else 0.0,
            "eval_accuracy": float(scores["accuracy"]) if len(y) else 0.0,
            KEYS.NUM_EXAMPLES: int(len(y)),
        })
        return Message(RecordDict({KEYS.METRICS: metrics}), reply_to=msg)

    @app.query()
    def query(msg: Message, context: Context) -> Message:
        node_task, _, pid = resolve(context)
        info = MetricRecord({KEYS.PARTITION: pid, KEYS.NUM_EXAMPLES: int(node_task.data.num_samples[pid])})
        return Message(RecordDict({KEYS.NODE_INFO: info}), reply_to=msg)

    return app
