"""FedDyn: local steps with a dynamic regulariser (prox term plus a linear correction h_i).

Acar, Zhao, Navarro, Mattina, Whatmough, Saligrama, "Federated Learning Based on Dynamic
Regularization", ICLR 2021, arXiv 2111.04263. Reference code: woodenchild95/FL-Simulator
client/feddyn.py L10, L24-35 and server/FedDyn.py L36, L42, L46 (@502bec6): the loss gets the
term alpha <y, h_i - x_t> and torch SGD's weight decay becomes wd + alpha, so

    y <- y - eta_t (clip(g + alpha (h_i - x_t)) + (wd + alpha) y)
    h_i <- h_i + Delta_i                                   (running sum of the client's updates)

h_i is the client state (``state["h"]``, zeros before its first round), kept server-side by
the engine's ClientStateStore and shipped with the job, as the reference keeps it in the
server. The server part (strategies/feddyn.py) adds the mean of h over ALL N clients:
x_{t+1} = mean_{S_t} y_i + (1/N) sum_i h_i.

Symbols -> options: alpha -> ``client.lamb`` (default 0.1, the reference's ``--lamb``),
eta_t -> ``client.lr * client.lr_decay^t`` (README: decay 0.9995), wd ->
``client.weight_decay``, clip -> ``client.clip_norm``. alpha -> 0 is NOT FedAvg (the server
still adds mean h). FedSpeed (clients/fedspeed.py) is this step with a SAM gradient.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import Tensor

from clients.base import Batch, Carry, FunctionalClient, GradFn, clip_by_global_norm, sgd_update, zeros_or

__all__ = ["FedDyn", "FedDynOptions"]


@dataclass(frozen=True)
class FedDynOptions:
    clip_norm: float | None
    weight_decay: float
    lamb: float
    rho: float = 0.0  # SAM radius (FedSpeed); 0: plain gradient
    sam_alpha: float = 1.0  # FedSpeed's mix of plain and SAM gradient


class FedDyn(FunctionalClient):
    name = "feddyn"
    server_part = "feddyn"
    option_names: tuple[str, ...] = ("lamb",)
    state_vectors = 1  # h_i (FedSpeed inherits it)

    def options(self, config: dict[str, Any]) -> FedDynOptions:
        clip, wd = self.common(config)
        return FedDynOptions(clip, wd, self.option(config, "lamb", 0.1))

    def gradient(self, options: FedDynOptions, y: Tensor, batch: Batch, grad: GradFn) -> tuple[Tensor, Tensor]:
        return grad(y, batch)

    def start(
        self, options: FedDynOptions, params: Tensor, state: dict[str, Tensor] | None, broadcast: Any, lr: float
    ) -> Carry:
        carry = self.base_carry(params, lr)
        h = zeros_or(state, "h", params)
        carry["h"] = h
        carry["correction"] = options.lamb * (h - params)  # gradient of the loss term lamb <y, h_i - x_t>
        return carry

    def step(self, options: FedDynOptions, carry: Carry, batch: Batch, grad: GradFn) -> tuple[Carry, Tensor]:
        loss, g = self.gradient(options, carry["y"], batch, grad)
        direction = clip_by_global_norm(g + carry["correction"], options.clip_norm)
        y = sgd_update(carry["y"], direction, carry["lr"], options.weight_decay + options.lamb)
        return carry | {"y": y, "steps": carry["steps"] + 1}, loss

    def finish(self, options: FedDynOptions, carry: Carry) -> tuple[Tensor, dict[str, Tensor], None]:
        delta = carry["y"] - carry["x0"]
        return delta, {"h": carry["h"] + delta}, None
