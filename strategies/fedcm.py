"""FedCM's and MoFedSAM's server part: mean of the deltas, and the momentum broadcast to clients.

Xu et al., "FedCM: Federated Learning with Client-level Momentum", arXiv 2106.10874; Qu et
al., "Generalized Federated Learning via Sharpness Aware Minimization", ICML 2022, arXiv
2206.02618. Reference code: woodenchild95/FL-Simulator server/MoFedSAM.py L15, L27, L33
(@502bec6):

    U = (1/|S_t|) sum_{i in S_t} Delta_i,  x_{t+1} = x_t + eta_g U
    m_{t+1} = (1/|S_t|) sum_{i in S_t} mean_grad_i,  mean_grad_i = -Delta_i / (K_i eta_t)

m starts at 0 and is broadcast once per model version (``broadcast["momentum"]``); each
client sends mean_grad_i as an extra (clients/fedcm.py). A round without participants keeps m.
Symbols: eta_g -> ``strategy.server_lr`` (default 1).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from fedsim.checkpoint import checkpointable
from fedsim.types import ClientResult, PopulationInfo
from strategies.scaffold import extra_sum
from strategies.weighting import WEIGHTINGS

__all__ = ["MomentumState", "MomentumAggregator", "fedcm"]


@checkpointable
@dataclass(frozen=True)
class MomentumState:
    broadcast: dict[str, torch.Tensor]  # {"momentum": m}: one object per version (Ray ships it once)


class MomentumAggregator:
    server_part = "momentum"

    def init(self, params: torch.Tensor, population: PopulationInfo) -> MomentumState:
        return MomentumState({"momentum": torch.zeros_like(params)})

    def aggregate(
        self, state: MomentumState, results: Sequence[ClientResult], round: int
    ) -> tuple[torch.Tensor, MomentumState]:
        m = state.broadcast["momentum"]
        if not results:
            return torch.zeros_like(m), state
        u = sum((r.delta.to(m.device) for r in results), torch.zeros_like(m)) / len(results)
        momentum = extra_sum(results, "mean_grad", m, "strategy 'fedcm' / 'mofedsam'") / len(results)
        return u, MomentumState({"momentum": momentum})

    def broadcast(self, state: MomentumState) -> dict[str, torch.Tensor]:
        return state.broadcast


def fedcm() -> MomentumAggregator:
    return MomentumAggregator()


fedcm.server_part = "momentum"  # type: ignore[attr-defined]
WEIGHTINGS.register(
    "fedcm", "FedCM/MoFedSAM server: U = mean delta, momentum = mean of -delta/(K lr) (needs client fedcm or mofedsam)"
)(fedcm)


from strategies.fedopt import FL_SIMULATOR_CLIENT, register_preset  # noqa: E402  (fedopt must not import this module)

register_preset(
    "fedcm",
    "FedCM: client-level momentum from the server (Xu et al. 2021)",
    "fedcm",
    "sgd",
    server_lr=1.0,
    config_defaults={"client": {"algorithm": "fedcm", **FL_SIMULATOR_CLIENT}},
)
register_preset(
    "mofedsam",
    "MoFedSAM: SAM client with server momentum (Qu et al. 2022)",
    "fedcm",
    "sgd",
    server_lr=1.0,
    config_defaults={"client": {"algorithm": "mofedsam", **FL_SIMULATOR_CLIENT}},
)
