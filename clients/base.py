"""Client algorithm protocol and the context a worker hands it.

A client algorithm is one function-like object: given the global parameters, its data,
its instructions and a seeded generator, it trains the worker's resident model and returns
a ClientResult. It never imports ray and never keeps state on ``self``; persistent client
state travels in and out explicitly (``state`` argument, ``ClientResult.state``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Protocol

import torch

from fedsim.params import ResidentModel
from fedsim.types import ClientResult

__all__ = ["TrainContext", "ClientAlgorithm"]


@dataclass
class TrainContext:
    model: ResidentModel  # resident model; its parameters are views of model.flat
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    device: torch.device


class ClientAlgorithm(Protocol):
    name: str

    def num_steps(self, config: dict[str, Any], num_samples: int) -> int:
        """Local steps the job will take; known at dispatch so the engine can time it."""
        ...

    def train(
        self,
        ctx: TrainContext,
        params: torch.Tensor,
        data: tuple[torch.Tensor, torch.Tensor],
        config: dict[str, Any],
        state: Any,
        rng: torch.Generator,
    ) -> ClientResult: ...
