"""Typed, validated experiment configuration.

Precedence, lowest first: field defaults -> the chosen strategy preset's suggested defaults
-> YAML file -> CLI flags and ``--set key=value`` overrides (applied in order). Unknown
keys, wrong types, impossible values and unknown names all fail at load time with a
one-line :class:`ConfigError` that names the field (and the valid choices for names).
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

__all__ = [
    "ConfigError",
    "RunConfig",
    "load_config",
    "parse_override",
    "set_dotted",
]


class ConfigError(ValueError):
    """Bad configuration; the message is one line and names the field."""


MAX_LOCAL_STEPS = 1_000_000  # per job: the batch schedule of a longer job would not fit in memory
# Sanity caps on sizes that drive memory or time (each named in its field's error; the README's
# table of caps explains them). What a run needs in memory as a whole is estimated before it
# starts (fedsim/resources.py); these only refuse values no machine could run.
MAX_CLIENTS = 10_000_000  # data.num_clients: O(N) per-client arrays (sizes, speeds, probabilities) of 8 bytes
MAX_CLIENTS_PER_CALL = 1_000_000  # clients_per_round, buffer_size, concurrency: jobs (and updates) held at once
MAX_BATCH_SIZE = 1_000_000  # client.batch_size (a batch is never larger than the client's data anyway)
MAX_LOCAL_EPOCHS = 10_000
MAX_ROUNDS = 100_000_000  # server updates: time, not memory (metrics.jsonl grows one line per evaluation)
MAX_EVAL_CLIENTS = 1_000_000  # eval.max_clients: per-client evaluation visits this many clients
MAX_SHARDS_PER_CLIENT = 10_000  # data.shards_per_client: the shard partition sorts N x this many shards
MAX_WORKERS = 4096  # executor.workers (Ray actors), executor.threads, executor.chunk_size
MAX_OVER_SELECTION = 100.0  # scheduler.over_selection: dispatch (1 + x) clients_per_round
MAX_CONFIG_BYTES = 1_000_000
MAX_PGD_STEPS = 10_000  # client.adv_steps, eval.adversarial.steps: input-gradient evaluations per attacked batch
RAY_INNERS = ("auto", "vmap", "serial")  # executor.ray_inner: what runs a chunk of jobs inside a Ray actor


class _Strict(BaseModel):
    # allow_inf_nan=False: inf or NaN in any rate, time, size or concentration is rejected by name
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


def _check_name(kind_registry: str, value: str) -> str:
    """Validate ``value`` against a registry, imported lazily to avoid import cycles."""
    from fedsim import registries  # noqa: PLC0415
    from fedsim.registry import UnknownNameError  # noqa: PLC0415

    try:
        registries.get(kind_registry).get(value)
    except UnknownNameError as exc:  # a KeyError; pydantic reports ValueErrors with the field name
        raise ValueError(str(exc)) from None
    return value


def RegistryName(kind: str, *, also: tuple[str, ...] = ()) -> AfterValidator:  # noqa: N802  (reads as a type)
    """``Annotated[str, RegistryName("strategy")]``: a name registered in that registry (or one of
    ``also``, e.g. "auto"); None passes (an optional field left unset). Unknown names fail with the
    registry's one-line error: the valid choices and the close ones."""

    def check(value: str | None) -> str | None:
        return value if value is None or value in also else _check_name(kind, value)

    return AfterValidator(check)


class TaskConfig(BaseModel):
    """Which task; extra keys are task options (e.g. ``alpha``, ``model``), checked by the task."""

    model_config = ConfigDict(extra="allow", validate_assignment=True, allow_inf_nan=False)
    name: Annotated[str, RegistryName("task")] = "synthetic"

    @property
    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class DataConfig(_Strict):
    num_clients: int = Field(100, ge=1, le=MAX_CLIENTS)
    partition: Annotated[str, RegistryName("partitioner", also=("auto",))] = (
        "auto"  # "auto" = the task's natural split if it has one, else dirichlet
    )
    alpha: float = Field(0.5, gt=0)  # dirichlet concentration
    shards_per_client: int = Field(2, ge=1, le=MAX_SHARDS_PER_CLIENT)
    min_samples: int = Field(1, ge=0)
    test_fraction: float = Field(0.2, ge=0, lt=1)


