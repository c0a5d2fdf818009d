"""Federated ADMM: an inexact local augmented-Lagrangian solve with a per-client dual variable.

The problem is consensus: minimise sum_i f_i(w_i) subject to w_i = z. Its augmented Lagrangian
with penalty rho and duals lambda_i gives the ADMM iteration (Boyd et al., "Distributed
Optimization and Statistical Learning via the Alternating Direction Method of Multipliers",
2011, section 7.1); in federated form, as FedADMM (Gong, Li, Freris, ICDE 2022, arXiv
2204.03529) and the ADMM baseline that Lari, Arablouei, Gogineni, Werner, "Noise-Robust and
Resource-Efficient ADMM-based Federated Learning" (arXiv 2409.13451) start from, a client i in
S_t that receives the global model z does:

    w_i   <- K SGD steps on  f_i(w) + <lambda_i, w - z> + (rho/2) |w - z|^2, from w = z
    lambda_i <- lambda_i + rho (w_i - z)                  (dual ascent, with the same received z)
    send  u_i = w_i + lambda_i / rho                      (as the delta u_i - z)

and the server (strategies/admm.py) sets z <- (1/|S_t|) sum_{i in S_t} u_i. One SGD step is

    y <- y - eta_t (clip(g - (rho z - lambda_i)) + (wd + rho) y)     unclipped: g + lambda_i + rho (y - z)

which is FedProx's step (clients/fedprox.py, mu = rho) with the linear term lambda_i added: with
lambda_i = 0 the local model IS FedProx's, and the first round's delta is twice FedProx's
(lambda_i / rho = w_i - z is sent on top of w_i - z).

What follows the sources and what is fedsim's choice:

- from ADMM / FedADMM: the augmented Lagrangian, the dual ascent step with step rho, the sent
  w_i + lambda_i / rho, the unweighted mean over the participants, lambda_i = 0 before a client's
  first round, non-participants keep their lambda_i (random scheduling).
- fedsim's choices: the inexact solve is K plain SGD steps started at the received z (no
  stopping criterion); the penalty rho is ``client.mu`` (FedProx's proximal coefficient, which it
  generalises; default 0.1, must be > 0), eta_t -> ``client.lr * client.lr_decay^t``, wd ->
  ``client.weight_decay``, clip -> ``client.clip_norm`` (applied like FedProx's, to the loss
  gradient with the linear terms).
- NOT implemented: the paper's own modifications (it eliminates the dual variable with a new
  local update, so a client uses one noisy copy of the global model instead of two, and lets
  unscheduled clients keep updating). Their equations could not be checked against the paper's
  text or code, so this is the standard ADMM that the paper modifies: under a noisy downlink
  (``communication.downlink_snr_db``) the received z enters both the local solve and the dual
  update, which accumulates the noise in lambda_i -- the effect the paper sets out to remove.

lambda_i is the client state (``state["lam"]``), kept by the engine's ClientStateStore.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import Tensor

from clients.base import Batch, Carry, FunctionalClient, GradFn, clip_by_global_norm, sgd_update, zeros_or

__all__ = ["ADMM", "ADMMOptions"]


@dataclass(frozen=True)
class ADMMOptions:
    clip_norm: float | None
    weight_decay: float
    rho: float


class ADMM(FunctionalClient):
    name = "admm"
    server_part = "admm"
    option_names = ("mu",)
    state_vectors = 1  # lambda_i

    def options(self, config: dict[str, Any]) -> ADMMOptions:
        clip, wd = self.common(config)
        rho = self.option(config, "mu", 0.1)
        if not rho > 0:
            raise ValueError(f"client.mu is ADMM's penalty rho and must be > 0 for client algorithm admm, got {rho}")
        return ADMMOptions(clip, wd, rho)

    def start(
        self, options: ADMMOptions, params: Tensor, state: dict[str, Tensor] | None, broadcast: Any, lr: float
    ) -> Carry:
        carry = self.base_carry(params, lr)
        lam = zeros_or(state, "lam", params)
        carry["lam"] = lam
        carry["pull"] = options.rho * params - lam  # -(gradient of <lambda, w> - rho <w, z>)
        return carry

    def step(self, options: ADMMOptions, carry: Carry, batch: Batch, grad: GradFn) -> tuple[Carry, Tensor]:
        loss, g = grad(carry["y"], batch)
        direction = clip_by_global_norm(g - carry["pull"], options.clip_norm)
        y = sgd_update(carry["y"], direction, carry["lr"], options.weight_decay + options.rho)
        return carry | {"y": y, "steps": carry["steps"] + 1}, loss

    def finish(self, options: ADMMOptions, carry: Carry) -> tuple[Tensor, dict[str, Tensor], None]:
        local = carry["y"] - carry["x0"]  # w_i - z
        lam = carry["lam"] + options.rho * local
        return local + lam / options.rho, {"lam": lam}, None
