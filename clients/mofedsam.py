"""MoFedSAM: FedCM's momentum-mixed step taken along the sharpness-aware (SAM) gradient.

Qu, Li, Duan, Liu, Tang, Lu, "Generalized Federated Learning via Sharpness Aware
Minimization", ICML 2022, arXiv 2206.02618. Reference code: woodenchild95/FL-Simulator
client/mofedsam.py L12-36, server/MoFedSAM.py L15, L27, L33, optimizer/ESAM.py (@502bec6):

    g2 = grad F(y + rho g1 / (|g1| + 1e-7); xi),   g1 = grad F(y; xi)
    y <- y - eta_t (clip(alpha g2 + (1 - alpha) m) + wd y)

m: the server momentum broadcast, as in FedCM (clients/fedcm.py, strategies/fedcm.py, with the
same deviation in how K is counted). Symbols -> options: alpha -> ``client.alpha`` (0.1;
README "0.05 / 0.1"), rho -> ``client.rho`` (0.1), eta_t -> ``client.lr *
client.lr_decay^t``, wd -> ``client.weight_decay``, clip -> ``client.clip_norm``.
alpha = 1 is FedSAM's client step.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from clients.base import Batch, GradFn, sam_gradients
from clients.fedcm import FedCM, FedCMOptions

__all__ = ["MoFedSAM"]


class MoFedSAM(FedCM):
    name = "mofedsam"
    server_part = "momentum"
    option_names = ("alpha", "rho")

    def options(self, config: dict[str, Any]) -> FedCMOptions:
        clip, wd = self.common(config)
        return FedCMOptions(clip, wd, self.option(config, "alpha", 0.1), self.option(config, "rho", 0.1))

    def gradient(self, options: FedCMOptions, y: Tensor, batch: Batch, grad: GradFn) -> tuple[Tensor, Tensor]:
        loss, _, g2 = sam_gradients(grad, y, batch, options.rho)
        return loss, g2
