"""FedSpeed: FedDyn's prox-correction step taken along a perturbed (SAM) gradient.

Sun, Shen, Huang, Ding, Tao, "FedSpeed: Larger Local Interval, Less Communication Round,
and Higher Generalization Accuracy", ICLR 2023, arXiv 2302.10429. Reference code (the
authors'): woodenchild95/FL-Simulator client/fedspeed.py L12-36, optimizer/ESAM.py L21-69,
server/FedSpeed.py L10, L31-41 (@502bec6). Per minibatch xi:

    g1 = grad F_i(y; xi)                                   loss gradient only
    e  = rho g1 / (|g1|_2 + 1e-7)                          global L2 norm over all parameters
    g2 = grad F_i(y + e; xi)                               same minibatch
    y <- y - eta_t (clip(g2 + beta (h_i - x_t)) + (wd + beta) y)
    h_i <- h_i + Delta_i                                   after the round (client state)

Server (strategies/feddyn.py, shared with FedDyn): x_{t+1} = mean_{S_t} y_i + (1/N) sum_i h_i.
The paper's prox-correction g_hat_i = -h_i / lambda, prox coefficient 1/lambda = beta.

Symbols -> options: beta = 1/lambda -> ``client.lamb`` (default 0.1), rho -> ``client.rho``
(0.1), eta_t -> ``client.lr * client.lr_decay^t`` (0.1 * 0.998^t), wd ->
``client.weight_decay`` (1e-3), clip -> ``client.clip_norm`` (10), all set by the preset
``fedspeed``. ``client.sam_alpha`` (default 1, the reference code's behaviour) mixes
g = (1 - alpha) g1 + alpha g2, the paper's quasi-gradient [unverified against the paper].
Not implemented: relaxed initialisation (``--use-RI``, off in the reference) and the
paper's averaging of h over participants only. rho = 0 is FedDyn's client exactly.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from clients.base import Batch, GradFn, sam_gradients
from clients.feddyn import FedDyn, FedDynOptions

__all__ = ["FedSpeed"]


class FedSpeed(FedDyn):
    name = "fedspeed"
    server_part = "feddyn"
    option_names = ("lamb", "rho", "sam_alpha")

    def options(self, config: dict[str, Any]) -> FedDynOptions:
        clip, wd = self.common(config)
        return FedDynOptions(
            clip,
            wd,
            self.option(config, "lamb", 0.1),
            self.option(config, "rho", 0.1),
            self.option(config, "sam_alpha", 1.0),
        )

    def gradient(self, options: FedDynOptions, y: Tensor, batch: Batch, grad: GradFn) -> tuple[Tensor, Tensor]:
        loss, g1, g2 = sam_gradients(grad, y, batch, options.rho)
        if options.sam_alpha == 1:
            return loss, g2
        return loss, (1 - options.sam_alpha) * g1 + options.sam_alpha * g2
