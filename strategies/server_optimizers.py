"""Server optimizers as (init, update) pairs over the aggregated pseudo-gradient U.

Conventions follow Reddi et al., "Adaptive Federated Optimization" (ICLR 2021,
arXiv 2003.00295): U = weighted mean of client deltas (local - global, so it points
downhill) and the server ADDS the step. Symbols: eta -> ``lr``, beta_1 -> ``beta1``,
beta_2 -> ``beta2``, tau -> ``tau``. The second moment starts at 0 (Flower's choice; the
paper allows v_{-1} >= tau^2). ``bias_correction`` (off by default, as in the paper)
scales lr by sqrt(1 - beta2^t) / (1 - beta1^t) with t = 1, 2, ... server steps;
Flower's FedAdam uses t + 1 instead.

FedAvgM (Hsu et al. 2019, arXiv 1909.06335) is ``sgd`` with momentum: m = beta m + U.

How ``adam`` differs from ``torch.optim.Adam`` (``torch.Adam`` as a server optimizer, see
strategies/library_optimizers.py), for the same U (torch's gradient is -U):

* tau sits outside any bias correction: step = lr * m / (sqrt(v) + tau). torch divides by
  sqrt(v / (1 - beta2^t)) + eps, i.e. its eps is scaled by sqrt(1 - beta2^t) relative to tau;
* no bias correction by default (torch always corrects: lr * m / (1 - beta1^t) / ...);
* defaults tau = 1e-3, beta2 = 0.99 (Reddi et al.'s grid) against torch's eps = 1e-8,
  beta2 = 0.999; a tau that large makes the step near-SGD for small |U| (tau bounds the
  adaptivity), which is the paper's point.

With bias_correction on and tau = eps * sqrt(1 - beta2^t) both agree, but that tau changes
with t, so no fixed setting of one reproduces the other; ``yogi`` and ``adagrad`` differ from
pytorch-optimizer's Yogi and torch's Adagrad in the same ways (and Adagrad's v has no
initial value or lr decay here).

Besides these names the registry resolves library optimizers on demand (``torch.AdamW``,
``adabelief``, ...; see strategies/library_optimizers.py); ``names()`` lists the hand-written
ones only.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import torch

from fedsim.checkpoint import checkpointable
from fedsim.registry import Registry, UnknownNameError

__all__ = ["ServerOptimizer", "SERVER_OPTIMIZERS", "sgd", "adagrad", "adam", "yogi"]


class ServerOptimizer(NamedTuple):
    init: Callable[[torch.Tensor], Any]
    update: Callable[[torch.Tensor, Any], tuple[torch.Tensor, Any]]  # (U, state) -> (step, state)
    # (U, state, params) -> (new params, state): optimizers that step the model themselves
    # (library optimizers: weight decay, trust ratios, ... read x); FedOpt uses it when set
    apply: Callable[[torch.Tensor, Any, torch.Tensor], tuple[torch.Tensor, Any]] | None = None


@checkpointable
class MomentState(NamedTuple):
    count: int
    m: torch.Tensor
    v: torch.Tensor


class ServerOptimizerRegistry(Registry):
    """The hand-written optimizers by name; ``get`` also resolves library names (torch.AdamW, lion, ...)."""

    def get(self, name: str) -> Callable[..., ServerOptimizer]:
        if name in self._entries:
            return super().get(name)
        from strategies.library_optimizers import library_factory  # noqa: PLC0415  (lazy: cycle, import cost)

        return library_factory(name)

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str):
            return False
        try:
            self.get(name)
        except UnknownNameError:
            return False
        return True

    def description(self, name: str) -> str:
        factory = self.get(name)
        return super().description(name) if name in self._entries else factory.description

    def listing(self) -> list[tuple[str, str]]:
        """Every name ``get`` takes, described (``fedsim list``): hand-written, then library ones."""
        from strategies.library_optimizers import listing  # noqa: PLC0415

        return self.describe() + listing()


SERVER_OPTIMIZERS: ServerOptimizerRegistry = ServerOptimizerRegistry("server optimizer")


def _check_lr(lr: float) -> None:
    if lr < 0:
        raise ValueError(f"strategy.server_lr must be >= 0, got {lr}")


@SERVER_OPTIMIZERS.register("sgd", "x += lr * m, m = momentum * m + U (momentum 0: FedAvg; > 0: FedAvgM)")
def sgd(lr: float = 1.0, momentum: float = 0.0) -> ServerOptimizer:
    _check_lr(lr)

    def init(params: torch.Tensor) -> torch.Tensor | None:
        return torch.zeros_like(params) if momentum > 0 else None

    def update(u: torch.Tensor, m: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        if m is None:
            return lr * u, None
        m = momentum * m + u
        return lr * m, m

    return ServerOptimizer(init, update)


def _moment_optimizer(
    lr: float,
    beta1: float,
    tau: float,
    second_moment: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    bias_correction: bool = False,
    beta2: float = 0.0,
) -> ServerOptimizer:
    _check_lr(lr)

    def init(params: torch.Tensor) -> MomentState:
        return MomentState(0, torch.zeros_like(params), torch.zeros_like(params))

    def update(u: torch.Tensor, state: MomentState) -> tuple[torch.Tensor, MomentState]:
        count = state.count + 1
        m = beta1 * state.m + (1 - beta1) * u
        v = second_moment(state.v, u)
        scale = lr
        if bias_correction:
            scale = lr * (1 - beta2**count) ** 0.5 / (1 - beta1**count)
        return scale * m / (v.sqrt() + tau), MomentState(count, m, v)

    return ServerOptimizer(init, update)


@SERVER_OPTIMIZERS.register("adagrad", "FedAdagrad: v += U^2, x += lr * m / (sqrt(v) + tau)")
def adagrad(lr: float = 0.1, beta1: float = 0.0, tau: float = 1e-3) -> ServerOptimizer:
    return _moment_optimizer(lr, beta1, tau, lambda v, u: v + u * u)


@SERVER_OPTIMIZERS.register("adam", "FedAdam: v = b2 v + (1-b2) U^2, x += lr * m / (sqrt(v) + tau)")
def adam(
    lr: float = 0.01, beta1: float = 0.9, beta2: float = 0.99, tau: float = 1e-3, bias_correction: bool = False
) -> ServerOptimizer:
    return _moment_optimizer(lr, beta1, tau, lambda v, u: beta2 * v + (1 - beta2) * u * u, bias_correction, beta2)


@SERVER_OPTIMIZERS.register("yogi", "FedYogi: v -= (1-b2) U^2 sign(v - U^2), x += lr * m / (sqrt(v) + tau)")
def yogi(lr: float = 0.01, beta1: float = 0.9, beta2: float = 0.99, tau: float = 1e-3) -> ServerOptimizer:
    def second_moment(v: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        u2 = u * u
        return v - (1 - beta2) * u2 * torch.sign(v - u2)

    return _moment_optimizer(lr, beta1, tau, second_moment)
