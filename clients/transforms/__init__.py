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

**Per-client state.** A transform with ``stateful = True`` (error feedback's residual,
PowerSGD's warm-start Q, L-GreCo's chosen levels) keeps a dict of tensors per client. It lives
in the client's entry of the engine's ClientStateStore, beside the client algorithm's own state,
under reserved keys ``"transform/<position>.<name>/<key>"`` (:data:`TRANSFORM_STATE_PREFIX`), so
it spills to disk, travels to Ray workers and into checkpoints with the rest of the client's
state, and lives in the Flower node's Context. Executors never look inside: the algorithm is
handed :func:`algorithm_state` (the state without those keys), and :func:`apply_client_transforms`
gives each stateful transform its own part of every row's state as ``ctx.states`` (a dict, or
None on the client's first job) and merges what it returns into ``result.state``:

    transform.apply(updates, ctx) -> (updates, metrics, new_states)   # stateful = True

A failed job changes no state. The key carries the transform's position and name, so a run
resumed with another pipeline never hands one transform another's state.

Transforms are named in a registry and travel to workers as ``(name, options)`` pairs
(:data:`ClientTransformSpec`), so a worker process rebuilds them without pickling code.
Randomness comes from the job's seed (``fedsim.rng.derive_seed(job.seed, purpose)``): the
same job draws the same noise on every executor.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from fedsim.params import ParamLayout
from fedsim.registry import Registry
from fedsim.types import ClientJob, ClientResult

__all__ = [
    "CLIENT_TRANSFORMS",
    "TRANSFORM_STATE_PREFIX",
    "algorithm_state",
    "state_prefix",
    "transform_state",
    "ClientContext",
    "ClientTransform",
    "ClientTransformSpec",
    "build_client_transforms",
    "apply_client_transforms",
    "describe",
]

ClientTransformSpec = tuple[str, dict[str, Any]]  # (registry name, options): picklable
TRANSFORM_STATE_PREFIX = "transform/"  # client-state keys reserved for client transforms

CLIENT_TRANSFORMS: Registry[Callable[..., Any]] = Registry("client transform")


@dataclass(frozen=True)
class ClientContext:
    """What a client transform may know about the rows it transforms (one entry per row)."""

    layout: ParamLayout
    seeds: Sequence[int]  # each job's seed (fedsim.rng: derive a purpose-specific seed from it)
    client_ids: Sequence[int]
    versions: Sequence[int]
    configs: Sequence[dict[str, Any]]  # each job's local config (client options | strategy.configure)
    states: Sequence[dict[str, torch.Tensor] | None] | None = (
        None  # stateful transforms: this transform's state per row
    )


class ClientTransform(Protocol):
    name: str

    def apply(self, updates: torch.Tensor, ctx: ClientContext) -> tuple[torch.Tensor, dict[str, torch.Tensor]]: ...

    # a transform with ``stateful = True`` returns (updates, metrics, new states: one dict per row)


def build_client_transforms(specs: Sequence[ClientTransformSpec]) -> list[ClientTransform]:
    """Instantiate ``(name, options)`` pairs from the registry (an unknown name lists the choices)."""
    return [CLIENT_TRANSFORMS.get(name)(**options) for name, options in specs]


def describe(specs: Sequence[ClientTransformSpec]) -> list[str]:
    """One line per transform, e.g. ``clip_global(clip=1.0)``."""
    return [f"{name}({', '.join(f'{k}={v}' for k, v in options.items())})" for name, options in specs]


def algorithm_state(state: Any) -> Any:
    """A client's stored state without the client transforms' keys (None if nothing else is left)."""
    if not isinstance(state, dict) or not any(_is_transform_key(k) for k in state):
        return state
    rest = {k: v for k, v in state.items() if not _is_transform_key(k)}
    return rest or None


def _is_transform_key(key: Any) -> bool:
    return isinstance(key, str) and key.startswith(TRANSFORM_STATE_PREFIX)


def state_prefix(position: int, name: str) -> str:
    """The client-state key prefix of the transform at ``position`` in the pipeline."""
    return f"{TRANSFORM_STATE_PREFIX}{position}.{name}/"


def transform_state(state: Any, prefix: str) -> dict[str, torch.Tensor] | None:
    """The part of a client's stored state under ``prefix``, keys without it (None if there is none)."""
    if not isinstance(state, dict):
        return None
    part = {k[len(prefix) :]: v for k, v in state.items() if isinstance(k, str) and k.startswith(prefix)}
    return part or None


def apply_client_transforms(
    transforms: Sequence[ClientTransform],
    results: Sequence[ClientResult],
    jobs: Sequence[ClientJob],
    layout: ParamLayout,
) -> None:
    """Transform the deltas of the successful ``results`` (``jobs[i]`` made ``results[i]``) in place, as one stack.

    Failed results are left alone (they are never aggregated). Each transform's per-row
    metrics are added to the rows' ``metrics``. Stateful transforms' new states are merged into
    each row's ``result.state`` (the algorithm's state, or the job's when the algorithm returned none).
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
    kept: list[dict[str, torch.Tensor]] = [{} for _ in rows]  # the transforms' new states, prefixed keys
    for position, transform in enumerate(transforms):
        if getattr(transform, "stateful", False):
            prefix = state_prefix(position, transform.name)
            row_ctx = dataclasses.replace(ctx, states=[transform_state(jobs[i].state, prefix) for i in rows])
            updates, metrics, states = transform.apply(updates, row_ctx)
            for k, state in enumerate(states):
                kept[k].update({prefix + key: value for key, value in (state or {}).items()})
        else:
            updates, metrics = transform.apply(updates, ctx)
        for name, values in metrics.items():
            for k, value in zip(rows, values.tolist()):
                results[k].metrics[name] = float(value)
    for k, i in enumerate(rows):
        results[i].delta = updates[k].clone()
        if kept[k]:
            own = results[i].state if results[i].state is not None else algorithm_state(jobs[i].state)
            if own is not None and not isinstance(own, dict):
                raise TypeError(
                    f"client transforms keep per-client state beside the algorithm's, which must then be "
                    f"a dict of tensors, got {type(own).__name__}"
                )
            results[i].state = {**(own or {}), **kept[k]}


# the built-in transforms register themselves
from clients.transforms import attacks as _attacks  # noqa: E402,F401
from clients.transforms import clip as _clip  # noqa: E402,F401
from clients.transforms import compress as _compress  # noqa: E402,F401
from clients.transforms import link_noise as _link_noise  # noqa: E402,F401
from clients.transforms import local_noise as _local_noise  # noqa: E402,F401
