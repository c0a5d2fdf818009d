"""Tasks reading standard datasets the user already has on disk (never downloads).

- ``mnist``: IDX files (``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``, optionally
  gzipped; the ``t10k-*`` test files are pooled in when present) in ``task.path``.
- ``cifar10``: the python pickle batches ``data_batch_1..5`` and ``test_batch`` in
  ``task.path`` (the ``cifar-10-batches-py`` folder), read with :func:`fedsim.safe_pickle.load`
  (plain data only: a batch file cannot run code).
- ``femnist``: LEAF json files (Caldas et al. 2018, arXiv 1812.01097) in ``task.path``; each
  writer is a client (``partition="natural"``, 62 classes). If ``task.path`` has ``train/`` and
  ``test/`` subfolders (LEAF's output layout) their split is used as is; otherwise each
  writer's samples are split with ``test_fraction``. The first ``num_clients`` writers in file
  order are used.
- ``npz``: any arrays saved with ``numpy.savez`` in the file ``task.path``: ``x`` (one row per
  sample: features, or images ``(N, C, H, H)``) and integer labels ``y``; optionally ``client``
  (the client id of each row, ids 0..K-1: ``data.partition: natural`` keeps this split and uses
  clients 0..num_clients-1) and ``x_test``/``y_test`` (a held-out set the global evaluation
  uses instead of the pooled client test rows). Meant for data made elsewhere, e.g. the same
  generated arrays fed to fedsim and to another framework in a benchmark.

A missing, corrupt, truncated or mis-typed file raises :class:`DataFileError` (a ValueError)
with one line naming the file and what is wrong with it.

MNIST and CIFAR-10 pixels are scaled to [0, 1]; the train and test files are pooled and then
partitioned with ``spec.partition`` (they have no natural per-client split).
"""

from __future__ import annotations

import gzip
import json
import struct
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from fedsim.data.federated import ArrayFederatedData
from fedsim.safe_pickle import DataFileError, load as safe_load
from fedsim.tasks.base import TASKS, Task, TaskSpec, channels_last_images, conv_net, mlp, partition_pool, resolve_options

__all__ = ["read_idx", "load_mnist", "load_cifar10", "load_femnist", "load_npz", "build_mnist", "build_cifar10",
           "build_femnist", "build_npz"]

# model choices, minimum values, strict upper bounds of the file tasks' options
_OPTION_CHECKS = ({"model": ("cnn", "mlp")}, {"hidden": 1, "dropout": 0.0}, {"dropout": 1.0})
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def _data_folder(path: str | None, task: str) -> Path:
    if path is None:
        raise FileNotFoundError(f"task.path is required for task {task!r}: set it to the folder holding the data files")
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(f"task.path {str(folder)!r} is not an existing folder (task {task!r})")
    return folder


