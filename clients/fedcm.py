"""FedCM: local steps along a mix of the local gradient and the server's momentum.

Xu, Wang, Wang, Zhao, "FedCM: Federated Learning with Client-level Momentum", arXiv
2106.10874. Reference code: woodenchild95/FL-Simulator client/fedcm.py L22-33 and
server/MoFedSAM.py L15, L27, L33 (@502bec6): the loss is alpha F + (1 - alpha) <y, m>, so

    y <- y - eta_t (clip(alpha g + (1 - alpha) m) + wd y)

m is the server's per-version broadcast (``broadcast["momentum"]``, zeros in round 0): the
mean over the previous round's participants of -Delta_i / (K_i eta) (strategies/fedcm.py).
Each client returns that estimate of its average gradient as the extra ``mean_grad``.
Deviation: the reference divides the MEAN delta by one K (local_epochs * m_0 / batch) and the
previous round's eta; fedsim divides each client's delta by its own K_i and eta, the same
when all clients take the same number of steps.

Symbols -> options: alpha -> ``client.alpha`` (default 0.1), eta_t -> ``client.lr *
client.lr_decay^t``, wd -> ``client.weight_decay``, clip -> ``client.clip_norm``. alpha = 1
is FedAvg's client step. MoFedSAM (clients/mofedsam.py) is this step with a SAM gradient.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from clients.base import Batch, Carry, FunctionalClient, GradFn, clip_by_global_norm, sgd_update, zeros_or

__all__ = ["FedCM", "FedCMOptions"]


@dataclass(frozen=True)
class FedCMOptions:
    clip_norm: float | None
    weight_decay: float
    alpha: float
    rho: float = 0.0  # SAM radius (MoFedSAM); 0: plain gradient


class FedCM(FunctionalClient):
    name = "fedcm"
    server_part = "momentum"
    option_names: tuple[str, ...] = ("alpha",)

    def options(self, config: dict[str, Any]) -> FedCMOptions:
        clip, wd = self.common(config)
        return FedCMOptions(clip, wd, self.option(config, "alpha", 0.1))

    def gradient(self, options: FedCMOptions, y: Tensor, batch: Batch, grad: GradFn) -> tuple[Tensor, Tensor]:
        return grad(y, batch)

    def start(
        self, options: FedCMOptions, params: Tensor, state: Any, broadcast: dict[str, Tensor] | None, lr: float
    ) -> Carry:
        carry = self.base_carry(params, lr)
        carry["pull"] = (1 - options.alpha) * zeros_or(broadcast, "momentum", params)
        return carry

    def step(self, options: FedCMOptions, carry: Carry, batch: Batch, grad: GradFn) -> tuple[Carry, Tensor]:
        loss, g = self.gradient(options, carry["y"], batch, grad)
        direction = clip_by_global_norm(options.alpha * g + carry["pull"], options.clip_norm)
        y = sgd_update(carry["y"], direction, carry["lr"], options.weight_decay)
        return carry | {"y": y, "steps": carry["steps"] + 1}, loss

    def finish(self, options: FedCMOptions, carry: Carry) -> tuple[Tensor, None, dict[str, Tensor]]:
        delta = carry["y"] - carry["x0"]
        k_eta = carry["steps"] * carry["lr"]
        mean_grad = torch.where(k_eta > 0, -delta / k_eta, torch.zeros_like(delta))
        return delta, None, {"mean_grad": mean_grad}
