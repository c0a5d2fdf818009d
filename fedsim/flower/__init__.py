"""Flower interop: fedsim strategies and client algorithms inside Flower apps (Message API).

- :class:`FedsimStrategy`: a ``flwr.serverapp.strategy.Strategy`` running any synchronous
  fedsim strategy, keyed by Flower node id, growing as nodes join.
- :func:`make_client_app`: a ``flwr.clientapp.ClientApp`` running any fedsim client
  algorithm on one partition of a task.
- :func:`make_server_app` / :func:`make_node_client_app`: the fedsim Flower App, configured
  by fedsim's dotted config keys in the Flower run config (experiments/flower_app).

Needs the ``flower`` extra: ``pip install -e ".[flower]"``.
"""

try:
    import flwr  # noqa: F401
except ImportError as exc:  # pragma: no cover - depends on the install
    raise ImportError('fedsim.flower needs Flower: pip install -e ".[flower]"') from exc

from fedsim.flower.app import (
    FLOWER_DEFAULTS,
    config_from_run_config,
    make_node_client_app,
    make_sampler,
    make_server_app,
    make_strategy,
    task_for,
)
from fedsim.flower.arrays import ArrayCodec, record_to_state, state_to_record
from fedsim.flower.client import STATE_KEY, make_client_app, partition_of
from fedsim.flower.nodes import NodeIndex, grow_aggregator_state
from fedsim.flower.sampling import AllConnected, ParticipationSampler, Sampler, UniformSampler
from fedsim.flower.strategy import KEYS, FedsimStrategy

__all__ = [
    "FLOWER_DEFAULTS",
    "KEYS",
    "STATE_KEY",
    "AllConnected",
    "ArrayCodec",
    "FedsimStrategy",
    "NodeIndex",
    "ParticipationSampler",
    "Sampler",
    "UniformSampler",
    "config_from_run_config",
    "grow_aggregator_state",
    "make_client_app",
    "make_node_client_app",
    "make_sampler",
    "make_server_app",
    "make_strategy",
    "partition_of",
    "record_to_state",
    "state_to_record",
    "task_for",
]
