"""A Flower server strategy (Message API) that runs any synchronous fedsim strategy.

:class:`FedsimStrategy` implements ``flwr.serverapp.strategy.Strategy`` (configure_train /
aggregate_train / configure_evaluate / aggregate_evaluate), so ``strategy.start(grid, ...)``
drives FedAvg, FedAdam/FedYogi, FedAU, MIFA, FedVARP, ... exactly as fedsim's sync rounds
do. The fedsim ``ServerState`` (model, server-optimizer moments, FedAU's interval statistics,
stored updates) lives here on the server, one explicit object, as in fedsim.

One round, in fedsim's terms:

1. ``configure_train``: nodes not seen before are indexed (:class:`fedsim.flower.nodes.NodeIndex`,
   after one ``query`` message asking them for their partition id and sample count) and the
   strategy's state grows to the new N; the sampler picks client indices among the connected
   nodes; each picked node gets the global model as an ArrayRecord, its job config
   (client config | ``strategy.configure``) and its job seed, derived exactly as the fedsim
   engine derives it.
2. ``aggregate_train``: each reply becomes a ``ClientResult`` keyed by the node's index (its
   ``fedsim.delta`` record, or its compressed arrays decoded by the pipeline's compressor, or a plain Flower client's ``arrays`` minus the global model);
   non-finite or mis-shaped updates are dropped; a node that was sampled but sent no reply
   or an error reply is absent from this round, which is what FedAU learns participation
   from. ``strategy.aggregate`` runs on the successful results sorted by index, also when
   there are none (as fedsim does).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable
from dataclasses import fields
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy as FlowerStrategy

from fedsim.executors.worker import check_result
from fedsim.flower.arrays import ArrayCodec, record_to_state, state_to_record
from fedsim.flower.nodes import NodeIndex, grow_aggregator_state
from fedsim.flower.sampling import Sampler
from fedsim.rng import derive_seed, numpy_generator
from fedsim.types import ClientResult
from strategies.base import ServerState, Strategy

__all__ = ["FedsimStrategy", "KEYS"]

log = logging.getLogger("flwr.fedsim")  # shown by Flower's log handlers in Flower processes


class KEYS:
    """Record and config keys of the fedsim <-> Flower message protocol."""

    ARRAYS = "arrays"  # global model (server -> client), or a plain Flower client's local model
    CONFIG = "config"
    METRICS = "metrics"
    DELTA = "fedsim.delta"  # ArrayRecord {"flat": local - global} from a fedsim client
    DELTA_COMPRESSED = "fedsim.delta-compressed"  # the compressor's wire arrays of the same (Compressor.encode)
    BROADCAST = "fedsim.broadcast"  # per-version server -> client payload (e.g. SCAFFOLD's c)
    EXTRAS = "fedsim.extras"  # extra flat tensors a fedsim client sends back
    NODE_INFO = "node-info"
    JOB_CONFIG = "fedsim-config"  # JSON of the job's config dict
    CLIENT_TRANSFORMS = "fedsim-client-transforms"  # JSON [[name, options], ...]: the pipeline's client stage
    SEED = "fedsim-seed"
    VERSION = "fedsim-version"
    CLIENT_INDEX = "fedsim-client"
    QUERY = "fedsim-query"
    NUM_EXAMPLES = "num-examples"
    NUM_STEPS = "num-steps"
    PARTITION = "partition-id"


_RESULT_HAS_EXTRAS = any(f.name == "extras" for f in fields(ClientResult))


class FedsimStrategy(FlowerStrategy):
    """Wraps a fedsim ``Strategy`` (e.g. ``strategies.build_strategy(config.strategy)``).

    ``codec`` says how the model crosses the wire; ``sampler`` picks who trains;
    ``client_config`` is the base of every job config (fedsim's ``client`` section);
    ``seed`` drives sampling and job seeds. ``fraction_evaluate`` of the connected nodes run
    federated evaluation each round (0: none). Each round waits until ``min_nodes`` nodes are
    connected (nodes may still be registering when the ServerApp starts). ``discover`` asks new nodes for their
    partition id before indexing them; ``query_timeout`` bounds that wait (seconds).
    """

    def __init__(
        self,
        strategy: Strategy,
        codec: ArrayCodec,
        sampler: Sampler,
        client_config: dict[str, Any],
        seed: int = 0,
        *,
        fraction_evaluate: float = 0.0,
        min_nodes: int = 1,
        discover: bool = True,
        query_timeout: float = 120.0,
        compressor: Any = None,
    ):
        if not 0.0 <= fraction_evaluate <= 1.0:
            raise ValueError(f"flower.fraction_evaluate must be in [0, 1], got {fraction_evaluate}")
        self.strategy = strategy
        self.codec = codec
        self.sampler = sampler
        self.client_config = dict(client_config)
        self.seed = seed
        self.fraction_evaluate = fraction_evaluate
        self.min_nodes = min_nodes
        self.discover = discover
        self.query_timeout = query_timeout
        self.compressor = compressor  # decodes fedsim.delta-compressed replies (the pipeline's compressor)
        self.nodes = NodeIndex()
        self.state: ServerState | None = None
        self.int_buffers: dict[str, torch.Tensor] | None = None
        self.history: list[dict[str, Any]] = []  # one record per round
        self._population_size = 0  # N the strategy state is sized for
        self._dispatch_counts: dict[int, int] = {}  # client index -> jobs sent to it so far
        self._sampled: dict[int, int] = {}  # node id -> index, this round
        self._start = time.monotonic()

    # ------------------------------------------------------------------ Flower hooks

    def summary(self) -> None:
        log.info(
            "fedsim strategy %s, sampler %s, evaluate fraction %.2f",
            getattr(self.strategy, "name", type(self.strategy).__name__),
            type(self.sampler).__name__,
            self.fraction_evaluate,
        )

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        connected = self._wait_for_nodes(grid)
        self._index_new_nodes(grid, connected)
        state = self._ensure_state(arrays)
        selected = self.sampler.select(state.version, np.asarray(sorted(self.nodes.indices(connected)), dtype=np.int64))
        global_model = self.codec.encode(state.params, self.int_buffers)
        broadcast = self._broadcast(state)
        now = self._now()
        messages, self._sampled = [], {}
        for index in selected.tolist():
            node_id = self.nodes.node_of[index]
            job_config = self.client_config | self.strategy.configure(state, index, now)
            # same derivation as fedsim.engine.Engine.dispatch, so a job trains identically in both
            count = self._dispatch_counts.get(index, 0)
            self._dispatch_counts[index] = count + 1
            seed = derive_seed(self.seed, "client-train", index, state.version, count)
            record = ConfigRecord(dict(config))
            record.update(
                {
                    "server-round": server_round,
                    KEYS.JOB_CONFIG: json.dumps(job_config),
                    KEYS.SEED: seed,
                    KEYS.VERSION: state.version,
                    KEYS.CLIENT_INDEX: index,
                }
            )
            transforms = getattr(self.strategy, "client_transforms", ())
            if transforms:  # the ClientApp clips/noises the delta before it leaves the node
                record[KEYS.CLIENT_TRANSFORMS] = json.dumps([[name, options] for name, options in transforms])
            content = RecordDict({KEYS.ARRAYS: global_model, KEYS.CONFIG: record})
            if broadcast is not None:
                content[KEYS.BROADCAST] = broadcast
            messages.append(Message(content=content, dst_node_id=node_id, message_type=MessageType.TRAIN))
            self._sampled[node_id] = index
        log.info(
            "round %d (version %d): %d of %d connected nodes sampled (%d indexed)",
            server_round,
            state.version,
            len(messages),
            len(connected),
            len(self.nodes),
        )
        return messages

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        state = self.state
        if state is None:
            raise RuntimeError("aggregate_train called before configure_train")
        results: list[ClientResult] = []
        failed = 0
        for msg in replies:
            index = self._sampled.get(msg.metadata.src_node_id)
            if index is None:  # a reply from a node not sampled this round (e.g. late): ignore
                continue
            if msg.has_error():
                failed += 1
                log.warning(
                    "node %d (client %d) failed in round %d: %s",
                    msg.metadata.src_node_id,
                    index,
                    server_round,
                    msg.error.reason,
                )
                continue
            result = self._to_result(msg.content, index, state)
            if not result.ok:
                failed += 1
                log.warning("client %d dropped in round %d: %s", index, server_round, result.error)
                continue
            results.append(result)
        results.sort(key=lambda r: r.client_id)  # arrival order must not matter
        self.state = self.strategy.aggregate(state, results, self._now())
        record = {
            "round": self.state.version,
            "sampled": len(self._sampled),
            "participants": len(results),
            "absent": len(self._sampled) - len(results),
            "failed": failed,
        }
        loss = _weighted_mean(results, "train_loss")
        if loss is not None:
            record["train_loss"] = loss
        self.history.append(record)
        self._sampled = {}
        metrics = MetricRecord({k: v for k, v in record.items() if isinstance(v, (int, float))})
        return self.codec.encode(self.state.params, self.int_buffers), metrics

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        if self.fraction_evaluate == 0.0:
            return []
        connected = sorted(grid.get_node_ids())
        k = max(1, int(round(self.fraction_evaluate * len(connected))))
        rng = numpy_generator(self.seed, "flower-evaluate", server_round)
        chosen = sorted(
            np.asarray(connected)[rng.choice(len(connected), size=min(k, len(connected)), replace=False)].tolist()
        )
        record = ConfigRecord(dict(config))
        record["server-round"] = server_round
        content = RecordDict({KEYS.ARRAYS: arrays, KEYS.CONFIG: record})
        return [Message(content=content, dst_node_id=n, message_type=MessageType.EVALUATE) for n in chosen]

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        totals: dict[str, float] = {}
        weight = 0.0
        for msg in replies:
            if msg.has_error() or KEYS.METRICS not in msg.content.metric_records:
                continue
            metrics = msg.content.metric_records[KEYS.METRICS]
            n = float(metrics.get(KEYS.NUM_EXAMPLES, 0))
            if n <= 0:
                continue
            weight += n
            for key, value in metrics.items():
                if key != KEYS.NUM_EXAMPLES and isinstance(value, (int, float)):
                    totals[key] = totals.get(key, 0.0) + n * float(value)
        if weight == 0:
            return None
        return MetricRecord({k: v / weight for k, v in totals.items()} | {KEYS.NUM_EXAMPLES: int(weight)})

    # ------------------------------------------------------------------ helpers

    def _wait_for_nodes(self, grid: Grid) -> list[int]:
        waited = 0.0
        while len(connected := sorted(grid.get_node_ids())) < self.min_nodes:
            if waited % 10 == 0:
                log.info("waiting for nodes: %d connected, %d required", len(connected), self.min_nodes)
            time.sleep(1.0)
            waited += 1.0
        return connected

    def _now(self) -> float:
        return time.monotonic() - self._start  # Flower has no virtual clock: wall seconds since start

    def _ensure_state(self, arrays: ArrayRecord) -> ServerState:
        population = self.nodes.population()
        if self.state is None:
            params, self.int_buffers = self.codec.decode(arrays)
            self.state = self.strategy.init(params, population)
        elif population.num_clients != self._population_size:
            aggregator = grow_aggregator_state(self.state.aggregator, population, self.state.version)
            self.state = self.state.replace(aggregator=aggregator)
        self._population_size = population.num_clients
        return self.state

    def _index_new_nodes(self, grid: Grid, connected: list[int]) -> None:
        new = [n for n in connected if n not in self.nodes]
        if not new:
            return
        info = {n: (None, 0) for n in new}
        if self.discover:
            query = ConfigRecord({KEYS.QUERY: KEYS.NODE_INFO})
            messages = [
                Message(RecordDict({KEYS.CONFIG: query}), dst_node_id=n, message_type=MessageType.QUERY) for n in new
            ]
            for reply in grid.send_and_receive(messages, timeout=self.query_timeout):
                if reply.has_error() or KEYS.NODE_INFO not in reply.content.metric_records:
                    continue
                node_info = reply.content.metric_records[KEYS.NODE_INFO]
                partition = node_info.get(KEYS.PARTITION)
                info[reply.metadata.src_node_id] = (
                    int(partition) if partition is not None else None,
                    int(node_info.get(KEYS.NUM_EXAMPLES, 0)),
                )
        created = self.nodes.add(info, connected)
        if created:
            log.info("indexed %d new node(s); %d clients known", len(created), len(self.nodes))

    def _broadcast(self, state: ServerState) -> ArrayRecord | None:
        broadcast = getattr(self.strategy, "broadcast", None)
        payload = broadcast(state) if broadcast is not None else None
        return None if payload is None else state_to_record(payload)

    def _to_result(self, content: RecordDict, index: int, state: ServerState) -> ClientResult:
        metrics = dict(content.metric_records[KEYS.METRICS]) if KEYS.METRICS in content.metric_records else {}
        try:
            if KEYS.DELTA in content.array_records:
                delta = torch.from_numpy(np.array(content.array_records[KEYS.DELTA]["flat"].numpy())).float()
            elif KEYS.DELTA_COMPRESSED in content.array_records:
                if self.compressor is None:
                    raise ValueError("a compressed update, but this strategy has no compressor")
                arrays = {k: v.numpy() for k, v in content.array_records[KEYS.DELTA_COMPRESSED].items()}
                delta = self.compressor.decode(arrays, self.codec.layout)
            else:  # a plain Flower client: its local model
                local, _ = self.codec.decode(content.array_records[KEYS.ARRAYS])
                delta = local - state.params
        except (KeyError, ValueError) as exc:
            delta, error = torch.empty(0), f"unreadable reply: {exc}"
        else:
            error = None
        result = ClientResult(
            client_id=index,
            base_version=state.version,
            delta=delta,
            num_samples=int(metrics.pop(KEYS.NUM_EXAMPLES, 0)),
            num_steps=int(metrics.pop(KEYS.NUM_STEPS, 0)),
            metrics={k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))},
            error=error,
        )
        if _RESULT_HAS_EXTRAS and KEYS.EXTRAS in content.array_records:
            result.extras = record_to_state(content.array_records[KEYS.EXTRAS])
        return check_result(result, self.codec.numel)


def _weighted_mean(results: list[ClientResult], key: str) -> float | None:
    pairs = [(r.metrics[key], r.num_samples) for r in results if key in r.metrics]
    total = sum(n for _, n in pairs)
    if not pairs or total == 0:
        return None
    return sum(v * n for v, n in pairs) / total
