"""Client algorithms as three pure functions over flat tensors, and the loop that drives them.

In the spirit of FedJAX's ``for_each_client(client_init, client_step, client_final)``
(Ro, Suresh, Wu, "FedJAX: Federated learning simulation with JAX", arXiv 2108.02117), a
client algorithm is::

    options          = algorithm.options(config)                       # static, hashable (or None)
    carry            = algorithm.start(options, params, state, broadcast, lr)
    carry, loss      = algorithm.step(options, carry, batch, grad)      # one minibatch
    delta, state, extras = algorithm.finish(options, carry)

``carry`` is a dict of tensors for ONE client (the local model ``y``, the start point, the
learning rate, a step counter, correction vectors...). ``step`` is pure and uses only tensor
arithmetic, so an executor may run it as is (serial, Ray: :func:`run_client`) or map it over a
stack of clients with ``torch.func.vmap`` (vmap executor); either way it is the same function.
``grad(flat_params, batch) -> (loss, flat_grad)`` is the gradient oracle the executor supplies
(:func:`make_grad_fn`); :func:`input_grad_of` gives its companion ``(flat_params, batch) ->
(loss, d loss / d x)``, the gradient w.r.t. the input batch (adversarial training, clients/fal.py). ``batch = (x, y, w)``: ``w`` are per-sample weights masking padded
samples in batched runs, ``None`` when every sample counts.

``options`` holds what shapes the computation (clip on/off, momentum, coefficients); jobs with
equal options and batch size are batched together. An algorithm whose ``options`` returns
``None`` for a config cannot be written as a step (the ``sgd`` client with a torch optimizer
other than SGD) and trains through its ``train`` method instead, serially.

Channels: ``state`` is the client's persistent state (a dict of flat tensors kept by the
server-side ClientStateStore, ``None`` before its first participation); ``broadcast`` is the
per-model-version payload from the server (e.g. SCAFFOLD's c); ``extras`` go back to the
server's aggregation (e.g. SCAFFOLD's change of c_i). Every tensor in them has the model's size.

Options every algorithm takes: ``lr`` with ``lr_decay`` per model version (FL-Simulator's
``eta_t = eta_l * lr_decay^t``), ``clip_norm`` (clip the whole loss gradient, correction terms
included, to this global L2 norm) and ``weight_decay`` (applied in the SGD update, not
clipped, as ``torch.optim.SGD`` does).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, grad_and_value, vmap

from fedsim.params import ParamLayout, ResidentModel
from fedsim.types import ClientResult

__all__ = [
    "Batch",
    "Carry",
    "GradFn",
    "InputGradFn",
    "ClientAlgorithm",
    "FunctionalClient",
    "ResidentGrad",
    "TrainContext",
    "batch_schedule",
    "clip_by_global_norm",
    "local_lr",
    "input_grad_of",
    "make_grad_fn",
    "num_local_steps",
    "resident_grad_fn",
    "run_client",
    "sam_gradients",
    "sgd_update",
]

Batch = tuple[Tensor, Tensor, "Tensor | None"]  # inputs, targets, per-sample weights (None: all count)
Carry = dict[str, Tensor]
GradFn = Callable[[Tensor, Batch], tuple[Tensor, Tensor]]  # (flat params, batch) -> (loss, flat grad)
InputGradFn = Callable[[Tensor, Batch], tuple[Tensor, Tensor]]  # (flat params, batch) -> (loss, d loss / d x)


@dataclass
class TrainContext:
    """What a worker hands an algorithm's ``train`` (the torch.optim path): its resident model."""

    model: ResidentModel  # resident model; its parameters are views of model.flat
    loss_fn: Callable[[Tensor, Tensor], Tensor]
    device: torch.device


class ClientAlgorithm(Protocol):
    name: str
    server_part: str | None  # the server part it needs (None: any plain strategy), see strategies.server_part

    def num_steps(self, config: dict[str, Any], num_samples: int) -> int: ...

    def options(self, config: dict[str, Any]) -> Hashable | None: ...

    def start(
        self,
        options: Any,
        params: Tensor,
        state: dict[str, Tensor] | None,
        broadcast: dict[str, Tensor] | None,
        lr: float,
    ) -> Carry: ...

    def step(self, options: Any, carry: Carry, batch: Batch, grad: GradFn) -> tuple[Carry, Tensor]: ...

    def finish(
        self, options: Any, carry: Carry
    ) -> tuple[Tensor, dict[str, Tensor] | None, dict[str, Tensor] | None]: ...


# ----------------------------------------------------------------------------- shared pieces


