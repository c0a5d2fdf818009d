"""Server optimizers from the literature: any ``torch.optim`` or ``pytorch-optimizer`` optimizer.

The server model is one flat parameter vector x whose gradient is the NEGATIVE aggregated
client delta, g = -U (U = weighted mean of local - global, so -U points uphill as a gradient
does). One optimizer step on (x, g) gives the next model; with ``torch.SGD`` at lr 1 that is
x + U, FedAvg. The optimizer's ``state_dict()`` (plain dicts of tensors and numbers) is the
strategy's optimizer state, so it checkpoints and resumes; each update loads a copy of it
into a fresh optimizer, steps once, and returns the new ``state_dict()`` (updates are pure).

Names (``strategy.server_optimizer``):

* ``sgd``, ``adagrad``, ``adam``, ``yogi``: the hand-written Reddi et al. optimizers
  (strategies/server_optimizers.py), unchanged;
* ``torch.<Class>``: a ``torch.optim`` class, e.g. ``torch.SGD``, ``torch.AdamW`` (any case);
* ``<name>``: an optimizer of the ``pytorch-optimizer`` package by its own key, e.g.
  ``adabelief``, ``lion``, ``adopt``, ``mars``, ``adan``; ``pytorch_optimizer.<name>`` also
  works and is the way to its ``yogi`` (the bare name is the hand-written FedYogi). Keys the
  package maps to torch.optim classes (adam, adamw, sgd, ...) are spelled ``torch.<Class>``.

``strategy.server_lr`` is the optimizer's ``lr`` (its own default when unset), and
``strategy.server_optimizer_kwargs`` holds its other options, checked by its constructor.
Optimizers that need a closure, a Hessian or the model itself cannot step from the
pseudo-gradient alone and are refused (:data:`REFUSED`); any other that fails one probe step
on a flat vector is refused with the optimizer's own message.

pytorch-optimizer is imported only when one of its names is used (its import takes ~2 s).
"""

from __future__ import annotations

import copy
import functools
import inspect
from typing import Any

import torch

from clients.optimizers import reads_flag
from fedsim.registry import UnknownNameError
from strategies.server_optimizers import ServerOptimizer

__all__ = ["LibraryOptimizer", "REFUSED", "library_factory", "torch_optimizers", "package_optimizers", "listing"]

TORCH_PREFIX = "torch."
PACKAGE_PREFIX = "pytorch_optimizer."
HAND_WRITTEN = ("sgd", "adagrad", "adam", "yogi")
_SWITCHES = ("foreach", "fused", "differentiable", "capturable")  # speed/autograd switches, not math

_CLOSURE = "needs a closure that re-evaluates the loss"
_HESSIAN = "needs a Hessian estimate (a backward pass with create_graph on the loss)"
_MODEL = "needs the model (its named parameters or its backward pass), not one flat vector"
_MATRIX = "orthogonalises 2-D weight matrices; the server steps one flat vector"
REFUSED: dict[str, str] = {
    "torch.LBFGS": _CLOSURE + " (line search)",
    "sophiah": _HESSIAN,
    "adahessian": _HESSIAN,
    "alig": _CLOSURE + " (its Polyak step size)",
    "bsam": _CLOSURE + " (SAM's second forward-backward pass)",
    "lomo": _MODEL,
    "adalomo": _MODEL,
    "adammini": _MODEL,
    "muon": _MATRIX,
    "muonclip": _MATRIX,
    "adamuon": _MATRIX,
    "normuon": _MATRIX,
    "distributedmuon": _MATRIX,
    "adago": _MATRIX,
    "spectralsphere": _MATRIX,
}


@functools.cache
def torch_optimizers() -> dict[str, type[torch.optim.Optimizer]]:
    """``torch.<Class>`` -> class for every torch.optim optimizer."""
    return {
        f"{TORCH_PREFIX}{name}": cls
        for name, cls in sorted(vars(torch.optim).items())
        if inspect.isclass(cls) and issubclass(cls, torch.optim.Optimizer) and cls is not torch.optim.Optimizer
    }


