"""FedDyn's (and FedSpeed's) server part: mean of the local models plus the mean of every h_i.

Acar et al., "Federated Learning Based on Dynamic Regularization", ICLR 2021, arXiv
2111.04263; Sun et al., "FedSpeed", ICLR 2023, arXiv 2302.10429. Reference code:
woodenchild95/FL-Simulator server/FedDyn.py L36, L42, L46 and server/FedSpeed.py L34-41,
server/server.py L202-224 (@502bec6):

    h_i <- h_i + Delta_i                       for i in S_t (the client's state, clients/feddyn.py)
    x_{t+1} = (1/|S_t|) sum_{i in S_t} y_i + (1/N) sum_{i=1..N} h_i     (updated h; no server lr)

As a pseudo-gradient for the server optimizer: U = mean_{S_t} Delta_i + (1/N) H with
H = sum_i h_i. The server never needs the h_i themselves: H grows by the participants'
deltas, kept here in float64 so that thousands of rounds of additions do not drift. With the
default server optimizer (sgd, lr 1) x_{t+1} = x_t + U is the reference update. A round
without participants applies a zero update (the reference redraws participants until the
round is not empty, so it has no such round; fedsim treats it like every other weighting).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from fedsim.checkpoint import checkpointable
from fedsim.types import ClientResult, PopulationInfo
from strategies.weighting import WEIGHTINGS

__all__ = ["FedDynState", "FedDynAggregator", "feddyn"]


@checkpointable
@dataclass(frozen=True)
class FedDynState:
    h_sum: torch.Tensor  # float64: H = sum over all clients of h_i
    num_clients: int  # N
    dtype: torch.dtype


class FedDynAggregator:
    server_part = "feddyn"

    def init(self, params: torch.Tensor, population: PopulationInfo) -> FedDynState:
        return FedDynState(torch.zeros_like(params, dtype=torch.float64), population.num_clients, params.dtype)

    def aggregate(
        self, state: FedDynState, results: Sequence[ClientResult], round: int
    ) -> tuple[torch.Tensor, FedDynState]:
        if not results:
            return torch.zeros_like(state.h_sum, dtype=state.dtype), state
        total = torch.zeros_like(state.h_sum)
        for r in results:
            total.add_(r.delta.to(total.device))
        h_sum = state.h_sum + total
        u = (total / len(results) + h_sum / state.num_clients).to(state.dtype)
        return u, FedDynState(h_sum, state.num_clients, state.dtype)


def feddyn() -> FedDynAggregator:
    return FedDynAggregator()


feddyn.server_part = "feddyn"  # type: ignore[attr-defined]
WEIGHTINGS.register(
    "feddyn", "FedDyn/FedSpeed server: U = mean delta + (1/N) sum_all h_i (needs client feddyn or fedspeed)"
)(feddyn)


from strategies.fedopt import FL_SIMULATOR_CLIENT, register_preset  # noqa: E402  (fedopt must not import this module)

register_preset(
    "feddyn",
    "FedDyn: dynamic regularisation, server adds mean of all h_i (Acar et al. 2021)",
    "feddyn",
    "sgd",
    server_lr=1.0,
    config_defaults={"client": {"algorithm": "feddyn", **FL_SIMULATOR_CLIENT, "lr_decay": 0.9995}},
)
