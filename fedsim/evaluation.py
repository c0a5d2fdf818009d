"""Evaluation: the global model on the held-out global test set, optionally per client.

Per-client evaluation (``eval.per_client``) reports the mean accuracy over clients and the mean
over the worst 10% of clients (a fairness view), on each client's own held-out split, over a
seeded sample of at most ``eval.max_clients`` clients (the same clients at every evaluation).

Personalization: with a client algorithm that declares ``personalize(options, global_params,
state)`` (APFL, Ditto, FedPer, FedRep), or with ``eval.finetune_steps`` > 0, each evaluated
client is tested with ITS OWN model, computed from its stored client state:

- ``client_accuracy_mean`` / ``client_accuracy_worst10``: the personalized models;
- ``global_client_accuracy_mean`` / ``global_client_accuracy_worst10``: the global model on the
  same clients' test splits, beside them (``test_accuracy`` stays the global test set's);
- ``clients_unseen``: evaluated clients that never took part, so have no state: they are
  evaluated with the global model (for FedPer/FedRep: the global body with the server's head,
  which is never trained), fine-tuned like the others when ``eval.finetune_steps`` is set.

Fine-tuning (``eval.finetune_steps`` = k, the baseline every personalization paper compares
with): before testing, a copy of the client's model takes k plain SGD steps
(``client.lr``, ``client.batch_size``, ``client.weight_decay``) on the client's training data,
with batches drawn from a generator seeded by (seed, client id): the same batches at every
evaluation. The stored models are untouched.

Robustness (``eval.adversarial``): ``test_robust_accuracy`` is the global model's accuracy on the
global test set after a PGD attack of the given strength (clients/pgd.py: radius ``eps`` in the
L-inf or L2 norm, ``steps`` steps of size ``step``, from a zero start, so deterministic) on the
test loss, each sample attacked within its own ball. The model is in eval mode during the attack.
With eps = 0 it equals ``test_accuracy``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from clients.base import batch_schedule, resident_grad_fn, sgd_update
from clients.pgd import PGD, pgd
from fedsim.params import ResidentModel
from fedsim.rng import derive_seed, numpy_generator

__all__ = ["Evaluator", "mean_and_worst10", "robust_accuracy"]


def mean_and_worst10(accuracies: list[float]) -> tuple[float, float]:
    """(mean, mean of the worst ceil(10%)) of per-client accuracies."""
    acc = np.sort(np.asarray(accuracies))
    return float(acc.mean()), float(acc[: max(1, math.ceil(0.1 * len(acc)))].mean())


def robust_accuracy(
    model: torch.nn.Module, loss_fn: Any, x: torch.Tensor, y: torch.Tensor, attack: PGD, batch_size: int = 1024
) -> float:
    """Accuracy of ``model`` on PGD adversarial examples of ``(x, y)`` (NaN if empty or any logit is not finite)."""
    if len(y) == 0:
        return float("nan")
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    correct, finite = 0, True
    try:
        for start in range(0, len(y), batch_size):
            xb, yb = x[start : start + batch_size].to(device), y[start : start + batch_size].to(device)

            def input_grad(xa: torch.Tensor, yb: torch.Tensor = yb) -> torch.Tensor:
                xa = xa.detach().requires_grad_(True)
                with torch.enable_grad():
                    (g,) = torch.autograd.grad(loss_fn(model(xa), yb), [xa])
                return g

            x_adv = pgd(input_grad, xb, attack)
            with torch.no_grad():
                logits = model(x_adv)
            finite = finite and bool(torch.isfinite(logits).all())
            correct += int((logits.argmax(dim=1) == yb).sum())
    finally:
        model.train(was_training)
    return correct / len(y) if finite else float("nan")


class Evaluator:
    def __init__(
        self,
        task: Any,
        per_client: bool = False,
        max_clients: int = 1000,
        seed: int = 0,
        device: str = "cpu",
        algorithm: Any = None,
        client_config: dict[str, Any] | None = None,
        finetune_steps: int = 0,
        adversarial: PGD | None = None,
    ):
        self.task = task
        with torch.random.fork_rng(devices=[]):  # leave the caller's global RNG as it was
            self.model = ResidentModel(task.build_model(), device)
        self.test_x, self.test_y = task.data.global_test()
        self.per_client = per_client
        self.adversarial = adversarial
        self.seed = seed
        n = task.data.num_clients
        if n > max_clients:
            ids = numpy_generator(seed, "eval-clients").choice(n, size=max_clients, replace=False)
            self.client_ids = np.sort(ids)
        else:
            self.client_ids = np.arange(n)
        self.algorithm = algorithm if hasattr(algorithm, "personalize") else None
        self.client_config = dict(client_config or {})
        self.options = self.algorithm.options(self.client_config) if self.algorithm is not None else None
        self.finetune_steps = int(finetune_steps)
        self.personal = per_client and (self.algorithm is not None or self.finetune_steps > 0)
        self._grad = resident_grad_fn(self.model, task.loss_fn) if self.finetune_steps else None

    def evaluate(self, params: torch.Tensor, client_states: Any = None) -> dict[str, Any]:
        """Metrics of the global model ``params``; with personalization, of each client's own model
        from ``client_states`` (a ClientStateStore or a mapping; None: no client has state yet)."""
        self.model.load(params)
        metrics = self.task.evaluate(self.model.model, self.test_x, self.test_y)
        out: dict[str, Any] = {"test_loss": metrics["loss"], "test_accuracy": metrics["accuracy"]}
        if self.adversarial is not None:
            out["test_robust_accuracy"] = robust_accuracy(
                self.model.model, self.task.loss_fn, self.test_x, self.test_y, self.adversarial
            )
        if not self.per_client:
            return out
        global_acc, personal_acc, unseen = [], [], 0
        for cid in self.client_ids.tolist():
            x, y = self.task.data.test(int(cid))
            if not len(y):
                continue
            self.model.load(params)
            global_acc.append(self.task.evaluate(self.model.model, x, y)["accuracy"])
            if not self.personal:
                continue
            state = client_states.get(cid) if client_states is not None and cid in client_states else None
            unseen += state is None
            own = (
                params
                if state is None or self.algorithm is None
                else self.algorithm.personalize(self.options, params, state)
            )
            if self.finetune_steps:
                own = self._finetune(own, int(cid))
            self.model.load(own)
            personal_acc.append(self.task.evaluate(self.model.model, x, y)["accuracy"])
        if not global_acc:
            return out
        if self.personal:
            out["client_accuracy_mean"], out["client_accuracy_worst10"] = mean_and_worst10(personal_acc)
            out["global_client_accuracy_mean"], out["global_client_accuracy_worst10"] = mean_and_worst10(global_acc)
            out["clients_unseen"] = unseen
        else:
            out["client_accuracy_mean"], out["client_accuracy_worst10"] = mean_and_worst10(global_acc)
        return out

    def _finetune(self, params: torch.Tensor, cid: int) -> torch.Tensor:
        """``finetune_steps`` plain SGD steps from ``params`` on client ``cid``'s training data."""
        x, y = self.task.data.train(cid)
        if not len(y):
            return params
        device = self.model.flat.device
        x, y = x.to(device), y.to(device)
        config = self.client_config
        rng = torch.Generator(device=device)
        rng.manual_seed(derive_seed(self.seed, "eval-finetune", cid))
        lr = torch.tensor(float(config.get("lr", 0.05)), device=device)
        decay = float(config.get("weight_decay") or 0.0)
        flat = params.to(device).clone()
        for idx in batch_schedule(len(y), int(config.get("batch_size", 10)), self.finetune_steps, rng):
            _, g = self._grad(flat, (x[idx], y[idx], None))
            flat = sgd_update(flat, g, lr, decay)
        return flat
