"""FedAsync: the server mixes each arriving local model into the global one.

Xie, Koyejo, Gupta, "Asynchronous Federated Optimization", OPT 2020, arXiv 1903.03934;
reference code PLATO ``examples/async/fedasync`` and APPFL ``FedAsyncAggregator``.

    x_{t+1} = (1 - alpha_t) x_t + alpha_t x_new,   alpha_t = alpha * s(tau)

with x_new = x_s + delta the client's model (x_s the model it started from). fedsim writes it
as x_t + alpha * s(tau) * (x_new - x_t): the update is *rebased* onto the current model
(``mixing``), the staleness factor s comes from :mod:`strategies.staleness`, and alpha is the
server optimizer's lr, so any server optimizer composes. Symbols: alpha -> ``strategy.server_lr``
(default 0.9, PLATO/APPFL), s -> ``strategy.staleness`` (default polynomial, a = 0.5, APPFL).
alpha is fixed (PLATO's ``adaptive_mixing`` compounds it across arrivals; we do not). The
client's proximal term rho is not applied (rho = 0, as PLATO). Mixing and FLSim's delta form
(x_t + alpha (x_new - x_s)) coincide when tau = 0.

With the ``buffered`` scheduler and buffer_size 1 (the preset), each arrival is one server
update; with a larger buffer the rebased updates are averaged.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import torch

from fedsim.types import ClientResult

__all__ = ["rebase"]


def rebase(results: Sequence[ClientResult], params: torch.Tensor) -> list[ClientResult]:
    """Each update as x_new - x_t: (start model + delta) - current model."""
    out = []
    for r in results:
        if r.base_params is None or r.base_params is params:
            out.append(r)
            continue
        out.append(replace(r, delta=(r.base_params.to(params.device) + r.delta.to(params.device)) - params))
    return out
