"""Federated dataset containers: per-client train/test data behind one small interface.

:class:`ArrayFederatedData` keeps all data in memory, reordered once so each client's train
(and test) data is one contiguous slice: ``train(cid)`` returns views, never copies.
:class:`LazyFederatedData` generates a client's data on demand from (seed, client id), so a
population of 10^6 clients costs only its ``num_samples`` array.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Protocol, runtime_checkable

import numpy as np
import torch
from torch import Tensor

from fedsim.rng import numpy_generator

__all__ = [
    "FederatedData",
    "ArrayFederatedData",
    "LazyFederatedData",
    "ClientArrays",
    "held_out_sizes",
]

ClientArrays = tuple[Tensor, Tensor, Tensor, Tensor]  # x_train, y_train, x_test, y_test


@runtime_checkable
class FederatedData(Protocol):
    num_clients: int
    num_classes: int
    num_samples: np.ndarray  # int64[num_clients], train samples per client

    def train(self, cid: int) -> tuple[Tensor, Tensor]: ...

    def test(self, cid: int) -> tuple[Tensor, Tensor]: ...

    def global_test(self) -> tuple[Tensor, Tensor]: ...

    def label_histograms(self, ids: np.ndarray | None = None) -> np.ndarray: ...


def held_out_sizes(sizes: np.ndarray | int, test_fraction: float) -> np.ndarray:
    """Test samples per client: round(test_fraction * n), leaving >= 1 train sample when n >= 2.

    A client with a single sample keeps it for training.
    """
    _check_test_fraction(test_fraction)
    n = np.asarray(sizes, dtype=np.int64)
    n_test = np.rint(test_fraction * n).astype(np.int64)
    return np.clip(n_test, 0, np.maximum(n - 1, 0))


def _check_test_fraction(test_fraction: float) -> None:
    if not 0.0 <= test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in [0, 1), got {test_fraction}")


def _as_features(x: np.ndarray | Tensor) -> Tensor:
    return torch.as_tensor(x).to(torch.float32)


def _as_labels(y: np.ndarray | Tensor) -> Tensor:
    return torch.as_tensor(y).to(torch.int64).reshape(-1)


def _check_labels(y: Tensor, num_classes: int) -> None:
    if y.numel() and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        raise ValueError(f"labels must lie in [0, {num_classes}); got range [{int(y.min())}, {int(y.max())}]")


def _histograms(labels: np.ndarray, row_of_sample: np.ndarray, num_rows: int, num_classes: int) -> np.ndarray:
    counts = np.bincount(row_of_sample * num_classes + labels, minlength=num_rows * num_classes)
    counts = counts.reshape(num_rows, num_classes).astype(np.float64)
    totals = counts.sum(axis=1, keepdims=True)
    return np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)


class ArrayFederatedData:
    """All clients' data in four tensors plus CSR offsets (client c owns rows offsets[c]:offsets[c+1])."""

    def __init__(
        self,
        x_train: Tensor,
        y_train: Tensor,
        train_offsets: np.ndarray,
        x_test: Tensor,
        y_test: Tensor,
        test_offsets: np.ndarray,
        num_classes: int,
    ):
        self.train_offsets = np.asarray(train_offsets, dtype=np.int64)
        self.test_offsets = np.asarray(test_offsets, dtype=np.int64)
        for name, offsets, rows in (
            ("train_offsets", self.train_offsets, len(y_train)),
            ("test_offsets", self.test_offsets, len(y_test)),
        ):
            if offsets.ndim != 1 or len(offsets) < 1 or offsets[0] != 0 or offsets[-1] != rows:
                raise ValueError(f"{name} must start at 0 and end at the number of rows ({rows})")
            if np.any(np.diff(offsets) < 0):
                raise ValueError(f"{name} must be non-decreasing")
        if len(self.train_offsets) != len(self.test_offsets):
            raise ValueError("train_offsets and test_offsets describe different numbers of clients")
        if len(x_train) != len(y_train) or len(x_test) != len(y_test):
            raise ValueError("features and labels have different numbers of rows")
        _check_labels(y_train, num_classes)
        _check_labels(y_test, num_classes)
        self.x_train, self.y_train = x_train, y_train
        self.x_test, self.y_test = x_test, y_test
        self.num_classes = int(num_classes)
        self.num_clients = len(self.train_offsets) - 1
        self.num_samples = np.diff(self.train_offsets)
        self._train_labels = y_train.cpu().numpy()

    @classmethod
    def from_client_splits(
        cls,
        x: np.ndarray | Tensor,
        y: np.ndarray | Tensor,
        train_indices: Sequence[np.ndarray],
        test_indices: Sequence[np.ndarray],
        num_classes: int,
        device: str | torch.device = "cpu",
    ) -> ArrayFederatedData:
        """Build from explicit per-client train and test row indices into ``(x, y)``.

        Every row may be used at most once overall. Rows are gathered once into
        client-contiguous order (the only copy of the data that is kept).
        """
        x, y = _as_features(x), _as_labels(y)
        if len(x) != len(y):
            raise ValueError(f"x has {len(x)} rows but y has {len(y)}")
        if len(train_indices) != len(test_indices):
            raise ValueError("train_indices and test_indices must list the same clients")
        train_order, train_offsets = _concat_with_offsets(train_indices)
        test_order, test_offsets = _concat_with_offsets(test_indices)
        used = np.concatenate([train_order, test_order])
        if used.size:
            if used.min() < 0 or used.max() >= len(y):
                raise ValueError(f"client indices must lie in [0, {len(y)})")
            if np.bincount(used, minlength=len(y)).max() > 1:
                raise ValueError("client indices assign some sample more than once")
        train_rows, test_rows = torch.from_numpy(train_order), torch.from_numpy(test_order)
        return cls(
            x[train_rows].to(device),
            y[train_rows].to(device),
            train_offsets,
            x[test_rows].to(device),
            y[test_rows].to(device),
            test_offsets,
            num_classes,
        )

    @classmethod
    def from_partition(
        cls,
        x: np.ndarray | Tensor,
        y: np.ndarray | Tensor,
        client_indices: Sequence[np.ndarray],
        num_classes: int,
        test_fraction: float,
        seed: int,
        device: str | torch.device = "cpu",
    ) -> ArrayFederatedData:
        """Shuffle each client's indices (seeded per client) and split them into train/test."""
        _check_test_fraction(test_fraction)
        sizes = np.array([len(idx) for idx in client_indices], dtype=np.int64)
        test_sizes = held_out_sizes(sizes, test_fraction)
        train_indices, test_indices = [], []
        for cid, (idx, n_test) in enumerate(zip(client_indices, test_sizes)):
            shuffled = numpy_generator(seed, "train-test-split", cid).permutation(np.asarray(idx, dtype=np.int64))
            test_indices.append(shuffled[:n_test])
            train_indices.append(shuffled[n_test:])
        return cls.from_client_splits(x, y, train_indices, test_indices, num_classes, device)

    def _check_cid(self, cid: int) -> int:
        if not 0 <= cid < self.num_clients:
            raise IndexError(f"client id {cid} out of range [0, {self.num_clients})")
        return int(cid)

    def train(self, cid: int) -> tuple[Tensor, Tensor]:
        cid = self._check_cid(cid)
        a, b = self.train_offsets[cid], self.train_offsets[cid + 1]
        return self.x_train[a:b], self.y_train[a:b]

    def test(self, cid: int) -> tuple[Tensor, Tensor]:
        cid = self._check_cid(cid)
        a, b = self.test_offsets[cid], self.test_offsets[cid + 1]
        return self.x_test[a:b], self.y_test[a:b]

    def global_test(self) -> tuple[Tensor, Tensor]:
        return self.x_test, self.y_test

    def label_histograms(self, ids: np.ndarray | None = None) -> np.ndarray:
        ids = np.arange(self.num_clients) if ids is None else np.asarray(ids, dtype=np.int64).reshape(-1)
        if ids.size and (ids.min() < 0 or ids.max() >= self.num_clients):
            raise IndexError(f"client ids must lie in [0, {self.num_clients})")
        lengths = self.num_samples[ids]
        starts = self.train_offsets[ids]
        # Row positions of all selected clients' samples, without a Python loop over clients.
        row_of_sample = np.repeat(np.arange(len(ids)), lengths)
        first_in_output = np.cumsum(lengths) - lengths
        positions = np.repeat(starts - first_in_output, lengths) + np.arange(lengths.sum())
        return _histograms(self._train_labels[positions], row_of_sample, len(ids), self.num_classes)


