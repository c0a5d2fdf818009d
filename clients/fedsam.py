"""FedSAM: local steps along the sharpness-aware (SAM) gradient.

Qu, Li, Duan, Liu, Tang, Lu, "Generalized Federated Learning via Sharpness Aware
Minimization", ICML 2022, arXiv 2206.02618. Reference code: woodenchild95/FL-Simulator
client/fedsam.py L12-30 and optimizer/ESAM.py L21-69 (@502bec6):

    g1 = grad F(y; xi),  e = rho g1 / (|g1| + 1e-7),  g2 = grad F(y + e; xi)   (same minibatch)
    y <- y - eta_t (clip(g2) + wd y)

Symbols -> options: rho -> ``client.rho`` (default 0.1), eta_t -> ``client.lr *
client.lr_decay^t``, wd -> ``client.weight_decay``, clip -> ``client.clip_norm``. Two
gradient evaluations per step. Server: any plain strategy (preset ``fedsam``: unweighted
mean, server lr 1). rho = 0 is FedAvg's client step exactly (one gradient evaluation).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import Tensor

from clients.base import Batch, Carry, FunctionalClient, GradFn, clip_by_global_norm, sam_gradients, sgd_update

__all__ = ["FedSAM", "FedSAMOptions"]


@dataclass(frozen=True)
class FedSAMOptions:
    clip_norm: float | None
    weight_decay: float
    rho: float


class FedSAM(FunctionalClient):
    name = "fedsam"
    option_names = ("rho",)

    def options(self, config: dict[str, Any]) -> FedSAMOptions:
        clip, wd = self.common(config)
        return FedSAMOptions(clip, wd, self.option(config, "rho", 0.1))

    def start(self, options: FedSAMOptions, params: Tensor, state: Any, broadcast: Any, lr: float) -> Carry:
        return self.base_carry(params, lr)

    def step(self, options: FedSAMOptions, carry: Carry, batch: Batch, grad: GradFn) -> tuple[Carry, Tensor]:
        loss, _, g2 = sam_gradients(grad, carry["y"], batch, options.rho)
        y = sgd_update(carry["y"], clip_by_global_norm(g2, options.clip_norm), carry["lr"], options.weight_decay)
        return carry | {"y": y, "steps": carry["steps"] + 1}, loss

    def finish(self, options: FedSAMOptions, carry: Carry) -> tuple[Tensor, None, None]:
        return carry["y"] - carry["x0"], None, None
