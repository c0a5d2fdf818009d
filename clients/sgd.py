"""Local training with any torch.optim optimizer: the client side of FedAvg and friends.

McMahan et al., "Communication-Efficient Learning of Deep Networks from Decentralized Data"
(AISTATS 2017, arXiv 1602.05629): E local epochs (or a fixed number of local steps) of
minibatch training from the global model x_t; returns delta = y_K - x_t.
A fresh optimizer is built each round (clients are stateless), so optimizer moments do not
carry over between rounds.

With ``client.optimizer: sgd`` the client is a step function (clients/base.py) that every
executor runs, the vmap executor batched: ``torch.optim.SGD``'s math on a flat vector
(weight decay added to the clipped gradient, momentum buffer set to the first gradient,
dampening, nesterov, maximize). Any other torch optimizer trains the worker's resident model
through ``train`` (serial and Ray only), except the adaptive optimizers of clients/optimizers.py
(adam, adamw, lion, adan, adabelief, adopt: step functions checked against the libraries),
which batch too, with their moments in the carry. ``client.optimizer`` names are torch.optim's
in lower case plus pytorch-optimizer's lion, adan, adabelief and adopt. ``clip_norm`` clips the loss gradient by global
norm before the optimizer step (FL-Simulator's FedAvg: clip 10, weight decay 1e-3); ``lr``
decays by ``lr_decay`` per model version in both paths.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from clients.base import (
    Batch,
    Carry,
    FunctionalClient,
    GradFn,
    TrainContext,
    batch_schedule,
    clip_by_global_norm,
    num_local_steps,
)  # fmt: skip
from clients.optimizers import BATCHED, LIBRARY, AdaptiveOptions, adaptive_step, batched_options, init_state, reads_flag
from fedsim.registry import Registry
from fedsim.types import ClientResult

__all__ = ["LocalSGD", "SGDOptions", "LOCAL_OPTIMIZERS", "make_optimizer", "check_optimizer_options", "batch_schedule"]


class _Packaged:
    """A pytorch-optimizer class, imported when first asked for (the package takes ~2 s to import)."""

    def __init__(self, key: str):
        self.key = key


class LocalOptimizerRegistry(Registry):
    def get(self, name: str) -> type[torch.optim.Optimizer]:
        obj = super().get(name)
        if isinstance(obj, _Packaged):
            import pytorch_optimizer  # noqa: PLC0415

            return pytorch_optimizer.load_optimizer(obj.key)
        return obj

    def listing(self) -> list[tuple[str, str]]:
        """(name, description) with the batched ones marked (``fedsim list``)."""
        return [
            (name, description + (" [batched]" if name in ("sgd", *BATCHED) else ""))
            for name, description in self.describe()
        ]


LOCAL_OPTIMIZERS: LocalOptimizerRegistry = LocalOptimizerRegistry("local optimizer")
for _name, _cls in sorted(vars(torch.optim).items()):
    if inspect.isclass(_cls) and issubclass(_cls, torch.optim.Optimizer) and _cls is not torch.optim.Optimizer:
        LOCAL_OPTIMIZERS.register(_name.lower(), f"torch.optim.{_name}")(_cls)
for _key in LIBRARY:
    LOCAL_OPTIMIZERS.register(_key, f"pytorch_optimizer: {_key}")(_Packaged(_key))

_SGD_MATH = ("lr", "momentum", "weight_decay", "dampening", "nesterov", "maximize")
_SGD_IGNORED = ("foreach", "fused", "differentiable")  # torch.optim.SGD options that do not change the math


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
                f"client.{key} is not accepted by {cls.__module__.split('.')[0]}.{cls.__name__}; "
                f"pass its own options through client.optimizer_kwargs"
            )
    extra = dict(config.get("optimizer_kwargs") or {})
    unknown = sorted(set(extra) - accepted)
    if any(p.kind is p.VAR_KEYWORD for p in inspect.signature(cls).parameters.values()):
        unknown = [key for key in unknown if not reads_flag(cls, key)]  # pytorch-optimizer's **kwargs flags
    if unknown:
        valid = sorted(accepted - {"params", "kwargs"})
        raise ValueError(
            f"client.optimizer_kwargs: {cls.__module__.split('.')[0]}.{cls.__name__} has no option {unknown[0]!r}; "
            f"valid choices: {', '.join(valid)}"
        )
    if isinstance(extra.get("betas"), list):  # YAML lists; some optimizers compare betas as tuples
        extra["betas"] = tuple(extra["betas"])
    return cls, kwargs | extra


def make_optimizer(params: list[torch.nn.Parameter], config: dict[str, Any]) -> torch.optim.Optimizer:
    cls, kwargs = _optimizer_kwargs(config)
    return cls(params, **kwargs)


def check_optimizer_options(config: dict[str, Any]) -> None:
    """Fail at config time with torch's own message (e.g. 'Invalid learning rate')."""
    cls, kwargs = _optimizer_kwargs(config)
    if cls is torch.optim.SGD and not any(kwargs.get(key) for key in _SGD_IGNORED):
        _check_sgd(**kwargs)  # building a torch optimizer imports torch._dynamo: 1.7 s a process would not need
        return
    cls([torch.nn.Parameter(torch.zeros(1))], **kwargs)


