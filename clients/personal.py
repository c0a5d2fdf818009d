"""Pieces shared by the personalization algorithms (APFL, Ditto, FedPer, FedRep).

A personalization algorithm is a step-based client algorithm (clients/base.py) whose client
state holds what is personal (a model, a mixing weight, a head) and that declares how a
client's personalized model follows from the global model and that state::

    params_i = algorithm.personalize(options, global_params, state_i)

The evaluator (fedsim/evaluation.py) calls it for every evaluated client that has state; a
client that never participated has no state and is evaluated with the global model.

FedPer and FedRep split the flat parameter vector into a shared body and a personal head
(``client.personal_layers``: parameter-name prefixes, or a count of final layers). Which
coordinates are the head depends on the model, which a client config does not know:
:func:`bind_client_config` resolves the head into ``client_config["personal_spans"]`` (flat
[start, end) ranges) once, where the run (or the Flower server) builds the client config.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from fedsim.params import ParamLayout

__all__ = ["bind_client_config", "head_spans", "layer_groups", "spans_mask", "gather", "scatter"]


def layer_groups(layout: ParamLayout) -> list[tuple[str, list[int]]]:
    """Parameters grouped by their module (``fc2.weight``, ``fc2.bias`` -> ``fc2``), in model order."""
    groups: list[tuple[str, list[int]]] = []
    for i, (name, is_buffer) in enumerate(zip(layout.names, layout.is_buffer)):
        if is_buffer:
            continue
        module = name.rsplit(".", 1)[0] if "." in name else name
        if groups and groups[-1][0] == module:
            groups[-1][1].append(i)
        else:
            groups.append((module, [i]))
    return groups


def head_spans(layout: ParamLayout, personal_layers: list[str] | int | None) -> tuple[tuple[int, int], ...]:
    """Flat [start, end) ranges of the personal head.

    ``personal_layers``: a count k of final layers (modules with parameters; None means 1, the
    references' head), or a list of parameter-name prefixes (``"fc2"`` picks ``fc2.weight`` and
    ``fc2.bias``). An empty list or 0 means no personal part.
    """
    groups = layer_groups(layout)
    offsets = layout.offsets()
    if personal_layers is None or isinstance(personal_layers, int):
        k = 1 if personal_layers is None else int(personal_layers)
        if not 0 <= k <= len(groups):
            raise ValueError(
                f"client.personal_layers: {k} final layers asked, the model has {len(groups)} "
                f"({', '.join(g for g, _ in groups)})"
            )
        picked = [i for _, idx in groups[len(groups) - k :] for i in idx]
    else:
        picked = []
        names = [n for n, b in zip(layout.names, layout.is_buffer) if not b]
        for prefix in personal_layers:
            hits = [
                i
                for i, n in enumerate(layout.names)
                if not layout.is_buffer[i] and (n == prefix or n.startswith(prefix + "."))
            ]
            if not hits:
                raise ValueError(
                    f"client.personal_layers: no parameter named {prefix!r} or under it; "
                    f"valid choices: {', '.join(names)}"
                )
            picked.extend(hits)
    spans = sorted({offsets[i] for i in picked})
    return tuple((int(s), int(e)) for s, e in spans)


def bind_client_config(algorithm: Any, client_config: dict[str, Any], layout: ParamLayout) -> dict[str, Any]:
    """The client config with what the algorithm needs to know of the model (FedPer/FedRep's head)."""
    if not getattr(algorithm, "needs_head", False):
        return client_config
    spans = head_spans(layout, client_config.get("personal_layers"))
    return client_config | {"personal_spans": [list(s) for s in spans]}


def spans_mask(spans: tuple[tuple[int, int], ...], like: Tensor) -> Tensor:
    """A bool vector of ``like``'s size, True on the head coordinates."""
    mask = torch.zeros(like.shape[-1], dtype=torch.bool, device=like.device)
    for s, e in spans:
        mask[s:e] = True
    return mask


def gather(flat: Tensor, spans: tuple[tuple[int, int], ...]) -> Tensor:
    """The head coordinates of ``flat``, concatenated (what a client stores)."""
    if not spans:
        return flat.new_zeros(0)
    return torch.cat([flat[s:e] for s, e in spans])


def scatter(flat: Tensor, head: Tensor, spans: tuple[tuple[int, int], ...]) -> Tensor:
    """A copy of ``flat`` with its head coordinates replaced by ``head`` (gather's inverse)."""
    out = flat.clone()
    at = 0
    for s, e in spans:
        out[s:e] = head[at : at + e - s].to(out.device, out.dtype)
        at += e - s
    return out
