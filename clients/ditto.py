"""Ditto: a personal model regularized toward the global model, trained beside FedAvg's client.

Li, Hu, Beirami, Smith, "Ditto: Fair and Robust Federated Learning Through Personalization",
ICML 2021, arXiv 2012.04221. Reference code: litian96/ditto ``flearn/trainers_MTL/ditto.py``
L85-L125 (@26d9b29). Per local minibatch, one batch for both updates:

    v <- v - eta_t (clip(grad F(v)) + wd v + lambda (v - w_t))     the personal model
    w <- w - eta_t (clip(grad F(w)) + wd w)                          the client's copy of the global model

with w_t the ROUND-START global model (not the client's moving copy). The client sends w's
delta; v is its state (``state["v"]``), never averaged, and is its personalized model.

Symbols -> options: lambda -> ``client.lamb`` (default 1, the paper's scripts; the reference's
main.py defaults to 0), eta_t -> ``client.lr * client.lr_decay^t`` (the same lr for both
models, as the reference), wd -> ``client.weight_decay``, clip -> ``client.clip_norm``.

Deviations, stated: (1) the lambda term is taken as a proximal (implicit) step,
v <- (v - eta_t (clip(g) + wd v) + eta_t lambda w_t) / (1 + eta_t lambda), which equals the
reference's explicit step up to O((eta lambda)^2), is stable for any lambda (the explicit step
diverges once eta lambda > 2) and gives v = w_t exactly as lambda -> infinity. (2) v starts as a
copy of the global model the client receives at its first participation (the reference copies
the initial model for every client).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import Tensor

from clients.base import Batch, Carry, FunctionalClient, GradFn, clip_by_global_norm, sgd_update

__all__ = ["Ditto", "DittoOptions"]


@dataclass(frozen=True)
class DittoOptions:
    clip_norm: float | None
    weight_decay: float
    lamb: float


class Ditto(FunctionalClient):
    name = "ditto"
    option_names = ("lamb",)
    state_vectors = 1  # v

    def options(self, config: dict[str, Any]) -> DittoOptions:
        return DittoOptions(*self.common(config), lamb=self.option(config, "lamb", 1.0))

    def start(
        self, options: DittoOptions, params: Tensor, state: dict[str, Tensor] | None, broadcast: Any, lr: float
    ) -> Carry:
        carry = self.base_carry(params, lr)
        carry["v"] = params.clone() if state is None else state["v"].to(params.device, params.dtype)
        return carry

    def step(self, options: DittoOptions, carry: Carry, batch: Batch, grad: GradFn) -> tuple[Carry, Tensor]:
        lr = carry["lr"]
        _, g_v = grad(carry["v"], batch)
        v = sgd_update(carry["v"], clip_by_global_norm(g_v, options.clip_norm), lr, options.weight_decay)
        if options.lamb:
            pull = lr * options.lamb
            v = (v + pull * carry["x0"]) / (1 + pull)
        loss, g = grad(carry["y"], batch)
        w = sgd_update(carry["y"], clip_by_global_norm(g, options.clip_norm), lr, options.weight_decay)
        return carry | {"y": w, "v": v, "steps": carry["steps"] + 1}, loss

    def finish(self, options: DittoOptions, carry: Carry) -> tuple[Tensor, dict[str, Tensor], None]:
        return carry["y"] - carry["x0"], {"v": carry["v"]}, None

    def personalize(self, options: DittoOptions, global_params: Tensor, state: dict[str, Tensor]) -> Tensor:
        return state["v"].to(global_params.device, global_params.dtype)
