"""Byzantine attacks that an attacker applies to its own update (client transforms).

Each acts only on the rows whose job config carries ``byzantine`` (set by the server's
``configure`` for the clients fedsim/attacks.py chose); honest rows pass through untouched,
bit for bit. None of them sees another client's update (the omniscient attacks, ALIE and
IPM, run at the server: strategies/robust/attacks.py).

- ``attack_sign_flip``: Delta <- -Delta (the attacker's own update; byzfl's SignFlipping
  sends -mean(honest) instead, which needs omniscience).
- ``attack_scale``: Delta <- scale * Delta.
- ``attack_gaussian``: Delta <- N(0, std^2 I), drawn from the job's seed (the same on every executor).
"""

from __future__ import annotations

import torch

from clients.transforms import CLIENT_TRANSFORMS, ClientContext
from fedsim.rng import derive_seed

__all__ = ["SignFlip", "Scale", "GaussianAttack", "byzantine_rows"]


def byzantine_rows(ctx: ClientContext) -> list[int]:
    return [k for k, config in enumerate(ctx.configs) if config.get("byzantine")]


@CLIENT_TRANSFORMS.register("attack_sign_flip", "Byzantine rows send -Delta")
class SignFlip:
    name = "attack_sign_flip"

    def apply(self, updates: torch.Tensor, ctx: ClientContext) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        rows = byzantine_rows(ctx)
        if not rows:
            return updates, {}  # no metrics: the server counts attackers (fedsim.attacks.ByzantineMonitor)
        out = updates.clone()
        out[rows] = -updates[rows]
        return out, {}


@CLIENT_TRANSFORMS.register("attack_scale", "Byzantine rows send scale * Delta")
class Scale:
    name = "attack_scale"

    def __init__(self, scale: float = 10.0):
        self.scale = float(scale)

    def apply(self, updates: torch.Tensor, ctx: ClientContext) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        rows = byzantine_rows(ctx)
        if not rows:
            return updates, {}
        out = updates.clone()
        out[rows] = self.scale * updates[rows]
        return out, {}


@CLIENT_TRANSFORMS.register("attack_gaussian", "Byzantine rows send N(0, std^2 I) instead of Delta")
class GaussianAttack:
    name = "attack_gaussian"

    def __init__(self, std: float = 1.0):
        self.std = float(std)

    def apply(self, updates: torch.Tensor, ctx: ClientContext) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        rows = byzantine_rows(ctx)
        if not rows:
            return updates, {}
        out = updates.clone()
        for k in rows:
            g = torch.Generator(device="cpu")
            g.manual_seed(derive_seed(ctx.seeds[k], "byzantine-gaussian"))
            noise = torch.randn(updates.shape[1], generator=g, dtype=torch.float32)
            out[k] = (self.std * noise).to(out.device, out.dtype)
        return out, {}