def _concat_with_offsets(parts: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    arrays = [np.asarray(p, dtype=np.int64).reshape(-1) for p in parts]
    offsets = np.zeros(len(arrays) + 1, dtype=np.int64)
    offsets[1:] = np.cumsum([len(a) for a in arrays])
    order = np.concatenate(arrays) if arrays else np.zeros(0, dtype=np.int64)
    return order, offsets


class LazyFederatedData:
    """Client data made on demand by ``make_client(cid)``, with a small LRU cache.

    ``make_client`` must be a pure function of the client id (derive its randomness from
    (seed, cid)) returning ``(x_train, y_train, x_test, y_test)`` with
    ``len(y_train) == num_samples[cid]``.
    """

    def __init__(
        self,
        num_clients: int,
        num_classes: int,
        num_samples: np.ndarray,
        make_client: Callable[[int], ClientArrays],
        max_test_clients: int = 1000,
        seed: int = 0,
        cache_size: int = 256,
        device: str | torch.device = "cpu",
    ):
        self.num_samples = np.asarray(num_samples, dtype=np.int64)
        if self.num_samples.shape != (num_clients,):
            raise ValueError(f"num_samples must have shape ({num_clients},), got {self.num_samples.shape}")
        if max_test_clients < 1:
            raise ValueError(f"max_test_clients must be >= 1, got {max_test_clients}")
        self.num_clients = int(num_clients)
        self.num_classes = int(num_classes)
        self.make_client = make_client
        self.max_test_clients = int(max_test_clients)
        self.seed = seed
        self.cache_size = int(cache_size)
        self.device = torch.device(device)
        self._cache: OrderedDict[int, ClientArrays] = OrderedDict()
        self._global_test: tuple[Tensor, Tensor] | None = None

    def _generate(self, cid: int) -> ClientArrays:
        x_train, y_train, x_test, y_test = self.make_client(cid)
        if len(y_train) != self.num_samples[cid]:
            raise RuntimeError(
                f"make_client({cid}) returned {len(y_train)} train samples, num_samples says {self.num_samples[cid]}"
            )
        return (
            _as_features(x_train).to(self.device),
            _as_labels(y_train).to(self.device),
            _as_features(x_test).to(self.device),
            _as_labels(y_test).to(self.device),
        )

    def _client(self, cid: int) -> ClientArrays:
        if not 0 <= cid < self.num_clients:
            raise IndexError(f"client id {cid} out of range [0, {self.num_clients})")
        cid = int(cid)
        if cid in self._cache:
            self._cache.move_to_end(cid)
            return self._cache[cid]
        arrays = self._generate(cid)
        if self.cache_size > 0:
            self._cache[cid] = arrays
            if len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return arrays

    def train(self, cid: int) -> tuple[Tensor, Tensor]:
        x_train, y_train, _, _ = self._client(cid)
        return x_train, y_train

    def test(self, cid: int) -> tuple[Tensor, Tensor]:
        _, _, x_test, y_test = self._client(cid)
        return x_test, y_test

    def global_test_clients(self) -> np.ndarray:
        """Clients whose test splits form :meth:`global_test`: all, or a fixed seeded sample."""
        if self.num_clients <= self.max_test_clients:
            return np.arange(self.num_clients)
        rng = numpy_generator(self.seed, "global-test-clients")
        return np.sort(rng.choice(self.num_clients, size=self.max_test_clients, replace=False))

    def global_test(self) -> tuple[Tensor, Tensor]:
        if self._global_test is None:
            # Bypass the LRU cache so building the test set does not evict training clients.
            parts = [self._generate(int(cid)) for cid in self.global_test_clients()]
            self._global_test = (
                torch.cat([p[2] for p in parts]),
                torch.cat([p[3] for p in parts]),
            )
        return self._global_test

    def label_histograms(self, ids: np.ndarray | None = None) -> np.ndarray:
        """Generates each requested client (slow for huge populations; pass ``ids``)."""
        ids = np.arange(self.num_clients) if ids is None else np.asarray(ids, dtype=np.int64).reshape(-1)
        if ids.size and (ids.min() < 0 or ids.max() >= self.num_clients):
            raise IndexError(f"client ids must lie in [0, {self.num_clients})")
        hist = np.zeros((len(ids), self.num_classes), dtype=np.float64)
        for row, cid in enumerate(ids):
            cid = int(cid)
            arrays = self._cache[cid] if cid in self._cache else self._generate(cid)
            labels = arrays[1].cpu().numpy()
            hist[row] = _histograms(labels, np.zeros(len(labels), dtype=np.int64), 1, self.num_classes)[0]
        return hist