class PopulationConfig(_Strict):
    participation: Annotated[str, RegistryName("participation")] = "uniform"
    clients_per_round: int = Field(10, ge=1, le=MAX_CLIENTS_PER_CALL)  # used by "uniform"
    # heterogeneous models: mean participation probability; null = clients_per_round / num_clients
    # (0.1 for the defaults, as in the FedAU paper), so the expected clients per round, and the
    # cost of a round, do not grow with the population
    mean_prob: float | None = Field(None, gt=0, le=1)
    min_prob: float | None = Field(None, gt=0, le=1)  # ... and its floor; null = mean_prob / 5 (0.02 for the defaults)
    prob_alpha: float = Field(0.1, gt=0)  # Dirichlet concentration of the class preference vector
    # p_n follows the client's label mix (FedAU paper) or is i.i.d.; "auto" = true unless that would
    # generate a lazily generated population of more than 10^4 clients just for their label histograms
    correlate_with_data: bool | Literal["auto"] = "auto"
    markov_rate: float = Field(0.05, gt=0, le=1)  # P(inactive -> active) for "markov"
    cyclic_period: int = Field(100, ge=2)
    trace_path: str | None = None
    round_length: float = Field(60.0, gt=0)  # virtual seconds per round, for mapping traces to rounds
    speed: Annotated[str, RegistryName("speed")] = "constant"
    step_time: float = Field(0.01, gt=0)  # virtual seconds per local step (median client)
    speed_sigma: float = Field(0.5, ge=0)  # lognormal spread of per-client step times
    speed_tiers: list[list[float]] = Field(
        default_factory=lambda: [[0.5, 1.0], [0.3, 2.0], [0.2, 5.0]]
    )  # "tiered": [fraction, slowdown]
    device_file: str | None = None  # "device_file": FedScale device capacity pickle
    comm_time: float = Field(0.0, ge=0)  # fixed virtual seconds of latency per job
    bandwidth: float | None = Field(None, gt=0)  # Mbit/s per client: adds 2 x model size / bandwidth per job
    extra_delay: float = Field(0.0, ge=0)  # mean of a random exponential extra delay per job (virtual s)
    dropout_prob: float = Field(0.0, ge=0, le=1)  # probability that a job fails mid-training (< 1)
    # Byzantine clients (fedsim/attacks.py): a fraction drawn from the seed, or explicit ids
    byzantine_fraction: float = Field(0.0, ge=0, lt=1)
    byzantine_ids: list[int] | None = None  # explicit attackers (wins over byzantine_fraction)
    byzantine_attack: Annotated[str, RegistryName("attack")] = (
        "sign_flip"  # none | sign_flip | scale | gaussian | label_flip | alie | ipm
    )
    byzantine_options: dict[str, float | None] = Field(default_factory=dict)  # e.g. scale, std, z, eps

    def probability_range(self, num_clients: int) -> tuple[float, float]:
        """(mean_prob, min_prob) with null resolved: clients_per_round / num_clients and mean / 5."""
        mean = self.mean_prob if self.mean_prob is not None else min(1.0, self.clients_per_round / num_clients)
        return mean, (self.min_prob if self.min_prob is not None else mean / 5)

    @field_validator("dropout_prob")
    @classmethod
    def _someone_finishes(cls, v: float) -> float:
        if v >= 1:
            raise ValueError(f"must be < 1, got {v:g}: with 1 every job fails and no client ever finishes")
        return v

    @field_validator("speed_tiers")
    @classmethod
    def _tiers(cls, v: list[list[float]]) -> list[list[float]]:
        from fedsim.population.simple import speed_tiers_problem  # noqa: PLC0415  (lazy: numpy, scipy)

        problem = speed_tiers_problem(v)
        if problem is not None:
            raise ValueError(problem)
        return v


