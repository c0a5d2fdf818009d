"""Task = federated data + model factory + loss, and the ``TASKS`` registry of task factories.

A task factory takes a :class:`TaskSpec` (what the config says) and returns a :class:`Task`.
Shared helpers for factories live here too: option checking, partitioning a pooled dataset,
and the small models the built-in tasks use.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fedsim.data.federated import ArrayFederatedData, FederatedData
from fedsim.data.partition import make_partition
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

    def evaluate(self, model: nn.Module, x: Tensor, y: Tensor, batch_size: int = 4096) -> dict[str, float]:
        """Mean loss and accuracy of ``model`` on ``(x, y)``; NaN for both if ``x`` is empty."""
        if len(y) == 0:
            return {"loss": float("nan"), "accuracy": float("nan")}
        device = next(model.parameters()).device
        was_training = model.training
        model.eval()
        loss_sum, correct = 0.0, 0
        try:
            with torch.no_grad():
                for start in range(0, len(y), batch_size):
                    xb = x[start : start + batch_size].to(device)
                    yb = y[start : start + batch_size].to(device)
                    logits = model(xb)
                    loss_sum += float(self.loss_fn(logits, yb)) * len(yb)
                    correct += int((logits.argmax(dim=1) == yb).sum())
        finally:
            model.train(was_training)
        return {"loss": loss_sum / len(y), "accuracy": correct / len(y)}


TaskFactory = Callable[[TaskSpec], Task]
TASKS: Registry[TaskFactory] = Registry("task")


def resolve_options(spec: TaskSpec, defaults: dict[str, Any], choices: dict[str, tuple] | None = None) -> dict[str, Any]:
    """``defaults`` overridden by ``spec.options``; unknown keys or values outside ``choices`` -> ValueError."""
    unknown = sorted(set(spec.options) - set(defaults))
    if unknown:
        raise ValueError(
            f"unknown option task.{unknown[0]} for task {spec.name!r}; valid options: {', '.join(sorted(defaults))}"
        )
    options = {**defaults, **spec.options}
    for key, allowed in (choices or {}).items():
        if options[key] not in allowed:
            raise ValueError(
                f"task.{key} must be one of {', '.join(map(str, allowed))} for task {spec.name!r}, got {options[key]!r}"
            )
    return options


def partition_pool(spec: TaskSpec, x: np.ndarray | Tensor, y: np.ndarray, num_classes: int) -> ArrayFederatedData:
    """Split a pooled dataset among ``spec.num_clients`` clients with ``spec.partition``."""
    parts = make_partition(spec.partition, np.asarray(y), spec.num_clients, spec.seed, spec.partition_params)
    return ArrayFederatedData.from_partition(
        x, y, parts, num_classes, spec.test_fraction, spec.seed, device=spec.device
    )


def mlp(in_features: int, hidden: int, num_classes: int, hidden_layers: int = 1) -> nn.Module:
    """Flatten -> (Linear -> ReLU) x hidden_layers -> Linear (accepts image-shaped input too)."""
    layers: list[nn.Module] = [nn.Flatten()]
    width = in_features
    for _ in range(hidden_layers):
        layers += [nn.Linear(width, hidden), nn.ReLU()]
        width = hidden
    return nn.Sequential(*layers, nn.Linear(width, num_classes))


def conv_net(in_channels: int, image_size: int, num_classes: int) -> nn.Module:
    """The FedAU paper's CNN: conv3x3(32)-ReLU-maxpool-conv3x3(32)-ReLU-maxpool-FC256-ReLU-FC64-ReLU-FC.

    Unpadded convolutions: 32x32 input -> 6x6 feature maps, 28x28 -> 5x5.
    """
    side = ((image_size - 2) // 2 - 2) // 2
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
        nn.Linear(256, 64),
        nn.ReLU(),
        nn.Linear(64, num_classes),
    )
