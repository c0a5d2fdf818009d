"""Domain vocabulary shared by the engine, strategies, clients and executors.

Parameters travel as one flat float32 tensor (``Params``); a :class:`ClientJob`
fixes every input of one client's local training when it is dispatched, and a
:class:`ClientResult` carries what comes back.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from fedsim.checkpoint import checkpointable

Params = torch.Tensor  # flat float32 vector, layout fixed by fedsim.params.ParamLayout
ClientId = int
Version = int

__all__ = [
    "Params",
    "ClientId",
    "Version",
    "ClientJob",
    "ClientResult",
    "PopulationInfo",
]


@checkpointable
@dataclass(frozen=True)
class ClientJob:
    """Everything one local training needs; fixed at dispatch so any executor gives the same result."""

    job_id: int
    client_id: ClientId
    version: Version  # server model version the client starts from
    params: Params  # the global model of that version (shared, never mutated)
    config: dict[str, Any]  # local instructions from Strategy.configure (lr, local steps, ...)
    seed: int  # seeds the client's torch.Generator (minibatch order, dropout, ...)
    state: Any = None  # client state from the ClientStateStore, if the algorithm keeps one
    broadcast: Any = (
        None  # per-version server payload (Strategy.broadcast, e.g. SCAFFOLD's c); shared by the version's jobs
    )


@checkpointable
@dataclass
class ClientResult:
    """One client's contribution. ``delta`` = local model - global model (points downhill)."""

    client_id: ClientId
    base_version: Version
    delta: Params
    num_samples: int
    num_steps: int
    metrics: dict[str, float] = field(default_factory=dict)
    duration: float = 0.0  # virtual seconds, set by the engine from the population model
    state: Any = None  # new client state (dict of flat tensors on the CPU), stored by the engine if not None
    extras: dict[str, Any] | None = (
        None  # flat tensors for the server (e.g. SCAFFOLD's change of c_i), checked like delta
    )
    staleness: int = 0  # server version at arrival - base_version, set by the engine
    base_params: Params | None = None  # the model the client started from, set by the engine (FedAsync mixing)
    error: str | None = None  # set when the client failed; such results are never aggregated
    traceback: str | None = None  # where a failing client raised (the first one goes to the run's log)

    @property
    def ok(self) -> bool:
        return self.error is None


@checkpointable
@dataclass(frozen=True)
class PopulationInfo:
    """What a strategy may know about the population when it is initialised.

    ``participation_prob`` is the true long-run participation probability of each client;
    only oracle baselines (weighting ``known_prob``) may read it.
    """

    num_clients: int
    num_samples: np.ndarray  # int64[num_clients]
    participation_prob: np.ndarray | None = None  # float64[num_clients], oracle only