class ClientConfig(_Strict):
    algorithm: Annotated[str, RegistryName("client")] = "sgd"
    lr: float = Field(0.05, ge=0)
    local_epochs: int = Field(1, ge=1, le=MAX_LOCAL_EPOCHS)
    local_steps: int | None = Field(None, ge=1, le=MAX_LOCAL_STEPS)  # if set, overrides local_epochs
    batch_size: int = Field(10, ge=1, le=MAX_BATCH_SIZE)
    optimizer: Annotated[str, RegistryName("optimizer")] = (
        "sgd"  # any torch.optim optimizer by name (sgd, adam, adamw, rmsprop, ...)
    )
    momentum: float = Field(0.0, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)
    optimizer_kwargs: dict[str, Any] = Field(default_factory=dict)
    lr_decay: float = Field(1.0, gt=0, le=1)  # lr of a job on model version t = lr * lr_decay^t (FL-Simulator 0.998)
    clip_norm: float | None = Field(None, gt=0)  # clip the whole loss gradient to this global L2 norm (FL-Simulator 10)
    # options of one algorithm each; None = that algorithm's default, setting one another algorithm ignores is an error
    mu: float | None = Field(None, ge=0)  # fedprox: proximal coefficient; admm: the penalty rho (> 0)
    lamb: float | None = Field(None, ge=0)  # feddyn alpha / fedspeed beta = 1/lambda: prox + correction coefficient
    rho: float | None = Field(None, ge=0)  # fedsam, mofedsam, fedspeed: SAM perturbation radius
    alpha: float | None = Field(None, ge=0, le=1)  # mofedsam, fedcm: weight of the local gradient vs server momentum
    beta: float | None = Field(None, ge=0, lt=1)  # polyak (MoNNA client): momentum of the sent update
    sam_alpha: float | None = Field(
        None, ge=0, le=1
    )  # fedspeed: g = (1 - sam_alpha) g1 + sam_alpha g2 (1: reference code)
    alpha_lr: float | None = Field(None, ge=0)  # apfl: step size of the adaptive mixing weight (None: alpha fixed)
    personal_layers: list[str] | int | None = (
        None  # fedper, fedrep: the personal head, parameter-name prefixes or a count of final layers (default 1)
    )
    head_steps: int | None = Field(
        None, ge=0, le=MAX_LOCAL_STEPS
    )  # fedrep: head-only local steps before the body's (default 10)
    # fal: PGD adversarial training (clients/pgd.py)
    adv_eps: float | None = Field(None, ge=0)  # fal: radius of the perturbation ball (default 0.1)
    adv_step: float | None = Field(None, gt=0)  # fal: PGD step size (default 2.5 adv_eps / adv_steps)
    adv_steps: int | None = Field(None, ge=1, le=MAX_PGD_STEPS)  # fal: PGD steps per local step (default 10)
    adv_norm: Literal["linf", "l2"] | None = None  # fal: the ball's norm (default linf)

    @field_validator("personal_layers")
    @classmethod
    def _personal_layers(cls, v: list[str] | int | None) -> list[str] | int | None:
        if isinstance(v, int) and v < 0:
            raise ValueError(f"must be a count of final layers >= 0 or a list of parameter names, got {v}")
        return v

    @field_validator("optimizer_kwargs")
    @classmethod
    def _finite_kwargs(cls, v: dict[str, Any]) -> dict[str, Any]:
        bad = _first_non_finite(v)
        if bad is not None:
            raise ValueError(f"{bad} must be finite (no inf or NaN)")
        return v


def _check_local_optimizer(client: ClientConfig) -> None:
    """An algorithm defined over plain SGD steps refuses another optimizer (and SGD options it would ignore)."""
    from clients import CLIENTS  # noqa: PLC0415  (lazy: registries import config)

    algorithm = CLIENTS.get(client.algorithm)
    accepted = getattr(algorithm, "optimizers", None)
    if accepted is not None and client.optimizer not in accepted:
        raise ValueError(
            f"client.optimizer '{client.optimizer}' does not apply to client algorithm '{client.algorithm}', "
            f"which is defined over plain SGD steps; it accepts: {', '.join(accepted)}"
        )
    if not getattr(algorithm, "takes_optimizer_options", True):
        for key, value in (("momentum", client.momentum), ("optimizer_kwargs", client.optimizer_kwargs)):
            if value:
                raise ValueError(
                    f"client.{key} does not apply to client algorithm '{client.algorithm}', whose local steps "
                    f"are plain SGD (lr, weight_decay, clip_norm); unset it or use client.algorithm sgd"
                )


def _first_non_finite(value: Any, path: str = "") -> str | None:
    """Dotted path of the first inf/NaN number inside nested dicts and lists, or None."""
    if isinstance(value, float) and not math.isfinite(value):
        return path or "value"
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, (list, tuple)):
        items = enumerate(value)
    else:
        return None
    for key, item in items:
        found = _first_non_finite(item, f"{path}.{key}" if path else str(key))
        if found is not None:
            return found
    return None


