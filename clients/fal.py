"""FAL: federated adversarial training, local SGD steps on PGD adversarial minibatches.

Li, Song, Yang, "Federated Adversarial Learning: A Framework with Convergence Analysis",
arXiv 2208.03635 (2022): each client runs local adversarial training,
an inner loop that crafts adversarial samples of its minibatch with PGD (Madry et al. 2018,
arXiv 1706.06083; clients/pgd.py) and an outer loop of SGD steps on them; the server averages
the updates as FedAvg does. One local step, on minibatch (x, y) from y_k:

    x_adv = PGD_{eps, step, steps, norm}(x; y_k)         # maximize loss(y_k; x + delta), |delta| <= eps
    y_{k+1} = y_k - eta_t (clip(grad_y loss(y_k; x_adv, y)) + wd y_k)

Symbols -> options: eps -> ``client.adv_eps`` (default 0.1), the PGD step size ->
``client.adv_step`` (default 2.5 eps / steps), steps -> ``client.adv_steps`` (default 10),
the ball -> ``client.adv_norm`` (``linf`` default, or ``l2``); eta_t, wd, clip as for every
step algorithm. The loss is on the adversarial batch only (the paper's min-max objective;
``train_loss`` is that adversarial loss). PGD starts at delta = 0 and costs ``adv_steps``
input-gradient evaluations per local step, plus the parameter gradient. With eps = 0 the
adversarial batch is the clean one bit for bit, so FAL is the ``sgd`` client's step exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import Tensor

from clients.base import Batch, Carry, FunctionalClient, GradFn, clip_by_global_norm, input_grad_of, sgd_update
from clients.pgd import PGD, pgd

__all__ = ["FAL", "FALOptions"]


@dataclass(frozen=True)
class FALOptions:
    clip_norm: float | None
    weight_decay: float
    attack: PGD


class FAL(FunctionalClient):
    name = "fal"
    option_names = ("adv_eps", "adv_step", "adv_steps", "adv_norm")

    def options(self, config: dict[str, Any]) -> FALOptions:
        clip, wd = self.common(config)
        step = config.get("adv_step")
        attack = PGD(
            eps=self.option(config, "adv_eps", 0.1),
            steps=int(self.option(config, "adv_steps", 10)),
            step=None if step is None else float(step),
            norm=config.get("adv_norm") or "linf",
        )
        return FALOptions(clip, wd, attack)

    def start(self, options: FALOptions, params: Tensor, state: Any, broadcast: Any, lr: float) -> Carry:
        return self.base_carry(params, lr)

    def step(self, options: FALOptions, carry: Carry, batch: Batch, grad: GradFn) -> tuple[Carry, Tensor]:
        x, labels, w = batch
        y = carry["y"]
        input_grad = input_grad_of(grad)
        x_adv = pgd(lambda xa: input_grad(y, (xa, labels, w))[1], x, options.attack)
        loss, g = grad(y, (x_adv, labels, w))
        y = sgd_update(y, clip_by_global_norm(g, options.clip_norm), carry["lr"], options.weight_decay)
        return carry | {"y": y, "steps": carry["steps"] + 1}, loss

    def finish(self, options: FALOptions, carry: Carry) -> tuple[Tensor, None, None]:
        return carry["y"] - carry["x0"], None, None
