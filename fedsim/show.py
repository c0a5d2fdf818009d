"""``fedsim show NAME``: what a registered name is and which settings it takes.

A strategy preset shows its weighting and server optimizer with the option values the preset
uses (and the config key that changes each), and the config defaults it suggests; a task its
options and defaults; a participation model the config keys it reads; a weighting, server
optimizer, partitioner or local optimizer its arguments. A name registered in several kinds
(``sgd``, ``uniform``, ``fedau``) shows every one.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable
from typing import Any

from fedsim import registries
from fedsim.registry import UnknownNameError

__all__ = ["describe"]

NOUNS = {
    "client": "client algorithm",
    "optimizer": "local optimizer",
    "participation": "participation model",
    "speed": "speed model",
    "arrivals": "arrival process",
    "staleness": "staleness weighting",
}


def _signature_defaults(factory: Callable[..., Any], skip: int = 0) -> list[tuple[str, Any]]:
    params = list(inspect.signature(factory).parameters.values())[skip:]
    return [
        (p.name, p.default if p.default is not inspect.Parameter.empty else "(required)")
        for p in params
        if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    ]


def _config_value(key: str) -> Any:
    from fedsim.config import RunConfig  # noqa: PLC0415

    node: Any = RunConfig().to_dict()
    for part in key.split("."):
        node = node[part]
    return node


def _lines(pairs: list[tuple[str, Any]], indent: str = "    ") -> list[str]:
    if not pairs:
        return [f"{indent}(no options)"]
    width = max(len(k) for k, _ in pairs)
    return [f"{indent}{k:<{width}} = {v}" for k, v in pairs]


def _strategy_option_keys() -> dict[str, str]:
    """part keyword argument -> StrategyConfig field (e.g. lr -> strategy.server_lr)."""
    from strategies.fedopt import OPTION_FIELDS  # noqa: PLC0415

    return {arg: f"strategy.{field}" for field, arg in OPTION_FIELDS.items()}


def _part_options(factory: Callable[..., Any], preset_values: dict[str, Any]) -> list[tuple[str, Any]]:
    keys = _strategy_option_keys()
    out = []
    for arg, default in _signature_defaults(factory):
        key = keys.get(arg, arg)
        out.append((key, preset_values.get(key, default)))
    return out


def _show_strategy(name: str) -> list[str]:
    from fedsim.metrics import flatten  # noqa: PLC0415

    preset = registries.get("strategy").get(name)
    values = {f"strategy.{k}": v for k, v in preset.options.items()}
    weighting = registries.get("weighting").get(preset.weighting)
    optimizer = registries.get("server_optimizer").get(preset.server_optimizer)
    lines = [
        f"strategy preset {name}: {preset.description}",
        f"  weighting {preset.weighting} (strategy.weighting): {registries.get('weighting').description(preset.weighting)}",
    ]
    lines += _lines(_part_options(weighting, values))
    lines.append(
        f"  server optimizer {preset.server_optimizer} (strategy.server_optimizer): "
        f"{registries.get('server_optimizer').description(preset.server_optimizer)}"
    )
    lines += _lines(_part_options(optimizer, values))
    shown = {key for key, _ in _part_options(weighting, values) + _part_options(optimizer, values)}
    others = [(key, value) for key, value in values.items() if key not in shown]
    if others:
        lines.append("  other options of the preset:")
        lines += _lines(others)
    suggested = flatten(preset.config_defaults)
    if suggested:
        lines.append("  config defaults it suggests (anything you set wins):")
        lines += _lines(list(suggested.items()))
    return lines


def _show_part(kind: str, name: str) -> list[str]:
    registry = registries.get(kind)
    lines = [f"{NOUNS.get(kind, kind.replace('_', ' '))} {name}: {registry.description(name)}"]
    factory = registry.get(name)
    if kind == "server_optimizer" and hasattr(factory, "option_defaults"):  # a library optimizer
        lines += _lines(
            [("strategy.server_lr", factory.__signature__.parameters["lr"].default)]
            + [(f"strategy.server_optimizer_kwargs.{k}", v) for k, v in factory.option_defaults()]
        )
    elif kind in ("weighting", "server_optimizer"):
        lines += _lines(_part_options(factory, {}))
    elif kind == "partitioner":
        lines += _lines(
            [
                (f"data.{arg}", _config_value(f"data.{arg}"))
                for arg, _ in _signature_defaults(factory, skip=3)
                if arg in registries_data_fields()
            ]
        )
    elif kind == "optimizer":
        pairs = []
        for arg, default in _signature_defaults(factory, skip=1):
            if arg == "kwargs":
                continue
            if arg in ("lr", "momentum", "weight_decay"):
                pairs.append((f"client.{arg}", _config_value(f"client.{arg}")))
            elif arg not in ("foreach", "fused", "differentiable", "capturable"):  # speed/autograd switches
                pairs.append((f"client.optimizer_kwargs.{arg}", default))
        lines += _lines(pairs)
    elif kind == "task":
        options = registry.options(name)
        if options is not None:
            lines += _lines([(f"task.{k}", v) for k, v in options.items()])
    elif kind == "participation":
        keys = registry.options(name)
        if keys is not None:
            lines += _lines([(k, _config_value(k)) for k in keys])
    return lines


def registries_data_fields() -> set[str]:
    from fedsim.config import DataConfig  # noqa: PLC0415

    return set(DataConfig.model_fields)


def describe(name: str) -> str:
    """Every registry entry called ``name``, described; UnknownNameError if there is none."""
    blocks = []
    for kind in registries.KINDS:
        if name not in registries.get(kind):
            continue
        blocks.append(_show_strategy(name) if kind == "strategy" else _show_part(kind, name))
    if not blocks:
        names = {n for kind in registries.KINDS for n in registries.get(kind).names()}
        close = [n for n in names if name.strip() and name.strip().lower() in n.lower()]
        close += difflib.get_close_matches(name, sorted(names), n=3, cutoff=0.75)  # typos: fedavgg -> fedavg
        hint = f"; similar: {', '.join(sorted(set(close))[:8])}" if close else "; `fedsim list` shows every name"
        raise UnknownNameError(f"no strategy, weighting, task, participation model, ... is called '{name}'{hint}")
    return "\n\n".join("\n".join(block) for block in blocks)
