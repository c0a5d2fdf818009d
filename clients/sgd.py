"""Local training with any torch.optim optimizer: the client side of FedAvg and friends.

McMahan et al., "Communication-Efficient Learning of Deep Networks from Decentralized Data"
(AISTATS 2017, arXiv 1602.05629): E local epochs (or a fixed number of local steps) of
minibatch training from the global model x_t; returns delta = y_K - x_t.
A fresh optimizer is built each round (clients are stateless), so optimizer moments do not
carry over between rounds.
"""

from __future__ import annotations

import inspect
import math
from typing import Any

import torch

from clients.base import TrainContext
from fedsim.registry import Registry
from fedsim.types import ClientResult

__all__ = ["LocalSGD", "LOCAL_OPTIMIZERS", "make_optimizer", "check_optimizer_options", "batch_schedule"]

LOCAL_OPTIMIZERS: Registry[type[torch.optim.Optimizer]] = Registry("local optimizer")
for _name, _cls in sorted(vars(torch.optim).items()):
    if inspect.isclass(_cls) and issubclass(_cls, torch.optim.Optimizer) and _cls is not torch.optim.Optimizer:
        LOCAL_OPTIMIZERS.register(_name.lower(), f"torch.optim.{_name}")(_cls)


def _optimizer_kwargs(config: dict[str, Any]) -> tuple[type[torch.optim.Optimizer], dict[str, Any]]:
    cls = LOCAL_OPTIMIZERS.get(config["optimizer"])
    accepted = set(inspect.signature(cls).parameters)
    kwargs: dict[str, Any] = {"lr": config["lr"]}
    for key in ("momentum", "weight_decay"):
        value = config.get(key, 0.0)
        if key in accepted:
            kwargs[key] = value
        elif value:
            raise ValueError(
                f"client.{key} is not accepted by torch.optim.{cls.__name__}; "
                f"pass its own options through client.optimizer_kwargs"
            )
    extra = dict(config.get("optimizer_kwargs") or {})
    unknown = sorted(set(extra) - accepted)
    if unknown:
        valid = sorted(accepted - {"params"})
        raise ValueError(
            f"client.optimizer_kwargs: torch.optim.{cls.__name__} has no option {unknown[0]!r}; "
            f"valid choices: {', '.join(valid)}"
        )
    return cls, kwargs | extra


def make_optimizer(params: list[torch.nn.Parameter], config: dict[str, Any]) -> torch.optim.Optimizer:
    cls, kwargs = _optimizer_kwargs(config)
    return cls(params, **kwargs)


def check_optimizer_options(config: dict[str, Any]) -> None:
    """Fail at config time with torch's own message (e.g. 'Invalid learning rate')."""
    make_optimizer([torch.nn.Parameter(torch.zeros(1))], config)


def batch_schedule(num_samples: int, batch_size: int, num_steps: int, rng: torch.Generator) -> list[torch.Tensor]:
    """Index batches: shuffled epochs back to back, the last batch of each epoch may be short."""
    batches: list[torch.Tensor] = []
    while len(batches) < num_steps:
        order = torch.randperm(num_samples, generator=rng, device=rng.device)
        batches.extend(order.split(batch_size))
    return batches[:num_steps]


class LocalSGD:
    name = "sgd"

    def num_steps(self, config: dict[str, Any], num_samples: int) -> int:
        if config.get("local_steps"):
            return int(config["local_steps"])
        return int(config["local_epochs"]) * max(1, math.ceil(num_samples / int(config["batch_size"])))

    def train(
        self,
        ctx: TrainContext,
        params: torch.Tensor,
        data: tuple[torch.Tensor, torch.Tensor],
        config: dict[str, Any],
        state: Any,
        rng: torch.Generator,
    ) -> ClientResult:
        x, y = data
        n = len(x)
        if n == 0:
            raise ValueError("client has no training data")
        steps = self.num_steps(config, n)
        ctx.model.load(params)
        model = ctx.model.model
        optimizer = make_optimizer(ctx.model.parameters(), config)
        loss_sum = torch.zeros((), device=ctx.device)
        for idx in batch_schedule(n, int(config["batch_size"]), steps, rng):
            optimizer.zero_grad(set_to_none=True)
            loss = ctx.loss_fn(model(x[idx]), y[idx])
            loss.backward()
            optimizer.step()
            loss_sum += loss.detach()
        delta = ctx.model.flat - params
        return ClientResult(
            client_id=-1,  # the worker fills in identity fields from the job
            base_version=-1,
            delta=delta,
            num_samples=n,
            num_steps=steps,
            metrics={"train_loss": float(loss_sum) / steps},
        )
