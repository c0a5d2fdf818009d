"""FedSpeed preset: the FedSpeed client (clients/fedspeed.py) with FedDyn's server part.

Sun, Shen, Huang, Ding, Tao, "FedSpeed: Larger Local Interval, Less Communication Round, and
Higher Generalization Accuracy", ICLR 2023, arXiv 2302.10429. Reference code:
woodenchild95/FL-Simulator server/FedSpeed.py L34-41, server/server.py L202-224 (@502bec6):
for i in S_t, h_i <- h_i + Delta_i; x_{t+1} = mean_{S_t} y_i + (1/N) sum_{i=1..N} h_i, no
server lr (strategies/feddyn.py computes exactly this). Client defaults are the reference's
train.py L21-50: lr 0.1, lr_decay 0.998, weight_decay 1e-3, clip_norm 10, lamb 0.1, rho 0.1.
Not implemented: averaging h over participants only (the paper's form, [unverified]).
"""

from __future__ import annotations

from strategies import feddyn as _feddyn  # noqa: F401  (registers the "feddyn" server part)
from strategies.fedopt import FL_SIMULATOR_CLIENT, register_preset

register_preset(
    "fedspeed",
    "FedSpeed: prox-correction + SAM client, FedDyn's server (Sun et al. 2023)",
    "feddyn",
    "sgd",
    server_lr=1.0,
    config_defaults={"client": {"algorithm": "fedspeed", **FL_SIMULATOR_CLIENT}},
)
