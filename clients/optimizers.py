"""Adaptive client optimizers as pure steps over flat tensors, for the batched (vmap) path.

Adam / AdamW (``torch.optim``), and Lion, Adan, AdaBelief and ADOPT (``pytorch-optimizer``),
each written as ``state = init(options, params)`` and ``y, state = step(options, state, y, g,
lr, t)`` with ``t`` = 1, 2, ... the step number (a tensor, so that one function serves a
stack of clients under ``torch.func.vmap``). The math follows each library's single-tensor
step with its defaults; tests/test_clients/test_client_optimizers.py checks every one against
the library over 10 steps. Options the steps do not implement (amsgrad, AdaBelief's rectify,
Adan's max_grad_norm, pytorch-optimizer's extra flags such as use_gc or cautious) make
:func:`batched_options` return None, and the client trains with the library optimizer
itself on the serial path instead.

Papers: Adam (Kingma & Ba, arXiv 1412.6980), AdamW (Loshchilov & Hutter, arXiv 1711.05101),
Lion (Chen et al., "Symbolic Discovery of Optimization Algorithms", arXiv 2302.06675), Adan
(Xie et al., arXiv 2208.06677), AdaBelief (Zhuang et al., NeurIPS 2020, arXiv 2010.07468),
ADOPT (Taniguchi et al., NeurIPS 2024, arXiv 2411.02853).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

__all__ = ["AdaptiveOptions", "BATCHED", "LIBRARY", "batched_options", "init_state", "reads_flag", "adaptive_step"]

LIBRARY = ("lion", "adan", "adabelief", "adopt")  # client.optimizer names served by pytorch-optimizer
BATCHED = ("adam", "adamw", *LIBRARY)  # client.optimizer names with a batched step here

_SWITCHES = ("foreach", "fused", "differentiable", "capturable")  # implementation choices, same math
_COMMON = ("lr", "betas", "weight_decay", "maximize", *_SWITCHES)
_TAKES: dict[str, tuple[str, ...]] = {  # options the step implements; anything else -> serial path
    "adam": (*_COMMON, "eps", "decoupled_weight_decay", "amsgrad"),
    "adamw": (*_COMMON, "eps", "amsgrad"),
    "lion": (*_COMMON, "weight_decouple", "fixed_decay"),
    "adan": (*_COMMON, "eps", "weight_decouple", "max_grad_norm"),
    "adabelief": (
        *_COMMON,
        "eps",
        "weight_decouple",
        "fixed_decay",
        "rectify",
        "ams_bound",
        "n_sma_threshold",
        "degenerated_to_sgd",
    ),
    "adopt": (*_COMMON, "eps", "weight_decouple", "fixed_decay"),
}
_MUST_BE_OFF = ("amsgrad", "rectify", "ams_bound", "max_grad_norm")  # variants the steps leave out
_STATE: dict[str, tuple[str, ...]] = {
    "adam": ("exp_avg", "exp_avg_sq"),
    "adamw": ("exp_avg", "exp_avg_sq"),
    "lion": ("exp_avg",),
    "adan": ("exp_avg", "exp_avg_sq", "exp_avg_diff", "previous_grad"),
    "adabelief": ("exp_avg", "exp_avg_var"),
    "adopt": ("exp_avg", "exp_avg_sq"),
}
PREFIX = "opt_"  # carry keys of the optimizer state


@dataclass(frozen=True)
class AdaptiveOptions:
    kind: str  # one of BATCHED
    clip_norm: float | None
    betas: tuple[float, ...]
    eps: float
    weight_decay: float
    decoupled: bool  # y *= 1 - lr * wd (AdamW, weight_decouple) instead of g += wd * y
    fixed_decay: bool  # decoupled decay without the lr: y *= 1 - wd
    maximize: bool


def batched_options(name: str, cls: type, kwargs: dict[str, Any], clip_norm: float | None) -> AdaptiveOptions | None:
    """The step's options for ``cls(params, **kwargs)``, or None if the step does not implement them."""
    if name not in BATCHED or any(key not in _TAKES[name] for key in kwargs):
        return None
    full = {
        p.name: p.default
        for p in inspect.signature(cls).parameters.values()
        if p.default is not inspect.Parameter.empty
    } | kwargs
    if any(full.get(key) for key in _MUST_BE_OFF):
        return None
    decoupled = name == "adamw" or bool(full.get("decoupled_weight_decay") or full.get("weight_decouple"))
    return AdaptiveOptions(
        kind=name,
        clip_norm=clip_norm,
        betas=tuple(float(b) for b in full["betas"]),
        eps=float(full.get("eps", 0.0)),
        weight_decay=float(full.get("weight_decay") or 0.0),
        decoupled=decoupled,
        fixed_decay=bool(full.get("fixed_decay", False)),
        maximize=bool(full.get("maximize", False)),
    )


