"""Staleness weightings s(tau) for asynchronous aggregation: one factor per client update.

tau = server version when the update arrives - version the client started from. Every
function is 1 at tau = 0 and non-increasing, as in Xie, Koyejo, Gupta, "Asynchronous
Federated Optimization" (arXiv 1903.03934, Sec. 5.2; reference code: PLATO
``examples/async/fedasync/fedasync_server.py``, APPFL ``fedasync_aggregator.py``):

- ``constant``: s(tau) = 1
- ``polynomial``: s(tau) = (tau + 1)^(-a); a = 0.5 is FedBuff's 1/sqrt(1 + tau) (Nguyen et al.,
  arXiv 2106.06639; FedScale ``async_aggregator.py``), without FLSim's normalisation by the
  weight at the average staleness
- ``hinge``: s(tau) = 1 if tau <= b, else 1 / (a (tau - b) + 1)

Symbols: a -> ``strategy.staleness_a``, b -> ``strategy.staleness_b``. The factor multiplies
each update before the weighting combines them, so it composes with every weighting and
server optimizer.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from fedsim.registry import Registry

__all__ = ["STALENESS", "constant", "polynomial", "hinge"]

StalenessFn = Callable[[np.ndarray], np.ndarray]
STALENESS: Registry[Callable[..., StalenessFn]] = Registry("staleness weighting")


@STALENESS.register("constant", "s(tau) = 1")
def constant() -> StalenessFn:
    return lambda tau: np.ones(len(tau))


@STALENESS.register("polynomial", "s(tau) = (tau + 1)^(-a), a = staleness_a (default 0.5: FedBuff)")
def polynomial(a: float = 0.5) -> StalenessFn:
    if a < 0:
        raise ValueError(f"strategy.staleness_a must be >= 0, got {a}")
    return lambda tau: (np.asarray(tau, dtype=np.float64) + 1.0) ** (-a)


@STALENESS.register("hinge", "s(tau) = 1 if tau <= b else 1 / (a (tau - b) + 1); a, b = staleness_a, _b (10, 4)")
def hinge(a: float = 10.0, b: float = 4.0) -> StalenessFn:
    def weight(tau: np.ndarray) -> np.ndarray:
        tau = np.asarray(tau, dtype=np.float64)
        return np.where(tau <= b, 1.0, 1.0 / (a * (tau - b) + 1.0))

    return weight
