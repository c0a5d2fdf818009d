"""FedPer: a shared body averaged by the server and a personal head each client keeps.

Arivazhagan, Aggarwal, Singh, Choudhary, "Federated Learning with Personalization Layers",
arXiv 1912.00818 (2019); as run by lgcollins/FedRep ``models/Update.py`` L551-L653 and
``main_fedrep.py`` L67-L188 (@d82e629, its ``--alg fedper``). Local training is plain SGD on
the whole model, started from the global body and the client's own head:

    y <- global body (+) head_i                      head_i: the client's state, the global head at first
    y <- y - eta_t (clip(grad f(y)) + wd y)          every local step, all coordinates
    delta = y - x_t on the body, 0 on the head       only the body is sent and aggregated
    head_i <- head of y                               kept by the client (``state["head"]``)

The strategy sees a full-size delta whose head coordinates are zero, so with FedAvg the server's
head stays at its initial value and only shared layers change the server model. The
personalized model is the global body with the client's head.

Symbols -> options: the head -> ``client.personal_layers`` (parameter-name prefixes, or a count
of final layers; default 1: the last layer, weight and bias, the reference's head), eta_t ->
``client.lr * client.lr_decay^t``, wd -> ``client.weight_decay``, clip -> ``client.clip_norm``.
Deviation: the reference's SGD has momentum 0.5 and weight decay 1e-4 on weights only; the step
algorithms here are plain SGD with one weight decay. With no personal layer (0 or []) this is
FedAvg's client exactly. FedRep (clients/fedrep.py) trains the head first, then the body.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from clients.base import Batch, Carry, FunctionalClient, GradFn, clip_by_global_norm, sgd_update
from clients.personal import gather, scatter, spans_mask

__all__ = ["FedPer", "FedPerOptions", "config_spans"]


def config_spans(config: dict[str, Any], name: str) -> tuple[tuple[int, int], ...]:
    """The head's flat ranges that ``clients.personal.bind_client_config`` put into the config."""
    spans = config.get("personal_spans")
    if spans is None:
        raise ValueError(
            f"client algorithm '{name}' needs the model's head resolved into personal_spans "
            f"(clients.personal.bind_client_config, which fedsim's run and Flower server apply)"
        )
    return tuple((int(s), int(e)) for s, e in spans)


@dataclass(frozen=True)
class FedPerOptions:
    clip_norm: float | None
    weight_decay: float
    spans: tuple[tuple[int, int], ...]  # flat [start, end) ranges of the personal head
    head_steps: int = 0  # FedRep: head-only steps before the body's


class FedPer(FunctionalClient):
    name = "fedper"
    option_names: tuple[str, ...] = ("personal_layers",)
    needs_head = True  # bind_client_config resolves client.personal_layers on the model
    state_vectors = 1  # the head (at most the model's size)

    def options(self, config: dict[str, Any]) -> FedPerOptions:
        return FedPerOptions(*self.common(config), spans=config_spans(config, self.name))

    def start(
        self, options: FedPerOptions, params: Tensor, state: dict[str, Tensor] | None, broadcast: Any, lr: float
    ) -> Carry:
        carry = self.base_carry(params, lr)
        if state is not None and options.spans:
            carry["y"] = scatter(params, state["head"], options.spans)
        carry["head"] = spans_mask(options.spans, params)
        return carry

    def step(self, options: FedPerOptions, carry: Carry, batch: Batch, grad: GradFn) -> tuple[Carry, Tensor]:
        loss, g = grad(carry["y"], batch)
        y = sgd_update(carry["y"], clip_by_global_norm(g, options.clip_norm), carry["lr"], options.weight_decay)
        return carry | {"y": y, "steps": carry["steps"] + 1}, loss

    def finish(self, options: FedPerOptions, carry: Carry) -> tuple[Tensor, dict[str, Tensor] | None, None]:
        y = carry["y"]
        delta = torch.where(carry["head"], torch.zeros_like(y), y - carry["x0"])
        return delta, ({"head": gather(y, options.spans)} if options.spans else None), None

    def personalize(self, options: FedPerOptions, global_params: Tensor, state: dict[str, Tensor]) -> Tensor:
        return scatter(global_params, state["head"], options.spans) if options.spans else global_params