def num_local_steps(config: dict[str, Any], num_samples: int) -> int:
    """``local_steps`` if set, else ``local_epochs`` x batches per epoch (the last may be short)."""
    if config.get("local_steps"):
        return int(config["local_steps"])
    return int(config["local_epochs"]) * max(1, math.ceil(num_samples / int(config["batch_size"])))


def local_lr(config: dict[str, Any], version: int) -> float:
    """The local learning rate for a job on model ``version``: lr * lr_decay^version."""
    decay = config.get("lr_decay")
    return float(config["lr"]) * (float(decay) ** version if decay is not None else 1.0)


def batch_schedule(num_samples: int, batch_size: int, num_steps: int, rng: torch.Generator) -> list[Tensor]:
    """Index batches: shuffled epochs back to back, the last batch of each epoch may be short."""
    batches: list[Tensor] = []
    while len(batches) < num_steps:
        order = torch.randperm(num_samples, generator=rng, device=rng.device)
        batches.extend(order.split(batch_size))  # type: ignore[no-untyped-call]  # untyped in torch
    return batches[:num_steps]


def clip_by_global_norm(g: Tensor, max_norm: float | None) -> Tensor:
    """``torch.nn.utils.clip_grad_norm_`` on a flat gradient: scale by min(1, max_norm / (|g| + 1e-6))."""
    if max_norm is None:
        return g
    # reciprocal() * max_norm is how torch evaluates max_norm / tensor (same bits), and it also
    # compiles when torch.compile traces max_norm as a symbolic float
    return g * torch.clamp(torch.reciprocal(torch.linalg.vector_norm(g) + 1e-6) * max_norm, max=1.0)


def sgd_update(y: Tensor, direction: Tensor, lr: Tensor, decay: float) -> Tensor:
    """``torch.optim.SGD`` without momentum: y - lr * (direction + decay * y); ``decay`` is not clipped."""
    if decay:
        direction = direction + decay * y
    return y - lr * direction


def sam_gradients(grad: GradFn, y: Tensor, batch: Batch, rho: float) -> tuple[Tensor, Tensor, Tensor]:
    """(loss at y, g1 = grad at y, g2 = grad at y + rho g1 / (|g1| + 1e-7)) on the same minibatch.

    The sharpness-aware gradient of Foret et al. (arXiv 2010.01412) as FL-Simulator's ESAM
    computes it (optimizer/ESAM.py L21-69): a global L2 norm over all parameters.
    """
    loss, g1 = grad(y, batch)
    if rho == 0:
        return loss, g1, g1
    e = g1 * (torch.reciprocal(torch.linalg.vector_norm(g1) + 1e-7) * rho)  # rho / norm, compilable
    _, g2 = grad(y + e, batch)
    return loss, g1, g2


def zeros_or(state: dict[str, Tensor] | None, key: str, like: Tensor) -> Tensor:
    """``state[key]`` on ``like``'s device, or zeros before the first participation."""
    if state is None or state.get(key) is None:
        return torch.zeros_like(like)
    return state[key].to(like.device, like.dtype)


class FunctionalClient:
    """Defaults shared by the step-based algorithms: step count, options with common fields."""

    name = "functional"
    server_part: str | None = None
    # client.optimizer names the local steps accept (None: any torch.optim optimizer). The step
    # algorithms are defined over plain SGD steps, so they take "sgd" only, and
    # ``takes_optimizer_options`` False refuses client.momentum / client.optimizer_kwargs they would ignore.
    optimizers: tuple[str, ...] | None = ("sgd",)
    takes_optimizer_options = False
    state_vectors = 0  # model-sized tensors of per-client state the server keeps (SCAFFOLD's c_i: 1)

    def num_steps(self, config: dict[str, Any], num_samples: int) -> int:
        return num_local_steps(config, num_samples)

    @staticmethod
    def common(config: dict[str, Any]) -> tuple[float | None, float]:
        """(clip_norm, weight_decay) from a client config."""
        clip = config.get("clip_norm")
        return (None if clip is None else float(clip)), float(config.get("weight_decay") or 0.0)

    @staticmethod
    def option(config: dict[str, Any], key: str, default: float) -> float:
        value = config.get(key)
        return float(default if value is None else value)

    @staticmethod
    def base_carry(params: Tensor, lr: float) -> Carry:
        return {
            "y": params.clone(),
            "x0": params,
            "lr": torch.tensor(lr, dtype=params.dtype, device=params.device),
            "steps": torch.zeros((), dtype=params.dtype, device=params.device),
        }


