"""Federated ADMM's server part: z <- the unweighted mean of the participants' w_i + lambda_i / rho.

Boyd et al. 2011, section 7.1 (consensus ADMM); FedADMM (Gong, Li, Freris, ICDE 2022, arXiv
2204.03529); the baseline of Lari et al., "Noise-Robust and Resource-Efficient ADMM-based
Federated Learning" (arXiv 2409.13451). Each client sends u_i - z with u_i = w_i + lambda_i / rho
(clients/admm.py), so

    U = (1/|S_t|) sum_{i in S_t} (u_i - z)          z_{t+1} = z + U = mean_{S_t} u_i   (server lr 1)

The mean is unweighted: every client's penalty rho is the same, so the z-minimisation of the
augmented Lagrangian weighs clients equally whatever their sample counts. This is what the
``uniform`` weighting computes; a separate server part exists so that the ``admm`` client is only
paired with it (a sample-weighted mean, or a server lr other than 1, is no longer ADMM's z-step).
A round without participants leaves z unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from fedsim.types import ClientResult, PopulationInfo
from strategies.weighting import WEIGHTINGS

__all__ = ["ADMMAggregator", "admm"]


class ADMMAggregator:
    server_part = "admm"

    def init(self, params: torch.Tensor, population: PopulationInfo) -> dict[str, Any]:
        return {"like": torch.zeros_like(params)}

    def aggregate(
        self, state: dict[str, Any], results: Sequence[ClientResult], round: int
    ) -> tuple[torch.Tensor, dict[str, Any]]:
        if not results:
            return torch.zeros_like(state["like"]), state
        total = torch.zeros_like(state["like"])
        for r in results:
            total.add_(r.delta.to(total.device))
        return total / len(results), state


def admm() -> ADMMAggregator:
    return ADMMAggregator()


admm.server_part = "admm"  # type: ignore[attr-defined]
WEIGHTINGS.register("admm", "ADMM server: z = unweighted mean of w_i + lambda_i / rho (needs client admm)")(admm)


from strategies.fedopt import register_preset  # noqa: E402  (fedopt must not import this module)

register_preset(
    "fedadmm",
    "federated ADMM: local augmented Lagrangian, dual lambda_i per client (Boyd et al. 2011; Gong et al. 2022)",
    "admm",
    "sgd",
    server_lr=1.0,
    config_defaults={"client": {"algorithm": "admm"}},
)