class StrategyConfig(_Strict):
    """A preset name plus optional overrides of its parts; ``None`` means the preset's value."""

    name: Annotated[str, RegistryName("strategy")] = "fedavg"
    weighting: Annotated[str | None, RegistryName("weighting")] = None
    server_optimizer: Annotated[str | None, RegistryName("server_optimizer")] = None
    # options of a library server optimizer (torch.AdamW, adabelief, ...) besides lr, checked by its constructor
    server_optimizer_kwargs: dict[str, Any] | None = None
    server_lr: float | None = Field(None, ge=0)
    momentum: float | None = Field(None, ge=0, lt=1)
    beta1: float | None = Field(None, ge=0, lt=1)
    beta2: float | None = Field(None, ge=0, lt=1)
    tau: float | None = Field(None, gt=0)
    bias_correction: bool | None = None
    cutoff: int | None = Field(None, ge=1)  # FedAU's K; None = no cutoff (K -> infinity)
    staleness: Annotated[str | None, RegistryName("staleness")] = (
        None  # staleness weighting s(tau): constant | polynomial | hinge
    )
    staleness_a: float | None = Field(None, ge=0)  # polynomial exponent a / hinge slope a
    staleness_b: float | None = Field(None, ge=0)  # hinge: updates up to b versions stale get weight 1
    # robust aggregators (strategies/robust/)
    byzantine_f: int | None = Field(None, ge=0)  # attackers per update assumed; None: ceil(byzantine_fraction x n)
    radius: float | None = Field(None, gt=0)  # centered clipping: clipping radius tau
    iterations: int | None = Field(None, ge=1)  # centered clipping L / geometric median Weiszfeld steps T
    selection: int | None = Field(None, ge=1)  # multi-Krum: m updates averaged
    smoothing: float | None = Field(None, gt=0)  # geometric median: Weiszfeld smoothing nu

    @field_validator("server_optimizer_kwargs")
    @classmethod
    def _finite_server_kwargs(cls, v: dict[str, Any] | None) -> dict[str, Any] | None:
        bad = _first_non_finite(v)
        if bad is not None:
            raise ValueError(f"{bad} must be finite (no inf or NaN)")
        return v or None  # {} = unset


class AnarchicConfig(_Strict):
    idle_mean: float = Field(1.0, gt=0)  # mean virtual seconds a client waits before joining again
    idle_sigma: float = Field(1.0, ge=0)  # lognormal spread of that mean across clients
    min_steps: int = Field(
        1, ge=1, le=MAX_LOCAL_STEPS
    )  # local steps a client chooses: uniform in [min_steps, max_steps]
    max_steps: int = Field(10, ge=1, le=MAX_LOCAL_STEPS)


class SchedulerConfig(_Strict):
    """When clients train and when the server aggregates (see fedsim/schedulers.py)."""

    name: Annotated[str, RegistryName("scheduler")] = "sync"  # sync | buffered | periodic
    over_selection: float = Field(
        0.0, ge=0, le=MAX_OVER_SELECTION
    )  # sync + uniform: dispatch (1+x) clients_per_round, keep the first
    buffer_size: int = Field(10, ge=1, le=MAX_CLIENTS_PER_CALL)  # buffered: K arrivals per server update
    interval: float | None = Field(None, gt=0)  # periodic: virtual seconds between server updates
    arrivals: Annotated[str, RegistryName("arrivals")] = "concurrency"  # concurrency | rate | anarchic
    concurrency: int = Field(10, ge=1, le=MAX_CLIENTS_PER_CALL)  # clients training at once
    arrival_rate: float = Field(1.0, gt=0)  # starts per virtual second
    arrival_process: str = "constant"  # constant | poisson gaps
    max_staleness: int | None = Field(None, ge=0)  # refuse (and count) staler updates
    max_time: float | None = Field(None, gt=0)  # stop at this virtual time, whatever the updates
    anarchic: AnarchicConfig = Field(default_factory=AnarchicConfig)

    @field_validator("arrival_process")
    @classmethod
    def _process(cls, v: str) -> str:
        if v not in ("constant", "poisson"):
            raise ValueError(f"unknown arrival process '{v}'; valid choices: constant, poisson")
        return v


COMPILE_CHOICES = ("auto", "on", "off")


class ExecutorConfig(_Strict):
    name: Annotated[str, RegistryName("executor")] = (
        "auto"  # vmap when the client algorithm and model batch, else serial
    )
    workers: int | None = Field(None, ge=1, le=MAX_WORKERS)  # ray: actors (default = CPU count)
    ray_address: str | None = None  # ray: "auto" or host:port of an existing cluster
    gpus_per_client: float = Field(0.0, ge=0, le=1)  # ray: fractional GPU per actor
    device: str = "cpu"  # cpu | cuda | cuda:N
    threads: int = Field(
        1, ge=1, le=MAX_WORKERS
    )  # torch intra-op threads per worker (1: fastest for small models, same floats everywhere)
    ray_inner: str = (
        "auto"  # ray: what runs a chunk inside an actor: auto | vmap | serial (auto: vmap when the clients batch)
    )
    chunk_size: int | None = Field(
        None, ge=1, le=MAX_CLIENTS_PER_CALL
    )  # ray: most jobs per remote call (None: vmap one chunk per actor, serial 1)
    compile: str = "auto"  # vmap: torch.compile the batched step: on | off | auto (on when compiling pays off)
    cache_dir: str | None = (
        None  # compile cache (inductor + measured costs); None: $FEDSIM_CACHE_DIR or ~/.cache/fedsim
    )

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        if v == "cpu" or v == "cuda" or (v.startswith("cuda:") and v[5:].isdigit()):
            return v
        raise ValueError(f"unknown device '{v}'; valid choices: cpu, cuda, cuda:N")

    @field_validator("ray_inner")
    @classmethod
    def _ray_inner(cls, v: str) -> str:
        if v in RAY_INNERS:
            return v
        raise ValueError(f"unknown ray_inner '{v}'; valid choices: {', '.join(RAY_INNERS)}")

    @field_validator("compile", mode="before")
    @classmethod
    def _compile(cls, v: Any) -> str:
        if isinstance(v, bool):  # YAML reads a bare on/off as a boolean
            v = "on" if v else "off"
        if v in COMPILE_CHOICES:
            return v
        raise ValueError(f"unknown compile mode '{v}'; valid choices: {', '.join(COMPILE_CHOICES)}")


