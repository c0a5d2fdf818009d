"""scikit-learn's 8x8 handwritten digits (1,797 images, 10 classes), shipped with the package.

A small real-image task that needs no download. Pixels are scaled from 0..16 to [0, 1].
There is no natural per-client split: use partition iid, dirichlet or shards.
"""

from __future__ import annotations

import numpy as np
from torch import nn

from fedsim.tasks.base import TASKS, Task, TaskSpec, mlp, partition_pool, resolve_options

__all__ = ["build_digits", "small_cnn"]

DEFAULTS = {"model": "mlp", "hidden": 64, "dropout": 0.0}
MODELS = ("mlp", "cnn")
NUM_CLASSES = 10


def small_cnn(num_classes: int = NUM_CLASSES, dropout: float = 0.0) -> nn.Module:
    """Conv(1->16)-ReLU-Conv(16->32)-ReLU-MaxPool2-FC64-ReLU[-Dropout]-FC for 1x8x8 input."""
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(32 * 4 * 4, 64),
        nn.ReLU(),
        *([nn.Dropout(dropout)] if dropout else []),
        nn.Linear(64, num_classes),
    )


@TASKS.register("digits", "scikit-learn 8x8 digits (1,797 images, 10 classes; no download)", options=DEFAULTS)
def build_digits(spec: TaskSpec) -> Task:
    opts = resolve_options(spec, DEFAULTS, {"model": MODELS}, {"hidden": 1, "dropout": 0.0}, {"dropout": 1.0})
    from sklearn.datasets import load_digits  # noqa: PLC0415  (slow import; only when used)

    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    y = digits.target.astype(np.int64)
    input_shape: tuple[int, ...] = (64,) if opts["model"] == "mlp" else (1, 8, 8)
    data = partition_pool(spec, x.reshape(-1, *input_shape), y, NUM_CLASSES)

    def build_model() -> nn.Module:
        if opts["model"] == "mlp":
            return mlp(64, int(opts["hidden"]), NUM_CLASSES, dropout=float(opts["dropout"]))
        return small_cnn(NUM_CLASSES, float(opts["dropout"]))

    return Task(
        name=spec.name,
        data=data,
        build_model=build_model,
        num_classes=NUM_CLASSES,
        input_shape=input_shape,
        options=opts,
    )
