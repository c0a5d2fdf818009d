"""FedRep: FedPer's body/head split, training the personal head first and then the shared body.

Collins, Hassani, Mokhtari, Shakkottai, "Exploiting Shared Representations for Personalized
Federated Learning", ICML 2021, arXiv 2102.07078. Reference code: lgcollins/FedRep
``models/Update.py`` L551-L653, ``main_fedrep.py`` L67-L188 (@d82e629). Local training from the
global body and the client's own head (the global head at its first participation):

    head_steps steps:   head <- head - eta_t (clip(grad_head f) + wd head)       body frozen
    then the local schedule (client.local_epochs / local_steps):
                        body <- body - eta_t (clip(grad_body f) + wd body)       head frozen

Only the body's delta is sent (zeros on the head); the head is the client's state. The frozen
part gets no update at all, weight decay included (torch >= 2's behaviour for parameters
whose grad is None).

Symbols -> options: the head -> ``client.personal_layers`` (default: the last layer),
``client.head_steps`` (default 10) head-only local steps, then the body's ``local_epochs`` /
``local_steps``; eta_t -> ``client.lr * client.lr_decay^t``, wd -> ``client.weight_decay``,
clip -> ``client.clip_norm`` (of the trained part's gradient). Deviations: the reference
counts the head phase in epochs (10 head epochs, then 1 body epoch, in its scripts); a step
function does not know its client's data size when it starts, so fedsim counts head steps
(set head_steps to 10 x batches per epoch to match). Its SGD has momentum 0.5; here it is plain.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from clients.base import Batch, Carry, GradFn, clip_by_global_norm, num_local_steps
from clients.fedper import FedPer, FedPerOptions, config_spans

__all__ = ["FedRep"]


class FedRep(FedPer):
    name = "fedrep"
    option_names = ("personal_layers", "head_steps")

    def options(self, config: dict[str, Any]) -> FedPerOptions:
        head_steps = config.get("head_steps")
        return FedPerOptions(
            *self.common(config),
            spans=config_spans(config, self.name),
            head_steps=10 if head_steps is None else int(head_steps),
        )

    def num_steps(self, config: dict[str, Any], num_samples: int) -> int:
        head_steps = config.get("head_steps")
        return (10 if head_steps is None else int(head_steps)) + num_local_steps(config, num_samples)

    def step(self, options: FedPerOptions, carry: Carry, batch: Batch, grad: GradFn) -> tuple[Carry, Tensor]:
        y = carry["y"]
        trained = torch.where(carry["steps"] < options.head_steps, carry["head"], ~carry["head"])
        loss, g = grad(y, batch)
        g = clip_by_global_norm(torch.where(trained, g, torch.zeros_like(g)), options.clip_norm)
        if options.weight_decay:
            g = g + options.weight_decay * y
        y = torch.where(trained, y - carry["lr"] * g, y)
        return carry | {"y": y, "steps": carry["steps"] + 1}, loss
