"""Sparse Flower node ids -> dense fedsim client indices, and strategy state that grows with them.

fedsim strategies index clients 0..N-1 and some size their state by N at ``init`` (FedAU's
interval statistics, MIFA/FedVARP's 1/N, the population behind ``average_all``). A Flower
federation has sparse 64-bit node ids, an unknown number of nodes, and nodes that come and
go. :class:`NodeIndex` gives each node a dense index in order of first appearance, and
:func:`grow_aggregator_state` widens a strategy's aggregator state to the new N without
touching the strategy's code.

Nodes that appear together are indexed in order of their data partition id when they report
one (``partition-id`` in the node config): the same partitions then get the same indices, and
so the same seeds and sampling, whatever the random node ids; a simulation indexed this way
matches a fedsim run client for client. A node that comes back under a new node id with a
partition that is indexed already (and whose previous node is gone) takes that index back,
so its participation history carries over. N counts every index ever given: a node that
left stays in the population as absent, which is what FedAU's estimate and MIFA's memory
expect.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Iterable, Mapping
from dataclasses import replace
from typing import Any

import numpy as np

from fedsim.types import PopulationInfo
from strategies.fedau import FedAUState
from strategies.mifa import MemoryState

__all__ = ["NodeIndex", "grow_aggregator_state"]

log = logging.getLogger("flwr.fedsim")  # shown by Flower's log handlers in Flower processes


class NodeIndex:
    def __init__(self) -> None:
        self._index_of: dict[int, int] = {}  # node id -> dense index
        self.node_of: list[int] = []  # dense index -> latest node id holding it
        self.partition_of: list[int | None] = []  # dense index -> its data partition, if reported
        self.num_samples: list[int] = []  # dense index -> train samples it reported (0 = unknown)
        self._by_partition: dict[int, int] = {}

    def __len__(self) -> int:
        return len(self.node_of)

    def __contains__(self, node_id: object) -> bool:
        return node_id in self._index_of

    def index(self, node_id: int) -> int:
        return self._index_of[node_id]

    def indices(self, node_ids: Iterable[int]) -> list[int]:
        return [self._index_of[n] for n in node_ids]

    def add(self, new_nodes: Mapping[int, tuple[int | None, int]], connected: Iterable[int] = ()) -> list[int]:
        """Index nodes not seen before: node id -> (partition id or None, train samples).

        Returns the indices created (not those taken back by returning partitions).
        """
        alive = set(connected)
        order = sorted(
            (n for n in new_nodes if n not in self._index_of),
            key=lambda n: (new_nodes[n][0] is None, new_nodes[n][0] or 0, n),
        )
        created = []
        for node_id in order:
            partition, samples = new_nodes[node_id]
            held = self._by_partition.get(partition) if partition is not None else None
            if held is not None and self.node_of[held] not in alive:
                self._index_of[node_id] = held
                self.node_of[held] = node_id
                continue
            if held is not None:
                log.warning(
                    "nodes %d and %d both report partition %d; indexing them separately",
                    self.node_of[held],
                    node_id,
                    partition,
                )
            index = len(self.node_of)
            self._index_of[node_id] = index
            self.node_of.append(node_id)
            self.partition_of.append(partition)
            self.num_samples.append(int(samples))
            if partition is not None and held is None:
                self._by_partition[partition] = index
            created.append(index)
        return created

    def population(self) -> PopulationInfo:
        """What a strategy may know: N = every index given so far, samples as reported."""
        return PopulationInfo(num_clients=len(self), num_samples=np.asarray(self.num_samples, dtype=np.int64))


@functools.singledispatch
def grow_aggregator_state(state: Any, population: PopulationInfo, round: int) -> Any:
    """The aggregator state widened to ``population.num_clients`` clients (new ones never seen).

    ``round`` is the server version at which the new clients appear: FedAU counts their
    first participation interval from there, not from round 0.
    """
    if dataclasses.is_dataclass(state) and any(f.name == "num_clients" for f in dataclasses.fields(state)):
        return dataclasses.replace(state, num_clients=population.num_clients)  # state that only divides by N
    raise TypeError(
        f"fedsim.flower does not know how to grow aggregator state {type(state).__name__} as nodes join; "
        "register a function with fedsim.flower.grow_aggregator_state.register"
    )


@grow_aggregator_state.register(type(None))
def _grow_nothing(state: None, population: PopulationInfo, round: int) -> None:
    return None


@grow_aggregator_state.register(dict)
def _grow_weighted_average(state: dict, population: PopulationInfo, round: int) -> dict:
    # strategies.weighting.WeightedAverage keeps the PopulationInfo it was initialised with
    return state | {"population": population} if "population" in state else state


@grow_aggregator_state.register(FedAUState)
def _grow_fedau(state: FedAUState, population: PopulationInfo, round: int) -> FedAUState:
    extra = population.num_clients - state.num_clients
    if extra <= 0:
        return state
    return replace(
        state,
        last_close=np.concatenate([state.last_close, np.full(extra, round - 1, dtype=np.int64)]),
        total=np.concatenate([state.total, np.zeros(extra)]),
        count=np.concatenate([state.count, np.zeros(extra, dtype=np.int64)]),
        num_clients=population.num_clients,
    )


@grow_aggregator_state.register(MemoryState)
def _grow_memory(state: MemoryState, population: PopulationInfo, round: int) -> MemoryState:
    # MIFA / FedVARP: clients never seen store nothing (G_n = 0); only N changes
    return replace(state, num_clients=population.num_clients)
