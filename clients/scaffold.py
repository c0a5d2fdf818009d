"""SCAFFOLD (option II): local steps corrected by control variates c (server) and c_i (client).

Karimireddy, Kale, Mohri, Reddi, Stich, Suresh, "SCAFFOLD: Stochastic Controlled Averaging
for Federated Learning", ICML 2020, arXiv 1910.06378. Reference code:
woodenchild95/FL-Simulator client/scaffold.py L22-33, server/SCAFFOLD.py L11-54 (@502bec6):

    y <- y - eta_t (clip(g + c - c_i) + wd y)              c - c_i is a loss term: clipped with g
    c_i+ = c_i - c - Delta_i / (K eta_t)                   option II, with c not yet updated

The client gets c as the server's per-version broadcast (``broadcast["c"]``) and c_i as its
client state (``state["c"]``, zeros before its first round); it returns the new state c_i+
and the extra ``delta_c`` = c_i+ - c_i, from which the server part (strategies/scaffold.py)
updates c <- c + (1/N) sum_{i in S_t} delta_c_i.

Symbols -> options: eta_t -> ``client.lr * client.lr_decay^t``, wd ->
``client.weight_decay``, clip -> ``client.clip_norm``; K = this client's number of local
steps. Deviation: the reference uses one K for all clients, local_epochs * m_0 / batch as a
float from client 0's data size (server/SCAFFOLD.py L22); with equal client sizes that are
multiples of the batch size both are the same.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from clients.base import Batch, Carry, FunctionalClient, GradFn, clip_by_global_norm, sgd_update, zeros_or

__all__ = ["Scaffold", "ScaffoldOptions"]


@dataclass(frozen=True)
class ScaffoldOptions:
    clip_norm: float | None
    weight_decay: float


class Scaffold(FunctionalClient):
    name = "scaffold"
    server_part = "scaffold"
    option_names = ()
    state_vectors = 1  # c_i

    def options(self, config: dict[str, Any]) -> ScaffoldOptions:
        return ScaffoldOptions(*self.common(config))

    def start(
        self,
        options: ScaffoldOptions,
        params: Tensor,
        state: dict[str, Tensor] | None,
        broadcast: dict[str, Tensor] | None,
        lr: float,
    ) -> Carry:
        carry = self.base_carry(params, lr)
        c_i = zeros_or(state, "c", params)
        carry["c_i"] = c_i
        carry["correction"] = zeros_or(broadcast, "c", params) - c_i
        return carry

    def step(self, options: ScaffoldOptions, carry: Carry, batch: Batch, grad: GradFn) -> tuple[Carry, Tensor]:
        loss, g = grad(carry["y"], batch)
        direction = clip_by_global_norm(g + carry["correction"], options.clip_norm)
        y = sgd_update(carry["y"], direction, carry["lr"], options.weight_decay)
        return carry | {"y": y, "steps": carry["steps"] + 1}, loss

    def finish(self, options: ScaffoldOptions, carry: Carry) -> tuple[Tensor, dict[str, Tensor], dict[str, Tensor]]:
        delta = carry["y"] - carry["x0"]
        k_eta = carry["steps"] * carry["lr"]
        per_step = torch.where(k_eta > 0, delta / k_eta, torch.zeros_like(delta))  # lr = 0: no drift estimate
        c_new = -carry["correction"] - per_step  # c_i - c - delta / (K eta)
        return delta, {"c": c_new}, {"delta_c": c_new - carry["c_i"]}
