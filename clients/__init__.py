"""Client-side local algorithms, registered by name (``client.algorithm``)."""

from clients.base import ClientAlgorithm, TrainContext
from clients.sgd import LOCAL_OPTIMIZERS, LocalSGD, batch_schedule, check_optimizer_options, make_optimizer
from fedsim.registry import Registry

CLIENTS: Registry[type] = Registry("client algorithm")
CLIENTS.register("sgd", "local epochs/steps of any torch.optim optimizer (FedAvg client)")(LocalSGD)

__all__ = [
    "CLIENTS",
    "LOCAL_OPTIMIZERS",
    "ClientAlgorithm",
    "LocalSGD",
    "TrainContext",
    "batch_schedule",
    "check_optimizer_options",
    "make_optimizer",
]
