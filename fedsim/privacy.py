"""User-level differential privacy: the ``privacy:`` config section expanded into the update
pipeline, and the privacy accountant.

``plan_privacy(config, num_clients)`` turns the section into pipeline pieces:

- ``mode: central`` (DP-FedAvg, McMahan et al., ICLR 2018, arXiv 1710.06963):
  client transform ``clip_global`` / ``clip_per_layer`` / ``clip_per_layer_normalized`` ->
  weighting ``expected_cohort`` (fixed denominator D) -> [``adaptive_clip``] -> ``gaussian_noise``
  (std z*C on the sum) -> any server optimizer.
- ``mode: local``: clip, then each client adds N(0, (z*C)^2) itself (``local_gaussian``).

Accounting uses Google's dp-accounting library (PLD or RDP accountant), one release per
server update, with the sampling the run really does:

- sync rounds with ``population.participation: poisson``: each client joins each round with
  probability q, ``PoissonSampledDpEvent(q, GaussianDpEvent(z))`` (add/remove-one adjacency);
- sync rounds with ``uniform`` (exactly n of N): sampling without replacement under
  replace-one adjacency, ``SampledWithoutReplacementDpEvent(N, n, GaussianDpEvent(z/2))``
  (sensitivity 2C) with the RDP accountant (dp-accounting's PLD accountant has no such event);
- anything the server does not control (``always``; heterogeneous ``bernoulli``, ``markov``,
  ``cyclic``, ``trace``, whose probabilities the server does not know; asynchronous buffers
  and periodic ticks): no amplification, q = 1 per release. Each release holds at most one
  update per client (the ``expected_cohort`` weighting leaves out a second arrival of the
  same client in one buffer), so its sensitivity is C.

Adaptive clipping (Andrew et al., NeurIPS 2021, arXiv 1905.03871) spends part of the budget
on the unclipped count: with count noise sigma_b, the model's sum gets
z_delta = (z^-2 - (2 sigma_b)^-2)^(-1/2) and the accountant composes z (Thm. 1 of the paper).

Local DP is accounted per client: one release of a client is the Gaussian mechanism with
sensitivity 2C (``GaussianDpEvent(z/2)``), composed over the most participations any client
has had so far.

This is a simulation: noise comes from fedsim's counter-based seeds (reproducible, resumable),
not a cryptographically secure generator, and the server sees individual updates; a
deployment needs a CSPRNG and secure aggregation.
"""

from __future__ import annotations

import functools
import logging
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from fedsim.config import ConfigError

if TYPE_CHECKING:
    import dp_accounting

__all__ = [
    "Sampling",
    "PrivacyPlan",
    "plan_privacy",
    "sampling_of",
    "epsilon_for",
    "calibrate_noise",
    "PrivacyAccountant",
    "MAX_NOISE_MULTIPLIER",
]

log = logging.getLogger("fedsim")

MAX_NOISE_MULTIPLIER = 1000.0  # calibration searches z in (0, this]; beyond it the model learns nothing
MIN_NOISE_MULTIPLIER = 1e-3  # ...and no lower than this
CLIP_TRANSFORMS = {
    "flat": "clip_global",
    "per_layer": "clip_per_layer",
    "per_layer_normalized": "clip_per_layer_normalized",
}


@dataclass(frozen=True)
class Sampling:
    """How clients enter a release, as far as the accountant is concerned."""

    kind: str  # "poisson" | "fixed_size" | "none" (no amplification, q = 1)
    rate: float  # q
    num_clients: int  # N
    sample_size: int  # fixed_size: n clients dispatched per round (0 otherwise)
    cohort: float  # D: the fixed denominator (expected clients per release)
    reason: str = ""  # why "none"


