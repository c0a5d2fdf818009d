"""Partitioners: split a labelled pool of samples among clients.

Each partitioner is ``f(labels, num_clients, rng, **params) -> list[np.ndarray]`` returning one
int64 index array per client, every sample assigned to exactly one client. They are
registered in ``PARTITIONERS``; :func:`make_partition` looks one up by name, checks its
parameters and its output.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import numpy as np

from fedsim.registry import Registry
from fedsim.rng import numpy_generator

__all__ = ["PARTITIONERS", "Partitioner", "make_partition", "iid", "dirichlet", "shards", "natural"]

Partitioner = Callable[..., list[np.ndarray]]
PARTITIONERS: Registry[Partitioner] = Registry("partitioner")

_DIRICHLET_REDRAWS = 10


def _check_enough_samples(num_samples: int, num_clients: int, per_client: int = 1) -> None:
    if num_clients < 1:
        raise ValueError(f"num_clients must be >= 1, got {num_clients}")
    if num_samples < num_clients * per_client:
        raise ValueError(f"{num_samples} samples cannot give {num_clients} clients {per_client} sample(s) each")


def _group_by_owner(owner: np.ndarray, num_clients: int) -> list[np.ndarray]:
    order = np.argsort(owner, kind="stable").astype(np.int64)
    sizes = np.bincount(owner, minlength=num_clients)
    return np.split(order, np.cumsum(sizes)[:-1])


@PARTITIONERS.register("iid", "uniformly random, equal-size (up to one sample) split")
def iid(labels: np.ndarray, num_clients: int, rng: np.random.Generator) -> list[np.ndarray]:
    _check_enough_samples(len(labels), num_clients)
    return np.array_split(rng.permutation(len(labels)).astype(np.int64), num_clients)


@PARTITIONERS.register(
    "dirichlet", "label skew: each class split among clients by Dirichlet(alpha) proportions (Hsu et al. 2019)"
)
def dirichlet(
    labels: np.ndarray,
    num_clients: int,
    rng: np.random.Generator,
    alpha: float = 0.5,
    min_samples: int = 1,
) -> list[np.ndarray]:
    """Smaller ``alpha`` -> more skewed label distributions.

    Redraws up to a few times until every client has ``min_samples``; if that fails (likely
    for small alpha and many clients), moves random samples from the largest clients.
    """
    if not alpha > 0:
        raise ValueError(f"dirichlet alpha must be > 0, got {alpha}")
    if min_samples < 0:
        raise ValueError(f"min_samples must be >= 0, got {min_samples}")
    labels = np.asarray(labels)
    _check_enough_samples(len(labels), num_clients, min_samples)
    class_members = [np.flatnonzero(labels == c) for c in np.unique(labels)]

    for _ in range(_DIRICHLET_REDRAWS):
        owner = np.empty(len(labels), dtype=np.int64)
        for members in class_members:
            proportions = rng.dirichlet(np.full(num_clients, float(alpha)))
            boundaries = np.rint(np.cumsum(proportions) * len(members)).astype(np.int64)
            boundaries[-1] = len(members)  # guard against cumsum rounding below 1
            position = np.arange(len(members))
            owner[rng.permutation(members)] = np.searchsorted(boundaries, position, side="right")
        sizes = np.bincount(owner, minlength=num_clients)
        if sizes.min() >= min_samples:
            return _group_by_owner(owner, num_clients)

    _top_up_small_clients(owner, sizes, min_samples, rng)
    return _group_by_owner(owner, num_clients)


def _top_up_small_clients(owner: np.ndarray, sizes: np.ndarray, min_samples: int, rng: np.random.Generator) -> None:
    """Give every client ``min_samples`` by taking random samples from the currently largest ones."""
    for cid in np.flatnonzero(sizes < min_samples):
        while sizes[cid] < min_samples:
            donor = int(np.argmax(sizes))
            # Enough samples in total guarantees the donor stays at or above min_samples.
            count = min(min_samples - sizes[cid], sizes[donor] - min_samples)
            moved = rng.choice(np.flatnonzero(owner == donor), size=count, replace=False)
            owner[moved] = cid
            sizes[donor] -= count
            sizes[cid] += count


@PARTITIONERS.register(
    "shards", "sort by label, give each client shards_per_client random shards (McMahan et al. 2017)"
)
def shards(
    labels: np.ndarray, num_clients: int, rng: np.random.Generator, shards_per_client: int = 2
) -> list[np.ndarray]:
    if shards_per_client < 1:
        raise ValueError(f"shards_per_client must be >= 1, got {shards_per_client}")
    labels = np.asarray(labels)
    num_shards = num_clients * shards_per_client
    _check_enough_samples(len(labels), num_shards)
    # Shuffle first so ties within a class are broken randomly, then sort stably by label.
    shuffled = rng.permutation(len(labels))
    by_label = shuffled[np.argsort(labels[shuffled], kind="stable")].astype(np.int64)
    shard_list = np.array_split(by_label, num_shards)
    shard_order = rng.permutation(num_shards).reshape(num_clients, shards_per_client)
    return [np.concatenate([shard_list[s] for s in row]) for row in shard_order]


@PARTITIONERS.register("natural", "task-provided per-client split (e.g. LEAF writers/users)")
def natural(labels: np.ndarray, num_clients: int, rng: np.random.Generator) -> list[np.ndarray]:
    raise ValueError(
        "partition 'natural' needs a task with its own per-client split (e.g. synthetic, femnist); "
        "this task has none; use iid, dirichlet or shards"
    )


def make_partition(
    name: str, labels: np.ndarray, num_clients: int, seed: int, params: dict[str, Any] | None = None
) -> list[np.ndarray]:
    """Run partitioner ``name`` with a generator derived from ``seed`` and check its output."""
    partitioner = PARTITIONERS.get(name)
    params = dict(params or {})
    accepted = list(inspect.signature(partitioner).parameters)[3:]
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        valid = ", ".join(accepted) or "(none)"
        raise ValueError(f"unknown parameter(s) {', '.join(unknown)} for partition {name!r}; valid: {valid}")
    rng = numpy_generator(seed, "partition")
    parts = partitioner(np.asarray(labels), num_clients, rng, **params)
    if len(parts) != num_clients:
        raise RuntimeError(f"partitioner {name!r} returned {len(parts)} clients, expected {num_clients}")
    assigned = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
    if len(assigned) != len(labels) or np.bincount(assigned, minlength=len(labels)).max(initial=0) > 1:
        raise RuntimeError(f"partitioner {name!r} did not assign every sample exactly once")
    return parts
