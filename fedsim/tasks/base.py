"""Task = federated data + model factory + loss, and the ``TASKS`` registry of task factories.

A task factory takes a :class:`TaskSpec` (what the config says) and returns a :class:`Task`.
Shared helpers for factories live here too: option checking, partitioning a pooled dataset,
and the small models the built-in tasks use.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fedsim.data.federated import ArrayFederatedData, FederatedData
from fedsim.data.partition import make_partition
from fedsim.params import all_finite
from fedsim.registry import Registry

__all__ = [
    "Task",
    "TaskSpec",
    "TaskFactory",
    "TASKS",
    "resolve_options",
    "partition_pool",
    "mlp",
    "conv_net",
    "channels_last_images",
]


@dataclass(frozen=True)
class TaskSpec:
    name: str
    num_clients: int
    partition: str
    partition_params: dict[str, Any] = field(default_factory=dict)
    test_fraction: float = 0.2
    seed: int = 0
    device: str = "cpu"
    options: dict[str, Any] = field(default_factory=dict)  # task-specific: alpha, model, path, ...


@dataclass
class Task:
    name: str
    data: FederatedData
    build_model: Callable[[], nn.Module]  # fresh model; init is deterministic under torch.manual_seed
    num_classes: int
    input_shape: tuple[int, ...]
    loss_fn: Callable[[Tensor, Tensor], Tensor] = F.cross_entropy  # mean over the batch
    options: dict[str, Any] = field(default_factory=dict)  # every task option as used (defaults filled in)

    def evaluate(self, model: nn.Module, x: Tensor, y: Tensor, batch_size: int = 4096) -> dict[str, float]:
        """Mean loss and accuracy of ``model`` on ``(x, y)``.

        Both are NaN if ``x`` is empty or if any logit is not finite: an accuracy read off NaN
        logits (argmax of NaN) would look like a real number.
        """
        if len(y) == 0:
            return {"loss": float("nan"), "accuracy": float("nan")}
        device = next(model.parameters()).device
        was_training = model.training
        model.eval()
        loss_sum, correct, finite = 0.0, 0, True
        try:
            with torch.no_grad():
                for start in range(0, len(y), batch_size):
                    xb = x[start : start + batch_size].to(device)
                    yb = y[start : start + batch_size].to(device)
                    logits = model(xb)
                    finite = finite and all_finite(logits)
                    loss_sum += float(self.loss_fn(logits, yb)) * len(yb)
                    correct += int((logits.argmax(dim=1) == yb).sum())
        finally:
            model.train(was_training)
        if not finite:
            return {"loss": float("nan"), "accuracy": float("nan")}
        return {"loss": loss_sum / len(y), "accuracy": correct / len(y)}


TaskFactory = Callable[[TaskSpec], Task]
TASKS: Registry[TaskFactory] = Registry("task")


def resolve_options(
    spec: TaskSpec,
    defaults: dict[str, Any],
    choices: dict[str, tuple] | None = None,
    minimum: dict[str, float] | None = None,
    below: dict[str, float] | None = None,
) -> dict[str, Any]:
    """``defaults`` overridden by ``spec.options``, each checked; bad ones -> ValueError naming ``task.<key>``.

    An option must have the type of its default (a bool default takes only true/false, an int
    default only integers, a float default any finite number, a None default a string or
    null), lie in ``choices[key]`` if given, be >= ``minimum[key]`` and < ``below[key]`` if given.
    """
    unknown = sorted(set(spec.options) - set(defaults))
    if unknown:
        raise ValueError(
            f"unknown option task.{unknown[0]} for task {spec.name!r}; valid options: {', '.join(sorted(defaults))}"
        )
    options = {**defaults, **spec.options}
    for key, value in spec.options.items():
        _check_type(spec.name, key, value, defaults[key])
    for key, allowed in (choices or {}).items():
        if options[key] not in allowed:
            raise ValueError(
                f"task.{key} must be one of {', '.join(map(str, allowed))} for task {spec.name!r}, got {options[key]!r}"
            )
    for key, low in (minimum or {}).items():
        if options[key] < low:
            raise ValueError(f"task.{key} must be >= {low} for task {spec.name!r}, got {options[key]!r}")
    for key, high in (below or {}).items():
        if options[key] >= high:
            raise ValueError(f"task.{key} must be < {high} for task {spec.name!r}, got {options[key]!r}")
    return options


def _check_type(task: str, key: str, value: Any, default: Any) -> None:
    if isinstance(default, bool):
        ok, wanted = isinstance(value, bool), "true or false"
    elif isinstance(default, int):
        ok, wanted = isinstance(value, int) and not isinstance(value, bool), "an integer"
    elif isinstance(default, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        wanted = "a finite number"
    elif isinstance(default, str) or default is None:
        ok, wanted = isinstance(value, str) or (default is None and value is None), "a string"
    else:
        ok, wanted = True, ""
    if not ok:
        raise ValueError(f"task.{key} must be {wanted} for task {task!r}, got {value!r} ({type(value).__name__})")


def partition_pool(spec: TaskSpec, x: np.ndarray | Tensor, y: np.ndarray, num_classes: int) -> ArrayFederatedData:
    """Split a pooled dataset among ``spec.num_clients`` clients with ``spec.partition``."""
    parts = make_partition(spec.partition, np.asarray(y), spec.num_clients, spec.seed, spec.partition_params)
    return ArrayFederatedData.from_partition(
        x, y, parts, num_classes, spec.test_fraction, spec.seed, device=spec.device
    )


def channels_last_images(data: FederatedData) -> FederatedData:
    """Store the 4-D image features of an in-memory dataset on CPU channels-last (NHWC in memory).

    CPU convolutions and especially max-pooling run faster on that layout (torch 2.13, one
    thread, ``conv_net`` on 10 CIFAR-sized images: 6.9 -> 5.0 ms per training step; NCHW
    ``max_pool2d`` alone is ~15x slower than channels-last). Values and shapes are unchanged,
    and row slices and ``x[idx]`` gathers keep the layout, so every minibatch the serial
    worker takes is channels-last too. Other datasets and devices are returned as they are.
    """
    if not isinstance(data, ArrayFederatedData) or data.x_train.ndim != 4 or data.x_train.device.type != "cpu":
        return data
    data.x_train = data.x_train.contiguous(memory_format=torch.channels_last)
    data.x_test = data.x_test.contiguous(memory_format=torch.channels_last)
    return data


def mlp(in_features: int, hidden: int, num_classes: int, hidden_layers: int = 1, dropout: float = 0.0) -> nn.Module:
    """Flatten -> (Linear -> ReLU [-> Dropout]) x hidden_layers -> Linear (accepts image-shaped input too)."""
    layers: list[nn.Module] = [nn.Flatten()]
    width = in_features
    for _ in range(hidden_layers):
        layers += [nn.Linear(width, hidden), nn.ReLU()]
        if dropout:
            layers.append(nn.Dropout(dropout))
        width = hidden
    return nn.Sequential(*layers, nn.Linear(width, num_classes))


def conv_net(in_channels: int, image_size: int, num_classes: int, dropout: float = 0.0) -> nn.Module:
    """The FedAU paper's CNN: conv3x3(32)-ReLU-maxpool-conv3x3(32)-ReLU-maxpool-FC256-ReLU-FC64-ReLU-FC.

    Unpadded convolutions: 32x32 input -> 6x6 feature maps, 28x28 -> 5x5. ``dropout`` > 0 adds
    dropout after the two hidden fully connected layers.
    """
    side = ((image_size - 2) // 2 - 2) // 2
    drop = [nn.Dropout(dropout)] if dropout else []
    return nn.Sequential(
        nn.Conv2d(in_channels, 32, 3),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 32, 3),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(32 * side * side, 256),
        nn.ReLU(),
        *drop,
        nn.Linear(256, 64),
        nn.ReLU(),
        *drop,
        nn.Linear(64, num_classes),
    )
