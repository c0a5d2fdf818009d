"""Client-side local algorithms, registered by name (``client.algorithm``).

Each is a step function over flat tensors (clients/base.py) that the serial, vmap and Ray
executors drive alike.
"""

from clients.admm import ADMM
from clients.apfl import APFL
from clients.base import (
    Batch,
    Carry,
    ClientAlgorithm,
    FunctionalClient,
    GradFn,
    InputGradFn,
    ResidentGrad,
    TrainContext,
    batch_schedule,
    clip_by_global_norm,
    input_grad_of,
    local_lr,
    make_grad_fn,
    num_local_steps,
    resident_grad_fn,
    run_client,
    sam_gradients,
    sgd_update,
)  # fmt: skip
from clients.ditto import Ditto
from clients.fal import FAL
from clients.fedcm import FedCM
from clients.feddyn import FedDyn
from clients.fedper import FedPer
from clients.fedprox import FedProx
from clients.fedrep import FedRep
from clients.fedsam import FedSAM
from clients.fedspeed import FedSpeed
from clients.mofedsam import MoFedSAM
from clients.polyak import Polyak
from clients.scaffold import Scaffold
from clients.sgd import LOCAL_OPTIMIZERS, LocalSGD, check_optimizer_options, make_optimizer
from fedsim.registry import Registry

CLIENTS: Registry[type] = Registry("client algorithm")
CLIENTS.register("sgd", "local epochs/steps of any torch.optim optimizer (FedAvg client)")(LocalSGD)
CLIENTS.register(
    "admm", "federated ADMM: augmented Lagrangian with dual lambda_i, penalty rho = client.mu (Boyd et al. 2011)"
)(ADMM)
CLIENTS.register("fedprox", "FedProx: SGD on loss + (mu/2)|y - x_t|^2 (Li et al. 2020)")(FedProx)
CLIENTS.register("scaffold", "SCAFFOLD option II: gradient corrected by c - c_i (Karimireddy et al. 2020)")(Scaffold)
CLIENTS.register("feddyn", "FedDyn: prox + linear correction h_i (Acar et al. 2021)")(FedDyn)
CLIENTS.register("fedsam", "FedSAM: sharpness-aware local gradient (Qu et al. 2022)")(FedSAM)
CLIENTS.register("fedcm", "FedCM: local gradient mixed with server momentum (Xu et al. 2021)")(FedCM)
CLIENTS.register("mofedsam", "MoFedSAM: SAM gradient mixed with server momentum (Qu et al. 2022)")(MoFedSAM)
CLIENTS.register(
    "polyak", "local SGD; sends the Polyak momentum of its updates, beta m + (1 - beta) Delta (MoNNA client)"
)(Polyak)
CLIENTS.register("fedspeed", "FedSpeed: FedDyn's prox-correction on a SAM gradient (Sun et al. 2023)")(FedSpeed)
CLIENTS.register("apfl", "APFL: personal model v mixed with the global one, alpha v + (1-alpha) w (Deng et al. 2020)")(
    APFL
)
CLIENTS.register("ditto", "Ditto: personal model regularized toward the global one by lamb (Li et al. 2021)")(Ditto)
CLIENTS.register("fedper", "FedPer: shared body averaged, personal head kept per client (Arivazhagan et al. 2019)")(
    FedPer
)
CLIENTS.register("fedrep", "FedRep: personal head trained first, then the shared body (Collins et al. 2021)")(FedRep)
CLIENTS.register("fal", "FAL: local SGD on PGD adversarial minibatches (Li et al. 2022; Madry et al. 2018)")(FAL)

ALGORITHM_OPTIONS = (
    "mu",
    "lamb",
    "rho",
    "alpha",
    "sam_alpha",
    "beta",
    "alpha_lr",
    "personal_layers",
    "head_steps",
    "adv_eps",
    "adv_step",
    "adv_steps",
    "adv_norm",
)  # client.* options that belong to one algorithm each


def check_client_options(config: dict) -> None:
    """An algorithm option set for an algorithm that does not use it is an error, not a silent no-op."""
    algorithm = config.get("algorithm", "sgd")
    takes = getattr(CLIENTS.get(algorithm), "option_names", ())
    for key in ALGORITHM_OPTIONS:
        if config.get(key) is not None and key not in takes:
            raise ValueError(
                f"client.{key} is not used by client algorithm '{algorithm}'; "
                f"it takes: {', '.join(takes) or 'none of ' + ', '.join(ALGORITHM_OPTIONS)}"
            )


__all__ = [
    "ADMM",
    "ALGORITHM_OPTIONS",
    "APFL",
    "Ditto",
    "FAL",
    "FedPer",
    "FedRep",
    "CLIENTS",
    "FedCM",
    "FedDyn",
    "FedProx",
    "FedSAM",
    "FedSpeed",
    "MoFedSAM",
    "Polyak",
    "Scaffold",
    "check_client_options",
    "LOCAL_OPTIMIZERS",
    "Batch",
    "Carry",
    "ClientAlgorithm",
    "FunctionalClient",
    "GradFn",
    "InputGradFn",
    "LocalSGD",
    "TrainContext",
    "batch_schedule",
    "check_optimizer_options",
    "clip_by_global_norm",
    "input_grad_of",
    "local_lr",
    "make_grad_fn",
    "make_optimizer",
    "num_local_steps",
    "ResidentGrad",
    "resident_grad_fn",
    "run_client",
    "sam_gradients",
    "sgd_update",
]
