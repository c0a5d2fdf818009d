"""SCAFFOLD's server part: mean of the deltas, and the control variate c broadcast to clients.

Karimireddy, Kale, Mohri, Reddi, Stich, Suresh, "SCAFFOLD: Stochastic Controlled Averaging
for Federated Learning", ICML 2020, arXiv 1910.06378. Reference code: woodenchild95/
FL-Simulator server/SCAFFOLD.py L11-54 (@502bec6):

    U = (1/|S_t|) sum_{i in S_t} Delta_i                   x_{t+1} = x_t + eta_g U   (L47)
    c <- c + (1/N) sum_{i in S_t} (c_i+ - c_i)             (L43, L53)

c starts at 0 and is broadcast once per model version (``broadcast["c"]``); each client's
c_i+ - c_i arrives as the extra ``delta_c`` (clients/scaffold.py). Symbols: eta_g ->
``strategy.server_lr`` (the server optimizer's step; default 1), N -> the population size.
A round without participants leaves x and c unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from fedsim.checkpoint import checkpointable
from fedsim.types import ClientResult, PopulationInfo
from strategies.weighting import WEIGHTINGS

__all__ = ["ScaffoldState", "ScaffoldAggregator", "scaffold", "extra_sum"]


def extra_sum(results: Sequence[ClientResult], key: str, like: torch.Tensor, server: str) -> torch.Tensor:
    """sum_i extras[key] over the results, in result order."""
    total = torch.zeros_like(like)
    for r in results:
        value = (r.extras or {}).get(key)
        if value is None:
            raise ValueError(f"{server} needs the client extra {key!r}; client {r.client_id} did not send it")
        total.add_(value.to(total.device))
    return total


@checkpointable
@dataclass(frozen=True)
class ScaffoldState:
    c: torch.Tensor  # server control variate
    num_clients: int  # N
    broadcast: dict[str, torch.Tensor]  # {"c": c}: one object per version (Ray ships it once)


class ScaffoldAggregator:
    server_part = "scaffold"

    def init(self, params: torch.Tensor, population: PopulationInfo) -> ScaffoldState:
        c = torch.zeros_like(params)
        return ScaffoldState(c, population.num_clients, {"c": c})

    def aggregate(
        self, state: ScaffoldState, results: Sequence[ClientResult], round: int
    ) -> tuple[torch.Tensor, ScaffoldState]:
        if not results:
            return torch.zeros_like(state.c), state
        u = sum((r.delta.to(state.c.device) for r in results), torch.zeros_like(state.c)) / len(results)
        c = state.c + extra_sum(results, "delta_c", state.c, "strategy 'scaffold'") / state.num_clients
        return u, ScaffoldState(c, state.num_clients, {"c": c})

    def broadcast(self, state: ScaffoldState) -> dict[str, torch.Tensor]:
        return state.broadcast


def scaffold() -> ScaffoldAggregator:
    return ScaffoldAggregator()


scaffold.server_part = "scaffold"  # type: ignore[attr-defined]
WEIGHTINGS.register("scaffold", "SCAFFOLD server: U = mean delta, c += (1/N) sum delta_c (needs client scaffold)")(
    scaffold
)


from strategies.fedopt import FL_SIMULATOR_CLIENT, register_preset  # noqa: E402  (fedopt must not import this module)

register_preset(
    "scaffold",
    "SCAFFOLD: control variates c, c_i correct client drift (Karimireddy et al. 2020)",
    "scaffold",
    "sgd",
    server_lr=1.0,
    config_defaults={"client": {"algorithm": "scaffold", **FL_SIMULATOR_CLIENT}},
)
