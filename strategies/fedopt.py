"""FedOpt: aggregate client deltas with a weighting, then take a server-optimizer step.

One strategy class covers FedAvg (McMahan et al., AISTATS 2017, arXiv 1602.05629), FedAvgM
(Hsu et al. 2019, arXiv 1909.06335), FedAdagrad / FedAdam / FedYogi (Reddi et al., ICLR 2021,
arXiv 2003.00295), FedAU and the FedAU paper's baselines: each named preset is a weighting
(strategies/weighting.py, fedau.py, mifa.py, fedvarp.py) times a server optimizer
(strategies/server_optimizers.py). Any weighting combines with any server optimizer.

The asynchronous presets are the same composition with two optional parts applied to each
update first: a staleness factor s(tau) (strategies/staleness.py) and, for FedAsync, rebasing
the update onto the current model (strategies/fedasync.py). FedBuff (Nguyen et al., AISTATS
2022, arXiv 2106.06639) is the uniform average of a buffer of K staleness-weighted deltas
followed by any server optimizer; FedFix and AFA add their weightings (strategies/fedfix.py,
strategies/afa.py). Presets also choose their scheduler through ``config_defaults``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

from clients.transforms import ClientTransformSpec
from fedsim.registry import Registry
from fedsim.types import ClientResult, PopulationInfo
from strategies.base import Aggregator, ServerState
from strategies.fedasync import rebase
from strategies.server_optimizers import SERVER_OPTIMIZERS, ServerOptimizer
from strategies.staleness import STALENESS
from strategies.transforms import AggregateTransform, ServerContext, describe_server
from strategies.weighting import WEIGHTINGS

__all__ = [
    "FedOpt",
    "Preset",
    "STRATEGIES",
    "build_strategy",
    "resolve_parts",
    "resolved_options",
    "OPTION_FIELDS",
    "register_preset",
    "server_part",
    "check_pairing",
    "FL_SIMULATOR_CLIENT",
]

# StrategyConfig field -> keyword argument of the part that takes it
OPTION_FIELDS: dict[str, str] = {
    "server_lr": "lr",
    "momentum": "momentum",
    "beta1": "beta1",
    "beta2": "beta2",
    "tau": "tau",
    "bias_correction": "bias_correction",
    "cutoff": "cutoff",
    "byzantine_f": "f",  # robust aggregators (strategies/robust/)
    "radius": "radius",
    "iterations": "iterations",
    "selection": "m",
    "smoothing": "nu",
    "server_optimizer_kwargs": "options",  # library server optimizers' own options (strategies/library_optimizers.py)
}
STALENESS_FIELDS: dict[str, str] = {"staleness_a": "a", "staleness_b": "b"}


@dataclass
class FedOpt:
    """The update pipeline: client transforms (run by the executors) -> arrival transforms
    (staleness, rebase) -> aggregator -> aggregate transforms -> server optimizer."""

    name: str
    aggregator: Aggregator
    optimizer: ServerOptimizer
    staleness: Callable[[np.ndarray], np.ndarray] | None = None  # s(tau), multiplies each update
    mixing: bool = False  # rebase updates onto the current model first (FedAsync)
    client_transforms: tuple[ClientTransformSpec, ...] = ()  # (name, options): the executors build and run them
    server_transforms: tuple[AggregateTransform, ...] = ()  # on the aggregate, in order
    part_names: tuple[str, str, str | None] = ("", "", None)  # (weighting, server optimizer, staleness) registry names
    byzantine: Any = None  # strategies.robust.ByzantineStage: first arrival stage when the run has attackers
    last_info: dict[str, Any] = field(default_factory=dict)  # what the last update's stages reported (not state)

    def init(self, params: torch.Tensor, population: PopulationInfo) -> ServerState:
        params = params.detach().clone().float()
        return ServerState(
            params=params,
            version=0,
            optimizer=self.optimizer.init(params),
            aggregator=self.aggregator.init(params, population),
            transforms=tuple(t.init(params, population) for t in self.server_transforms),
        )

    def configure(self, state: ServerState, client_id: int, now: float) -> dict[str, Any]:
        """Per-job instructions from the aggregate transforms (e.g. adaptive clipping's clip norm)."""
        config: dict[str, Any] = self.byzantine.client_config(client_id) if self.byzantine is not None else {}
        for transform, transform_state in zip(self.server_transforms, state.transforms):
            if hasattr(transform, "client_config"):
                config |= transform.client_config(transform_state)
        return config

    def pipeline(self) -> list[str]:
        """The resolved pipeline, one stage a line (``fedsim show``, config.yaml)."""
        from clients.transforms import describe  # noqa: PLC0415

        weighting, optimizer, staleness = self.part_names
        arrival = [self.byzantine.describe()] if self.byzantine is not None else []
        arrival += [f"staleness {staleness or 'on'}"] if self.staleness is not None else []
        arrival += ["rebase (FedAsync mixing)"] if self.mixing else []
        return [
            f"client transforms: {', '.join(describe(self.client_transforms)) or '(none)'}",
            f"arrival transforms: {', '.join(arrival) or '(none)'}",
            f"aggregator: {weighting or type(self.aggregator).__name__}{_options(self.aggregator)}",
            f"aggregate transforms: {', '.join(describe_server(t) for t in self.server_transforms) or '(none)'}",
            f"server optimizer: {optimizer or type(self.optimizer).__name__}",
        ]

    def broadcast(self, state: ServerState) -> Any:
        """The per-version payload for clients (e.g. SCAFFOLD's c), from the aggregator; None if it has none."""
        broadcast = getattr(self.aggregator, "broadcast", None)
        return broadcast(state.aggregator) if broadcast is not None else None

    def aggregate(self, state: ServerState, results: Sequence[ClientResult], now: float) -> ServerState:
        self.last_info = {}
        if self.byzantine is not None:
            results, self.last_info = self.byzantine.apply(results)
        if self.mixing:
            results = rebase(results, state.params)
        if self.staleness is not None and results:
            factors = self.staleness(np.array([r.staleness for r in results]))
            results = [r if f == 1.0 else replace(r, delta=r.delta * float(f)) for r, f in zip(results, factors)]
        u, aggregator_state = self.aggregator.aggregate(state.aggregator, results, state.version)
        transform_states = state.transforms
        if self.server_transforms:
            ctx = ServerContext(results=results, version=state.version)
            new_states = []
            for transform, transform_state in zip(self.server_transforms, state.transforms):
                u, transform_state, metrics = transform.apply(u, transform_state, ctx)
                ctx.info.update(metrics)
                new_states.append(transform_state)
            transform_states = tuple(new_states)
        if self.optimizer.apply is not None:
            params, optimizer_state = self.optimizer.apply(u, state.optimizer, state.params)
        else:
            step, optimizer_state = self.optimizer.update(u, state.optimizer)
            params = state.params + step
        return state.replace(
            params=params,
            version=state.version + 1,
            optimizer=optimizer_state,
            aggregator=aggregator_state,
            transforms=transform_states,
        )


def _options(part: Any) -> str:
    options = getattr(part, "options", None)
    return f"({', '.join(f'{k}={v}' for k, v in options.items())})" if isinstance(options, dict) and options else ""


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


def register_preset(name: str, description: str, weighting: str, server_optimizer: str, **options: Any) -> None:
    config_defaults = options.pop("config_defaults", {})
    STRATEGIES.register(name, description)(Preset(description, weighting, server_optimizer, options, config_defaults))


_register = register_preset

# FL-Simulator's client settings (woodenchild95/FL-Simulator train.py L21-50): local lr 0.1 decayed by
# 0.998 per round, weight decay 1e-3, gradient clipped to global norm 10. Presets of that code base set them.
FL_SIMULATOR_CLIENT = {"lr": 0.1, "lr_decay": 0.998, "weight_decay": 1e-3, "clip_norm": 10.0}


_register(
    "fedavg",
    "FedAvg: sample-weighted mean of deltas, server SGD (McMahan et al. 2017)",
    "samples",
    "sgd",
    server_lr=1.0,
)
_register(
    "fedavgm",
    "FedAvgM: FedAvg with server momentum 0.9 (Hsu et al. 2019)",
    "samples",
    "sgd",
    server_lr=1.0,
    momentum=0.9,
)
_register(
    "fedadagrad", "FedAdagrad: adaptive server step (Reddi et al. 2021)", "samples", "adagrad", server_lr=0.1, tau=1e-3
)
_register("fedadam", "FedAdam: Adam server step (Reddi et al. 2021)", "samples", "adam", server_lr=0.01, tau=1e-3)
_register("fedyogi", "FedYogi: Yogi server step (Reddi et al. 2021)", "samples", "yogi", server_lr=0.01, tau=1e-3)
_register(
    "fedau",
    "FedAU: weights = online estimate of 1/p_n from participation intervals (Wang & Ji 2024)",
    "fedau",
    "sgd",
    server_lr=1.0,
    config_defaults=HETEROGENEOUS_PARTICIPATION,
)
_register(
    "fedavg_participating",
    "FedAU baseline: plain average over participants",
    "uniform",
    "sgd",
    server_lr=1.0,
    config_defaults=HETEROGENEOUS_PARTICIPATION,
)
_register(
    "fedavg_all",
    "FedAU baseline: sum over participants divided by N",
    "average_all",
    "sgd",
    server_lr=1.0,
    config_defaults=HETEROGENEOUS_PARTICIPATION,
)
_register(
    "fedavg_known",
    "FedAU baseline (oracle): weights 1/(N p_n) with the true probabilities",
    "known_prob",
    "sgd",
    server_lr=1.0,
    config_defaults=HETEROGENEOUS_PARTICIPATION,
)
_register(
    "mifa",
    "FedAU baseline: MIFA, mean of every client's latest stored update (Gu et al. 2021)",
    "mifa",
    "sgd",
    server_lr=1.0,
    config_defaults=HETEROGENEOUS_PARTICIPATION,
)
_register(
    "fedvarp",
    "FedAU baseline: FedVARP, variance reduction with stored updates (Jhunjhunwala et al. 2022)",
    "fedvarp",
    "sgd",
    server_lr=1.0,
    config_defaults=HETEROGENEOUS_PARTICIPATION,
)
_register(
    "fedprox",
    "FedProx: proximal client, unweighted mean (Li et al. 2020)",
    "uniform",
    "sgd",
    server_lr=1.0,
    config_defaults={"client": {"algorithm": "fedprox", **FL_SIMULATOR_CLIENT}},
)
_register(
    "fedsam",
    "FedSAM: sharpness-aware client, unweighted mean (Qu et al. 2022)",
    "uniform",
    "sgd",
    server_lr=1.0,
    config_defaults={"client": {"algorithm": "fedsam", **FL_SIMULATOR_CLIENT}},
)

# DP-FedAvg (McMahan et al., ICLR 2018, arXiv 1710.06963): Poisson-sampled cohorts, every delta
# clipped to C = 1, the sum noised with std z*C (z = 1 unless privacy.target_epsilon), divided by
# the expected cohort qN. The population is 1000 LEAF Synthetic clients (q = 0.05, cohorts of about 50),
# so that sampling amplification gives a meaningful epsilon; privacy.* options change the rest.
DP_DEFAULTS = {
    "privacy": {"mode": "central", "clip": 1.0},
    "data": {"num_clients": 1000},
    "population": {"participation": "poisson", "mean_prob": 0.05},
    "rounds": 100,
    "eval": {"every": 10},
}
_register(
    "dp-fedavg",
    "DP-FedAvg: clip to C, fixed denominator qN, Gaussian noise z*C on the sum (McMahan et al. 2018)",
    "expected_cohort",
    "sgd",
    server_lr=1.0,
    config_defaults=DP_DEFAULTS,
)
_register(
    "dp-fedadam",
    "DP-FedAvg with a FedAdam server step (Reddi et al. 2021; Pelikan et al. 2023)",
    "expected_cohort",
    "adam",
    server_lr=0.01,
    tau=1e-3,
    config_defaults=DP_DEFAULTS,
)


ASYNC_SPEEDS = {"speed": "lognormal", "speed_sigma": 1.0}  # heavy-tailed client speeds: where asynchrony matters
_register(
    "fedasync",
    "FedAsync: mix each arrival into the model, alpha=0.9, polynomial staleness (Xie et al. 2019)",
    "uniform",
    "sgd",
    server_lr=0.9,
    staleness="polynomial",
    staleness_a=0.5,
    mixing=True,
    config_defaults={
        "scheduler": {"name": "buffered", "buffer_size": 1, "concurrency": 10},
        "population": ASYNC_SPEEDS,
        "rounds": 500,
        "eval": {"every": 50},
    },  # one update per arrival
)
_register(
    "fedbuff",
    "FedBuff: average K=10 staleness-weighted deltas, then a server step (Nguyen et al. 2022)",
    "uniform",
    "sgd",
    server_lr=1.0,
    staleness="polynomial",
    staleness_a=0.5,
    config_defaults={
        "scheduler": {"name": "buffered", "buffer_size": 10, "concurrency": 20},
        "population": ASYNC_SPEEDS,
    },
)
_register(
    "fedfix",
    "FedFix: aggregate every interval, restart finished clients at the tick (Fraboni et al. 2023)",
    "fedfix",
    "sgd",
    server_lr=1.0,
    config_defaults={"scheduler": {"name": "periodic", "interval": 0.5, "concurrency": 20}, "population": ASYNC_SPEEDS},
)
ANARCHIC = {"scheduler": {"name": "buffered", "buffer_size": 10, "arrivals": "anarchic"}, "population": ASYNC_SPEEDS}
_register(
    "afa-cd",
    "AFA-CD: anarchic clients, mean of step-normalised updates, eta=5 (Yang et al. 2022)",
    "afa_cd",
    "sgd",
    server_lr=5.0,
    config_defaults=ANARCHIC,
)
_register(
    "afa-cs",
    "AFA-CS: anarchic clients, mean of every worker's latest normalised update (Yang et al. 2022)",
    "afa_cs",
    "sgd",
    server_lr=5.0,
    config_defaults=ANARCHIC,
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
        if key not in OPTION_FIELDS:
            continue  # staleness / mixing options: see staleness_part
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


def server_part(cfg: Any) -> str | None:
    """The server part a StrategyConfig's weighting provides to clients (None: a plain average)."""
    weighting = cfg.weighting or STRATEGIES.get(cfg.name).weighting
    return getattr(WEIGHTINGS.get(weighting), "server_part", None)


def check_pairing(cfg: Any, algorithm: str) -> None:
    """A client algorithm and a strategy combine only if they agree on the server part (one-line error)."""
    from clients import CLIENTS  # noqa: PLC0415  (clients never import strategies; keep it that way)

    need = getattr(CLIENTS.get(algorithm), "server_part", None)
    have = server_part(cfg)
    if need == have:
        return
    weighting = cfg.weighting or STRATEGIES.get(cfg.name).weighting
    strategies = [
        n
        for n in STRATEGIES.names()
        if getattr(WEIGHTINGS.get(STRATEGIES.get(n).weighting), "server_part", None) == need
    ]
    clients = [n for n in CLIENTS.names() if getattr(CLIENTS.get(n), "server_part", None) == have]

    def some(names: list[str]) -> str:
        return ", ".join(names[:4]) + (", ..." if len(names) > 4 else "") if names else "(none)"

    raise ValueError(
        f"client.algorithm '{algorithm}' does not combine with strategy '{cfg.name}' (weighting '{weighting}'): "
        f"the client needs {f'the {need} server part' if need else 'a plain average'}, the strategy "
        f"{f'is the {have} server part' if have else 'is a plain average'}; '{algorithm}' runs with strategy "
        f"{some(strategies)}; '{cfg.name}' with client {some(clients)}"
    )


def resolved_options(cfg: Any) -> dict[str, Any]:
    """The StrategyConfig the parts actually run with: both part names and every option they take.

    Options neither the preset nor the user set are filled in from the part's own defaults,
    so a saved config states e.g. the server lr even when nobody chose it.
    """
    weighting, w_kwargs, optimizer, o_kwargs = resolve_parts(cfg)
    out: dict[str, Any] = {"name": cfg.name, "weighting": weighting, "server_optimizer": optimizer}
    for factory, kwargs in ((WEIGHTINGS.get(weighting), w_kwargs), (SERVER_OPTIMIZERS.get(optimizer), o_kwargs)):
        defaults = {
            name: p.default
            for name, p in inspect.signature(factory).parameters.items()
            if p.default is not inspect.Parameter.empty
        }
        for key, arg in OPTION_FIELDS.items():
            if arg in kwargs:
                out[key] = kwargs[arg]
            elif arg in defaults and key not in out:
                out[key] = defaults[arg]
    preset = STRATEGIES.get(cfg.name)
    staleness = cfg.staleness or preset.options.get("staleness")
    if staleness:
        out["staleness"] = staleness
        preset_values = preset.options if staleness == preset.options.get("staleness") else {}
        params = inspect.signature(STALENESS.get(staleness)).parameters
        for key, arg in STALENESS_FIELDS.items():
            if arg in params:
                user = getattr(cfg, key)
                default = params[arg].default
                value = user if user is not None else preset_values.get(key, default)
                if value is not inspect.Parameter.empty:
                    out[key] = value
    return out


def staleness_part(cfg: Any) -> tuple[Callable[[np.ndarray], np.ndarray] | None, bool]:
    """(s(tau) or None, mixing) for a StrategyConfig; staleness_a/_b need a staleness that takes them."""
    preset = STRATEGIES.get(cfg.name)
    name = cfg.staleness or preset.options.get("staleness")
    preset_values = preset.options if name == preset.options.get("staleness") else {}
    kwargs: dict[str, Any] = {}
    for key, arg in STALENESS_FIELDS.items():
        user = getattr(cfg, key)
        value = user if user is not None else preset_values.get(key)
        if value is None:
            continue
        takes = set(inspect.signature(STALENESS.get(name)).parameters) if name else set()
        if arg in takes:
            kwargs[arg] = value
        elif user is not None:
            raise ValueError(
                f"strategy.{key} is not used by staleness '{name}'"
                + ("" if name else " (set strategy.staleness: polynomial or hinge)")
            )
    fn = STALENESS.get(name)(**kwargs) if name else None
    return fn, bool(preset.options.get("mixing", False))


PLAIN_AVERAGES = ("samples", "uniform")  # preset weightings that DP-FedAvg's fixed denominator replaces


def build_strategy(cfg: Any, privacy: Any = None, seed: int = 0, byzantine: Any = None) -> FedOpt:
    """The strategy a StrategyConfig names; ``privacy`` (a ``fedsim.privacy.PrivacyPlan``) adds its pieces.

    With central DP, a preset whose weighting is a plain average (samples, uniform) gets the
    fixed-denominator weighting ``expected_cohort`` instead; any other weighting (FedAU,
    MIFA, ...) is refused, as is FedAsync's rebase, which undoes the clipping.

    ``byzantine`` (a ``fedsim.attacks.ByzantinePlan``) gives a robust weighting its default f and
    nominal n (a configuration breaking the rule's assumption is refused) and, when the run has
    attackers, adds their client transform (after any privacy transform) and the arrival stage.
    """
    weighting, w_kwargs, optimizer, o_kwargs = resolve_parts(cfg)
    staleness, mixing = staleness_part(cfg)
    if "f" in inspect.signature(WEIGHTINGS.get(weighting)).parameters and w_kwargs.get("f") is None:
        w_kwargs["f"] = byzantine.f if byzantine is not None else 0
    aggregator = WEIGHTINGS.get(weighting)(**w_kwargs)
    if byzantine is not None and hasattr(aggregator, "check"):
        aggregator.check(byzantine.cohort, byzantine.cohort_source)
    client_transforms: tuple[ClientTransformSpec, ...] = ()
    server_transforms: tuple[AggregateTransform, ...] = ()
    if privacy is not None:
        client_transforms = tuple(privacy.client_transforms)
        if privacy.mode == "central":
            if weighting not in (*PLAIN_AVERAGES, "expected_cohort"):
                raise ValueError(
                    f"privacy.mode central: strategy '{cfg.name}' aggregates with weighting '{weighting}', whose "
                    "weights are not a fixed denominator; use a plain-average strategy (fedavg, fedadam, fedbuff, "
                    "dp-fedavg, ...)"
                )
            if mixing:
                raise ValueError(
                    f"privacy.mode central: strategy '{cfg.name}' rebases updates onto the current "
                    "model (FedAsync mixing), which undoes the clipping; use fedbuff"
                )
            aggregator = WEIGHTINGS.get("expected_cohort")(cohort=privacy.sampling.cohort)
            weighting = "expected_cohort"
            server_transforms = privacy.server_transforms(seed)
    stage = None
    if byzantine is not None and byzantine.attackers:
        from strategies.robust.attacks import ByzantineStage  # noqa: PLC0415

        client_transforms += tuple(byzantine.client_transforms())
        stage = ByzantineStage(
            byzantine.attackers, byzantine.attack, byzantine.where, byzantine.options, byzantine.client_config()
        )
    return FedOpt(
        name=cfg.name,
        aggregator=aggregator,
        optimizer=SERVER_OPTIMIZERS.get(optimizer)(**o_kwargs),
        staleness=staleness,
        mixing=mixing,
        client_transforms=client_transforms,
        server_transforms=server_transforms,
        part_names=(weighting, optimizer, cfg.staleness or STRATEGIES.get(cfg.name).options.get("staleness")),
        byzantine=stage,
    )