def _check_sgd(
    lr: float = 1e-3,
    momentum: float = 0.0,
    dampening: float = 0.0,
    weight_decay: float = 0.0,
    nesterov: bool = False,
    maximize: bool = False,
    **_: Any,
) -> None:
    """``torch.optim.SGD.__init__``'s argument checks, with its messages (torch 2.4 - 2.13)."""
    if lr < 0.0:
        raise ValueError(f"Invalid learning rate: {lr}")
    if momentum < 0.0:
        raise ValueError(f"Invalid momentum value: {momentum}")
    if weight_decay < 0.0:
        raise ValueError(f"Invalid weight_decay value: {weight_decay}")
    if nesterov and (momentum <= 0 or dampening != 0):
        raise ValueError("Nesterov momentum requires a momentum and zero dampening")


@dataclass(frozen=True)
class SGDOptions:
    clip_norm: float | None
    weight_decay: float
    momentum: float
    dampening: float
    nesterov: bool
    maximize: bool


def _sgd_in_place(y: Tensor, g: Tensor, lr: Tensor) -> None:
    y.sub_(g.mul_(lr))


class LocalSGD(FunctionalClient):
    name = "sgd"
    optimizers = None  # any torch.optim optimizer (others than SGD train through ``train``)
    takes_optimizer_options = True

    def options(self, config: dict[str, Any]) -> SGDOptions | AdaptiveOptions | None:
        """SGD's options, an adaptive step's (clients/optimizers.py), or None for another
        optimizer or options no step implements (trained by ``train``)."""
        name = config.get("optimizer")
        if name in BATCHED:
            check_optimizer_options(config)
            cls, kwargs = _optimizer_kwargs(config)
            return batched_options(name, cls, kwargs, self.common(config)[0])
        if name != "sgd":
            return None
        check_optimizer_options(config)
        _, kwargs = _optimizer_kwargs(config)
        clip, _ = self.common(config)
        return SGDOptions(
            clip_norm=clip,
            weight_decay=float(kwargs.get("weight_decay", 0.0)),
            momentum=float(kwargs.get("momentum", 0.0)),
            dampening=float(kwargs.get("dampening", 0.0)),
            nesterov=bool(kwargs.get("nesterov", False)),
            maximize=bool(kwargs.get("maximize", False)),
        )

    def start(
        self, options: SGDOptions | AdaptiveOptions, params: Tensor, state: Any, broadcast: Any, lr: float
    ) -> Carry:
        carry = self.base_carry(params, lr)
        if isinstance(options, AdaptiveOptions):
            return carry | init_state(options, params)  # fresh moments each job: clients are stateless
        if options.momentum:
            carry["buf"] = torch.zeros_like(params)
        return carry

    def step(
        self, options: SGDOptions | AdaptiveOptions, carry: Carry, batch: Batch, grad: GradFn
    ) -> tuple[Carry, Tensor]:
        y = carry["y"]
        loss, g = grad(y, batch)
        g = clip_by_global_norm(g, options.clip_norm)
        if isinstance(options, AdaptiveOptions):
            moments = {k: v for k, v in carry.items() if k.startswith("opt_")}
            y, moments = adaptive_step(options, moments, y, g, carry["lr"], carry["steps"] + 1)
            return carry | moments | {"y": y, "steps": carry["steps"] + 1}, loss
        if options.maximize:
            g = -g
        if options.weight_decay:
            g = g + options.weight_decay * y
        out = dict(carry)
        if options.momentum:
            first = carry["steps"] == 0
            buf = torch.where(first, g, options.momentum * carry["buf"] + (1 - options.dampening) * g)
            out["buf"] = buf
            g = g + options.momentum * buf if options.nesterov else buf
        out["y"] = y - carry["lr"] * g
        out["steps"] = carry["steps"] + 1
        return out, loss

    def in_place_step(self, options: SGDOptions | AdaptiveOptions) -> Callable[[Tensor, Tensor, Tensor], None] | None:
        """For plain SGD (no clipping, weight decay, momentum or maximize): ``update(y, g, lr)``,
        the step ``y - lr * g`` done in place (``g`` is overwritten), for :func:`clients.base.run_client`
        on the resident model. ``g *= lr; y -= g`` rounds exactly as ``y - lr * g``;
        ``y.add_(g, alpha=-lr)`` would not (a fused multiply-add). None: use ``step``."""
        if not isinstance(options, SGDOptions) or options != SGDOptions(None, 0.0, 0.0, 0.0, False, False):
            return None
        return _sgd_in_place

    def finish(self, options: SGDOptions | AdaptiveOptions, carry: Carry) -> tuple[Tensor, None, None]:
        return carry["y"] - carry["x0"], None, None

    def train(
        self,
        ctx: TrainContext,
        params: Tensor,
        data: tuple[Tensor, Tensor],
        config: dict[str, Any],
        state: Any,
        rng: torch.Generator,
    ) -> ClientResult:
        """Any torch optimizer on the resident model; ``config["lr"]`` is this job's (decayed) lr."""
        x, y = data
        n = len(x)
        if n == 0:
            raise ValueError("client has no training data")
        steps = num_local_steps(config, n)
        clip, _ = self.common(config)
        ctx.model.load(params)
        model = ctx.model.model
        parameters = ctx.model.parameters()
        optimizer = make_optimizer(parameters, config)
        loss_sum = torch.zeros((), device=ctx.device)
        for idx in batch_schedule(n, int(config["batch_size"]), steps, rng):
            optimizer.zero_grad(set_to_none=True)
            loss = ctx.loss_fn(model(x[idx]), y[idx])
            loss.backward()
            if clip is not None:
                torch.nn.utils.clip_grad_norm_(parameters, clip)
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
