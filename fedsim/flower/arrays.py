"""fedsim's flat parameter vector and client state as Flower ``ArrayRecord``s, losslessly.

An :class:`ArrayCodec` is built once from a model. ``encode`` turns the flat float32 vector
(fedsim.params.ParamLayout) plus the model's integer buffers into an ArrayRecord keyed like
``model.state_dict()`` (same names, same order), so a stock Flower client can
``load_state_dict(record.to_torch_state_dict())``; ``decode`` turns such a record back into
the flat vector and the integer buffers, bit for bit. Integer buffers (e.g. BatchNorm's
``num_batches_tracked``) cross the wire but are not part of the vector, as in fedsim.

Client state (SCAFFOLD's c_i, FedSpeed's h_i, ...) is a tensor or a dict of tensors; on a
Flower node it lives in ``Context.state`` as an ArrayRecord (:func:`state_to_record`,
:func:`record_to_state`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from flwr.app import Array, ArrayRecord
from torch import nn

from fedsim.params import ParamLayout

__all__ = ["ArrayCodec", "state_to_record", "record_to_state"]


class ArrayCodec:
    def __init__(self, model: nn.Module):
        self.layout = ParamLayout.of(model)
        state = model.state_dict()
        float_names = set(self.layout.names)
        self.names = tuple(state)  # state_dict order: parameters and buffers as torch lists them
        self.int_buffers = {name: t.detach().cpu().clone() for name, t in state.items() if name not in float_names}
        self._offsets = dict(zip(self.layout.names, self.layout.offsets()))
        self._shapes = dict(zip(self.layout.names, self.layout.shapes))

    @property
    def numel(self) -> int:
        return self.layout.numel

    def encode(self, flat: torch.Tensor, int_buffers: Mapping[str, torch.Tensor] | None = None) -> ArrayRecord:
        """ArrayRecord of ``flat`` (+ integer buffers; the model's initial ones by default)."""
        flat = flat.detach().to("cpu", torch.float32).contiguous()
        if flat.shape != (self.numel,):
            raise ValueError(f"flat parameters have shape {tuple(flat.shape)}, expected ({self.numel},)")
        buffers = self.int_buffers if int_buffers is None else int_buffers
        numpy_flat = flat.numpy()
        arrays: dict[str, Array] = {}
        for name in self.names:
            if name in self._offsets:
                a, b = self._offsets[name]
                arrays[name] = Array(np.array(numpy_flat[a:b].reshape(self._shapes[name]), order="C"))
            else:
                arrays[name] = Array(_to_numpy(buffers[name]))
        return ArrayRecord(arrays)

    def decode(self, record: ArrayRecord) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(flat float32 vector, integer buffers) from an ArrayRecord made by ``encode``."""
        missing = [n for n in self.names if n not in record]
        extra = sorted(set(record) - set(self.names))
        if missing or extra:
            what = f"missing {missing[:3]}" if missing else f"unexpected {extra[:3]}"
            raise ValueError(f"ArrayRecord does not match the model: {what} (expected keys {list(self.names)[:5]}...)")
        flat = torch.empty(self.numel, dtype=torch.float32)
        buffers: dict[str, torch.Tensor] = {}
        for name in self.names:
            value = record[name].numpy()
            if name in self._offsets:
                if tuple(value.shape) != self._shapes[name]:
                    raise ValueError(f"array {name!r} has shape {tuple(value.shape)}, expected {self._shapes[name]}")
                a, b = self._offsets[name]
                flat[a:b] = torch.from_numpy(np.ascontiguousarray(value, dtype=np.float32)).reshape(-1)
            else:
                buffers[name] = torch.from_numpy(np.array(value))
        return flat, buffers


_TENSOR_KEY = "tensor"
_DICT_PREFIX = "dict."


def state_to_record(state: Any) -> ArrayRecord:
    """A client state (tensor or dict of tensors) as an ArrayRecord; dtypes and shapes kept."""
    if isinstance(state, torch.Tensor):
        return ArrayRecord({_TENSOR_KEY: Array(_to_numpy(state))})
    if isinstance(state, Mapping) and all(isinstance(v, torch.Tensor) for v in state.values()):
        return ArrayRecord({_DICT_PREFIX + str(k): Array(_to_numpy(v)) for k, v in state.items()})
    raise TypeError(
        f"client state must be a tensor or a dict of tensors to live in a Flower Context, got {type(state).__name__}"
    )


def record_to_state(record: ArrayRecord | None) -> Any:
    if record is None:
        return None
    if set(record) == {_TENSOR_KEY}:
        return torch.from_numpy(np.array(record[_TENSOR_KEY].numpy()))
    return {k[len(_DICT_PREFIX) :]: torch.from_numpy(np.array(v.numpy())) for k, v in record.items()}


def _to_numpy(t: torch.Tensor) -> np.ndarray:
    return np.array(t.detach().cpu().numpy(), order="C")  # keeps 0-d shapes (ascontiguousarray would not)
