"""A Flower ``ClientApp`` that runs any fedsim client algorithm on one partition of a task.

``make_client_app(task, algorithm)`` returns a ClientApp with three handlers:

- ``train``: turns the message into a fedsim ``ClientJob`` (global model from the
  ArrayRecord, the job config and seed the server sent, the node's client state) and runs
  it with a fedsim ``Worker``, exactly as fedsim's serial executor runs a job (resident
  model, any ``clients.CLIENTS`` algorithm, this node's partition); it replies with the update as ``fedsim.delta`` (flat,
  float32, lossless) -- or, when the pipeline ends with a compressor (``communication.compressor``),
  as ``fedsim.delta-compressed``: the compressor's wire arrays (top-k indices and values, packed
  signs or QSGD levels, PowerSGD factors; clients/transforms/compress.py), which the server
  decodes with the same compressor -- plus ``num-examples`` / ``num-steps`` / the algorithm's metrics. Client
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
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np
from flwr.app import Array, ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from clients.transforms import state_prefix, transform_state
from clients.transforms.compress import Compressor
from fedsim.executors.worker import Worker, WorkerSpec
from fedsim.flower.arrays import ArrayCodec, record_to_state, state_to_record
from fedsim.flower.strategy import KEYS
from fedsim.rng import derive_seed
from fedsim.tasks import Task
from fedsim.types import ClientJob

__all__ = ["make_client_app", "partition_of", "delta_record", "STATE_KEY"]

STATE_KEY = "fedsim.client-state"  # the algorithm's client state in Context.state

T = TypeVar("T")
PerNode = T | Callable[[Context], T]  # a value, or a function of the node's Context giving it


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


def delta_record(worker: Worker, job: dict[str, Any], delta: Any) -> tuple[str, ArrayRecord]:
    """(record key, ArrayRecord) carrying a client's update: the compressor's wire arrays when the
    pipeline ends with one (a noisy uplink after it makes the update dense again), else the flat delta."""
    last = worker.transforms[-1] if worker.transforms else None
    if last is None or not isinstance(last, Compressor):
        return KEYS.DELTA, ArrayRecord({"flat": Array(np.array(delta.numpy(), order="C"))})
    prefix = state_prefix(len(worker.transforms) - 1, last.name)
    layout = worker.model.layout
    arrays = last.encode(delta, layout, last.levels(layout, transform_state(job.get("state"), prefix)))
    return KEYS.DELTA_COMPRESSED, ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in arrays.items()})


class _NodeWorkers:
    """fedsim Workers (resident model + client algorithm) per (task, algorithm), built once per process.

    A job runs exactly as in fedsim's serial executor: ``Worker.run`` on a ClientJob.
    """

    def __init__(self, device: str):
        self.device = device
        self._workers: dict[tuple[int, str, str], Worker] = {}
        self._codecs: dict[int, ArrayCodec] = {}

    def codec(self, task: Task) -> ArrayCodec:
        if id(task) not in self._codecs:
            self._codecs[id(task)] = ArrayCodec(task.build_model())
        return self._codecs[id(task)]

    def worker(self, task: Task, algorithm: str, transforms: str = "[]") -> Worker:
        """``transforms``: the JSON list of (name, options) client transforms the server asked for."""
        key = (id(task), algorithm, transforms)
        if key not in self._workers:
            # the task is given, so the spec's TaskSpec is never used to rebuild it
            # one torch thread per job, as fedsim's executors (executor.threads default): the same floats
            specs = tuple((str(name), dict(options)) for name, options in json.loads(transforms))
            spec = WorkerSpec(
                task=None,
                client=algorithm,
                device=self.device,
                threads=1,  # type: ignore[arg-type]
                client_transforms=specs,
            )
            self._workers[key] = Worker(spec, task)
        return self._workers[key]


def make_client_app(
    task: PerNode[Task],
    algorithm: PerNode[str] | None = None,
    client_config: PerNode[dict] | None = None,
    *,
    device: str = "cpu",
) -> ClientApp:
    """A ClientApp training a fedsim client algorithm on this node's partition of ``task``.

    ``algorithm`` is a ``clients.CLIENTS`` name; None (default) runs the one the server's job
    config names (fedsim's ``client.algorithm``, else sgd). Each argument may also be a
    function of the node's Context returning it (the fedsim App reads them from the run
    config). A task function is called for every message: cache the task it builds.
    ``client_config`` is the job config used when a message does not carry fedsim's (a plain
    Flower strategy).
    """
    workers = _NodeWorkers(device)

    def node_task(context: Context) -> tuple[Task, int]:
        resolved = _resolve(task, context)
        pid = partition_of(context)
        if not 0 <= pid < resolved.data.num_clients:
            raise ValueError(f"partition-id {pid} is out of range: the task has {resolved.data.num_clients} partitions")
        return resolved, pid

    app = ClientApp()

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        resolved, pid = node_task(context)
        codec = workers.codec(resolved)
        params, _ = codec.decode(msg.content[KEYS.ARRAYS])
        config = msg.content.config_records.get(KEYS.CONFIG, {})
        from_fedsim = KEYS.JOB_CONFIG in config
        if from_fedsim:
            job_config, seed = json.loads(config[KEYS.JOB_CONFIG]), int(config[KEYS.SEED])
            version = int(config[KEYS.VERSION])
        else:
            job_config = dict(_resolve(client_config, context) or {})
            version = int(config.get("server-round", 1)) - 1
            seed = derive_seed(0, "flower-client-train", pid, version)
        name = _resolve(algorithm, context) or job_config.get("algorithm") or "sgd"
        job = {
            "job_id": 0,
            "client_id": pid,
            "version": version,
            "params": params,
            "config": job_config,
            "seed": seed,
            "state": record_to_state(context.state.array_records.get(STATE_KEY)),
        }
        if KEYS.BROADCAST in msg.content.array_records:
            job["broadcast"] = record_to_state(msg.content.array_records[KEYS.BROADCAST])
        transforms = str(config.get(KEYS.CLIENT_TRANSFORMS, "[]")) if from_fedsim else "[]"
        result = workers.worker(resolved, name, transforms).run(ClientJob(**job))
        if not result.ok:  # an error reply: the server counts this node absent for the round
            raise RuntimeError(f"client {pid} failed: {result.error}")
        if result.state is not None:
            context.state[STATE_KEY] = state_to_record(result.state)
        metrics = {KEYS.NUM_EXAMPLES: int(result.num_samples), KEYS.NUM_STEPS: int(result.num_steps)}
        metrics |= {k: float(v) for k, v in result.metrics.items()}
        content = RecordDict({KEYS.METRICS: MetricRecord(metrics)})
        if from_fedsim:
            key, record = delta_record(workers.worker(resolved, name, transforms), job, result.delta)
            content[key] = record
            extras = getattr(result, "extras", None)
            if extras:
                content[KEYS.EXTRAS] = state_to_record(extras)
        else:
            content[KEYS.ARRAYS] = codec.encode(params + result.delta)
        return Message(content, reply_to=msg)

    @app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        resolved, pid = node_task(context)
        params, _ = workers.codec(resolved).decode(msg.content[KEYS.ARRAYS])
        model = workers.worker(resolved, "sgd").model  # any worker's resident model will do
        model.load(params.to(model.device))
        x, y = resolved.data.test(pid)
        scores = resolved.evaluate(model.model, x, y)
        metrics = MetricRecord(
            {
                "eval_loss": float(scores["loss"]) if len(y) else 0.0,
                "eval_accuracy": float(scores["accuracy"]) if len(y) else 0.0,
                KEYS.NUM_EXAMPLES: int(len(y)),
            }
        )
        return Message(RecordDict({KEYS.METRICS: metrics}), reply_to=msg)

    @app.query()
    def query(msg: Message, context: Context) -> Message:
        resolved, pid = node_task(context)
        info = MetricRecord({KEYS.PARTITION: pid, KEYS.NUM_EXAMPLES: int(resolved.data.num_samples[pid])})
        return Message(RecordDict({KEYS.NODE_INFO: info}), reply_to=msg)

    return app
