"""Evaluation of the global model: held-out global test set, optionally per client.

Per-client evaluation reports the mean accuracy over clients and the mean over the worst
10% of clients (a fairness view), on each client's own held-out split, over a seeded
sample of at most ``max_clients`` clients.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from fedsim.params import ResidentModel
from fedsim.rng import numpy_generator

__all__ = ["Evaluator"]


class Evaluator:
    def __init__(self, task: Any, per_client: bool = False, max_clients: int = 1000, seed: int = 0, device: str = "cpu"):
        self.task = task
        with torch.random.fork_rng(devices=[]):  # leave the caller's global RNG as it was
            self.model = ResidentModel(task.build_model(), device)
        self.test_x, self.test_y = task.data.global_test()
        self.per_client = per_client
        n = task.data.num_clients
        if n > max_clients:
            ids = numpy_generator(seed, "eval-clients").choice(n, size=max_clients, replace=False)
            self.client_ids = np.sort(ids)
        else:
            self.client_ids = np.arange(n)

    def evaluate(self, params: torch.Tensor) -> dict[str, Any]:
        self.model.load(params)
        metrics = self.task.evaluate(self.model.model, self.test_x, self.test_y)
        out: dict[str, Any] = {"test_loss": metrics["loss"], "test_accuracy": metrics["accuracy"]}
        if self.per_client:
            accuracies = []
            for cid in self.client_ids.tolist():
                x, y = self.task.data.test(int(cid))
                if len(y):
                    accuracies.append(self.task.evaluate(self.model.model, x, y)["accuracy"])
            if accuracies:
                acc = np.sort(np.asarray(accuracies))
                worst = acc[: max(1, math.ceil(0.1 * len(acc)))]
                out["client_accuracy_mean"] = float(acc.mean())
                out["client_accuracy_worst10"] = float(worst.mean())
        return out
