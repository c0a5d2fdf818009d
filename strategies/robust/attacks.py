"""The Byzantine arrival stage: the first server-side stage of the update pipeline when a run has attackers.

It knows which clients attack (fedsim/attacks.py chose them) and does two things:

- ``client_config(client_id)``: what an attacker's job config carries (``byzantine: 1`` for the
  client-transform attacks, plus ``data_attack`` for label flipping); honest jobs get nothing,
  so a run without attackers is bit-identical to one without this stage.
- ``apply(results)``: counts the attackers among the update's results (``info["byzantine"]``,
  written to rounds.jsonl) and, for the **omniscient** attacks, replaces each attacker's delta
  with a vector crafted from the HONEST deltas of the same aggregation (a synchronous round, or
  one asynchronous buffer: the attackers see that buffer's honest updates, nothing else):

  * ``alie`` (Baruch, Baruch, Goldberg, "A Little Is Enough: Circumventing Defenses For
    Distributed Learning", NeurIPS 2019): mean(h) - z std(h) per coordinate, std with ddof 1
    (as byzfl; 0 with one honest update), and by default the paper's
    z = Phi^-1((n - s) / n), s = floor(n/2 + 1) - f, with n the updates and f the attackers in
    this aggregation (z = 0 when that is not in (0, 1)); ``byzantine_options.z`` fixes z
    (byzfl: 1.5). The paper allows mean +/- z std; fedsim uses the minus side.
  * ``ipm`` (Xie, Koyejo, Gupta, "Fall of Empires: Breaking Byzantine-tolerant SGD by Inner
    Product Manipulation", UAI 2020): -eps mean(h).

  All attackers of one aggregation send the same vector. With no honest update in the
  aggregation, attackers send their own (honest) updates.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace
from statistics import NormalDist
from typing import Any

import torch

from fedsim.types import ClientResult

__all__ = ["ByzantineStage", "alie_z"]


def alie_z(n: int, f: int) -> float:
    """The paper's z_max for n updates of which f are Byzantine."""
    s = math.floor(n / 2 + 1) - f
    p = (n - s) / n
    return NormalDist().inv_cdf(p) if 0 < p < 1 else 0.0


class ByzantineStage:
    def __init__(
        self, attackers: frozenset[int], attack: str, where: str, options: dict[str, Any], client_config: dict[str, Any]
    ):
        self.attackers = frozenset(attackers)
        self.attack, self.where, self.options = attack, where, dict(options)
        self._client_config = dict(client_config)

    def describe(self) -> str:
        opts = ", ".join(f"{k}={v}" for k, v in self.options.items())
        return f"byzantine {self.attack}({opts}) x {len(self.attackers)} clients"

    def client_config(self, client_id: int) -> dict[str, Any]:
        return dict(self._client_config) if client_id in self.attackers else {}

    def apply(self, results: Sequence[ClientResult]) -> tuple[list[ClientResult], dict[str, Any]]:
        results = list(results)
        byz = [i for i, r in enumerate(results) if r.client_id in self.attackers]
        info = {"byzantine": len(byz)}
        if self.where != "server" or not byz or len(byz) == len(results):
            return results, info
        honest = torch.stack([r.delta.to(torch.float64) for r in results if r.client_id not in self.attackers])
        mean = honest.mean(0)
        if self.attack == "alie":
            std = honest.std(0, correction=1) if honest.shape[0] > 1 else torch.zeros_like(mean)
            z = self.options.get("z")
            z = alie_z(len(results), len(byz)) if z is None else float(z)
            crafted = mean - z * std
        elif self.attack == "ipm":
            crafted = -float(self.options["eps"]) * mean
        else:
            raise ValueError(f"unknown server-side attack '{self.attack}'")
        for i in byz:
            results[i] = replace(results[i], delta=crafted.to(results[i].delta.dtype))
        return results, info