@functools.cache
def package_optimizers() -> dict[str, type[torch.optim.Optimizer]]:
    """pytorch-optimizer key -> class, for its own classes (not the torch.optim ones it re-exports)."""
    import pytorch_optimizer  # noqa: PLC0415  (2 s: only when a library name is used)

    out = {}
    for key in pytorch_optimizer.get_supported_optimizers():
        cls = pytorch_optimizer.load_optimizer(key)
        if cls.__module__.split(".")[0] == "pytorch_optimizer":
            out[key] = cls
    return out


def _summary(cls: type) -> str:
    doc = (inspect.getdoc(cls) or "").strip().splitlines()
    return doc[0].rstrip(".") if doc else cls.__name__


def _resolve(name: str) -> tuple[str, type[torch.optim.Optimizer]]:
    """(canonical name, class) for a library name; UnknownNameError (one line) if it is none."""
    if name.lower().startswith(TORCH_PREFIX):
        found = {k.lower(): k for k in torch_optimizers()}.get(name.lower())
        if found is None:
            raise UnknownNameError(
                f"unknown server optimizer {name!r}; torch.optim has: {', '.join(torch_optimizers())}"
            )
        canonical = found
        cls = torch_optimizers()[found]
    else:
        key = name.lower().removeprefix(PACKAGE_PREFIX)
        packaged = package_optimizers()
        if key not in packaged:
            close = sorted(k for k in packaged if key[:3] and key[:3] in k)[:6]
            hint = f"; similar: {', '.join(close)}" if close else ""
            torch_hint = f" (torch.optim's is spelled torch.{_torch_class(key)})" if _torch_class(key) else ""
            raise UnknownNameError(
                f"unknown server optimizer {name!r}{torch_hint}; valid choices: {', '.join(HAND_WRITTEN)}, "
                f"torch.<Class> (torch.optim) or a pytorch-optimizer name (`fedsim list server_optimizers`){hint}"
            )
        canonical = f"{PACKAGE_PREFIX}{key}" if key in HAND_WRITTEN else key
        cls = packaged[key]
    if canonical in REFUSED:
        raise UnknownNameError(
            f"server optimizer {canonical!r} {REFUSED[canonical]}: a server optimizer steps "
            "from the aggregated update alone; choose another (`fedsim list server_optimizers`)"
        )
    return canonical, cls


def _torch_class(key: str) -> str | None:
    return next((k.removeprefix(TORCH_PREFIX) for k in torch_optimizers() if k.lower() == f"torch.{key}"), None)


