"""A noisy uplink: additive white Gaussian noise on the update the server receives.

Delta <- Delta + N(0, sigma^2 I) with sigma^2 = ||Delta||^2 / (d * 10^(snr_db / 10)), i.e. the
received signal-to-noise ratio per coordinate is ``snr_db`` decibels (the setting of "Noise-Robust
and Resource-Efficient ADMM-based Federated Learning" and of analog over-the-air FL). It models an
uncoded analog channel carrying the dense update; after a compressor it is added to the
decompressed update (every coordinate), which overstates the noise a sparse payload would see.
Noise comes from the job's seed, so every executor draws the same.
"""

from __future__ import annotations

import math

import torch

from clients.transforms import CLIENT_TRANSFORMS, ClientContext
from fedsim.rng import derive_seed

__all__ = ["LinkNoise", "noise_std"]


def noise_std(norms: torch.Tensor, d: int, snr_db: float) -> torch.Tensor:
    return norms / math.sqrt(d * 10.0 ** (snr_db / 10.0))


@CLIENT_TRANSFORMS.register("link_noise", "additive Gaussian noise on the uploaded update at a given SNR (dB)")
class LinkNoise:
    name = "link_noise"

    def __init__(self, snr_db: float):
        if not math.isfinite(snr_db):
            raise ValueError(f"communication.uplink_snr_db must be finite, got {snr_db}")
        self.snr_db = float(snr_db)

    def apply(self, updates: torch.Tensor, ctx: ClientContext) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        d = updates.shape[1]
        std = noise_std(torch.linalg.vector_norm(updates, dim=1), d, self.snr_db)
        noise = []
        for seed in ctx.seeds:
            g = torch.Generator(device="cpu")
            g.manual_seed(derive_seed(seed, "link-noise-up"))
            noise.append(torch.randn(d, generator=g))
        return updates + std[:, None] * torch.stack(noise).to(updates), {"link_noise_std": std}
