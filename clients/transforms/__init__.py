"""Client transforms: what happens to a client's delta after its local steps, before it leaves the client.

The first stage of fedsim's update pipeline (client transforms -> arrival transforms ->
aggregator -> aggregate transforms -> server optimizer). Each transform works on a stack of
deltas, ``(k, d)``, so the serial executor (k = 1), the vmap executor (one chunk at a time),
Ray's actors and Flower's ClientApp all run the same code:

    transform.apply(updates, ctx) -> (updates, metrics)

``ctx`` (:class:`ClientContext`) gives each row's job seed, client id, model version and
local config (a server may send per-job instructions, e.g. an adaptive clip norm), plus the
model's layout (layer boundaries). ``metrics`` maps a name to one value per row; the
executor copies them into each :class:`~fedsim.types.ClientResult`'s ``metrics`` so the
server side (e.g. adaptive clipping's count of unclipped updates) and the logs can read them.

Transforms are named in a registry and travel to workers as ``(name, options)`` pairs
(:data:`ClientTransformSpec`), so a worker process rebuilds them without pickling code.
Randomness comes from the job's seed (``fedsim.rng.derive_seed(job.seed, purpose)``): the
same job draws the same noise on every executor.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Protocol, Sequence

import torch

from fedsim.params import ParamLayout
from fedsim.registry import Registry
from fedsim.types import ClientJob, ClientResult

__all__ = [
    "CLIENT_TRANSFORMS", "ClientContext", "ClientTransform", "ClientTransformSpec", "build_client_transforms",
    "apply_client_transforms", "describe",
]

ClientTransformSpec = tuple[str, dict[str, Any]]  # (registry name, options): picklable

CLIENT_TRANSFORMS: Registry[Callable[..., Any]] = Registry("client transform")


@dataclass(frozen=True)
class ClientContext:
    """What a client transform may know about the rows it transforms (one entry per row)."""

    layout: ParamLayout
    seeds: Sequence[int]  # each job's seed (fedsim.rng: derive a purpose-specific seed from it)
    client_ids: Sequence[int]
    versions: Sequence[int]
    configs: Sequence[dict[str, Any]]  # each job's local config (client options | strategy.configure)


class ClientTransform(Protocol):
    name: str

    def apply(self, updates: torch.Tensor, ctx: ClientContext) -> tuple[torch.Tensor, dict[str, torch.Tensor]]: ...


def build_client_transforms(specs: Sequence[ClientTransformSpec]) -> list[ClientTransform]:
    """Instantiate ``(name, options)`` pairs from the registry (an unknown name lists the choices)."""
    return [CLIENT_TRANSFORMS.get(name)(**options) for name, options in specs]


def describe(specs: Sequence[ClientTransformSpec]) -> list[str]:
    """One line per transform, e.g. ``clip_global(clip=1.0)``."""
    return [f"{name}({', '.join(f'{k}={v}' for k, v in options.items())})" for name, options in specs]


def apply_client_transforms(
    transforms: Sequence[ClientTransform], results: Sequence[ClientResult], jobs: Sequence[ClientJob], layout: ParamLayout
) -> None:
    """Transform the deltas of the successful ``results`` (``jobs[i]`` made ``results[i]``) in place, as one stack.

    Failed results are left alone (they are never aggregated). Each transform's per-row
    metrics are added to the rows' ``metrics``.
    """
    if not transforms:
        return
    rows = [i for i, r in enumerate(results) if r.ok]
    if not rows:
        return
    updates = torch.stack([results[i].delta for i in rows])
    ctx = ClientContext(
        layout=layout,
        seeds=[jobs[i].seed for i in rows],
        client_ids=[jobs[i].client_id for i in rows],
        versions=[jobs[i].version for i in rows],
        configs=[jobs[i].config for i in rows],
    )
    for transform in transforms:
        updates, metrics = transform.apply(updates, ctx)
        for name, values in metrics.items():
            for k, value in zip(rows, values.tolist()):
                results[k].metrics[name] = float(value)
    for k, i in enumerate(rows):
        results[i].delta = updates[k].clone()


# the built-in transforms register themselves
from clients.transforms import clip as _clip  # noqa: E402,F401
from clients.transforms import local_noise as _local_noise  # noqa: E402,F401
from clients.transforms import attacks as _attacks  # noqa: E402,F401
