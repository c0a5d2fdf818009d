"""FedFix's aggregation weights: population share corrected by how many windows a job spans.

Fraboni, Vidal, Kameni, Lorenzi, "A General Theory for Federated Optimization with Asynchronous
and Heterogeneous Clients Updates", arXiv 2206.10189; reference code
Accenture/Labs-Federated-Learning, branch ``asynchronous_FL`` (``FL/server.py``, ``FedFix`` with
``weight``): every Delta-t window the server adds sum_i d_i Delta_i over the clients that
delivered, with d_i = ceil(tau_i / Delta-t) p_i, p_i = m_i / m the client's data share over the
whole population and tau_i its compute time. A client whose job spans several windows
delivers in only one of them; the factor makes its expected weight p_i (unbiased objective).

With the ``periodic`` scheduler the version advances once per window, so a job spanning
ceil(tau_i / Delta-t) windows arrives exactly that many versions minus one stale: fedsim uses
c_i = (staleness_i + 1) m_i / m, which needs no knowledge of the window length or the speeds.
With Delta-t at least the slowest job and every client training (concurrency = N), every
staleness is 0 and this is synchronous FedAvg's sample weighting.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fedsim.types import ClientResult, PopulationInfo
from strategies.weighting import WEIGHTINGS, WeightedAverage

__all__ = ["fedfix_weights"]


@WEIGHTINGS.register("fedfix", "c_i = (staleness_i + 1) m_i / sum over ALL clients of m_n (FedFix, Fraboni et al.)")
def fedfix_weights() -> WeightedAverage:
    def coefficients(results: Sequence[ClientResult], population: PopulationInfo) -> np.ndarray:
        total = float(np.sum(population.num_samples))
        m = np.array([r.num_samples for r in results], dtype=np.float64)
        windows = np.array([r.staleness + 1 for r in results], dtype=np.float64)
        return windows * m / total

    return WeightedAverage(coefficients)