class LibraryOptimizer:
    """Factory ``(lr=..., options={...}) -> ServerOptimizer`` for one library optimizer class.

    Its signature (``lr`` with the class's default, ``options``) is what strategy config
    fields route to: ``strategy.server_lr`` -> lr, ``strategy.server_optimizer_kwargs`` -> options.
    """

    def __init__(self, name: str, cls: type[torch.optim.Optimizer]):
        self.name = name
        self.cls = cls
        package = "torch.optim" if cls.__module__.startswith("torch.") else "pytorch_optimizer"
        self.description = f"{package}.{cls.__name__}: {_summary(cls)}"
        lr = inspect.signature(cls).parameters.get("lr")
        default = lr.default if lr is not None and lr.default is not inspect.Parameter.empty else None
        if isinstance(default, torch.Tensor):
            default = float(default)
        P = inspect.Parameter
        self.__signature__ = inspect.Signature(
            [P("lr", P.KEYWORD_ONLY, default=default), P("options", P.KEYWORD_ONLY, default=None)]
        )

    def option_defaults(self) -> list[tuple[str, Any]]:
        """(option, default) the class takes besides params and lr (``fedsim show``)."""
        out = []
        for p in list(inspect.signature(self.cls).parameters.values())[1:]:
            if p.name == "lr" or p.name in _SWITCHES or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
                continue
            out.append((p.name, p.default if p.default is not inspect.Parameter.empty else "(required)"))
        return out

    def _kwargs(self, lr: float | None, options: dict[str, Any] | None) -> dict[str, Any]:
        options = dict(options or {})
        if "lr" in options:
            raise ValueError("strategy.server_optimizer_kwargs: set the learning rate with strategy.server_lr, not lr")
        accepted = inspect.signature(self.cls).parameters
        takes_any = any(p.kind is p.VAR_KEYWORD for p in accepted.values())
        unknown = sorted(k for k in options if k not in accepted or k == "params")
        if takes_any:  # pytorch-optimizer's **kwargs flags (use_gc, adanorm, cautious, ...): those its code reads
            unknown = [k for k in unknown if k == "params" or not reads_flag(self.cls, k)]
        if unknown:
            valid = ", ".join(k for k, _ in self.option_defaults())
            raise ValueError(
                f"strategy.server_optimizer_kwargs: {self.name} ({self.cls.__name__}) has no option "
                f"{unknown[0]!r}; valid choices: {valid or 'none'}"
            )
        if self.cls.__name__ == "MARS":
            # MARS steps 1-D parameters with plain AdamW at its own lr_1d, ignoring lr, unless
            # optimize_1d; the server steps one flat 1-D vector, so only this makes it MARS at server_lr
            options.setdefault("optimize_1d", True)
        for key in ("betas",):  # YAML gives lists; the optimizers index them, some compare them as tuples
            if isinstance(options.get(key), list):
                options[key] = tuple(options[key])
        if lr is None and "lr" in accepted:
            raise ValueError(f"strategy.server_lr: {self.name} has no default learning rate; set one")
        return ({"lr": lr} if lr is not None else {}) | options

    def _build(self, param: torch.nn.Parameter, kwargs: dict[str, Any]) -> torch.optim.Optimizer:
        try:
            return self.cls([param], **kwargs)
        except Exception as exc:  # noqa: BLE001  (ValueError, TypeError, a missing extra: one line)
            message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise ValueError(f"strategy.server_optimizer_kwargs: {self.name} refuses its options: {message}") from None

    def __call__(self, *, lr: float | None = None, options: dict[str, Any] | None = None) -> ServerOptimizer:
        if lr is None:
            lr = self.__signature__.parameters["lr"].default  # the class's own default
        if lr is not None and lr < 0:
            raise ValueError(f"strategy.server_lr must be >= 0, got {lr}")
        kwargs = self._kwargs(lr, options)
        probe = torch.nn.Parameter(torch.linspace(-1.0, 1.0, 8))
        optimizer = self._build(probe, kwargs)  # the constructor validates every option
        probe.grad = torch.linspace(0.5, -0.5, 8)
        try:
            optimizer.step()
        except Exception as exc:  # noqa: BLE001  (whatever the library raises: one line, naming the optimizer)
            message = str(exc).splitlines()[0][:200] if str(exc) else ""
            raise ValueError(
                f"strategy.server_optimizer: {self.name} cannot step one flat parameter vector from "
                f"the aggregated update ({type(exc).__name__}: {message})"
            ) from None
        build = self._build

        def init(params: torch.Tensor) -> dict[str, Any]:
            return build(torch.nn.Parameter(params.detach().clone()), kwargs).state_dict()

        def update(u: torch.Tensor, state: Any) -> tuple[torch.Tensor, Any]:
            raise TypeError("a library server optimizer steps the model itself: call apply(u, state, params)")

        def apply(u: torch.Tensor, state: dict[str, Any], params: torch.Tensor) -> tuple[torch.Tensor, dict[str, Any]]:
            param = torch.nn.Parameter(params.detach().clone())
            opt = build(param, kwargs)
            opt.load_state_dict(copy.deepcopy(state))  # a copy: the optimizer updates its state in place
            param.grad = -u.detach().to(param.dtype)  # the pseudo-gradient
            opt.step()
            return param.detach(), opt.state_dict()

        return ServerOptimizer(init, update, apply)


@functools.cache
def library_factory(name: str) -> LibraryOptimizer:
    canonical, cls = _resolve(name)
    return LibraryOptimizer(canonical, cls)


def listing() -> list[tuple[str, str]]:
    """(name, description) of every library server optimizer, then the refused ones."""
    out = []
    for name, cls in torch_optimizers().items():
        if name not in REFUSED:
            out.append((name, f"torch.optim.{cls.__name__}"))
    for key, cls in package_optimizers().items():
        name = f"{PACKAGE_PREFIX}{key}" if key in HAND_WRITTEN else key
        if name not in REFUSED:
            out.append((name, f"pytorch_optimizer.{cls.__name__}: {_summary(cls)}"[:110]))
    return out
