"""Server-side aggregation: strategies built from a weighting and a server optimizer."""

from strategies import admm as _admm  # noqa: F401  (registers weighting admm, preset fedadmm)
from strategies import afa as _afa  # noqa: F401  (registers weightings afa_cd, afa_cs)
from strategies import fedfix as _fedfix  # noqa: F401  (registers weighting fedfix)
from strategies import fedspeed as _fedspeed  # noqa: F401  (registers the "fedspeed" preset)
from strategies import privacy as _privacy  # noqa: F401  (registers weighting expected_cohort)
from strategies import robust as _robust  # noqa: F401  (registers the robust weightings and their presets)
from strategies.base import Aggregator, ServerState, Strategy
from strategies.fedau import FedAUState, FedAUWeighting, fedau
from strategies.fedcm import MomentumAggregator, MomentumState, fedcm
from strategies.feddyn import FedDynAggregator, FedDynState, feddyn
from strategies.fedopt import (
    FL_SIMULATOR_CLIENT,
    STRATEGIES,
    FedOpt,
    Preset,
    build_strategy,
    check_pairing,
    register_preset,
    resolve_parts,
    resolved_options,
    server_part,
)
from strategies.fedvarp import FedVARP, fedvarp
from strategies.mifa import MIFA, MemoryState, mifa
from strategies.scaffold import ScaffoldAggregator, ScaffoldState, scaffold
from strategies.server_optimizers import SERVER_OPTIMIZERS, ServerOptimizer, adagrad, adam, sgd, yogi
from strategies.staleness import STALENESS
from strategies.weighting import WEIGHTINGS, WeightedAverage, weighted_sum

__all__ = [
    "FL_SIMULATOR_CLIENT",
    "check_pairing",
    "register_preset",
    "server_part",
    "ScaffoldAggregator",
    "ScaffoldState",
    "scaffold",
    "FedDynAggregator",
    "FedDynState",
    "feddyn",
    "MomentumAggregator",
    "MomentumState",
    "fedcm",
    "Aggregator",
    "ServerState",
    "Strategy",
    "STRATEGIES",
    "FedOpt",
    "Preset",
    "build_strategy",
    "resolve_parts",
    "resolved_options",
    "SERVER_OPTIMIZERS",
    "ServerOptimizer",
    "adagrad",
    "adam",
    "sgd",
    "yogi",
    "FedAUState",
    "FedAUWeighting",
    "fedau",
    "MIFA",
    "MemoryState",
    "mifa",
    "FedVARP",
    "fedvarp",
    "WEIGHTINGS",
    "WeightedAverage",
    "weighted_sum",
    "STALENESS",
]