def sampling_of(config: Any, num_clients: int) -> Sampling:
    """The sampling a run's scheduler and participation model give each release."""
    sched, pop = config.scheduler, config.population
    if sched.name == "sync":
        if pop.participation == "poisson":
            q = float(pop.mean_prob)
            return Sampling("poisson", q, num_clients, 0, q * num_clients)
        if pop.participation == "uniform":
            n = min(num_clients, int(math.ceil(pop.clients_per_round * (1.0 + sched.over_selection) - 1e-9)))
            return Sampling("fixed_size", n / num_clients, num_clients, n, float(pop.clients_per_round))
        if pop.participation == "always":
            return Sampling("none", 1.0, num_clients, 0, float(num_clients), "every client takes part in every round")
        return Sampling(
            "none",
            1.0,
            num_clients,
            0,
            max(1.0, float(pop.mean_prob) * num_clients),
            f"participation '{pop.participation}' is not a sampling the server controls",
        )
    if sched.name == "buffered":
        return Sampling(
            "none", 1.0, num_clients, 0, float(sched.buffer_size), "asynchronous arrivals are not sampled by the server"
        )
    return Sampling(
        "none",
        1.0,
        num_clients,
        0,
        float(sched.concurrency),
        f"scheduler '{sched.name}' arrivals are not sampled by the server",
    )


def _event(sampling: Sampling, z: float, steps: int) -> dp_accounting.DpEvent:
    import dp_accounting  # noqa: PLC0415  (~0.8 s of imports: only runs with privacy pay it)

    if sampling.kind == "poisson":
        one = dp_accounting.PoissonSampledDpEvent(sampling.rate, dp_accounting.GaussianDpEvent(z))
    elif sampling.kind == "fixed_size":
        one = dp_accounting.SampledWithoutReplacementDpEvent(
            sampling.num_clients, sampling.sample_size, dp_accounting.GaussianDpEvent(z / 2.0)
        )
    else:
        one = dp_accounting.GaussianDpEvent(z)
    return dp_accounting.SelfComposedDpEvent(one, steps)


def accountant_name(sampling: Sampling, accountant: str) -> str:
    return "rdp" if sampling.kind == "fixed_size" else accountant


def _fresh_accountant(sampling: Sampling, accountant: str) -> dp_accounting.PrivacyAccountant:
    import dp_accounting  # noqa: PLC0415
    from dp_accounting import pld, rdp  # noqa: PLC0415

    if sampling.kind == "fixed_size":
        return rdp.RdpAccountant(neighboring_relation=dp_accounting.NeighboringRelation.REPLACE_ONE)
    return pld.PLDAccountant() if accountant == "pld" else rdp.RdpAccountant()


@functools.lru_cache(maxsize=256)
def epsilon_for(sampling: Sampling, z: float, steps: int, delta: float, accountant: str) -> float:
    """epsilon after ``steps`` releases with noise multiplier z (inf for z = 0)."""
    if steps <= 0:
        return 0.0
    if z <= 0:
        return math.inf
    acc = _fresh_accountant(sampling, accountant)
    acc.compose(_event(sampling, z, steps))
    return float(acc.get_epsilon(delta))


def calibrate_noise(sampling: Sampling, target_epsilon: float, delta: float, steps: int, accountant: str) -> float:
    """The smallest z whose ``steps`` releases spend at most ``target_epsilon`` (one-line error if none does)."""
    import dp_accounting  # noqa: PLC0415

    if epsilon_for(sampling, MAX_NOISE_MULTIPLIER, steps, delta, accountant) > target_epsilon:
        raise ConfigError(
            f"privacy.target_epsilon: {target_epsilon} is not reached by any noise_multiplier up to "
            f"{MAX_NOISE_MULTIPLIER:g} in {steps} releases at delta {delta:.3g}; raise it or run fewer rounds"
        )
    # bracket the root by halving/doubling from z = 1: the search evaluates both ends, and the PLD of a
    # tiny z (e.g. a fixed lower end of 1e-3) needs tens of GiB
    z = 1.0
    if epsilon_for(sampling, z, steps, delta, accountant) > target_epsilon:
        while epsilon_for(sampling, 2.0 * z, steps, delta, accountant) > target_epsilon:
            z *= 2.0
        low, high = z, min(2.0 * z, MAX_NOISE_MULTIPLIER)
    else:
        while (
            z / 2.0 >= MIN_NOISE_MULTIPLIER
            and epsilon_for(sampling, z / 2.0, steps, delta, accountant) <= target_epsilon
        ):
            z /= 2.0
        if z / 2.0 < MIN_NOISE_MULTIPLIER:
            return z  # even less noise would spend no more than the target
        low, high = z / 2.0, z
    return float(
        dp_accounting.calibrate_dp_mechanism(
            lambda: _fresh_accountant(sampling, accountant),
            lambda z: _event(sampling, z, steps),
            target_epsilon,
            delta,
            bracket_interval=dp_accounting.ExplicitBracketInterval(low, high),
            tol=1e-4,
        )
    )