def reads_flag(cls: type, key: str) -> bool:
    """Whether a pytorch-optimizer class (which takes ``**kwargs``) reads option ``key``: its module
    or the package's base optimizer quotes the name (use_gc, adanorm, cautious, ...)."""
    import pytorch_optimizer.base.optimizer as base  # noqa: PLC0415

    quoted = (f"'{key}'", f'"{key}"')
    return any(q in inspect.getsource(m) for m in (inspect.getmodule(cls), base) if m is not None for q in quoted)


def init_state(options: AdaptiveOptions, params: Tensor) -> dict[str, Tensor]:
    return {PREFIX + key: torch.zeros_like(params) for key in _STATE[options.kind]}


def _decay(options: AdaptiveOptions, y: Tensor, g: Tensor, lr: Tensor) -> tuple[Tensor, Tensor]:
    """pytorch-optimizer's ``apply_weight_decay`` (torch's Adam/AdamW do the same): (y, g) after decay."""
    if not options.weight_decay:
        return y, g
    if options.decoupled:
        return y * (1.0 - options.weight_decay * (1.0 if options.fixed_decay else lr)), g
    return y, g + options.weight_decay * y


def adaptive_step(
    options: AdaptiveOptions, state: dict[str, Tensor], y: Tensor, g: Tensor, lr: Tensor, t: Tensor
) -> tuple[Tensor, dict[str, Tensor]]:
    """One optimizer step from gradient ``g`` at ``y``; ``t`` is this step's number (1 for the first)."""
    s = {key.removeprefix(PREFIX): value for key, value in state.items()}
    if options.maximize:
        g = -g
    kind, betas, eps = options.kind, options.betas, options.eps
    if kind in ("adam", "adamw"):
        b1, b2 = betas
        y, g = _decay(options, y, g, lr)
        m = torch.lerp(s["exp_avg"], g, 1 - b1)
        v = s["exp_avg_sq"] * b2 + (1 - b2) * g * g
        denom = v.sqrt() / torch.sqrt(1 - torch.pow(b2, t)) + eps
        y = y - (lr / (1 - torch.pow(b1, t))) * (m / denom)
        new = {"exp_avg": m, "exp_avg_sq": v}
    elif kind == "lion":
        b1, b2 = betas
        y, g = _decay(options, y, g, lr)
        update = torch.lerp(s["exp_avg"], g, 1 - b1).sign()
        new = {"exp_avg": torch.lerp(s["exp_avg"], g, 1 - b2)}
        y = y - lr * update
    elif kind == "adabelief":
        b1, b2 = betas
        y, g = _decay(options, y, g, lr)
        m = torch.lerp(s["exp_avg"], g, 1 - b1)
        r = g - m
        var = s["exp_avg_var"] * b2 + (1 - b2) * r * r + eps
        denom = var.sqrt() / torch.sqrt(1 - torch.pow(b2, t)) + eps
        y = y - (lr / (1 - torch.pow(b1, t))) * (m / denom)
        new = {"exp_avg": m, "exp_avg_var": var}
    elif kind == "adan":
        b1, b2, b3 = betas
        first = t == 1
        diff = torch.where(first, torch.zeros_like(g), g - s["previous_grad"])
        m = torch.lerp(s["exp_avg"], g, 1 - b1)
        d = torch.lerp(s["exp_avg_diff"], diff, 1 - b2)
        n = diff * b2 + g
        v = s["exp_avg_sq"] * b3 + (1 - b3) * n * n
        denom = v.sqrt() / torch.sqrt(1 - torch.pow(b3, t)) + eps
        if options.weight_decay and options.decoupled:
            y = y * (1.0 - lr * options.weight_decay)
        y = y - (lr / (1 - torch.pow(b1, t))) * (m / denom)
        y = y - (lr * b2 / (1 - torch.pow(b2, t))) * (d / denom)
        if options.weight_decay and not options.decoupled:
            y = y / (1.0 + lr * options.weight_decay)
        new = {"exp_avg": m, "exp_avg_diff": d, "exp_avg_sq": v, "previous_grad": g}
    elif kind == "adopt":
        b1, b2 = betas
        first = t == 1
        y, g = _decay(options, y, g, lr)
        v = s["exp_avg_sq"]
        clip = torch.pow(t, 0.25)
        normed = torch.clamp(g / torch.clamp(v.sqrt(), min=eps), -clip, clip)
        m = torch.where(first, s["exp_avg"], torch.lerp(s["exp_avg"], normed, 1 - b1))
        y = torch.where(first, y, y - lr * m)
        v = torch.where(first, v + g * g, v * b2 + (1 - b2) * g * g)
        new = {"exp_avg": m, "exp_avg_sq": v}
    else:
        raise ValueError(f"no batched step for client optimizer {kind!r}")
    return y, {PREFIX + key: value for key, value in new.items()}
