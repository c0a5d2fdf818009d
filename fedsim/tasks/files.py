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
with one line naming the file (and the array) and what is wrong with it. Sizes a file declares
(an ``.npy`` or IDX header, the zip directory) are checked before anything is allocated: they
must agree with each other and, counted at 8 bytes per value, fit in
:func:`data_memory_limit` (half the machine's physical memory). Data that would train
silently wrong is refused too: features that are not finite real numbers, labels that are not
whole numbers 0..C-1 with every class present in the training labels, a single class, test
labels the training labels never use, and images that are not ``(N, C, H, H)``.

MNIST and CIFAR-10 pixels are scaled to [0, 1]; the train and test files are pooled and then
partitioned with ``spec.partition`` (they have no natural per-client split).
"""

from __future__ import annotations

import gzip
import json
import math
import os
import struct
import zipfile
import zlib
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from fedsim.data.federated import ArrayFederatedData
from fedsim.safe_pickle import DataFileError
from fedsim.safe_pickle import load as safe_load
from fedsim.tasks.base import (
    TASKS,
    Task,
    TaskSpec,
    channels_last_images,
    conv_net,
    mlp,
    partition_pool,
    resolve_options,
)

__all__ = [
    "data_memory_limit",
    "read_idx",
    "load_mnist",
    "load_cifar10",
    "load_femnist",
    "load_npz",
    "build_mnist",
    "build_cifar10",
    "build_femnist",
    "build_npz",
]

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


def data_memory_limit() -> int:
    """Bytes the arrays of one data file may take, counted at 8 bytes per value: half the physical memory."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2
    except (AttributeError, ValueError, OSError):  # no sysconf (Windows): a fixed 16 GiB
        return 16 * 2**30


def _check_fits(where: str, shape: tuple[int, ...], dtype: np.dtype) -> None:
    """Refuse an array of ``shape`` before allocating it if it would not fit in :func:`data_memory_limit`."""
    need = math.prod(shape) * max(dtype.itemsize, 8)
    if need > data_memory_limit():
        raise DataFileError(
            f"{where} declares shape {shape} ({math.prod(shape)} values, {need / 2**30:.3g} GiB "
            f"loaded); the limit is {data_memory_limit() / 2**30:.3g} GiB (half the physical memory)"
        )


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (the MNIST format), gzipped if its name ends in ``.gz``.

    The header is checked (against the file size and :func:`data_memory_limit`) before the
    values are read, so a gzip bomb or a header promising 10^12 values costs nothing.
    """
    gzipped = str(path).endswith(".gz")
    try:
        with (gzip.open if gzipped else open)(path, "rb") as f:
            head = f.read(4)
            if len(head) < 4 or head[:2] != b"\x00\x00" or head[2] not in _IDX_DTYPES:
                raise DataFileError(f"{path} is not an IDX file")
            ndim, dtype = head[3], np.dtype(_IDX_DTYPES[head[2]])
            raw_dims = f.read(4 * ndim)
            if len(raw_dims) < 4 * ndim:
                raise DataFileError(f"{path} is truncated (IDX header)")
            dims = struct.unpack(f">{ndim}I", raw_dims)
            nbytes = math.prod(dims) * dtype.itemsize
            if not gzipped and os.path.getsize(path) - 4 - 4 * ndim < nbytes:
                raise DataFileError(
                    f"{path} is truncated: its header promises {math.prod(dims)} values of {dtype.itemsize} bytes"
                )
            _check_fits(str(path), dims, dtype)
            raw = f.read(nbytes)
            if len(raw) < nbytes:
                raise DataFileError(
                    f"{path} is truncated: its header promises {math.prod(dims)} values of {dtype.itemsize} bytes"
                )
            if f.read(1):
                raise DataFileError(f"{path} has data after the {math.prod(dims)} values its header declares")
    except (OSError, EOFError, zlib.error) as exc:  # corrupt or truncated gzip, unreadable file
        raise DataFileError(
            f"{path}: cannot read it ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})"
        ) from None
    return np.frombuffer(raw, dtype=dtype).reshape(dims)


def _check_classes(where: str, y: np.ndarray) -> None:
    """A classifier needs at least two classes in its training labels."""
    classes = np.unique(y)
    if len(classes) < 2:
        raise DataFileError(
            f"{where} has a single class ({classes[0] if len(classes) else 'none'}); a classifier needs at least two"
        )


def load_mnist(path: str | None) -> tuple[np.ndarray, np.ndarray]:
    """Images float32 (N, 28, 28) in [0, 1] and int64 labels; train and t10k files pooled."""
    folder = _data_folder(path, "mnist")
    images, labels = [], []
    for prefix, required in (("train", True), ("t10k", False)):
        image_file = _find_file(
            folder, [f"{prefix}-images-idx3-ubyte", f"{prefix}-images.idx3-ubyte"], "mnist", required
        )
        label_file = _find_file(
            folder, [f"{prefix}-labels-idx1-ubyte", f"{prefix}-labels.idx1-ubyte"], "mnist", required
        )
        if image_file is None or label_file is None:
            continue
        x, y = read_idx(image_file), read_idx(label_file)
        for file, array in ((image_file, x), (label_file, y)):
            if array.dtype != np.uint8:
                raise DataFileError(f"{file}: expected unsigned bytes (IDX type 0x08) as in MNIST, got {array.dtype}")
        if x.ndim != 3 or x.shape[1:] != (28, 28):
            raise DataFileError(f"{image_file}: expected images of shape (N, 28, 28), got {x.shape}")
        if y.ndim != 1 or len(y) and (y.min() < 0 or y.max() > 9):
            raise DataFileError(f"{label_file}: expected one label in 0..9 per image")
        if len(x) != len(y):
            raise DataFileError(f"{image_file} has {len(x)} images but {label_file} has {len(y)} labels")
        images.append(x.astype(np.float32) / 255.0)
        labels.append(y.astype(np.int64))
    _check_classes(f"the MNIST labels in {folder}", np.concatenate(labels))
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
            raise DataFileError(
                f"CIFAR-10 batch {file}: expected a dict with 'data' and 'labels', got {type(batch).__name__}"
            )
        batch = {k.decode() if isinstance(k, bytes) else k: v for k, v in batch.items()}
        if "data" not in batch or "labels" not in batch:
            raise DataFileError(f"CIFAR-10 batch {file}: missing key {'data' if 'data' not in batch else 'labels'!r}")
        data, y = batch["data"], np.asarray(batch["labels"])
        if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
            shape = f"{data.dtype} array of shape {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
            raise DataFileError(
                f"CIFAR-10 batch {file}: 'data' must be a uint8 array of rows of 3072 pixels, got {shape}"
            )
        if y.dtype.kind not in "iu" or y.ndim != 1:
            raise DataFileError(
                f"CIFAR-10 batch {file}: 'labels' must be a list of integers, got {y.dtype} of shape {y.shape}"
            )
        if len(data) != len(y) or (len(y) and (y.min() < 0 or y.max() > 9)):
            raise DataFileError(
                f"CIFAR-10 batch {file}: {len(data)} images but {len(y)} labels, or labels outside 0..9"
            )
        images.append(data.reshape(-1, 3, 32, 32).astype(np.float32) / 255.0)
        labels.append(y.astype(np.int64))
    _check_classes(f"the CIFAR-10 labels in {folder}", np.concatenate(labels))
    return np.concatenate(images), np.concatenate(labels)


def _read_leaf_folder(folder: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """user -> (x float32 (n, 784), y int64), users in (sorted file name, in-file) order."""
    users: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    seen: dict[str, Path] = {}  # user -> the file that has it
    for file in sorted(folder.glob("*.json")):
        try:
            with open(file, encoding="utf-8") as f:
                content = json.load(f)
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise DataFileError(f"LEAF file {file} is not readable JSON: {str(exc).splitlines()[0]}") from None
        try:
            for user in content["users"]:
                samples = content["user_data"][user]
                x, y = np.asarray(samples["x"], dtype=np.float32), np.asarray(samples["y"])
                if x.size == 0 and y.size == 0:  # a writer without samples (json gives float arrays of shape (0,))
                    x, y = x.reshape(0, 784), y.astype(np.int64)
                where = f"LEAF file {file}: user {user!r}"
                if x.ndim != 2 or x.shape[1] != 784:
                    raise DataFileError(f"{where} has inputs of shape {x.shape}; expected 784 pixels per input")
                if not np.isfinite(x).all():  # JSON as Python reads it allows NaN and Infinity
                    raise DataFileError(
                        f"{where} has {int((~np.isfinite(x)).sum())} pixel values that are not finite numbers"
                    )
                if y.ndim != 1 or y.dtype.kind not in "iu":
                    raise DataFileError(
                        f"{where}: 'y' must be a list of integer labels, got {y.dtype} of shape {y.shape}"
                    )
                if len(x) != len(y):
                    raise DataFileError(f"{where} has {len(x)} inputs but {len(y)} labels")
                if len(y) and (y.min() < 0 or y.max() >= 62):
                    raise DataFileError(f"{where} has labels outside 0..61")
                if user in seen:
                    raise DataFileError(f"{where} appears twice (also in {seen.get(user, file).name})")
                seen[user] = file
                users[user] = (x, y.astype(np.int64))
        except KeyError as exc:
            raise DataFileError(
                f"LEAF file {file}: missing key {exc.args[0]!r} (expected 'users' and 'user_data' with 'x' and 'y')"
            ) from None
        except (TypeError, ValueError) as exc:
            if isinstance(exc, DataFileError):
                raise
            raise DataFileError(
                f"LEAF file {file}: {str(exc).splitlines()[0]} (expected 784 pixels per input, integer labels)"
            ) from None
    return users


def load_femnist(
    path: str | None,
) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], dict[str, tuple[np.ndarray, np.ndarray]] | None]:
    """(train users, test users or None if the folder has no LEAF train/test split)."""
    folder = _data_folder(path, "femnist")
    if (folder / "train").is_dir() and (folder / "test").is_dir():
        train, test = _read_leaf_folder(folder / "train"), _read_leaf_folder(folder / "test")
    else:
        train, test = _read_leaf_folder(folder), None
    if not train:
        raise FileNotFoundError(f"task.path {str(folder)!r} has no LEAF .json files (task 'femnist')")
    _check_classes(f"the FEMNIST training labels in {folder}", np.concatenate([y for _, y in train.values()]))
    return train, test


def _image_task(spec: TaskSpec, data, opts: dict, channels: int, side: int, num_classes: int) -> Task:
    input_shape = (channels, side, side) if opts["model"] == "cnn" else (channels * side * side,)
    if opts["model"] == "cnn":
        data = channels_last_images(data)

    def build_model() -> nn.Module:
        if opts["model"] == "cnn":
            return conv_net(channels, side, num_classes, float(opts["dropout"]))
        return mlp(channels * side * side, int(opts["hidden"]), num_classes, dropout=float(opts["dropout"]))

    return Task(
        name=spec.name,
        data=data,
        build_model=build_model,
        num_classes=num_classes,
        input_shape=input_shape,
        options=opts,
    )


@TASKS.register(
    "mnist",
    "MNIST from local IDX files in task.path (no download)",
    options={"path": None, "model": "mlp", "hidden": 200},
)
def build_mnist(spec: TaskSpec) -> Task:
    opts = resolve_options(spec, {"path": None, "model": "mlp", "hidden": 200, "dropout": 0.0}, *_OPTION_CHECKS)
    x, y = load_mnist(opts["path"])
    shape = (1, 28, 28) if opts["model"] == "cnn" else (784,)
    return _image_task(spec, partition_pool(spec, x.reshape(-1, *shape), y, 10), opts, 1, 28, 10)


@TASKS.register(
    "cifar10",
    "CIFAR-10 from local python pickle batches in task.path (no download)",
    options={"path": None, "model": "cnn", "hidden": 256},
)
def build_cifar10(spec: TaskSpec) -> Task:
    opts = resolve_options(spec, {"path": None, "model": "cnn", "hidden": 256, "dropout": 0.0}, *_OPTION_CHECKS)
    x, y = load_cifar10(opts["path"])
    shape = (3, 32, 32) if opts["model"] == "cnn" else (3072,)
    return _image_task(spec, partition_pool(spec, x.reshape(-1, *shape), y, 10), opts, 3, 32, 10)


@TASKS.register(
    "femnist",
    "LEAF FEMNIST json files in task.path; one client per writer (62 classes)",
    options={"path": None, "model": "cnn", "hidden": 200},
)
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


_NPZ_ARRAYS = ("x", "y", "client", "x_test", "y_test")
_NPZ_ROLE = {"x": "features", "x_test": "features", "y": "labels", "y_test": "labels", "client": "client ids"}
_NPY_HEADER_READERS = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}


def _npy_header(file: Path, archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> tuple[tuple[int, ...], np.dtype]:
    """(shape, dtype) from a member's .npy header, checked against the member's size in the zip directory."""
    with archive.open(info) as f:
        version = np.lib.format.read_magic(f)
        if version not in _NPY_HEADER_READERS:
            raise DataFileError(
                f"{file}: {info.filename} is .npy format {version[0]}.{version[1]}; fedsim reads 1.0 and 2.0"
            )
        shape, _, dtype = _NPY_HEADER_READERS[version](f)
        if dtype.hasobject:
            raise DataFileError(
                f"{file}: {info.filename} is an object array (a pickle); fedsim does not unpickle "
                f".npz arrays: save {_NPZ_ROLE.get(info.filename[:-4], 'arrays')} as numbers"
            )
        data_bytes = info.file_size - f.tell()
    declared = math.prod(shape) * dtype.itemsize
    if declared != data_bytes:
        raise DataFileError(
            f"{file}: {info.filename} declares shape {shape} of {dtype} ({declared} bytes) but holds "
            f"{data_bytes} bytes of data"
        )
    return shape, dtype


def _check_npz_layout(file: Path, headers: dict[str, tuple[tuple[int, ...], np.dtype]]) -> None:
    """What the headers alone tell: dtypes, shapes, matching lengths, the memory the arrays will take."""
    for name in ("x", "y"):
        if name not in headers:
            raise DataFileError(f"{file}: missing array {name!r} (expected x, y and optionally client, x_test, y_test)")
    if ("x_test" in headers) != ("y_test" in headers):
        raise DataFileError(f"{file}: x_test and y_test come together; it has only one of them")
    for name, (shape, dtype) in headers.items():
        role = _NPZ_ROLE[name]
        if dtype.kind == "c":
            raise DataFileError(f"{file}: {name} has complex values; {role} must be real numbers")
        if dtype.kind not in ("biuf" if role == "features" else "iuf") or dtype.fields is not None:
            raise DataFileError(
                f"{file}: {name} has dtype {dtype}; {role} must be {'numbers' if role == 'features' else 'integers'}"
            )
        if role == "features":
            if not 2 <= len(shape) <= 4:
                raise DataFileError(
                    f"{file}: {name} has shape {shape}; features must be (N, F), (N, H, W) or "
                    "(N, C, H, H) images, one row per sample"
                )
            if len(shape) == 4 and shape[2] != shape[3]:
                raise DataFileError(
                    f"{file}: {name} has shape {shape}; images must be square and channels-first, "
                    "(N, C, H, H) (channels-last arrays: x.transpose(0, 3, 1, 2))"
                )
            if math.prod(shape[1:]) == 0:
                raise DataFileError(f"{file}: {name} has shape {shape}: its rows hold no values")
        elif len(shape) != 1:
            raise DataFileError(f"{file}: {name} has shape {shape}; {role} must be one value per row, shape (N,)")
    for features, other in (("x", "y"), ("x", "client"), ("x_test", "y_test")):
        if features in headers and other in headers and headers[features][0][0] != headers[other][0][0]:
            raise DataFileError(
                f"{file}: {features} has {headers[features][0][0]} rows but {other} has {headers[other][0][0]}"
            )
    if headers["x"][0][0] == 0 or headers.get("x_test", ((1,), None))[0][0] == 0:
        raise DataFileError(f"{file}: {'x' if headers['x'][0][0] == 0 else 'x_test'} has no rows")
    if "x_test" in headers and headers["x_test"][0][1:] != headers["x"][0][1:]:
        raise DataFileError(f"{file}: x_test rows have shape {headers['x_test'][0][1:]}, x rows {headers['x'][0][1:]}")
    values = sum(math.prod(shape) * max(dtype.itemsize, 8) for shape, dtype in headers.values())
    if values > data_memory_limit():
        biggest = max(headers, key=lambda n: math.prod(headers[n][0]))
        _check_fits(f"{file}: {biggest}", headers[biggest][0], headers[biggest][1])
        raise DataFileError(
            f"{file}: its arrays take {values / 2**30:.3g} GiB loaded; the limit is "
            f"{data_memory_limit() / 2**30:.3g} GiB (half the physical memory)"
        )


def _finite_features(file: Path, name: str, x: np.ndarray) -> np.ndarray:
    """``x`` as float32, refusing NaN, infinities and values float32 cannot hold."""
    if x.dtype.kind == "f":
        for count, what in ((int(np.isnan(x).sum()), "NaN"), (int(np.isinf(x).sum()), "infinite")):
            if count:
                raise DataFileError(f"{file}: {name} has {count} {what} values; features must be finite")
    with np.errstate(over="ignore"):  # counted just below
        x = x.astype(np.float32, copy=False)
    overflow = int(np.isinf(x).sum())
    if overflow:
        raise DataFileError(f"{file}: {name} has {overflow} values beyond float32's range (+-3.4e38)")
    return x


def _whole_numbers(file: Path, name: str, values: np.ndarray) -> np.ndarray:
    """``values`` (labels or client ids) as int64, refusing fractions, NaN, negatives and values >= 2**31."""
    role = _NPZ_ROLE[name]
    if values.dtype.kind == "f":
        nan = int(np.isnan(values).sum())
        if nan:
            raise DataFileError(f"{file}: {name} has {nan} NaN values; {role} must be whole numbers")
        fraction = np.isfinite(values) & (values != np.floor(values))
        if fraction.any():
            raise DataFileError(
                f"{file}: {name} has {int(fraction.sum())} values with a fraction (e.g. "
                f"{values[fraction][0]}); {role} must be whole numbers"
            )
    if len(values) and values.min() < 0:
        raise DataFileError(
            f"{file}: {name} has {int((values < 0).sum())} negative values (smallest "
            f"{values.min()}); {role} must be 0, 1, 2, ..."
        )
    if len(values) and values.max() >= 2**31:
        raise DataFileError(f"{file}: {name} has values up to {values.max()}; {role} must be below 2**31")
    return values.astype(np.int64)


def _check_labels(file: Path, arrays: dict[str, np.ndarray]) -> None:
    """Training labels 0..C-1 with every class present, C >= 2; test labels within 0..C-1."""
    counts = np.bincount(arrays["y"])  # bounded: labels < 2**31 and the array is already in memory
    if np.count_nonzero(counts) < 2:
        raise DataFileError(f"{file}: y has a single class ({len(counts) - 1}); a classifier needs at least two")
    missing = np.flatnonzero(counts == 0)
    if len(missing):
        raise DataFileError(
            f"{file}: y has no rows of class {missing[0]} ({len(missing)} of 0..{len(counts) - 1} "
            "empty); labels must be 0..C-1 with every class present (1-based labels?)"
        )
    if "y_test" in arrays and arrays["y_test"].max() >= len(counts):
        raise DataFileError(
            f"{file}: y_test has labels up to {arrays['y_test'].max()} but y only 0..{len(counts) - 1}; "
            "the model never trains on those classes"
        )


def load_npz(path: str | None) -> dict[str, np.ndarray]:
    """The arrays of an ``.npz`` file: ``x``, ``y`` and, when present, ``client``, ``x_test``, ``y_test``.

    Features become float32 and labels and client ids int64. Every member's header is read
    and checked (dtype, shape, size in the zip directory, :func:`data_memory_limit`) before
    any array is; then values are checked (finite features, labels 0..C-1 with every class
    present, C >= 2, test labels within 0..C-1). Object arrays are never unpickled.
    """
    if path is None:
        raise FileNotFoundError("task.path is required for task 'npz': set it to the .npz file holding the arrays")
    file = Path(path).expanduser()
    if not file.is_file():
        raise FileNotFoundError(f"task.path {str(file)!r} is not an existing file (task 'npz')")
    try:
        with zipfile.ZipFile(file) as archive:
            members: dict[str, zipfile.ZipInfo] = {}
            for info in archive.infolist():
                name = info.filename.removesuffix(".npy")
                if name not in _NPZ_ARRAYS or not info.filename.endswith(".npy") or name in members:
                    raise DataFileError(
                        f"{file}: {'duplicate' if name in members else 'unexpected'} member "
                        f"{info.filename!r}; valid arrays: {', '.join(_NPZ_ARRAYS)}"
                    )
                members[name] = info
            headers = {name: _npy_header(file, archive, info) for name, info in members.items()}
            _check_npz_layout(file, headers)
            raw = {}
            for name, info in members.items():
                with archive.open(info) as f:
                    raw[name] = np.lib.format.read_array(f, allow_pickle=False)
    except DataFileError:
        raise
    except (
        zipfile.BadZipFile,
        zipfile.LargeZipFile,
        zlib.error,
        OSError,
        EOFError,
        ValueError,
        RuntimeError,
        NotImplementedError,
    ) as exc:  # not a zip, truncated, corrupt, encrypted, bad .npy header
        raise DataFileError(
            f"{file}: cannot read it as an .npz file ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})"
        ) from None
    out = {
        name: _finite_features(file, name, raw[name])
        if _NPZ_ROLE[name] == "features"
        else _whole_numbers(file, name, raw[name])
        for name in raw
    }
    _check_labels(file, out)
    return out


class _HeldOutFederatedData(ArrayFederatedData):
    """Client data as in ArrayFederatedData, but global evaluation uses a separate held-out set."""

    def __init__(self, data: ArrayFederatedData, x_test: Tensor, y_test: Tensor):
        super().__init__(
            data.x_train,
            data.y_train,
            data.train_offsets,
            data.x_test,
            data.y_test,
            data.test_offsets,
            data.num_classes,
        )
        self._held_out = (x_test, y_test)

    def global_test(self) -> tuple[Tensor, Tensor]:
        return self._held_out


@TASKS.register(
    "npz",
    "arrays x, y [, client, x_test, y_test] from the .npz file task.path",
    options={"path": None, "model": None, "hidden": 200},
)
def build_npz(spec: TaskSpec) -> Task:
    opts = resolve_options(
        spec,
        {"path": None, "model": None, "hidden": 200, "dropout": 0.0},
        {"model": (None, "cnn", "mlp")},
        {"hidden": 1, "dropout": 0.0},
        {"dropout": 1.0},
    )
    arrays = load_npz(opts["path"])
    x, y = arrays["x"], arrays["y"]
    num_classes = int(y.max()) + 1  # load_npz checked: every class 0..max in y, test labels within
    images = x.ndim == 4 and x.shape[2] == x.shape[3] >= 10  # conv_net's two conv+pool stages need 10x10 at least
    model = opts["model"] or ("cnn" if images else "mlp")
    if model == "cnn" and not images:
        raise ValueError(
            f"task.model 'cnn' needs square images x of shape (N, C, H, H) with H >= 10; "
            f"{opts['path']} has x of shape {x.shape}"
        )
    opts = {**opts, "model": model}

    if spec.partition == "natural":
        if "client" not in arrays:
            raise ValueError(
                f"partition 'natural' needs an array 'client' in {opts['path']} (the client id of each row)"
            )
        if spec.partition_params:
            raise ValueError(f"partition 'natural' takes no parameters, got {sorted(spec.partition_params)}")
        available = int(arrays["client"].max()) + 1 if len(y) else 0
        if spec.num_clients > available:
            raise ValueError(f"num_clients={spec.num_clients} but {opts['path']} holds clients 0..{available - 1}")
        order = np.argsort(arrays["client"], kind="stable")
        bounds = np.searchsorted(arrays["client"][order], np.arange(spec.num_clients + 1))
        rows = [order[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
        data = ArrayFederatedData.from_partition(
            x, y, rows, num_classes, spec.test_fraction, spec.seed, device=spec.device
        )
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
    return Task(
        name=spec.name,
        data=data,
        num_classes=num_classes,
        input_shape=tuple(x.shape[1:]),
        options=opts,
        build_model=lambda: mlp(features, int(opts["hidden"]), num_classes, dropout=float(opts["dropout"])),
    )