# ----------------------------------------------------------------------------- gradients


def make_grad_fn(model: nn.Module, layout: ParamLayout, loss_fn: Callable[[Tensor, Tensor], Tensor]) -> GradFn:
    """``grad(flat, (x, y, w)) -> (loss, flat_grad)`` of ``loss_fn(model(x), y)`` via ``torch.func``.

    Works on one client's tensors and under ``vmap`` over a stack of clients. With weights
    ``w`` the loss is sum(w * l) / sum(w) over per-sample losses (equal to the batch mean over
    the samples with w = 1). Float buffers are part of the flat vector and get zero gradient.
    """
    names, shapes, spans = layout.names, layout.shapes, layout.offsets()
    is_param = [not b for b in layout.is_buffer]
    native_ce = loss_fn is F.cross_entropy
    per_sample = vmap(lambda o, t: loss_fn(o.unsqueeze(0), t.unsqueeze(0)))

    def loss_of(
        leaves: tuple[Tensor, ...], buffers: dict[str, Tensor], x: Tensor, y: Tensor, w: Tensor | None
    ) -> Tensor:
        tensors = dict(zip([n for n, p in zip(names, is_param) if p], leaves)) | buffers
        out = functional_call(model, tensors, (x,))
        if w is None:
            return loss_fn(out, y)
        losses = F.cross_entropy(out, y, reduction="none") if native_ce else per_sample(out, y)
        return (losses * w).sum() / w.sum()

    value_and_grad = grad_and_value(loss_of)
    value_and_input_grad = grad_and_value(loss_of, argnums=2)

    def split(flat: Tensor) -> tuple[list[Tensor], tuple[Tensor, ...], dict[str, Tensor]]:
        views = [flat[s:e].view(shape) for shape, (s, e) in zip(shapes, spans)]
        leaves = tuple(v for v, p in zip(views, is_param) if p)
        buffers = {n: v for n, v, p in zip(names, views, is_param) if not p}
        return views, leaves, buffers

    def grad(flat: Tensor, batch: Batch) -> tuple[Tensor, Tensor]:
        x, y, w = batch
        views, leaves, buffers = split(flat)
        grads, loss = value_and_grad(leaves, buffers, x, y, w)
        it = iter(grads)
        flat_grad = torch.cat(
            [next(it).reshape(-1) if p else torch.zeros_like(v).reshape(-1) for v, p in zip(views, is_param)]
        )
        return loss, flat_grad

    def input_grad(flat: Tensor, batch: Batch) -> tuple[Tensor, Tensor]:
        x, y, w = batch
        _, leaves, buffers = split(flat)
        grad_x, loss = value_and_input_grad(leaves, buffers, x, y, w)
        return loss, grad_x

    grad.input_grad = input_grad  # type: ignore[attr-defined]  # read by input_grad_of
    return grad


class ResidentGrad:
    """A resident model's gradient in one flat buffer: every parameter's ``.grad`` is a view of
    ``self.flat`` (laid out like ``resident.flat``; float buffers' slots stay zero), so backward
    writes the flat gradient in place and no ``torch.cat`` of per-parameter gradients is needed.

    :meth:`backward` loads nothing: it differentiates the loss at the model's current parameters.
    """

    def __init__(self, resident: ResidentModel, loss_fn: Callable[[Tensor, Tensor], Tensor]):
        self.resident = resident
        self.loss_fn = loss_fn
        self.flat = torch.zeros_like(resident.flat)
        views = resident.layout.unflatten(self.flat)
        named = dict(resident.model.named_parameters())
        params = [n for n, b in zip(resident.layout.names, resident.layout.is_buffer) if not b]
        self.pairs = [(named[n], views[n]) for n in params]
        self._attach()

    def _attach(self) -> None:
        # another path (a torch optimizer's zero_grad(set_to_none=True)) may have replaced a view
        for p, view in self.pairs:
            if p.grad is not view:
                p.grad = view

    def loss(self, x: Tensor, y: Tensor, w: Tensor | None) -> Tensor:
        out = self.resident.model(x)
        if w is None:
            return self.loss_fn(out, y)
        losses = torch.stack([self.loss_fn(o.unsqueeze(0), t.unsqueeze(0)) for o, t in zip(out, y)])
        return (losses * w).sum() / w.sum()

    def backward(self, batch: Batch) -> Tensor:
        """The loss on ``batch`` (detached); its gradient is left in ``self.flat``."""
        x, y, w = batch
        self._attach()
        self.flat.zero_()
        with torch.enable_grad():
            loss = self.loss(x, y, w)
            loss.backward()  # type: ignore[no-untyped-call]  # accumulates into the zeroed views
        return loss.detach()


