"""Byzantine clients: who they are, what they do, and how the attack enters the update pipeline.

``plan_byzantine(config, num_clients)`` expands ``population.byzantine_*`` into a
:class:`ByzantinePlan`:

- **who**: ``population.byzantine_ids``, or ``round(byzantine_fraction * N)`` clients drawn
  once from ``fedsim.rng`` (seed, "byzantine"), the same on every executor and after a resume.
  Attackers follow the same participation and speed model as every other client.
- **what** (registry :data:`ATTACKS`, option ``population.byzantine_attack`` with options in
  ``population.byzantine_options``), by where it acts:

  ========== ======== ===========================================================================
  attack     where    what an attacker sends
  ========== ======== ===========================================================================
  none       -        its honest update (attackers counted, nothing changed: f-assumption runs)
  sign_flip  client   -Delta_i, its own update negated (not byzfl's omniscient -mean(honest))
  scale      client   scale * Delta_i (``scale``, default 10; negative values flip as well)
  gaussian   client   N(0, std^2 I) instead of its update (``std``, default 1, as byzfl)
  label_flip data     honest training on labels y -> C - 1 - y (data side, not omniscient)
  alie       server   mean(h) - z std(h) per coordinate over the update's honest h (Baruch et al. 2019)
  ipm        server   -eps mean(h) (Xie et al. 2020; ``eps`` default 0.1, the paper's small-eps regime)
  ========== ======== ===========================================================================

  *client* attacks are client transforms (clients/transforms/attacks.py) acting only on rows
  whose job config carries ``byzantine`` (set by the server's ``configure`` for attackers);
  *data* attacks are applied to an attacker's training data by :func:`client_train_data`,
  which every executor calls; *server* attacks are **omniscient**: they see the honest
  updates of the same aggregation (a synchronous round, or one asynchronous buffer), so they
  run at the server as the first arrival stage (strategies/robust/attacks.py), before any
  staleness weighting and the aggregator. All f attackers of one update send the same vector.

- **f**, the number of attackers per update a robust aggregator assumes, is
  ``strategy.byzantine_f`` or else ``ceil(a / N * n)``, a the attackers among the N clients and n
  the nominal updates per aggregation (clients per round, the buffer size, ...); 0 without attackers.

:class:`ByzantineMonitor` (an engine callback) adds ``byzantine`` (attackers in the update) to
each line of rounds.jsonl and a ``byzantine`` object to summary.json.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from fedsim.registry import Registry
from fedsim.rng import numpy_generator

__all__ = [
    "ATTACKS",
    "Attack",
    "ByzantinePlan",
    "plan_byzantine",
    "nominal_cohort",
    "client_train_data",
    "ByzantineMonitor",
    "BYZANTINE_KEY",
    "DATA_ATTACK_KEY",
    "label_flip",
]

BYZANTINE_KEY = "byzantine"  # job config key: 1 for an attacker's job (absent for honest clients)
DATA_ATTACK_KEY = "data_attack"  # job config key: the data-side attack an attacker's training uses


@dataclass(frozen=True)
class Attack:
    where: str  # "none" | "client" | "data" | "server"
    target: str  # the registry name of the piece that does it (client transform, data hook, server stage)
    options: Callable[..., dict[str, Any]]  # validates the attack's options, fills in defaults


def _no_options() -> dict[str, Any]:
    return {}


def _scale(scale: float = 10.0) -> dict[str, Any]:
    return {"scale": float(scale)}


def _gaussian(std: float = 1.0) -> dict[str, Any]:
    if not std >= 0:
        raise ValueError(f"population.byzantine_options.std must be >= 0, got {std}")
    return {"std": float(std)}


def _alie(z: float | None = None) -> dict[str, Any]:
    return {"z": None if z is None else float(z)}


def _ipm(eps: float = 0.1) -> dict[str, Any]:
    if not eps > 0:
        raise ValueError(f"population.byzantine_options.eps must be > 0, got {eps}")
    return {"eps": float(eps)}


ATTACKS: Registry[Attack] = Registry("attack")
ATTACKS.register("none", "attackers send honest updates (tests the aggregators' cost without an attack)")(
    Attack("none", "", _no_options)
)
ATTACKS.register("sign_flip", "each attacker sends its own update negated, -Delta_i")(
    Attack("client", "attack_sign_flip", _no_options)
)
ATTACKS.register("scale", "each attacker sends scale * Delta_i (byzantine_options.scale, default 10)")(
    Attack("client", "attack_scale", _scale)
)
ATTACKS.register("gaussian", "each attacker sends N(0, std^2 I) (byzantine_options.std, default 1)")(
    Attack("client", "attack_gaussian", _gaussian)
)
ATTACKS.register("label_flip", "attackers train honestly on flipped labels y -> C - 1 - y (data side)")(
    Attack("data", "label_flip", _no_options)
)
ATTACKS.register("alie", "omniscient: mean - z*std of the update's honest deltas (Baruch et al. 2019)")(
    Attack("server", "alie", _alie)
)
ATTACKS.register("ipm", "omniscient: -eps * mean of the update's honest deltas (Xie et al. 2020)")(
    Attack("server", "ipm", _ipm)
)


# ----------------------------------------------------------------------------- data-side attacks


def label_flip(x: torch.Tensor, y: torch.Tensor, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """y -> C - 1 - y (the label flipping of Allen-Zhu et al. 2020 / byzfl's benchmark)."""
    return x, (num_classes - 1) - y


DATA_ATTACKS: dict[str, Callable[[torch.Tensor, torch.Tensor, int], tuple[torch.Tensor, torch.Tensor]]] = {
    "label_flip": label_flip,
}


def client_train_data(task: Any, job: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """A job's training data: the client's data, changed by a data-side attack its config names.

    Every executor calls this instead of ``task.data.train`` so that a data attack needs no
    executor of its own; honest jobs (no ``data_attack`` key) get the data unchanged.
    """
    x, y = task.data.train(job.client_id)
    attack = job.config.get(DATA_ATTACK_KEY)
    if attack is None:
        return x, y
    return DATA_ATTACKS[attack](x, y, int(task.num_classes))


# ----------------------------------------------------------------------------- the plan


@dataclass(frozen=True)
class ByzantinePlan:
    attackers: frozenset[int]
    attack: str
    options: dict[str, Any]
    f: int  # attackers per update the aggregators assume unless strategy.byzantine_f is set
    cohort: int  # nominal updates per aggregation (the n of the aggregators' assumptions)
    cohort_source: str  # the option that sets it (for error messages)
    notes: list[str] = field(default_factory=list)

    @property
    def where(self) -> str:
        return ATTACKS.get(self.attack).where

    def client_transforms(self) -> tuple[tuple[str, dict[str, Any]], ...]:
        if not self.attackers or self.where != "client":
            return ()
        return ((ATTACKS.get(self.attack).target, dict(self.options)),)

    def client_config(self) -> dict[str, Any]:
        """What an attacker's job config carries."""
        config: dict[str, Any] = {BYZANTINE_KEY: 1}
        if self.where == "data":
            config[DATA_ATTACK_KEY] = ATTACKS.get(self.attack).target
        return config


def nominal_cohort(config: Any, num_clients: int) -> tuple[int, str]:
    """(updates per aggregation the run is configured for, the option that sets it)."""
    sched, pop = config.scheduler, config.population
    if sched.name == "buffered":
        return int(sched.buffer_size), "scheduler.buffer_size"
    if sched.name == "periodic":
        return int(sched.concurrency), "scheduler.concurrency"
    if pop.participation == "uniform":
        return min(int(pop.clients_per_round), num_clients), "population.clients_per_round"
    if pop.participation == "always":
        return num_clients, "data.num_clients"
    return max(1, int(round(float(pop.mean_prob) * num_clients))), "population.mean_prob x data.num_clients"


def plan_byzantine(config: Any, num_clients: int) -> ByzantinePlan:
    """The Byzantine plan of a RunConfig (no attackers: an empty plan); bad input raises ValueError."""
    pop = config.population
    attack = ATTACKS.get(pop.byzantine_attack)
    params = inspect.signature(attack.options).parameters
    unknown = sorted(set(pop.byzantine_options) - set(params))
    if unknown:
        raise ValueError(
            f"population.byzantine_options.{unknown[0]} is not an option of attack '{pop.byzantine_attack}'; "
            f"it takes: {', '.join(params) or 'none'}"
        )
    options = attack.options(**pop.byzantine_options)
    if pop.byzantine_ids is not None:
        bad = [i for i in pop.byzantine_ids if not 0 <= i < num_clients]
        if bad:
            raise ValueError(f"population.byzantine_ids: client {bad[0]} is not in 0..{num_clients - 1}")
        attackers = frozenset(int(i) for i in pop.byzantine_ids)
        fraction = len(attackers) / num_clients
    else:
        fraction = float(pop.byzantine_fraction)
        count = int(math.floor(fraction * num_clients + 0.5))
        if fraction > 0 and count == 0:
            raise ValueError(
                f"population.byzantine_fraction {fraction:g} of {num_clients} clients rounds to 0 attackers; "
                f"raise it to at least {0.5 / num_clients:.3g}"
            )
        order = numpy_generator(config.seed, "byzantine").permutation(num_clients)
        attackers = frozenset(int(i) for i in order[:count])
    cohort, source = nominal_cohort(config, num_clients)
    fraction = len(attackers) / num_clients  # the attackers actually drawn
    f = int(math.ceil(fraction * cohort - 1e-9)) if attackers else 0
    notes = []
    if attackers:
        notes.append(
            f"byzantine: {len(attackers)} of {num_clients} clients attack ({pop.byzantine_attack}); "
            f"aggregators assume f = {config.strategy.byzantine_f if config.strategy.byzantine_f is not None else f} "
            f"of n = {cohort} updates per aggregation"
        )
    return ByzantinePlan(attackers, pop.byzantine_attack, options, f, cohort, source, notes)


class ByzantineMonitor:
    """Engine callback: attackers per update in rounds.jsonl, the plan in summary.json."""

    def __init__(self, plan: ByzantinePlan):
        self.plan = plan

    def on_round(self, engine: Any, record: dict[str, Any]) -> None:
        info = getattr(engine.strategy, "last_info", {}) or {}
        record["byzantine"] = int(info.get("byzantine", 0))

    def on_eval(self, engine: Any, record: dict[str, Any]) -> None:
        pass

    def on_end(self, engine: Any, summary: dict[str, Any]) -> None:
        plan = self.plan
        summary["byzantine"] = {
            "attack": plan.attack,
            "options": plan.options,
            "attackers": sorted(plan.attackers),
            "omniscient": plan.where == "server",
        }