@dataclass
class PrivacyPlan:
    """The pipeline pieces and accounting a ``privacy:`` section stands for."""

    mode: str
    sampling: Sampling
    delta: float
    noise_multiplier: float  # z the accountant composes (model sum and, if adaptive, the count together)
    model_noise_multiplier: float  # z_delta actually added to the model's sum
    clip: float
    accountant: str
    steps: int
    client_transforms: tuple[tuple[str, dict[str, Any]], ...]
    adaptive: dict[str, float] | None = None  # target_quantile, lr, count_noise
    notes: list[str] = field(default_factory=list)

    def server_transforms(self, seed: int) -> tuple[Any, ...]:
        from strategies.privacy import AdaptiveClip, GaussianNoise  # noqa: PLC0415  (fedsim imports strategies lazily)

        if self.mode != "central":
            return ()
        pieces: list[Any] = []
        if self.adaptive is not None:
            pieces.append(
                AdaptiveClip(
                    self.clip,
                    self.adaptive["target_quantile"],
                    self.adaptive["lr"],
                    self.adaptive["count_noise"],
                    self.sampling.cohort,
                    seed,
                )
            )
        pieces.append(GaussianNoise(self.model_noise_multiplier, self.clip, self.sampling.cohort, seed))
        return tuple(pieces)


def plan_privacy(config: Any, num_clients: int) -> PrivacyPlan | None:
    """The plan for a RunConfig (None when ``privacy.mode`` is off); bad combinations raise ConfigError."""
    p = config.privacy
    if p.mode == "off":
        return None
    from clients import CLIENTS  # noqa: PLC0415

    algorithm = CLIENTS.get(config.client.algorithm)
    if getattr(algorithm, "server_part", None) is not None:
        raise ConfigError(
            f"privacy.mode {p.mode}: client.algorithm '{config.client.algorithm}' also sends "
            f"{algorithm.server_part} state to the server, which is not privatized; use sgd, fedprox, fedsam"
        )
    delta = p.delta if p.delta is not None else 1.0 / num_clients**1.1
    if p.mode == "central" and delta >= 1.0 / num_clients:
        raise ConfigError(
            f"privacy.delta ({delta:g}) must be < 1/num_clients ({1.0 / num_clients:g}); "
            "a larger delta allows releasing one client's data outright"
        )
    sampling = sampling_of(config, num_clients)
    steps = config.rounds
    clip_spec = (
        CLIP_TRANSFORMS[p.clipping],
        {"clip": p.clip} | ({"layer_budget": p.layer_budget} if p.clipping != "flat" else {}),
    )
    notes: list[str] = []
    if p.mode == "local":
        z = 1.0 if p.noise_multiplier is None else p.noise_multiplier
        return PrivacyPlan(
            "local",
            sampling,
            delta,
            z,
            z,
            p.clip,
            p.accountant,
            steps,
            (clip_spec, ("local_gaussian", {"clip": p.clip, "noise_multiplier": z})),
            notes=notes,
        )
    weighting = config.strategy.weighting
    if weighting is not None and weighting != "expected_cohort":
        raise ConfigError(
            f"strategy.weighting '{weighting}' is not differentially private (its weights depend on "
            "the data); privacy.mode central uses 'expected_cohort' (leave strategy.weighting unset)"
        )
    if sampling.kind == "none":
        notes.append(f"privacy: {sampling.reason}; accounted without sampling amplification (q = 1 per release)")
    if p.target_epsilon is not None:
        z = calibrate_noise(sampling, p.target_epsilon, delta, steps, p.accountant)
        notes.append(
            f"privacy: noise_multiplier {z:.4f} spends epsilon {p.target_epsilon} at delta {delta:.3g} "
            f"over {steps} releases"
        )
    else:
        z = 1.0 if p.noise_multiplier is None else p.noise_multiplier
    adaptive = None
    model_z = z
    if p.adaptive:
        count_noise = p.count_noise if p.count_noise is not None else sampling.cohort / 20.0
        if z > 0:
            if not 2.0 * count_noise > z:
                raise ConfigError(
                    f"privacy.count_noise ({count_noise:g}) must be > noise_multiplier / 2 ({z / 2:g}): "
                    "adaptive clipping's count shares the noise budget"
                )
            model_z = (z**-2 - (2.0 * count_noise) ** -2) ** -0.5
        adaptive = {"target_quantile": p.target_quantile, "lr": p.clip_lr, "count_noise": count_noise}
    return PrivacyPlan(
        "central",
        sampling,
        delta,
        z,
        model_z,
        p.clip,
        p.accountant,
        steps,
        (clip_spec,),
        adaptive=adaptive,
        notes=notes,
    )


