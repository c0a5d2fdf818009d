"""APFL: adaptive personalized federated learning, a personal model mixed with the global one.

Deng, Kamani, Mahdavi, "Adaptive Personalized Federated Learning", arXiv 2003.13461 (2020).
Reference code: MLOPTPSU/FedTorch ``comms/trainings/federated/centered/apfl.py`` L88-L117 and
``comms/utils/flow_utils.py`` L240-L250 (@ab8068d). Per local minibatch, on the same batch:

    w <- w - eta_t (clip(grad f(w)) + wd w)                    plain SGD: the client's copy of the global model
    vbar = alpha v + (1 - alpha) w                             the personalized model (w already updated)
    alpha <- clip(alpha - eta_alpha <v - w, grad f(vbar)>, 0, 1)      only with client.alpha_lr (adaptive)
    v <- v - eta_t (clip(alpha grad f(vbar)) + wd v)          d f(vbar) / dv = alpha grad f(vbar)

The client sends w's delta (the strategy averages it like FedAvg's); v and alpha are its state
(``state["v"]``, ``state["alpha"]``) and are never averaged. The personalized model used for
evaluation is ``alpha v + (1 - alpha) w`` with w the current global model.

Symbols -> options: alpha_0 -> ``client.alpha`` (default 0.5, the reference's), eta_alpha ->
``client.alpha_lr`` (unset: alpha stays fixed, the reference's default; the paper uses the local
lr), eta_t -> ``client.lr * client.lr_decay^t``, wd -> ``client.weight_decay``, clip ->
``client.clip_norm``.

Choices and deviations, stated: (1) fedsim mixes PARAMETERS (the paper's definition of vbar,
and what ``personalize`` returns), while FedTorch mixes the two models' OUTPUTS; for a linear
model they agree, for a deep net they differ. (2) alpha follows the paper's rule at every local
step; FedTorch updates it once per round at the first step with an extra 0.02 alpha term and
weight decay in the gradient. (3) v starts as a copy of the global model the client receives at
its first participation (the reference copies the initial model for every client at round 0,
the same thing for clients that take part in round 0). With alpha = 0, w is trained exactly as
FedAvg's client trains it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from clients.base import Batch, Carry, FunctionalClient, GradFn, clip_by_global_norm, sgd_update

__all__ = ["APFL", "APFLOptions"]


@dataclass(frozen=True)
class APFLOptions:
    clip_norm: float | None
    weight_decay: float
    alpha: float  # initial (or fixed) mixing weight
    alpha_lr: float | None  # None: alpha fixed


class APFL(FunctionalClient):
    name = "apfl"
    option_names = ("alpha", "alpha_lr")
    state_vectors = 1  # v (plus the scalar alpha)

    def options(self, config: dict[str, Any]) -> APFLOptions:
        alpha_lr = config.get("alpha_lr")
        return APFLOptions(
            *self.common(config),
            alpha=self.option(config, "alpha", 0.5),
            alpha_lr=None if alpha_lr is None else float(alpha_lr),
        )

    def _alpha(self, options: APFLOptions, state: dict[str, Tensor] | None, like: Tensor) -> Tensor:
        if options.alpha_lr is not None and state is not None and "alpha" in state:
            return state["alpha"].to(like.device, like.dtype).reshape(())
        return torch.tensor(options.alpha, dtype=like.dtype, device=like.device)

    def start(
        self, options: APFLOptions, params: Tensor, state: dict[str, Tensor] | None, broadcast: Any, lr: float
    ) -> Carry:
        carry = self.base_carry(params, lr)
        carry["v"] = params.clone() if state is None else state["v"].to(params.device, params.dtype)
        carry["alpha"] = self._alpha(options, state, params)
        return carry

    def step(self, options: APFLOptions, carry: Carry, batch: Batch, grad: GradFn) -> tuple[Carry, Tensor]:
        lr, alpha, v = carry["lr"], carry["alpha"], carry["v"]
        loss, g = grad(carry["y"], batch)
        w = sgd_update(carry["y"], clip_by_global_norm(g, options.clip_norm), lr, options.weight_decay)
        _, g_mix = grad(alpha * v + (1 - alpha) * w, batch)
        out = carry | {"y": w, "steps": carry["steps"] + 1}
        if options.alpha_lr is not None:
            out["alpha"] = torch.clamp(alpha - options.alpha_lr * torch.sum((v - w) * g_mix), 0.0, 1.0)
        out["v"] = sgd_update(v, clip_by_global_norm(alpha * g_mix, options.clip_norm), lr, options.weight_decay)
        return out, loss

    def finish(self, options: APFLOptions, carry: Carry) -> tuple[Tensor, dict[str, Tensor], None]:
        return carry["y"] - carry["x0"], {"v": carry["v"], "alpha": carry["alpha"]}, None

    def personalize(self, options: APFLOptions, global_params: Tensor, state: dict[str, Tensor]) -> Tensor:
        alpha = self._alpha(options, state, global_params)
        return alpha * state["v"].to(global_params.device, global_params.dtype) + (1 - alpha) * global_params
