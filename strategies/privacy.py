"""Central differential privacy on the server: DP-FedAvg's fixed denominator and Gaussian noise,
and adaptive clipping.

- weighting ``expected_cohort``: U = (sum of the clipped deltas) / D with a FIXED D, the
  expected cohort size (qN for Poisson sampling, the buffer size K for FedBuff), so one
  client moves U by at most C / D whoever else took part (McMahan, Ramage, Talwar, Zhang,
  "Learning Differentially Private Recurrent Language Models", ICLR 2018, arXiv 1710.06963,
  Alg. 1 "fixed denominator" estimator). At most one update per client enters one release:
  a second arrival of the same client in one asynchronous buffer is left out (counted as
  ``dp_duplicates_dropped``), so the sensitivity stays C.
- aggregate transform ``gaussian_noise``: U += N(0, (z * C / D)^2 I), i.e. noise of std z*C on
  the SUM; C is the clip norm that clipped this update (from adaptive clipping when it runs first).
- aggregate transform ``adaptive_clip`` (Andrew, Thakkar, McMahan, Ramaswamy, "Differentially
  Private Learning with Adaptive Clipping", NeurIPS 2021, arXiv 1905.03871, Alg. 1): clients
  report b_i = 1 if ||Delta_i|| <= C; the server releases b = (sum b_i + N(0, sigma_b^2)) / D and
  sets C <- C * exp(-eta * (b - gamma)), so C tracks the gamma-quantile of update norms. The
  round's noise uses the C that clipped the round; the next round's jobs get the new C.

Noise is drawn from counter-based seeds (seed, purpose, version): runs reproduce and resume
bit for bit. This is a simulation, not a secure implementation: a deployment needs a
cryptographically secure generator and secure aggregation.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from fedsim.rng import derive_seed
from fedsim.types import ClientResult, PopulationInfo
from strategies.transforms import ServerContext
from strategies.weighting import WEIGHTINGS, weighted_sum

__all__ = ["ExpectedCohort", "GaussianNoise", "AdaptiveClip", "first_per_client"]


def first_per_client(results: Sequence[ClientResult]) -> tuple[list[ClientResult], int]:
    """The results with each client's first one only, and how many were left out."""
    seen: set[int] = set()
    kept = []
    for r in results:
        if r.client_id not in seen:
            seen.add(r.client_id)
            kept.append(r)
    return kept, len(results) - len(kept)


class ExpectedCohort:
    """c_i = 1 / D for a fixed D (the expected cohort size); at most one update per client.

    D is given by the privacy plan, or else sum_n p_n over the population's participation
    probabilities (the expected participants of a synchronous round)."""

    def __init__(self, cohort: float | None = None):
        if cohort is not None and not cohort > 0:
            raise ValueError(f"expected cohort size must be positive, got {cohort}")
        self.cohort = cohort

    def init(self, params: torch.Tensor, population: PopulationInfo) -> dict[str, Any]:
        cohort = self.cohort
        if cohort is None:  # without privacy's own D: the expected participants of a round, sum_n p_n
            if population.participation_prob is None:
                raise ValueError(
                    "strategy.weighting 'expected_cohort' needs participation probabilities "
                    "or privacy.mode (which sets the expected cohort size)"
                )
            # fsum is correctly rounded: for N equal probabilities q it is exactly the float q * N of the
            # privacy plan, so a DP run with z = 0 and an unreached clip equals this one bit for bit
            cohort = max(math.fsum(np.asarray(population.participation_prob, dtype=np.float64).tolist()), 1e-12)
        return {"like": torch.zeros_like(params), "duplicates": 0, "cohort": cohort}

    def aggregate(self, state: dict[str, Any], results: Sequence[ClientResult], round: int) -> tuple[torch.Tensor, Any]:
        kept, dropped = first_per_client(results)
        total = weighted_sum(kept, np.full(len(kept), 1.0 / state["cohort"]), state["like"])
        return total, {**state, "duplicates": state["duplicates"] + dropped}


@WEIGHTINGS.register("expected_cohort", "c_i = 1 / D, D = expected cohort size (DP-FedAvg's fixed denominator)")
def expected_cohort(cohort: float | None = None) -> ExpectedCohort:
    return ExpectedCohort(cohort)


def _noise(seed: int, purpose: str, version: int, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
    g = torch.Generator(device="cpu")
    g.manual_seed(derive_seed(seed, purpose, version))
    return torch.randn(shape, generator=g, dtype=torch.float32).to(like.device, like.dtype)


class GaussianNoise:
    """U += N(0, (z * C / D)^2 I): the Gaussian mechanism on the sum of clipped deltas, divided by D."""

    name = "gaussian_noise"

    def __init__(self, noise_multiplier: float, clip: float, cohort: float, seed: int = 0):
        if noise_multiplier < 0:
            raise ValueError(f"privacy.noise_multiplier must be >= 0, got {noise_multiplier}")
        self.noise_multiplier, self.clip, self.cohort, self.seed = (
            float(noise_multiplier),
            float(clip),
            float(cohort),
            seed,
        )
        self.options = {"z": round(self.noise_multiplier, 6), "clip": self.clip, "cohort": self.cohort}

    def init(self, params: torch.Tensor, population: PopulationInfo) -> None:
        return None

    def apply(
        self, aggregate: torch.Tensor, state: Any, ctx: ServerContext
    ) -> tuple[torch.Tensor, Any, dict[str, Any]]:
        clip = float(ctx.info.get("clip_norm", self.clip))
        std = self.noise_multiplier * clip / self.cohort
        if std == 0:
            return aggregate, state, {}
        noise = _noise(self.seed, "dp-noise", ctx.version, tuple(aggregate.shape), aggregate)
        return aggregate + std * noise, state, {"noise_std": std}


class AdaptiveClip:
    """Geometric update of the clip norm toward the target quantile of update norms (Andrew et al. 2021)."""

    name = "adaptive_clip"

    def __init__(
        self, clip: float, target_quantile: float, lr: float, count_noise: float, cohort: float, seed: int = 0
    ):
        self.clip, self.target_quantile, self.lr = float(clip), float(target_quantile), float(lr)
        self.count_noise, self.cohort, self.seed = float(count_noise), float(cohort), seed
        self.options = {
            "initial_clip": self.clip,
            "quantile": self.target_quantile,
            "lr": self.lr,
            "count_noise": round(self.count_noise, 6),
        }

    def init(self, params: torch.Tensor, population: PopulationInfo) -> dict[str, float]:
        return {"clip": self.clip}

    def client_config(self, state: dict[str, float]) -> dict[str, Any]:
        return {"dp_clip_norm": state["clip"]}

    def apply(
        self, aggregate: torch.Tensor, state: dict[str, float], ctx: ServerContext
    ) -> tuple[torch.Tensor, Any, dict[str, Any]]:
        kept, _ = first_per_client(ctx.results)
        unclipped = sum(float(r.metrics.get("dp_unclipped", 1.0)) for r in kept)
        g = torch.Generator(device="cpu")
        g.manual_seed(derive_seed(self.seed, "dp-count-noise", ctx.version))
        noisy = (unclipped + self.count_noise * float(torch.randn((), generator=g, dtype=torch.float64))) / self.cohort
        clip = state["clip"]
        new_clip = clip * math.exp(-self.lr * (noisy - self.target_quantile))
        # "clip_norm" reaches the noise transform after this one: the round's noise is calibrated to
        # the clip that clipped the round, not to the next round's
        return aggregate, {"clip": new_clip}, {"clip_norm": clip, "unclipped_fraction": noisy}
