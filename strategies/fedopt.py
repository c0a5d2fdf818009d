"""FedOpt: aggregate client deltas with a weighting, then take a server-optimizer step.

One strategy class covers FedAvg (McMahan et al., AISTATS 2017, arXiv 1602.05629), FedAvgM
(Hsu et al. 2019, arXiv 1909.06335), FedAdagrad / FedAdam / FedYogi (Reddi et al., ICLR 2021,
arXiv 2003.00295), FedAU and the FedAU paper's baselines: each named preset is a weighting
(strategies/weighting.py, fedau.py, mifa.py, fedvarp.py) times a server optimizer
(strategies/server_optimizers.py). Any weighting combines with any server optimizer.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch

from fedsim.registry import Registry
from fedsim.types import ClientResult, PopulationInfo
from strategies.base import Aggregator, ServerState
from strategies.server_optimizers import SERVER_OPTIMIZERS, ServerOptimizer
from strategies.weighting import WEIGHTINGS

__all__ = ["FedOpt", "Preset", "STRATEGIES", "build_strategy", "resolve_parts", "OPTION_FIELDS"]

# StrategyConfig field -> keyword argument of the part that takes it
OPTION_FIELDS: dict[str, str] = {
    "server_lr": "lr",
    "momentum": "momentum",
    "beta1": "beta1",
    "beta2": "beta2",
    "tau": "tau",
    "bias_correction": "bias_correction",
    "cutoff": "cutoff",
}


@dataclass
class FedOpt:
    name: str
    aggregator: Aggregator
    optimizer: ServerOptimizer

    def init(self, params: torch.Tensor, population: PopulationInfo) -> ServerState:
        params = params.detach().clone().float()
        return ServerState(
            params=params,
            version=0,
            optimizer=self.optimizer.init(params),
            aggregator=self.aggregator.init(params, population),
        )

    def configure(self, state: ServerState, client_id: int, now: float) -> dict[str, Any]:
        return {}

    def aggregate(self, state: ServerState, results: Sequence[ClientResult], now: float) -> ServerState:
        u, aggregator_state = self.aggregator.aggregate(state.aggregator, results, state.version)
        step, optimizer_state = self.optimizer.update(u, state.optimizer)
        return state.replace(
            params=state.params + step,
            version=state.version + 1,
            optimizer=optimizer_state,
            aggregator=aggregator_state,
        )


@dataclass(frozen=True)
class Preset:
    """A named strategy: default parts and options, plus config defaults it suggests."""

    description: str
    weighting: str
    server_optimizer: str
    options: dict[str, Any] = field(default_factory=dict)  # StrategyConfig field -> value
    config_defaults: dict[str, Any] = field(default_factory=dict)  # e.g. population settings


STRATEGIES: Registry[Preset] = Registry("strategy")

# FedAU's setting (Wang & Ji, arXiv 2306.03401, Sec. 6), scaled to run in about half a minute on
# 2 CPU cores: label-skewed clients whose participation probabilities (unknown to the server)
# follow their label mix, local SGD with I = 5 steps of minibatch 16, and a horizon long enough
# for rarely seen clients (p = 0.02) to be seen ~20 times. At 300 rounds FedAU and the plain
# average over participants were tied (experiments/fedau_participation.py).
HETEROGENEOUS_PARTICIPATION = {
    "task": {"name": "digits"},
    "rounds": 1000,
    "data": {"num_clients": 100, "partition": "dirichlet", "alpha": 0.1},
    "population": {"participation": "bernoulli"},
    "client": {"lr": 0.05, "local_steps": 5, "batch_size": 16},
    "eval": {"every": 50},
}


def _register(name: str, description: str, weighting: str, server_optimizer: str, **options: Any) -> None:
    config_defaults = options.pop("config_defaults", {})
    STRATEGIES.register(name, description)(Preset(description, weighting, server_optimizer, options, config_defaults))


_register("fedavg", "FedAvg: sample-weighted mean of deltas, server SGD (McMahan et al. 2017)", "samples", "sgd", server_lr=1.0)
_register("fedavgm", "FedAvgM: FedAvg with server momentum 0.9 (Hsu et al. 2019)", "samples", "sgd", server_lr=1.0, momentum=0.9)
_register("fedadagrad", "FedAdagrad: adaptive server step (Reddi et al. 2021)", "samples", "adagrad", server_lr=0.1, tau=1e-3)
_register("fedadam", "FedAdam: Adam server step (Reddi et al. 2021)", "samples", "adam", server_lr=0.01, tau=1e-3)
_register("fedyogi", "FedYogi: Yogi server step (Reddi et al. 2021)", "samples", "yogi", server_lr=0.01, tau=1e-3)
_register(
    "fedau", "FedAU: weights = online estimate of 1/p_n from participation intervals (Wang & Ji 2024)",
    "fedau", "sgd", server_lr=1.0, config_defaults=HETEROGENEOUS_PARTICIPATION,
)
_register(
    "fedavg_participating", "FedAU baseline: plain average over participants", "uniform", "sgd",
    server_lr=1.0, config_defaults=HETEROGENEOUS_PARTICIPATION,
)
_register(
    "fedavg_all", "FedAU baseline: sum over participants divided by N", "average_all", "sgd",
    server_lr=1.0, config_defaults=HETEROGENEOUS_PARTICIPATION,
)
_register(
    "fedavg_known", "FedAU baseline (oracle): weights 1/(N p_n) with the true probabilities", "known_prob", "sgd",
    server_lr=1.0, config_defaults=HETEROGENEOUS_PARTICIPATION,
)
_register(
    "mifa", "FedAU baseline: MIFA, mean of every client's latest stored update (Gu et al. 2021)", "mifa", "sgd",
    server_lr=1.0, config_defaults=HETEROGENEOUS_PARTICIPATION,
)
_register(
    "fedvarp", "FedAU baseline: FedVARP, variance reduction with stored updates (Jhunjhunwala et al. 2022)",
    "fedvarp", "sgd", server_lr=1.0, config_defaults=HETEROGENEOUS_PARTICIPATION,
)


def resolve_parts(cfg: Any) -> tuple[str, dict[str, Any], str, dict[str, Any]]:
    """(weighting, its kwargs, server optimizer, its kwargs) for a StrategyConfig.

    Options the user set explicitly must be taken by one of the chosen parts; a preset's own
    defaults are dropped quietly when the user swaps in a part that does not take them.
    """
    preset = STRATEGIES.get(cfg.name)
    weighting = cfg.weighting or preset.weighting
    optimizer = cfg.server_optimizer or preset.server_optimizer
    weighting_factory = WEIGHTINGS.get(weighting)
    optimizer_factory = SERVER_OPTIMIZERS.get(optimizer)
    w_params = set(inspect.signature(weighting_factory).parameters)
    o_params = set(inspect.signature(optimizer_factory).parameters)
    user = {k: getattr(cfg, k) for k in OPTION_FIELDS if getattr(cfg, k) is not None}
    w_kwargs: dict[str, Any] = {}
    o_kwargs: dict[str, Any] = {}
    for key, value in (preset.options | user).items():
        arg = OPTION_FIELDS[key]
        if arg in o_params:
            o_kwargs[arg] = value
        elif arg in w_params:
            w_kwargs[arg] = value
        elif key in user:
            takes = sorted(k for k, a in OPTION_FIELDS.items() if a in o_params | w_params)
            raise ValueError(
                f"strategy.{key} is not used by weighting '{weighting}' with server optimizer "
                f"'{optimizer}'; they take: {', '.join(takes) or 'nothing'}"
            )
    return weighting, w_kwargs, optimizer, o_kwargs


def build_strategy(cfg: Any) -> FedOpt:
    weighting, w_kwargs, optimizer, o_kwargs = resolve_parts(cfg)
    return FedOpt(
        name=cfg.name,
        aggregator=WEIGHTINGS.get(weighting)(**w_kwargs),
        optimizer=SERVER_OPTIMIZERS.get(optimizer)(**o_kwargs),
    )
