"""Local SGD whose client sends the Polyak momentum of its updates: the client of MoNNA.

Farhadkhani, Guerraoui, Gupta, Hoang, Pinot, Stephan, "Robust Collaborative Learning with
Linear Gradient Overhead" (ICML 2023, arXiv 2209.10931; code LPD-EPFL/robust-collaborative-learning):
each honest worker sends its momentum m_t = beta m_{t-1} + (1 - beta) g_t rather than its
gradient, which shrinks the honest vectors' spread that a robust rule must tolerate. In
federated rounds the "gradient" is the client's local update, so a client here sends

    m_t = beta * m_{t-1} + (1 - beta) * Delta_t,      m_0 = 0, no bias correction (byzfl's convention)

``m`` is the client's persistent state (``ClientStateStore``, checkpointed), updated at each
of its participations: with partial participation it spans that client's own rounds, not the
server's. The server side is any aggregator (preset ``monna``: nearest-neighbour mixing, then a
trimmed mean; strategies/robust/nnm.py). Option: ``client.beta`` (default 0.9, byzfl's
benchmark value). Attacks that change the update (clients/transforms/attacks.py) act on the
sent m_t; an attacker's stored m stays honest.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import Tensor

from clients.base import Batch, Carry, FunctionalClient, GradFn, zeros_or
from clients.sgd import LocalSGD, SGDOptions

__all__ = ["Polyak", "PolyakOptions"]


@dataclass(frozen=True)
class PolyakOptions(SGDOptions):
    beta: float = 0.9


_SGD = LocalSGD()


class Polyak(FunctionalClient):
    """The ``sgd`` client's steps (torch.optim.SGD math, so client.momentum works within a job)."""

    name = "polyak"
    optimizers = ("sgd",)  # a step function only: no torch.optim ``train`` path that would skip m
    takes_optimizer_options = True
    option_names: tuple[str, ...] = ("beta",)
    state_vectors = 1  # m

    def options(self, config: dict[str, Any]) -> PolyakOptions:
        base = _SGD.options(config)
        return PolyakOptions(**vars(base), beta=self.option(config, "beta", 0.9))

    def start(self, options: PolyakOptions, params: Tensor, state: Any, broadcast: Any, lr: float) -> Carry:
        carry = _SGD.start(options, params, state, broadcast, lr)
        carry["m"] = zeros_or(state, "momentum", params)
        return carry

    def step(self, options: PolyakOptions, carry: Carry, batch: Batch, grad: GradFn) -> tuple[Carry, Tensor]:
        return _SGD.step(options, carry, batch, grad)

    def finish(self, options: PolyakOptions, carry: Carry) -> tuple[Tensor, dict[str, Tensor], None]:
        delta = carry["y"] - carry["x0"]
        m = options.beta * carry["m"] + (1 - options.beta) * delta
        return m, {"momentum": m}, None
