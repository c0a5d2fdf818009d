"""Local differential privacy: each client adds Gaussian noise to its own (clipped) delta.

Delta <- Delta + N(0, (z_local * C)^2 I), applied after a clip to C, so each release of one
client is the Gaussian mechanism with L2 sensitivity 2C (any update may replace any other).
Its privacy holds per client and per release, without the server's sampling amplification
(compare Kairouz et al., "Advances and Open Problems in Federated Learning", 2021, Sec. 4.2).
Noise comes from the job's seed: the same job draws the same noise on every executor.
"""

from __future__ import annotations

import torch

from clients.transforms import CLIENT_TRANSFORMS, ClientContext
from clients.transforms.clip import CLIP_NORM_KEY
from fedsim.rng import derive_seed

__all__ = ["LocalGaussian"]


@CLIENT_TRANSFORMS.register("local_gaussian", "add N(0, (z*C)^2) to each client's clipped delta (local DP)")
class LocalGaussian:
    name = "local_gaussian"

    def __init__(self, clip: float, noise_multiplier: float):
        if noise_multiplier < 0:
            raise ValueError(f"privacy.noise_multiplier must be >= 0, got {noise_multiplier}")
        self.clip, self.noise_multiplier = float(clip), float(noise_multiplier)

    def apply(self, updates: torch.Tensor, ctx: ClientContext) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if self.noise_multiplier == 0:
            return updates, {}
        out = updates.clone()
        for k, (seed, config) in enumerate(zip(ctx.seeds, ctx.configs)):
            std = self.noise_multiplier * float(config.get(CLIP_NORM_KEY, self.clip))
            g = torch.Generator(device="cpu")
            g.manual_seed(derive_seed(seed, "local-dp-noise"))
            noise = torch.randn(updates.shape[1], generator=g, dtype=torch.float32)
            out[k] += (std * noise).to(out.device, out.dtype)
        return out, {}
