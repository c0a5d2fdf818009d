"""Strategy presets for the robust aggregators: each is its weighting with a server SGD step.

Any of them combines with another server optimizer (``strategy.server_optimizer``) and with
client transforms (privacy's local DP, attacks). f comes from ``strategy.byzantine_f`` or
``population.byzantine_fraction`` (fedsim/attacks.py).
"""

from __future__ import annotations

from strategies.fedopt import register_preset

register_preset(
    "median", "coordinate-wise median of the deltas, server SGD (Yin et al. 2018)", "median", "sgd", server_lr=1.0
)
register_preset(
    "trimmed_mean", "coordinate-wise trimmed mean, f per side (Yin et al. 2018)", "trimmed_mean", "sgd", server_lr=1.0
)
register_preset(
    "krum", "Krum: the delta closest to its n - f - 2 neighbours (Blanchard et al. 2017)", "krum", "sgd", server_lr=1.0
)
register_preset(
    "multi_krum",
    "Multi-Krum: mean of the n - f best Krum scores (Blanchard et al. 2017)",
    "multi_krum",
    "sgd",
    server_lr=1.0,
)
register_preset("bulyan", "Bulyan over Krum (El Mhamdi et al. 2018)", "bulyan", "sgd", server_lr=1.0)
register_preset(
    "geomed", "RFA: geometric median by smoothed Weiszfeld (Pillutla et al. 2022)", "geomed", "sgd", server_lr=1.0
)
register_preset(
    "centered_clipping",
    "centered clipping around the last aggregate, server momentum 0.9 (Karimireddy et al. 2021)",
    "centered_clipping",
    "sgd",
    server_lr=0.1,
    momentum=0.9,
)
register_preset(
    "monna",
    "MoNNA: clients send Polyak momentum; nearest-neighbour mixing + trimmed mean (Farhadkhani et al. 2023)",
    "monna",
    "sgd",
    server_lr=1.0,
    config_defaults={"client": {"algorithm": "polyak"}},
)
