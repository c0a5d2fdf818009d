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

__all__ = ["FedOpt", "Preset", "STRATEGIES", "build_strategy", "resolve_parts", "resolved_options", "OPTION_FIELDS"]

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

# FedAU's experiments run under heterogeneous participation that the server does not know.
HETEROGENEOUS_PARTICIPATION = {
    "population": {"participation": "bernoulli"},
    "data": {"partition": "dirichlet", "alpha": 0.1},
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

    Options the user set explicitly must be taken by one of the chosen parts. A preset's own
    options go only to the preset's own parts: a part swapped in by the user starts from its
    own defaults (``--strategy fedau --set strategy.server_optimizer=adam`` runs Adam at
    Adam's lr, not at FedAU's SGD lr 1.0).
    """
    preset = STRATEGIES.get(cfg.name)
    weighting = cfg.weighting or preset.weighting
    optimizer = cfg.server_optimizer or preset.server_optimizer
    w_params = set(inspect.signature(WEIGHTINGS.get(weighting)).parameters)
    o_params = set(inspect.signature(SERVER_OPTIMIZERS.get(optimizer)).parameters)
    user = {k: getattr(cfg, k) for k in OPTION_FIELDS if getattr(cfg, k) is not None}
    w_kwargs: dict[str, Any] = {}
    o_kwargs: dict[str, Any] = {}
    for key, value in preset.options.items():
        arg = OPTION_FIELDS[key]
        if arg in o_params and optimizer == preset.server_optimizer:
            o_kwargs[arg] = value
        elif arg in w_params and weighting == preset.weighting:
            w_kwargs[arg] = value
    for key, value in user.items():
        arg = OPTION_FIELDS[key]
        if arg in o_params:
            o_kwargs[arg] = value
        elif arg in w_params:
            w_kwargs[arg] = value
        else:
            takes = sorted(k for k, a in OPTION_FIELDS.items() if a in o_params | w_params)
            raise ValueError(
                f"strategy.{key} is not used by weighting '{weighting}' with server optimizer "
                f"'{optimizer}'; they take: {', '.join(takes) or 'nothing'}"
            )
    return weighting, w_kwargs, optimizer, o_kwargs


def resolved_options(cfg: Any) -> dict[str, Any]:
    """The StrategyConfig the parts actually run with: both part names and every option they take.

    Options neither the preset nor the user set are filled in from the part's own defaults,
    so a saved config states e.g. the server lr even when nobody chose it.
    """
    weighting, w_kwargs, optimizer, o_kwargs = resolve_parts(cfg)
    out: dict[str, Any] = {"name": cfg.name, "weighting": weighting, "server_optimizer": optimizer}
    for factory, kwargs in ((WEIGHTINGS.get(weighting), w_kwargs), (SERVER_OPTIMIZERS.get(optimizer), o_kwargs)):
        defaults = {
            name: p.default for name, p in inspect.signature(factory).parameters.items()
            if p.default is not inspect.Parameter.empty
        }
        for key, arg in OPTION_FIELDS.items():
            if arg in kwargs:
                out[key] = kwargs[arg]
            elif arg in defaults and key not in out:
                out[key] = defaults[arg]
    return out


def build_strategy(cfg: Any) -> FedOpt:
    weighting, w_kwargs, optimizer, o_kwargs = resolve_parts(cfg)
    return FedOpt(
        name=cfg.name,
        aggregator=WEIGHTINGS.get(weighting)(**w_kwargs),
        optimizer=SERVER_OPTIMIZERS.get(optimizer)(**o_kwargs),
    )
