"""What travels through Ray's object store: model versions and broadcasts (one put per version),
the task's data arrays (put once, mapped zero-copy by every actor) and tensors as numpy arrays."""

from __future__ import annotations

import collections
import dataclasses
import logging
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from fedsim.data import ArrayFederatedData
from fedsim.executors.ray.connect import first_line
from fedsim.tasks import Task
from fedsim.types import ClientJob, ClientResult

log = logging.getLogger("fedsim")

PARAMS_CACHE = 8  # ObjectRefs of this many recent versions are kept (async modes reuse versions)
SHARED_ARRAYS = (
    "x_train",
    "y_train",
    "x_test",
    "y_test",
)  # an ArrayFederatedData's tensors, shared via the object store


class Wire:
    """A CPU tensor of a job's state or a result's state/extras in transit, as a numpy array: Ray
    moves numpy arrays zero-copy and about 10x faster than pickled torch tensors."""

    __slots__ = ("array",)

    def __init__(self, array: np.ndarray):
        self.array = array


_WIRE_DTYPES = (
    torch.float32,
    torch.float64,
    torch.float16,
    torch.int64,
    torch.int32,
    torch.int16,
    torch.int8,
    torch.uint8,
    torch.bool,
)


def to_wire(tensors: Any) -> Any:
    """A state/extras dict with its CPU tensors as :class:`Wire` (anything else unchanged)."""
    if not isinstance(tensors, dict):
        return tensors
    return {
        k: Wire(v.detach().contiguous().numpy())
        if isinstance(v, torch.Tensor) and v.device.type == "cpu" and v.dtype in _WIRE_DTYPES
        else v
        for k, v in tensors.items()
    }


def from_wire(tensors: Any) -> Any:
    """The inverse of :func:`to_wire`; tensors own their memory (not views of the object store)."""
    if not isinstance(tensors, dict):
        return tensors
    return {k: torch.from_numpy(np.array(v.array, copy=True)) if isinstance(v, Wire) else v for k, v in tensors.items()}


def unpack_result(result: ClientResult) -> ClientResult:
    """An actor's result as the engine wants it: torch tensors owning their memory."""
    if isinstance(result.delta, np.ndarray):  # read-only view of the object store: own a copy
        result.delta = torch.from_numpy(np.array(result.delta, copy=True))
    result.state, result.extras = from_wire(result.state), from_wire(result.extras)
    return result


class VersionRefs:
    """ObjectRefs of one payload per model version, ``ray.put`` once and kept for the last few versions.

    Keyed by version and checked by identity against the very object the engine shares between the
    jobs of a version (the params tensor, the broadcast dict), so a new object is a new put.
    """

    def __init__(self, ray: Any, to_payload: Callable[[Any], Any]):
        self._ray = ray
        self._to_payload = to_payload
        self._refs: collections.OrderedDict[int, tuple[Any, Any]] = collections.OrderedDict()
        self.puts = 0

    def ref(self, version: int, obj: Any) -> Any:
        entry = self._refs.get(version)
        if entry is None or entry[0] is not obj:
            entry = (obj, self._ray.put(self._to_payload(obj)))
            self.puts += 1
            self._refs[version] = entry
        self._refs.move_to_end(version)
        while len(self._refs) > PARAMS_CACHE:
            self._refs.popitem(last=False)
        return entry[1]

    def clear(self) -> None:
        self._refs.clear()


def params_payload(params: torch.Tensor) -> np.ndarray:
    return params.detach().cpu().contiguous().numpy()


def broadcast_payload(broadcast: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    return {k: v.detach().cpu().contiguous().numpy() for k, v in broadcast.items()}


def light_job(job: ClientJob) -> ClientJob:
    """A job as it travels to an actor: no params or broadcast (those go by ref), state as numpy."""
    return dataclasses.replace(job, params=None, broadcast=None, state=to_wire(job.state))  # type: ignore[arg-type]


def share_task(ray: Any, task: Task) -> list[Any] | None:
    """[ref to the task without its data, ref to the data's arrays], each ``ray.put`` once; None
    when actors must build the task themselves (lazily generated or GPU-resident data, or a task
    that does not pickle). Actors map the arrays zero-copy from the object store (one copy per node)."""
    data = task.data
    if not isinstance(data, ArrayFederatedData) or data.x_train.device.type != "cpu":
        return None
    try:
        shell = ray.put(dataclasses.replace(task, data=None))  # type: ignore[arg-type]  # the data goes apart
    except Exception as exc:  # noqa: BLE001  (e.g. a plugin task whose model factory does not pickle)
        log.info("ray: workers build the task themselves (it does not pickle: %s)", first_line(exc))
        return None
    arrays = {name: getattr(data, name).contiguous().numpy() for name in SHARED_ARRAYS}
    arrays |= {"train_offsets": data.train_offsets, "test_offsets": data.test_offsets, "num_classes": data.num_classes}
    return [shell, ray.put(arrays)]


def shared_task(shell: Task, arrays: dict[str, Any]) -> Task:
    """The driver's task, its data rebuilt around zero-copy views of the object store's arrays."""
    with warnings.catch_warnings():  # the views are read-only; training never writes its data
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        tensors = {name: torch.from_numpy(arrays[name]) for name in SHARED_ARRAYS}
    data = ArrayFederatedData(
        tensors["x_train"],
        tensors["y_train"],
        arrays["train_offsets"],
        tensors["x_test"],
        tensors["y_test"],
        arrays["test_offsets"],
        arrays["num_classes"],
    )
    return dataclasses.replace(shell, data=data)
