"""FedProx: local SGD on the loss plus a proximal term (mu/2) |y - x_t|^2.

Li, Sahu, Zaheer, Sanjabi, Talwalkar, Smith, "Federated Optimization in Heterogeneous
Networks", MLSys 2020, arXiv 1812.06127. Reference code: woodenchild95/FL-Simulator
client/fedprox.py L10, L24-35 (@502bec6), which adds the loss term -mu <y, x_t> and folds
mu into torch SGD's weight decay, so the clip (client/client.py L42-47) covers -mu x_t too:

    y <- y - eta_t (clip(g - mu x_t) + (wd + mu) y)        unclipped: g + wd y + mu (y - x_t)

Symbols -> options: mu -> ``client.mu`` (default 0.1, the reference's ``--lamb``),
eta_t -> ``client.lr * client.lr_decay^t``, wd -> ``client.weight_decay``, clip ->
``client.clip_norm``. Server: any plain strategy (preset ``fedprox``: unweighted mean of the
deltas, server lr 1, as FL-Simulator). mu = 0 is FedAvg's client step exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import Tensor

from clients.base import Batch, Carry, FunctionalClient, GradFn, clip_by_global_norm, sgd_update

__all__ = ["FedProx", "FedProxOptions"]


@dataclass(frozen=True)
class FedProxOptions:
    clip_norm: float | None
    weight_decay: float
    mu: float


class FedProx(FunctionalClient):
    name = "fedprox"
    option_names = ("mu",)

    def options(self, config: dict[str, Any]) -> FedProxOptions:
        clip, wd = self.common(config)
        return FedProxOptions(clip, wd, self.option(config, "mu", 0.1))

    def start(self, options: FedProxOptions, params: Tensor, state: Any, broadcast: Any, lr: float) -> Carry:
        carry = self.base_carry(params, lr)
        carry["pull"] = options.mu * params  # gradient of the loss term -mu <y, x_t>, negated
        return carry

    def step(self, options: FedProxOptions, carry: Carry, batch: Batch, grad: GradFn) -> tuple[Carry, Tensor]:
        loss, g = grad(carry["y"], batch)
        direction = clip_by_global_norm(g - carry["pull"], options.clip_norm)
        y = sgd_update(carry["y"], direction, carry["lr"], options.weight_decay + options.mu)
        return carry | {"y": y, "steps": carry["steps"] + 1}, loss

    def finish(self, options: FedProxOptions, carry: Carry) -> tuple[Tensor, None, None]:
        return carry["y"] - carry["x0"], None, None