class PrivacyAccountant:
    """Engine callback: ``epsilon`` in every evaluation record, a ``privacy`` object in the summary.

    Releases are server updates (``engine.state.version``), so the count needs no state of its
    own and survives checkpoint/resume.
    """

    def __init__(self, plan: PrivacyPlan):
        self.plan = plan

    def epsilon(self, engine: Any) -> float:
        plan = self.plan
        if plan.mode == "local":  # per client: the most releases any client has made
            counts = engine.run_state.dispatch_counts
            releases = max(counts.values()) if counts else 0
            local = Sampling("none", 1.0, plan.sampling.num_clients, 0, 1.0)
            return epsilon_for(local, plan.noise_multiplier / 2.0, releases, plan.delta, plan.accountant)
        return epsilon_for(plan.sampling, plan.noise_multiplier, engine.state.version, plan.delta, plan.accountant)

    def on_round(self, engine: Any, record: dict[str, Any]) -> None:
        pass

    def on_eval(self, engine: Any, record: dict[str, Any]) -> tuple[bool, dict[str, Any]]:
        return False, {"epsilon": _finite_or_none(self.epsilon(engine))}  # (stop, metrics for the record)

    def clip_norm(self, engine: Any) -> float:
        for transform, state in zip(getattr(engine.strategy, "server_transforms", ()), engine.state.transforms):
            if getattr(transform, "name", "") == "adaptive_clip":
                return float(state["clip"])
        return self.plan.clip

    def on_end(self, engine: Any, summary: dict[str, Any]) -> None:
        plan = self.plan
        summary["privacy"] = {
            "mode": plan.mode,
            "epsilon": _finite_or_none(self.epsilon(engine)),
            "delta": plan.delta,
            "noise_multiplier": plan.noise_multiplier,
            "model_noise_multiplier": plan.model_noise_multiplier,
            "sampling": plan.sampling.kind if plan.mode == "central" else "local",
            "sampling_rate": plan.sampling.rate,
            "steps": engine.state.version,
            "accountant": f"dp-accounting {accountant_name(plan.sampling, plan.accountant).upper()}",
            "clip_norm": self.clip_norm(engine),
            "simulation_only": "noise from reproducible seeds; a deployment needs a CSPRNG and secure aggregation",
        }


def _finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None