class ClientStateConfig(_Strict):
    """Where per-client state (SCAFFOLD's c_i, FedDyn/FedSpeed's h_i) lives."""

    memory_limit_mb: float | None = Field(None, gt=0)  # past this, least recently used states spill to disk
    spill_dir: str | None = None  # folder for spilled states (default: a temporary folder)


class AdversarialEvalConfig(_Strict):
    """Robust accuracy of the global model under a PGD attack of this strength (clients/pgd.py)."""

    eps: float = Field(ge=0)  # radius of the perturbation ball around each test sample
    step: float | None = Field(None, gt=0)  # PGD step size; null = 2.5 eps / steps
    steps: int = Field(10, ge=1, le=MAX_PGD_STEPS)  # PGD steps (from a zero start: deterministic)
    norm: Literal["linf", "l2"] = "linf"


class EvalConfig(_Strict):
    every: int | None = Field(5, ge=1)  # evaluate every n server updates (and always after the last); null = never
    every_time: float | None = Field(None, gt=0)  # also evaluate every this many virtual seconds
    target_accuracy: float | None = Field(None, gt=0, le=1)  # record time-to-accuracy in summary.json
    per_client: bool = False  # also report mean and worst-10% accuracy over clients
    max_clients: int = Field(1000, ge=1, le=MAX_EVAL_CLIENTS)  # per-client evaluation looks at most at this many
    finetune_steps: int = Field(
        0, ge=0, le=MAX_LOCAL_STEPS
    )  # per-client evaluation: SGD steps on the client's train data before testing
    adversarial: AdversarialEvalConfig | None = None  # test_robust_accuracy under PGD; null = off

    @model_validator(mode="after")
    def _finetune_needs_per_client(self) -> EvalConfig:
        if self.finetune_steps and not self.per_client:
            raise ValueError(
                "eval.finetune_steps needs eval.per_client: true (it fine-tunes each evaluated client's model)"
            )
        return self


class StopConfig(_Strict):
    """When a run stops early instead of finishing with a wrong or empty result."""

    max_dropout_fraction: float = Field(0.5, ge=0, le=1)  # failed jobs / jobs run above this -> status failed
    divergence_factor: float | None = Field(10.0, gt=1)  # test loss > factor x max(initial test loss, ln C) -> diverged


class OutputConfig(_Strict):
    out: str | None = None  # run folder; default runs/<timestamp>-<strategy>
    tensorboard: bool = True
    progress: bool = True
    checkpoint_every: int | None = Field(
        None, ge=1
    )  # server updates between checkpoints (checkpoint.pt); None: only on SIGINT/SIGTERM
    checkpoint_every_time: float | None = Field(None, gt=0)  # virtual seconds between checkpoints (time-driven modes)
    # wall seconds: at the first server update after this long without a checkpoint, save one, so a
    # killed (kill -9, OOM) run can --resume; costs one save a minute; null: off
    checkpoint_every_wall: float | None = Field(60.0, gt=0)


PRIVACY_MODES = ("off", "central", "local")
CLIPPINGS = ("flat", "per_layer", "per_layer_normalized")