def _find_file(folder: Path, names: list[str], task: str, required: bool = True) -> Path | None:
    for name in names:
        for candidate in (folder / name, folder / f"{name}.gz"):
            if candidate.is_file():
                return candidate
    if required:
        raise FileNotFoundError(f"task.path {str(folder)!r} has no {names[0]}[.gz] (task {task!r})")
    return None


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (the MNIST format), gzipped if its name ends in ``.gz``."""
    opener = gzip.open if str(path).endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError, gzip.BadGzipFile) as exc:  # corrupt or truncated gzip, unreadable file
        raise DataFileError(f"{path}: cannot read it ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from None
    if len(raw) < 4 or raw[:2] != b"\x00\x00" or raw[2] not in _IDX_DTYPES:
        raise DataFileError(f"{path} is not an IDX file")
    ndim = raw[3]
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    if len(raw) < 4 + 4 * ndim:
        raise DataFileError(f"{path} is truncated (IDX header)")
    dims = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    count = int(np.prod(dims, dtype=np.int64))
    if len(raw) - (4 + 4 * ndim) < count * dtype.itemsize:
        raise DataFileError(f"{path} is truncated: its header promises {count} values of {dtype.itemsize} bytes")
    return np.frombuffer(raw, dtype=dtype, count=count, offset=4 + 4 * ndim).reshape(dims)


def load_mnist(path: str | None) -> tuple[np.ndarray, np.ndarray]:
    """Images float32 (N, 28, 28) in [0, 1] and int64 labels; train and t10k files pooled."""
    folder = _data_folder(path, "mnist")
    images, labels = [], []
    for prefix, required in (("train", True), ("t10k", False)):
        image_file = _find_file(folder, [f"{prefix}-images-idx3-ubyte", f"{prefix}-images.idx3-ubyte"], "mnist", required)
        label_file = _find_file(folder, [f"{prefix}-labels-idx1-ubyte", f"{prefix}-labels.idx1-ubyte"], "mnist", required)
        if image_file is None or label_file is None:
            continue
        x, y = read_idx(image_file), read_idx(label_file)
        if x.ndim != 3 or x.shape[1:] != (28, 28):
            raise DataFileError(f"{image_file}: expected images of shape (N, 28, 28), got {x.shape}")
        if y.ndim != 1 or len(y) and (y.min() < 0 or y.max() > 9):
            raise DataFileError(f"{label_file}: expected one label in 0..9 per image")
        if len(x) != len(y):
            raise DataFileError(f"{image_file} has {len(x)} images but {label_file} has {len(y)} labels")
        images.append(x.astype(np.float32) / 255.0)
        labels.append(y.astype(np.int64))
    return np.concatenate(images), np.concatenate(labels)


def load_cifar10(path: str | None) -> tuple[np.ndarray, np.ndarray]:
    """Images float32 (N, 3, 32, 32) in [0, 1] and int64 labels; all six batches pooled."""
    folder = _data_folder(path, "cifar10")
    images, labels = [], []
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        file = folder / name
        if not file.is_file():
            raise FileNotFoundError(f"task.path {str(folder)!r} has no {name} (task 'cifar10')")
        batch = safe_load(file, what="CIFAR-10 batch", encoding="bytes")
        if not isinstance(batch, dict):
            raise DataFileError(f"CIFAR-10 batch {file}: expected a dict with 'data' and 'labels', got {type(batch).__name__}")
        batch = {k.decode() if isinstance(k, bytes) else k: v for k, v in batch.items()}
        if "data" not in batch or "labels" not in batch:
            raise DataFileError(f"CIFAR-10 batch {file}: missing key {'data' if 'data' not in batch else 'labels'!r}")
        try:
            x = np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
            y = np.asarray(batch["labels"], dtype=np.int64).reshape(-1)
        except (TypeError, ValueError) as exc:
            raise DataFileError(f"CIFAR-10 batch {file}: 'data' must be uint8 rows of 3072 pixels and 'labels' integers ({exc})") from None
        if len(x) != len(y) or (len(y) and (y.min() < 0 or y.max() > 9)):
            raise DataFileError(f"CIFAR-10 batch {file}: {len(x)} images but {len(y)} labels, or labels outside 0..9")
        images.append(x.astype(np.float32) / 255.0)
        labels.append(y)
    return np.concatenate(images), np.concatenate(labels)


def _read_leaf_folder(folder: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """user -> (x float32 (n, 784), y int64), users in (sorted file name, in-file) order."""
    users: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for file in sorted(folder.glob("*.json")):
        try:
            with open(file, encoding="utf-8") as f:
                content = json.load(f)
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise DataFileError(f"LEAF file {file} is not readable JSON: {str(exc).splitlines()[0]}") from None
        try:
            for user in content["users"]:
                samples = content["user_data"][user]
                x = np.asarray(samples["x"], dtype=np.float32).reshape(-1, 784)
                y = np.asarray(samples["y"], dtype=np.int64).reshape(-1)
                if len(x) != len(y):
                    raise DataFileError(f"LEAF file {file}: user {user!r} has {len(x)} inputs but {len(y)} labels")
                if len(y) and (y.min() < 0 or y.max() >= 62):
                    raise DataFileError(f"LEAF file {file}: user {user!r} has labels outside 0..61")
                users[user] = (x, y)
        except KeyError as exc:
            raise DataFileError(f"LEAF file {file}: missing key {exc.args[0]!r} (expected 'users' and 'user_data' with 'x' and 'y')") from None
        except (TypeError, ValueError) as exc:
            if isinstance(exc, DataFileError):
                raise
            raise DataFileError(f"LEAF file {file}: {str(exc).splitlines()[0]} (expected 784 pixels per input, integer labels)") from None
    return users


def load_femnist(path: str | None) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], dict[str, tuple[np.ndarray, np.ndarray]] | None]:
    """(train users, test users or None if the folder has no LEAF train/test split)."""
    folder = _data_folder(path, "femnist")
    if (folder / "train").is_dir() and (folder / "test").is_dir():
        train, test = _read_leaf_folder(folder / "train"), _read_leaf_folder(folder / "test")
    else:
        train, test = _read_leaf_folder(folder), None
    if not train:
        raise FileNotFoundError(f"task.path {str(folder)!r} has no LEAF .json files (task 'femnist')")
    return train, test


def _image_task(spec: TaskSpec, data, opts: dict, channels: int, side: int, num_classes: int) -> Task:
    input_shape = (channels, side, side) if opts["model"] == "cnn" else (channels * side * side,)
    if opts["model"] == "cnn":
        data = channels_last_images(data)

    def build_model() -> nn.Module:
        if opts["model"] == "cnn":
            return conv_net(channels, side, num_classes, float(opts["dropout"]))
        return mlp(channels * side * side, int(opts["hidden"]), num_classes, dropout=float(opts["dropout"]))

    return Task(name=spec.name, data=data, build_model=build_model, num_classes=num_classes, input_shape=input_shape,
                options=opts)


@TASKS.register("mnist", "MNIST from local IDX files in task.path (no download)", options={"path": None, "model": "mlp", "hidden": 200})
def build_mnist(spec: TaskSpec) -> Task:
    opts = resolve_options(spec, {"path": None, "model": "mlp", "hidden": 200, "dropout": 0.0}, *_OPTION_CHECKS)
    x, y = load_mnist(opts["path"])
    shape = (1, 28, 28) if opts["model"] == "cnn" else (784,)
    return _image_task(spec, partition_pool(spec, x.reshape(-1, *shape), y, 10), opts, 1, 28, 10)


@TASKS.register("cifar10", "CIFAR-10 from local python pickle batches in task.path (no download)", options={"path": None, "model": "cnn", "hidden": 256})
def build_cifar10(spec: TaskSpec) -> Task:
    opts = resolve_options(spec, {"path": None, "model": "cnn", "hidden": 256, "dropout": 0.0}, *_OPTION_CHECKS)
    x, y = load_cifar10(opts["path"])
    shape = (3, 32, 32) if opts["model"] == "cnn" else (3072,)
    return _image_task(spec, partition_pool(spec, x.reshape(-1, *shape), y, 10), opts, 3, 32, 10)


@TASKS.register("femnist", "LEAF FEMNIST json files in task.path; one client per writer (62 classes)", options={"path": None, "model": "cnn", "hidden": 200})
def build_femnist(spec: TaskSpec) -> Task:
    opts = resolve_options(spec, {"path": None, "model": "cnn", "hidden": 200, "dropout": 0.0}, *_OPTION_CHECKS)
    train_users, test_users = load_femnist(opts["path"])
    shape = (1, 28, 28) if opts["model"] == "cnn" else (784,)
    num_classes = 62
    if spec.partition != "natural":
        pooled = list(train_users.values()) + list((test_users or {}).values())
        x = np.concatenate([p[0] for p in pooled]).reshape(-1, *shape)
        y = np.concatenate([p[1] for p in pooled])
        return _image_task(spec, partition_pool(spec, x, y, num_classes), opts, 1, 28, num_classes)

    if spec.partition_params:
        raise ValueError(f"partition 'natural' takes no parameters, got {sorted(spec.partition_params)}")
    users = list(train_users)
    if spec.num_clients > len(users):
        raise ValueError(f"num_clients={spec.num_clients} but the FEMNIST files in task.path hold {len(users)} writers")
    users = users[: spec.num_clients]
    empty = (np.zeros((0, 784), np.float32), np.zeros(0, np.int64))
    parts = [train_users[u] for u in users]
    if test_users is not None:
        parts += [test_users.get(u, empty) for u in users]
    x = np.concatenate([p[0] for p in parts]).reshape(-1, *shape)
    y = np.concatenate([p[1] for p in parts])
    bounds = np.cumsum([0] + [len(p[1]) for p in parts])
    ranges = [np.arange(a, b) for a, b in zip(bounds[:-1], bounds[1:])]
    if test_users is None:
        data = ArrayFederatedData.from_partition(
            x, y, ranges, num_classes, spec.test_fraction, spec.seed, device=spec.device
        )
    else:
        n = len(users)
        data = ArrayFederatedData.from_client_splits(x, y, ranges[:n], ranges[n:], num_classes, device=spec.device)
    return _image_task(spec, data, opts, 1, 28, num_classes)


def load_npz(path: str | None) -> dict[str, np.ndarray]:
    """The arrays of an ``.npz`` file: ``x``, ``y`` and, when present, ``client``, ``x_test``, ``y_test``.

    Features become float32 and labels and client ids int64; shapes and label ranges are checked.
    """
    if path is None:
        raise FileNotFoundError("task.path is required for task 'npz': set it to the .npz file holding the arrays")
    file = Path(path).expanduser()
    if not file.is_file():
        raise FileNotFoundError(f"task.path {str(file)!r} is not an existing file (task 'npz')")
    try:
        with np.load(file, allow_pickle=False) as content:
            arrays = {name: content[name] for name in content.files}
    except (OSError, ValueError, EOFError) as exc:  # not a zip, truncated, or object arrays (pickles are refused)
        raise DataFileError(f"{file}: cannot read it as an .npz file ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from None
    for name in ("x", "y"):
        if name not in arrays:
            raise DataFileError(f"{file}: missing array {name!r} (expected x, y and optionally client, x_test, y_test)")
    if ("x_test" in arrays) != ("y_test" in arrays):
        raise DataFileError(f"{file}: x_test and y_test come together; it has only one of them")
    out = {}
    for features, labels in (("x", "y"), ("x_test", "y_test")):
        if features not in arrays:
            continue
        x, y = arrays[features], arrays[labels]
        if not (np.issubdtype(x.dtype, np.number) and np.issubdtype(y.dtype, np.integer)) or y.ndim != 1 or x.ndim < 2:
            raise DataFileError(f"{file}: {features} must be numbers with one row per sample and {labels} one integer label per row")
        if len(x) != len(y):
            raise DataFileError(f"{file}: {features} has {len(x)} rows but {labels} has {len(y)}")
        if len(y) and y.min() < 0:
            raise DataFileError(f"{file}: {labels} has negative labels")
        out[features], out[labels] = x.astype(np.float32, copy=False), y.astype(np.int64, copy=False)
    if "x_test" in out and out["x_test"].shape[1:] != out["x"].shape[1:]:
        raise DataFileError(f"{file}: x_test rows have shape {out['x_test'].shape[1:]}, x rows {out['x'].shape[1:]}")
    if "client" in arrays:
        client = arrays["client"]
        if not np.issubdtype(client.dtype, np.integer) or client.shape != out["y"].shape or (len(client) and client.min() < 0):
            raise DataFileError(f"{file}: client must hold one non-negative integer client id per row of x")
        out["client"] = client.astype(np.int64, copy=False)
    return out


class _HeldOutFederatedData(ArrayFederatedData):
    """Client data as in ArrayFederatedData, but global evaluation uses a separate held-out set."""

    def __init__(self, data: ArrayFederatedData, x_test: Tensor, y_test: Tensor):
        super().__init__(data.x_train, data.y_train, data.train_offsets, data.x_test, data.y_test, data.test_offsets,
                         data.num_classes)
        self._held_out = (x_test, y_test)

    def global_test(self) -> tuple[Tensor, Tensor]:
        return self._held_out


@TASKS.register("npz", "arrays x, y [, client, x_test, y_test] from the .npz file task.path", options={"path": None, "model": None, "hidden": 200})
def build_npz(spec: TaskSpec) -> Task:
    opts = resolve_options(spec, {"path": None, "model": None, "hidden": 200, "dropout": 0.0},
                           {"model": (None, "cnn", "mlp")}, {"hidden": 1, "dropout": 0.0}, {"dropout": 1.0})
    arrays = load_npz(opts["path"])
    x, y = arrays["x"], arrays["y"]
    labels = np.concatenate([y, arrays.get("y_test", y[:0])])
    num_classes = max(int(labels.max()) + 1 if len(labels) else 0, 2)
    images = x.ndim == 4 and x.shape[2] == x.shape[3] >= 10  # conv_net's two conv+pool stages need 10x10 at least
    model = opts["model"] or ("cnn" if images else "mlp")
    if model == "cnn" and not images:
        raise ValueError(f"task.model 'cnn' needs square images x of shape (N, C, H, H) with H >= 10; "
                         f"{opts['path']} has x of shape {x.shape}")
    opts = {**opts, "model": model}

    if spec.partition == "natural":
        if "client" not in arrays:
            raise ValueError(f"partition 'natural' needs an array 'client' in {opts['path']} (the client id of each row)")
        if spec.partition_params:
            raise ValueError(f"partition 'natural' takes no parameters, got {sorted(spec.partition_params)}")
        available = int(arrays["client"].max()) + 1 if len(y) else 0
        if spec.num_clients > available:
            raise ValueError(f"num_clients={spec.num_clients} but {opts['path']} holds clients 0..{available - 1}")
        order = np.argsort(arrays["client"], kind="stable")
        bounds = np.searchsorted(arrays["client"][order], np.arange(spec.num_clients + 1))
        rows = [order[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
        data = ArrayFederatedData.from_partition(x, y, rows, num_classes, spec.test_fraction, spec.seed, device=spec.device)
    else:
        data = partition_pool(spec, x, y, num_classes)
    if "x_test" in arrays:
        x_test = torch.from_numpy(arrays["x_test"]).to(spec.device)
        if model == "cnn" and x_test.device.type == "cpu":  # the layout channels_last_images gives client data
            x_test = x_test.contiguous(memory_format=torch.channels_last)
        data = _HeldOutFederatedData(data, x_test, torch.from_numpy(arrays["y_test"]).to(spec.device))
    if model == "cnn":
        return _image_task(spec, data, opts, x.shape[1], x.shape[2], num_classes)
    features = int(np.prod(x.shape[1:]))
    return Task(name=spec.name, data=data, num_classes=num_classes, input_shape=tuple(x.shape[1:]), options=opts,
                build_model=lambda: mlp(features, int(opts["hidden"]), num_classes, dropout=float(opts["dropout"])))