def resident_grad_fn(resident: ResidentModel, loss_fn: Callable[[Tensor, Tensor], Tensor]) -> GradFn:
    """The same oracle on one client with plain autograd on a resident model (2-4x faster than
    ``torch.func`` for one small model): copy ``flat`` into the model, forward, backward into a
    :class:`ResidentGrad`. The oracle's ``resident_grad`` attribute lets :func:`run_client` step
    the resident buffers in place for an algorithm that offers ``in_place_step``."""
    buffers = ResidentGrad(resident, loss_fn)

    def grad(flat: Tensor, batch: Batch) -> tuple[Tensor, Tensor]:
        resident.load(flat)
        loss = buffers.backward(batch)
        return loss, buffers.flat.clone()  # the caller may keep it; the buffer is reused next call

    def input_grad(flat: Tensor, batch: Batch) -> tuple[Tensor, Tensor]:
        x, y, w = batch
        resident.load(flat)
        x = x.detach().requires_grad_(True)
        with torch.enable_grad():
            loss = buffers.loss(x, y, w)
            (grad_x,) = torch.autograd.grad(loss, [x])
        return loss.detach(), grad_x

    grad.input_grad = input_grad  # type: ignore[attr-defined]  # read by input_grad_of
    grad.resident_grad = buffers  # type: ignore[attr-defined]  # read by run_client
    return grad


def input_grad_of(grad: GradFn) -> InputGradFn:
    """The input-gradient companion of a gradient oracle built by :func:`make_grad_fn` or
    :func:`resident_grad_fn`: ``(flat, (x, y, w)) -> (loss, d loss / d x)``, the same loss
    (weighted mean with ``w``) differentiated w.r.t. the input batch ``x`` instead of the parameters."""
    input_grad = getattr(grad, "input_grad", None)
    if input_grad is None:
        raise TypeError(
            "this gradient oracle has no gradient w.r.t. the inputs (build it with clients.make_grad_fn "
            "or clients.resident_grad_fn)"
        )
    return input_grad  # type: ignore[no-any-return]


# ----------------------------------------------------------------------------- the serial loop


def run_client(
    algorithm: ClientAlgorithm,
    options: Any,
    grad: GradFn,
    params: Tensor,
    data: tuple[Tensor, Tensor],
    config: dict[str, Any],
    state: dict[str, Tensor] | None,
    broadcast: dict[str, Tensor] | None,
    rng: torch.Generator,
    version: int,
) -> ClientResult:
    """One client's local training: start, ``step`` over its minibatches in order, finish.

    An algorithm with ``in_place_step(options)`` returning an update ``(y, g, lr) -> None`` (plain
    SGD, clients/sgd.py), run on a :func:`resident_grad_fn` oracle, steps the resident model's
    flat buffer in place instead: the same bits, without the per-step copies of the flat step.
    """
    x, y = data
    n = len(x)
    if n == 0:
        raise ValueError("client has no training data")
    steps = algorithm.num_steps(config, n)
    loss_sum = torch.zeros((), device=params.device)
    in_place = getattr(algorithm, "in_place_step", None)
    update = in_place(options) if in_place is not None else None
    buffers: ResidentGrad | None = getattr(grad, "resident_grad", None)
    if update is not None and buffers is not None:
        # the same steps on the resident buffers: no copy in, no gradient concatenation, no new tensors
        lr = torch.tensor(local_lr(config, version), dtype=params.dtype, device=params.device)
        buffers.resident.load(params)
        model = buffers.resident.flat
        for idx in batch_schedule(n, int(config["batch_size"]), steps, rng):
            loss_sum += buffers.backward((x[idx], y[idx], None))
            update(model, buffers.flat, lr)
        delta, new_state, extras = model - params, None, None
    else:
        carry = algorithm.start(options, params, state, broadcast, local_lr(config, version))
        for idx in batch_schedule(n, int(config["batch_size"]), steps, rng):
            carry, loss = algorithm.step(options, carry, (x[idx], y[idx], None), grad)
            loss_sum += loss.detach()
        delta, new_state, extras = algorithm.finish(options, carry)
    return ClientResult(
        client_id=-1,  # the worker fills in identity fields from the job
        base_version=-1,
        delta=delta,
        num_samples=n,
        num_steps=steps,
        metrics={"train_loss": float(loss_sum) / steps},
        state=new_state,
        extras=extras,
    )