class PrivacyConfig(_Strict):
    """User-level differential privacy (fedsim/privacy.py expands it into the update pipeline)."""

    mode: Literal["off", "central", "local"] = "off"  # central: DP-FedAvg; local: each client noises its own delta
    clip: float = Field(1.0, gt=0)  # C: L2 norm every client delta is clipped to (initial C if adaptive)
    clipping: Literal["flat", "per_layer", "per_layer_normalized"] = "flat"
    layer_budget: Literal["uniform", "dimension"] = "uniform"  # per-layer clips: C/sqrt(L) or C*sqrt(size_l/d)
    noise_multiplier: float | None = Field(
        None, ge=0
    )  # z (noise std = z*C on the sum); null: from target_epsilon, else 1.0
    target_epsilon: float | None = Field(None, gt=0)  # calibrate z so the whole run spends this epsilon
    delta: float | None = Field(None, gt=0, lt=1)  # null: 1 / num_clients^1.1
    accountant: Literal["pld", "rdp"] = "pld"  # dp-accounting's; fixed-size cohorts always use rdp
    adaptive: bool = False  # adaptive clipping (Andrew et al. 2021)
    target_quantile: float = Field(0.5, ge=0, le=1)  # adaptive: fraction of updates left unclipped
    clip_lr: float = Field(0.2, gt=0)  # adaptive: eta of C <- C exp(-eta (b - gamma))
    count_noise: float | None = Field(None, gt=0)  # adaptive: sigma_b of the unclipped count; null: cohort / 20

    @field_validator("mode", mode="before")
    @classmethod
    def _yaml_off(cls, v: Any) -> Any:
        return "off" if v is False else v  # YAML reads a bare `off` as false

    @model_validator(mode="after")
    def _one_noise_source(self) -> PrivacyConfig:
        if self.noise_multiplier is not None and self.target_epsilon is not None:
            raise ValueError("privacy: set noise_multiplier or target_epsilon, not both")
        if self.mode == "local" and (self.adaptive or self.target_epsilon is not None):
            raise ValueError(
                "privacy.mode local takes a fixed clip and noise_multiplier "
                "(adaptive and target_epsilon are for mode central)"
            )
        return self


class CommunicationConfig(_Strict):
    """Compressed uploads, links with bandwidth and latency, noisy uplinks (fedsim/communication.py)."""

    compressor: Annotated[str, RegistryName("compressor", also=("none",))] = (
        "none"  # none | a registered compressor: topk, randomk, qsgd, sign, powersgd, lgreco
    )
    ratio: float = Field(0.01, gt=0, le=1)  # topk / randomk / lgreco(topk): fraction of entries kept per tensor
    levels: int = Field(16, ge=1, le=2**24)  # qsgd: s quantization levels
    rank: int = Field(1, ge=1, le=4096)  # powersgd / lgreco(powersgd): rank r
    error_feedback: bool | None = None  # null: the compressor's default (on for powersgd and lgreco)
    per_layer: bool = True  # compress each tensor of the model (false: the flat vector)
    lgreco_base: Literal["powersgd", "topk"] = "powersgd"  # lgreco: what it chooses levels of
    error_budget: float = Field(1.0, gt=0)  # lgreco: alpha, total error <= alpha x error at the default level
    link: Literal["off", "constant", "lognormal", "tiers", "trace"] = "off"  # per-client bandwidth model
    up_mbps: float = Field(10.0, gt=0)  # uplink Mbit/s (lognormal: median)
    asymmetry: float = Field(1.0, gt=0)  # downlink bandwidth / uplink bandwidth
    bandwidth_sigma: float = Field(1.0, ge=0, le=10)  # lognormal: sd of log bandwidth
    bandwidth_tiers: list[list[float]] = Field(default_factory=lambda: [[0.5, 1.0], [0.3, 10.0], [0.2, 100.0]])
    bandwidth_trace: str | None = None  # trace: CSV of time,mbps or client,time,mbps
    latency: float = Field(0.0, ge=0)  # virtual seconds per transfer (one down, one up per job)
    uplink_snr_db: float | None = Field(None, ge=-100, le=300)  # additive Gaussian noise on uploads at this SNR
    downlink_snr_db: float | None = Field(None, ge=-100, le=300)  # additive Gaussian noise on the downloaded model

    @field_validator("bandwidth_tiers")
    @classmethod
    def _tiers(cls, v: list[list[float]]) -> list[list[float]]:
        if not v or any(len(t) != 2 or not t[0] > 0 or not t[1] > 0 for t in v):
            raise ValueError("must be a non-empty list of [fraction > 0, uplink Mbit/s > 0] pairs")
        return v

    @model_validator(mode="after")
    def _trace_path(self) -> CommunicationConfig:
        if self.link == "trace" and not self.bandwidth_trace:
            raise ValueError("communication.link trace needs communication.bandwidth_trace (a CSV path)")
        return self


