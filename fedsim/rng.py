"""Seed derivation: every random choice comes from (experiment seed, purpose, ids...).

``derive_seed`` hashes its inputs so streams for different clients, rounds and purposes are
independent, and adding a client never changes another client's stream. ``uniform`` is a
vectorised counter-based generator (splitmix64) for per-client draws over huge populations
without per-client generator objects.
"""

from __future__ import annotations

import functools
import hashlib

import numpy as np
import torch

__all__ = ["derive_seed", "torch_generator", "numpy_generator", "uniform", "uniform_per_client", "splitmix_ints"]

_MASK = (1 << 63) - 1
_MASK64 = (1 << 64) - 1


def derive_seed(seed: int, purpose: str, *ids: int) -> int:
    """A 63-bit seed from the experiment seed, a purpose string and integer ids."""
    text = ":".join([str(int(seed)), purpose, *(str(int(i)) for i in ids)])
    digest = hashlib.blake2b(text.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & _MASK


def torch_generator(seed: int, purpose: str, *ids: int, device: str | torch.device = "cpu") -> torch.Generator:
    g = torch.Generator(device=device)
    g.manual_seed(derive_seed(seed, purpose, *ids))
    return g


def numpy_generator(seed: int, purpose: str, *ids: int) -> np.random.Generator:
    return np.random.default_rng(derive_seed(seed, purpose, *ids))


def _splitmix64(x: np.ndarray) -> np.ndarray:
    x = x + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


@functools.lru_cache(maxsize=4096)
def _base(seed: int, purpose: str, *ids: int) -> np.uint64:
    return np.uint64(derive_seed(seed, purpose, *ids))


def uniform(seed: int, purpose: str, client_ids: np.ndarray, step: int) -> np.ndarray:
    """U[0,1) draws, one per client id, for counter ``step``; independent per client."""
    base = _base(seed, purpose, int(step))
    ids = np.asarray(client_ids, dtype=np.uint64).reshape(-1)  # arrays wrap silently; scalars would warn
    bits = _splitmix64(_splitmix64(ids ^ base) + base)
    return (bits >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


def uniform_per_client(seed: int, purpose: str, client_ids: np.ndarray, counters: np.ndarray) -> np.ndarray:
    """U[0,1) draws, one per (client id, that client's own counter) pair; independent per pair."""
    base = _base(seed, purpose)
    ids = np.asarray(client_ids, dtype=np.uint64).reshape(-1)
    steps = np.asarray(counters, dtype=np.uint64).reshape(-1)
    bits = _splitmix64(_splitmix64(_splitmix64(ids ^ base) + steps) + base)
    return (bits >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


def splitmix_ints(seed: int, purpose: str, counter: int, count: int) -> list[int]:
    """``count`` 64-bit integers from (seed, purpose, counter), in plain Python (fast for a few)."""
    x = (int(_base(seed, purpose)) ^ ((counter + 1) * 0xD1B54A32D192ED03)) & _MASK64
    out = []
    for _ in range(count):
        x = (x + 0x9E3779B97F4A7C15) & _MASK64
        z = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
        out.append(z ^ (z >> 31))
    return out
