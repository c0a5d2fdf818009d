"""Projected gradient descent (PGD) on the inputs: the attack of adversarial training and of robust evaluation.

Madry, Makelov, Schmidt, Tsipras, Vladu, "Towards Deep Learning Models Resistant to Adversarial
Attacks", ICLR 2018, arXiv 1706.06083: maximize the loss over the ball ``|delta| <= eps``
around each sample by ``steps`` steps of projected (normalized) gradient ascent,

    linf:  delta <- clamp(delta + step * sign(g), -eps, eps)
    l2:    delta <- P_eps(delta + step * g / |g|_2),   P_eps(d) = d * min(1, eps / |d|_2)

with ``g = d loss(x + delta) / dx`` and norms per sample (over all of a sample's features).
fedsim starts from delta = 0 (the paper's random start would need a random generator inside
the batched step; a zero start keeps PGD deterministic, so serial and vmap runs agree) and does
not clamp ``x + delta`` to a data range (the features of a task have no common range).
``step`` defaults to 2.5 eps / steps (Madry et al.'s rule, so that the walk can reach the
ball's boundary from any start). eps = 0 returns ``x`` unchanged, bit for bit.

:func:`pgd` uses only tensor arithmetic and a given input-gradient function, so it runs inside a
client's step function under ``torch.func.vmap`` (clients/fal.py) and on a resident model
with plain autograd (fedsim/evaluation.py) alike.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

__all__ = ["NORMS", "PGD", "pgd", "per_sample_norm"]

NORMS = ("linf", "l2")
Norm = Literal["linf", "l2"]


@dataclass(frozen=True)
class PGD:
    """An attack's strength: radius ``eps``, ``steps`` steps of size ``step`` (None: 2.5 eps / steps)."""

    eps: float
    steps: int = 10
    step: float | None = None
    norm: Norm = "linf"

    def __post_init__(self) -> None:
        if self.norm not in NORMS:
            raise ValueError(f"PGD norm must be one of {', '.join(NORMS)}, got {self.norm!r}")
        if self.eps < 0 or self.steps < 1 or (self.step is not None and self.step <= 0):
            raise ValueError(f"PGD needs eps >= 0, steps >= 1, step > 0; got {self}")

    @property
    def step_size(self) -> float:
        return self.step if self.step is not None else 2.5 * self.eps / self.steps

    def label(self) -> str:
        return f"{self.norm} eps={self.eps:g} ({self.steps} steps of {self.step_size:g})"


def per_sample_norm(t: Tensor) -> Tensor:
    """L2 norm of each sample (dim 0) over its other dims, shaped to broadcast against ``t``."""
    return torch.linalg.vector_norm(t.reshape(t.shape[0], -1), dim=1).reshape(-1, *([1] * (t.dim() - 1)))


def pgd(input_grad: Callable[[Tensor], Tensor], x: Tensor, attack: PGD) -> Tensor:
    """Adversarial inputs ``x + delta`` with ``|delta| <= attack.eps`` per sample;
    ``input_grad(x_adv)`` is the gradient of the loss to maximize w.r.t. ``x_adv``."""
    eps, step = attack.eps, attack.step_size
    delta = torch.zeros_like(x)
    for _ in range(attack.steps):
        g = input_grad(x + delta)
        if attack.norm == "linf":
            delta = torch.clamp(delta + step * torch.sign(g), -eps, eps)
        else:
            delta = delta + step * g / (per_sample_norm(g) + 1e-12)
            # eps / (|d| + tiny) <= 1 shrinks d onto the sphere; eps = 0 gives 0 (not 0/0)
            delta = delta * torch.clamp(eps / (per_sample_norm(delta) + 1e-12), max=1.0)
    return x + delta