class RunConfig(_Strict):
    plugins: list[str] = Field(default_factory=list)  # modules imported before validation (they register names)
    seed: int = 0
    rounds: int = Field(50, ge=1, le=MAX_ROUNDS)  # server updates (= rounds for scheduler sync)
    round_deadline: float | None = Field(None, gt=0)  # scheduler sync: virtual seconds; stragglers are dropped
    task: TaskConfig = Field(default_factory=TaskConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    population: PopulationConfig = Field(default_factory=PopulationConfig)
    client: ClientConfig = Field(default_factory=ClientConfig)
    scheduler: SchedulerConfig = Field(default_factory=SchedulerConfig)
    strategy: StrategyConfig = Field(default_factory=StrategyConfig)
    executor: ExecutorConfig = Field(default_factory=ExecutorConfig)
    client_state: ClientStateConfig = Field(default_factory=ClientStateConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    stop: StopConfig = Field(default_factory=StopConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)
    privacy: PrivacyConfig = Field(default_factory=PrivacyConfig)
    communication: CommunicationConfig = Field(default_factory=CommunicationConfig)
    provenance: dict[str, Any] = Field(default_factory=dict)  # written into a run's config.yaml; ignored on load

    @model_validator(mode="after")
    def _cross_field(self) -> RunConfig:
        n = self.data.num_clients
        if self.population.mean_prob is None or self.population.min_prob is None:
            mean, floor = self.population.probability_range(n)
            self.population.mean_prob, self.population.min_prob = mean, floor  # resolved: saved as numbers
        if self.population.participation == "uniform" and self.population.clients_per_round > n:
            raise ValueError(
                f"population.clients_per_round ({self.population.clients_per_round}) must be <= data.num_clients ({n})"
            )
        if self.population.min_prob > self.population.mean_prob:
            raise ValueError(
                f"population.min_prob ({self.population.min_prob}) must be <= "
                f"population.mean_prob ({self.population.mean_prob})"
            )
        sched = self.scheduler
        if sched.name != "sync":
            if self.round_deadline is not None:
                raise ValueError(
                    f"round_deadline applies to scheduler 'sync', not '{sched.name}' (use scheduler.max_staleness)"
                )
            if sched.over_selection > 0:
                raise ValueError(f"scheduler.over_selection applies to scheduler 'sync', not '{sched.name}'")
        elif sched.over_selection > 0 and self.population.participation != "uniform":
            raise ValueError(
                "scheduler.over_selection needs population.participation 'uniform' (it over-selects "
                f"clients_per_round), got '{self.population.participation}'"
            )
        if sched.interval is not None and sched.name != "periodic":
            raise ValueError(f"scheduler.interval applies to scheduler 'periodic', not '{sched.name}'")
        if sched.name == "periodic" and sched.arrivals == "anarchic":
            raise ValueError(
                "scheduler.arrivals 'anarchic' does not combine with scheduler 'periodic' "
                "(anarchic clients choose their own start times); use scheduler 'buffered'"
            )
        if sched.anarchic.min_steps > sched.anarchic.max_steps:
            raise ValueError(
                f"scheduler.anarchic.min_steps ({sched.anarchic.min_steps}) must be <= "
                f"max_steps ({sched.anarchic.max_steps})"
            )
        from clients import check_client_options  # noqa: PLC0415  (lazy: registries import config)
        from strategies import check_pairing  # noqa: PLC0415

        check_client_options(self.client.model_dump())
        _check_local_optimizer(self.client)
        check_pairing(self.strategy, self.client.algorithm)
        return self

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    @model_validator(mode="after")
    def _task_options_finite(self) -> RunConfig:
        bad = _first_non_finite(self.task.options)
        if bad is not None:
            raise ValueError(f"task.{bad} must be finite (no inf or NaN)")
        return self


# --------------------------------------------------------------------------- loading


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"a.b=0.5"`` -> (["a", "b"], 0.5); the value is parsed as YAML (numbers, bools, null, lists)."""
    if "=" not in text:
        raise ConfigError(f"--set expects key=value, got '{text}'")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"--set expects a dotted key like strategy.server_lr, got '{key}'")
    try:
        value = safe_yaml(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def set_dotted(tree: dict[str, Any], path: list[str], value: Any) -> None:
    node = tree
    for part in path[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[path[-1]] = value


def deep_merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


class _NoAliasLoader(yaml.SafeLoader):
    """safe_load without anchors/aliases: an alias bomb (billion laughs) is refused, not expanded."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.YAMLError(f"line {event.start_mark.line + 1}: YAML aliases (*{event.anchor}) are not allowed")
        return super().compose_node(parent, index)


def safe_yaml(text: str) -> Any:
    """Parse YAML data: plain tags only (safe_load), no aliases, bounded nesting."""
    try:
        return yaml.load(text, Loader=_NoAliasLoader)  # noqa: S506  (a SafeLoader subclass)
    except RecursionError:
        raise yaml.YAMLError("nested too deeply") from None


def read_yaml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise ConfigError(f"config file {path}: cannot read it ({exc.strerror or exc})") from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(f"config file {path} is {len(raw):,} bytes; a config is at most {MAX_CONFIG_BYTES:,}")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = ""
    if not text and raw or "\x00" in text:
        raise ConfigError(f"config file {path} is not a UTF-8 text file (binary content)")
    try:
        data = safe_yaml(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {str(exc).strip().splitlines()[0]}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping at top level, got {type(data).__name__}")
    return data


def load_config(
    path: str | Path | None = None,
    overrides: list[str] | None = None,
    values: dict[str, Any] | None = None,
) -> RunConfig:
    """Build a validated RunConfig from a YAML file, dotted overrides and a plain dict.

    ``values`` (nested dict) is applied after the file, then ``overrides`` ("a.b=1") in order.
    """
    raw: dict[str, Any] = read_yaml(path) if path is not None else {}
    if values:
        raw = deep_merge(raw, values)
    for text in overrides or []:
        keys, value = parse_override(text)
        set_dotted(raw, keys, value)
    return validate(raw)


# A preset's suggested scenario: taken as a whole, or not at all once the user picks the task or
# the population size (a scenario tuned for 100 digits clients must not turn a 10^5-client
# synthetic run into a pooled split of every client).
SCENARIO_KEYS = (("task",), ("rounds",), ("data", "num_clients"), ("data", "partition"), ("client",), ("eval",))
SCENARIO_TRIGGERS = (("task", "name"), ("data", "num_clients"))


def preset_defaults(defaults: dict[str, Any], raw: dict[str, Any]) -> dict[str, Any]:
    """A preset's config defaults, without its scenario if ``raw`` sets the task or the population size."""
    if not any(isinstance(raw.get(section), dict) and key in raw[section] for section, key in SCENARIO_TRIGGERS):
        return defaults
    kept = copy.deepcopy(defaults)
    for path in SCENARIO_KEYS:
        node = kept
        for part in path[:-1]:
            node = node.get(part) if isinstance(node.get(part), dict) else {}
        node.pop(path[-1], None)
    algorithm = (defaults.get("client") or {}).get("algorithm")
    if algorithm is not None:  # algos: a preset's client algorithm is its other half, not part of the scenario
        kept.setdefault("client", {})["algorithm"] = algorithm
    return kept


def validate(raw: dict[str, Any]) -> RunConfig:
    from fedsim import plugins, registries  # noqa: PLC0415

    plugin_names = raw.get("plugins") or []
    if not isinstance(plugin_names, list):
        raise ConfigError(f"config error: plugins: expected a list of module names, got {plugin_names!r}")
    try:
        plugins.load_entry_points_once()
        plugins.import_plugins(plugin_names)
    except plugins.PluginError as exc:
        raise ConfigError(str(exc)) from None
    strategy = raw.get("strategy", {})
    name = strategy.get("name", "fedavg") if isinstance(strategy, dict) else "fedavg"
    if isinstance(name, str) and name in registries.get("strategy"):
        raw = deep_merge(preset_defaults(registries.strategy_config_defaults(name), raw), raw)
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc)) from None


def format_validation_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    loc = ".".join(str(part) for part in err["loc"] if not str(part).startswith("function-"))
    msg = err["msg"]
    for prefix in ("Value error, ", "Assertion failed, "):
        if msg.startswith(prefix):
            msg = msg[len(prefix) :]
    if err["type"] == "extra_forbidden":
        msg = "unknown key"
        parent = _model_at(err["loc"][:-1])
        if parent is not None:
            msg += f"; valid keys: {', '.join(sorted(parent.model_fields))}"
    elif "input" in err and not isinstance(err["input"], dict) and err["type"] != "value_error":
        msg += f" (got {err['input']!r})"
    extra = f" (and {len(exc.errors()) - 1} more)" if len(exc.errors()) > 1 else ""
    where = f"{loc}: " if loc else ""
    return f"config error: {where}{msg}{extra}"


def _model_at(loc: tuple[Any, ...]) -> type[BaseModel] | None:
    model: type[BaseModel] = RunConfig
    for part in loc:
        field = model.model_fields.get(str(part))
        if field is None:
            return None
        # a section or an optional one (``AdversarialEvalConfig | None``)
        found = [t for t in (field.annotation, *get_args(field.annotation)) if isinstance(t, type)]
        sections = [t for t in found if issubclass(t, BaseModel)]
        if not sections:
            return None
        model = sections[0]
    return model
