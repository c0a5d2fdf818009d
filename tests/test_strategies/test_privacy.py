"""Differential privacy's pieces: clipping, Gaussian noise, adaptive clipping, the fixed denominator,
the accountant and the noise calibration (clients/transforms, strategies/privacy.py, fedsim/privacy.py)."""

from __future__ import annotations

import math

import dp_accounting
import numpy as np
import pytest
import torch
from dp_accounting import pld, rdp

from clients.transforms import ClientContext, apply_client_transforms, build_client_transforms
from clients.transforms.clip import layer_budgets
from fedsim.config import load_config
from fedsim.params import ParamLayout
from fedsim.privacy import Sampling, calibrate_noise, epsilon_for
from fedsim.types import ClientJob, ClientResult, PopulationInfo
from strategies import STRATEGIES, build_strategy
from strategies.privacy import AdaptiveClip, ExpectedCohort, GaussianNoise
from strategies.transforms import ServerContext

# three layers of very different sizes (10, 12, 50 = 72 coordinates)
LAYOUT = ParamLayout(names=("a", "b", "c"), shapes=((10,), (3, 4), (50,)), is_buffer=(False, False, False))


def ctx_for(k: int, configs: list[dict] | None = None) -> ClientContext:
    return ClientContext(
        layout=LAYOUT,
        seeds=list(range(100, 100 + k)),
        client_ids=list(range(k)),
        versions=[0] * k,
        configs=configs if configs is not None else [{}] * k,
    )


def random_stack(k: int = 40, seed: int = 0) -> torch.Tensor:
    """Rows with norms from 1e-4 to 1e4 (and one zero row)."""
    g = torch.Generator().manual_seed(seed)
    rows = torch.randn(k, LAYOUT.numel, generator=g)
    rows = rows / torch.linalg.vector_norm(rows, dim=1, keepdim=True)
    scales = torch.logspace(-4, 4, k)
    scales[0] = 0.0
    return rows * scales[:, None]


def layer_norms(updates: torch.Tensor) -> torch.Tensor:
    return torch.stack([torch.linalg.vector_norm(updates[:, a:b], dim=1) for a, b in LAYOUT.offsets()], dim=1)


def transform(name: str, **options):
    (t,) = build_client_transforms([(name, options)])
    return t


# ---------------------------------------------------------------- presets without privacy


@pytest.mark.parametrize("name", [n for n in STRATEGIES.names() if not n.startswith("dp-")])
def test_every_non_dp_preset_builds_with_an_empty_pipeline(name):
    strategy = build_strategy(load_config(values={"strategy": {"name": name}}).strategy)
    assert strategy.client_transforms == () and strategy.server_transforms == ()
    state = strategy.init(torch.zeros(3), PopulationInfo(3, np.array([1, 2, 3]), np.full(3, 0.5)))
    assert state.transforms == ()
    assert strategy.configure(state, 0, 0.0) == {}


# ---------------------------------------------------------------- clipping


@pytest.mark.parametrize("clip", [1e-3, 1.0, 50.0])
def test_clip_global_never_exceeds_c_and_leaves_small_updates_alone(clip):
    updates = random_stack()
    norms = torch.linalg.vector_norm(updates, dim=1)
    out, metrics = transform("clip_global", clip=clip).apply(updates, ctx_for(len(updates)))
    out_norms = torch.linalg.vector_norm(out, dim=1)
    assert (out_norms <= clip * (1 + 1e-6)).all()
    small = norms <= clip
    assert torch.equal(out[small], updates[small])  # scale exactly 1
    torch.testing.assert_close(out_norms[~small], torch.full_like(out_norms[~small], clip))  # clipped onto C
    cos = torch.nn.functional.cosine_similarity(out[~small], updates[~small], dim=1)
    torch.testing.assert_close(cos, torch.ones_like(cos))  # direction kept
    assert torch.equal(metrics["update_norm"], norms)
    assert metrics["dp_unclipped"].tolist() == small.float().tolist()


@pytest.mark.parametrize("budget", ["uniform", "dimension"])
def test_layer_budgets_compose_to_the_global_clip(budget):
    for clip in (0.1, 1.0, 7.0):
        budgets = layer_budgets(LAYOUT, clip, budget)
        assert len(budgets) == 3
        assert math.fsum(c * c for c in budgets) == pytest.approx(clip**2, rel=1e-12)
    if budget == "dimension":  # proportional to sqrt(size)
        assert layer_budgets(LAYOUT, 1.0, budget) == pytest.approx([math.sqrt(n / 72) for n in (10, 12, 50)])
    else:
        assert layer_budgets(LAYOUT, 1.0, budget) == pytest.approx([1 / math.sqrt(3)] * 3)


@pytest.mark.parametrize("budget", ["uniform", "dimension"])
def test_clip_per_layer_bounds_every_layer_and_the_total(budget):
    clip = 2.0
    budgets = torch.tensor(layer_budgets(LAYOUT, clip, budget))
    updates = random_stack(seed=1)
    out, metrics = transform("clip_per_layer", clip=clip, layer_budget=budget).apply(updates, ctx_for(len(updates)))
    norms_in, norms_out = layer_norms(updates), layer_norms(out)
    assert (norms_out <= budgets * (1 + 1e-6)).all()
    assert (torch.linalg.vector_norm(out, dim=1) <= clip * (1 + 1e-6)).all()
    under = norms_in <= budgets  # a layer within its budget is left as it is
    assert torch.equal(norms_out[under], norms_in[under])
    torch.testing.assert_close(norms_out[~under], budgets.expand_as(norms_out)[~under])
    total = torch.linalg.vector_norm(updates, dim=1)
    assert torch.equal(metrics["update_norm"], total)
    assert metrics["dp_unclipped"].tolist() == (total <= clip).float().tolist()


@pytest.mark.parametrize("budget", ["uniform", "dimension"])
def test_clip_per_layer_normalized_sets_every_layer_to_its_budget_at_or_over_c(budget):
    clip = 2.0
    budgets = torch.tensor(layer_budgets(LAYOUT, clip, budget))
    updates = random_stack(seed=2)[1:]  # no zero row: a zero layer has no direction to rescale
    out, metrics = transform("clip_per_layer_normalized", clip=clip, layer_budget=budget).apply(
        updates, ctx_for(len(updates))
    )
    total = torch.linalg.vector_norm(updates, dim=1)
    over = total >= clip
    assert over.any() and (~over).any()
    torch.testing.assert_close(layer_norms(out)[over], budgets.expand(int(over.sum()), 3), rtol=1e-5, atol=0)
    torch.testing.assert_close(torch.linalg.vector_norm(out[over], dim=1), torch.full((int(over.sum()),), clip))
    assert torch.equal(out[~over], updates[~over])  # below C: unchanged
    assert (torch.linalg.vector_norm(out, dim=1) <= clip * (1 + 1e-6)).all()
    assert metrics["dp_unclipped"].tolist() == (total <= clip).float().tolist()


@pytest.mark.parametrize("name", ["clip_global", "clip_per_layer", "clip_per_layer_normalized"])
def test_a_jobs_dp_clip_norm_overrides_the_configured_clip(name):
    updates = random_stack(k=6, seed=3)[1:] * 0 + torch.ones(LAYOUT.numel)  # every row has norm sqrt(72)
    configs = [{}, {"dp_clip_norm": 0.5}, {"dp_clip_norm": 100.0}, {"dp_clip_norm": 2.0}, {}]
    out, metrics = transform(name, clip=1.0).apply(updates, ctx_for(5, configs))
    out_norms = torch.linalg.vector_norm(out, dim=1)
    expected = torch.tensor([1.0, 0.5, math.sqrt(72), 2.0, 1.0])
    torch.testing.assert_close(out_norms, expected)
    assert metrics["dp_unclipped"].tolist() == [0.0, 0.0, 1.0, 0.0, 0.0]


def test_apply_client_transforms_writes_each_rows_metrics_and_skips_failed_results():
    delta = torch.ones(LAYOUT.numel)
    results = [ClientResult(k, 0, delta * (k + 1), 1, 1) for k in range(3)]
    results[1].error = "boom"
    jobs = [ClientJob(job_id=k, client_id=k, version=0, params=torch.zeros(1), config={}, seed=k) for k in range(3)]
    apply_client_transforms(build_client_transforms([("clip_global", {"clip": 1.0})]), results, jobs, LAYOUT)
    assert results[0].metrics["update_norm"] == pytest.approx(math.sqrt(72))
    assert results[2].metrics["update_norm"] == pytest.approx(3 * math.sqrt(72))
    assert "update_norm" not in results[1].metrics and torch.equal(results[1].delta, delta * 2)
    for k in (0, 2):
        assert results[k].metrics["dp_unclipped"] == 0.0
        assert float(torch.linalg.vector_norm(results[k].delta)) == pytest.approx(1.0)


def test_bad_clip_options_name_the_field():
    with pytest.raises(ValueError, match="privacy.clip must be a positive number"):
        transform("clip_global", clip=0.0)
    with pytest.raises(ValueError, match="privacy.layer_budget 'sqrt' is not one of uniform, dimension"):
        transform("clip_per_layer", clip=1.0, layer_budget="sqrt")


# ---------------------------------------------------------------- local DP noise


def test_local_noise_comes_from_each_jobs_seed_with_std_z_times_c():
    d = 20_000
    layout = ParamLayout(("w",), ((d,),), (False,))
    local = transform("local_gaussian", clip=0.5, noise_multiplier=2.0)
    ctx = ClientContext(
        layout, seeds=[7, 8, 7], client_ids=[0, 1, 2], versions=[0, 0, 0], configs=[{}, {}, {"dp_clip_norm": 0.25}]
    )
    out, _ = local.apply(torch.zeros(3, d), ctx)
    assert out[0].std().item() == pytest.approx(1.0, rel=0.03)
    assert out[2].std().item() == pytest.approx(0.5, rel=0.03)  # the job's clip norm sets the scale
    torch.testing.assert_close(out[2], out[0] / 2)  # same seed, same draw
    assert not torch.equal(out[0], out[1])
    alone, _ = local.apply(torch.zeros(1, d), ClientContext(layout, [8], [1], [0], [{}]))
    assert torch.equal(alone[0], out[1])  # a row's noise does not depend on the rows beside it


# ---------------------------------------------------------------- central Gaussian noise


@pytest.mark.parametrize("z, clip, cohort", [(1.0, 1.0, 50.0), (0.7, 0.1, 3.0), (3.0, 2.0, 1000.0)])
def test_gaussian_noise_has_std_z_c_over_d(z, clip, cohort):
    d = 10_000
    noise = GaussianNoise(z, clip, cohort, seed=11)
    expected = z * clip / cohort
    for version in range(4):
        out, state, metrics = noise.apply(torch.zeros(d), None, ServerContext([], version))
        assert out.std().item() == pytest.approx(expected, rel=0.03)
        assert abs(out.mean().item()) < 4 * expected / math.sqrt(d)
        assert metrics["noise_std"] == pytest.approx(expected) and state is None


def test_gaussian_noise_is_reproducible_per_seed_and_version_and_follows_the_rounds_clip():
    noise = GaussianNoise(1.0, 1.0, 10.0, seed=5)

    def draw(version, seed=5, info=None):
        n = noise if seed == 5 else GaussianNoise(1.0, 1.0, 10.0, seed=seed)
        return n.apply(torch.zeros(1000), None, ServerContext([], version, dict(info or {})))[0]

    assert torch.equal(draw(3), draw(3))
    assert not torch.equal(draw(3), draw(4))
    assert not torch.equal(draw(3), draw(3, seed=6))
    torch.testing.assert_close(draw(3, info={"clip_norm": 4.0}), 4 * draw(3))  # adaptive clipping's C of the round
    zero = GaussianNoise(0.0, 1.0, 10.0)
    aggregate = torch.randn(5)
    assert zero.apply(aggregate, None, ServerContext([], 0))[0] is aggregate


# ---------------------------------------------------------------- adaptive clipping


def _drive_adaptive(norms: np.ndarray, clip: float, quantile: float, rounds: int) -> tuple[list[float], AdaptiveClip]:
    adaptive = AdaptiveClip(clip, quantile, lr=0.2, count_noise=1e-3, cohort=float(len(norms)), seed=0)
    state = adaptive.init(torch.zeros(2), PopulationInfo(len(norms), np.ones(len(norms), dtype=np.int64)))
    clips = []
    for version in range(rounds):
        current = adaptive.client_config(state)["dp_clip_norm"]
        clips.append(current)
        results = [
            ClientResult(i, version, torch.zeros(2), 1, 1, metrics={"dp_unclipped": float(n <= current)})
            for i, n in enumerate(norms)
        ]
        aggregate, state, info = adaptive.apply(torch.ones(2), state, ServerContext(results, version))
        assert torch.equal(aggregate, torch.ones(2))  # adaptive clipping does not touch the model
        assert info["clip_norm"] == current  # the round's noise is calibrated to the clip that clipped it
        assert info["unclipped_fraction"] == pytest.approx(np.mean(norms <= current), abs=1e-4)
    clips.append(state["clip"])
    return clips, adaptive


@pytest.mark.parametrize("quantile", [0.5, 0.8])
def test_adaptive_clip_converges_to_the_target_quantile_of_update_norms(quantile):
    norms = np.random.default_rng(0).lognormal(mean=0.0, sigma=0.7, size=200)
    target = float(np.quantile(norms, quantile))
    clips, _ = _drive_adaptive(norms, clip=0.01, quantile=quantile, rounds=300)
    assert clips[1] > clips[0]  # from far below, the clip rises
    assert all(b >= a for a, b in zip(clips[:20], clips[1:21]))
    assert clips[-1] == pytest.approx(target, rel=0.1)
    assert np.mean(norms <= clips[-1]) == pytest.approx(quantile, abs=0.05)
    high, _ = _drive_adaptive(norms, clip=100.0, quantile=quantile, rounds=300)  # from far above, it falls
    assert high[1] < high[0] and high[-1] == pytest.approx(target, rel=0.1)


def test_adaptive_clip_counts_one_update_per_client():
    adaptive = AdaptiveClip(1.0, 0.5, lr=0.2, count_noise=1e-9, cohort=2.0)
    results = [ClientResult(c, 0, torch.zeros(1), 1, 1, metrics={"dp_unclipped": 1.0}) for c in (4, 4, 4, 5)]
    _, state, info = adaptive.apply(torch.zeros(1), {"clip": 1.0}, ServerContext(results, 0))
    assert info["unclipped_fraction"] == pytest.approx(1.0)  # (1 + 1) / 2, not 4 / 2
    assert state["clip"] == pytest.approx(math.exp(-0.2 * 0.5))


# ---------------------------------------------------------------- fixed denominator


def test_expected_cohort_divides_by_d_and_leaves_out_a_second_update_of_the_same_client():
    weighting = ExpectedCohort(cohort=4.0)
    state = weighting.init(torch.zeros(2), PopulationInfo(3, np.array([1, 1, 1])))
    results = [
        ClientResult(7, 0, torch.tensor([1.0, 0.0]), 1, 1),
        ClientResult(2, 1, torch.tensor([0.0, 2.0]), 1, 1),
        ClientResult(7, 1, torch.tensor([100.0, 100.0]), 1, 1),  # client 7 again in the same buffer
    ]
    u, state = weighting.aggregate(state, results, 1)
    assert torch.equal(u, torch.tensor([0.25, 0.5]))
    assert state["duplicates"] == 1
    u, state = weighting.aggregate(state, results[:2], 2)
    assert state["duplicates"] == 1
    empty, _ = weighting.aggregate(state, [], 3)
    assert torch.equal(empty, torch.zeros(2))  # an empty release is still a release


def test_expected_cohort_without_a_plan_uses_the_expected_participants():
    weighting = ExpectedCohort()
    state = weighting.init(
        torch.zeros(1), PopulationInfo(4, np.ones(4, dtype=np.int64), np.array([0.5, 0.25, 1.0, 0.25]))
    )
    assert state["cohort"] == 2.0
    with pytest.raises(ValueError, match="expected_cohort' needs participation probabilities"):
        weighting.init(torch.zeros(1), PopulationInfo(4, np.ones(4, dtype=np.int64)))
    with pytest.raises(ValueError, match="expected cohort size must be positive"):
        ExpectedCohort(0.0)


@pytest.mark.parametrize("q, n", [(0.1, 30), (0.15, 20), (0.05, 1000), (0.07, 50)])
def test_expected_cohort_of_a_poisson_population_is_exactly_the_plans_qn(q, n):
    """Both ways of getting D give the same float, so DP with z = 0 equals the non-DP run bit for bit."""
    state = ExpectedCohort().init(torch.zeros(1), PopulationInfo(n, np.ones(n, dtype=np.int64), np.full(n, q)))
    assert state["cohort"] == Sampling("poisson", q, n, 0, q * n).cohort


# ---------------------------------------------------------------- accountant and calibration


def _library_poisson_epsilon(q, z, steps, delta):
    accountant = pld.PLDAccountant()
    accountant.compose(
        dp_accounting.SelfComposedDpEvent(
            dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(z)), steps
        )
    )
    return accountant.get_epsilon(delta)


def test_epsilon_for_is_the_librarys_epsilon():
    q, z, steps, delta = 0.05, 1.1, 30, 1e-5
    poisson = Sampling("poisson", q, 1000, 0, q * 1000)
    assert epsilon_for(poisson, z, steps, delta, "pld") == pytest.approx(
        _library_poisson_epsilon(q, z, steps, delta), rel=1e-12
    )
    fixed = Sampling("fixed_size", 10 / 200, 200, 10, 10.0)
    accountant = rdp.RdpAccountant(neighboring_relation=dp_accounting.NeighboringRelation.REPLACE_ONE)
    accountant.compose(
        dp_accounting.SelfComposedDpEvent(
            dp_accounting.SampledWithoutReplacementDpEvent(200, 10, dp_accounting.GaussianDpEvent(z / 2)), steps
        )
    )
    assert epsilon_for(fixed, z, steps, delta, "pld") == pytest.approx(accountant.get_epsilon(delta), rel=1e-12)
    none = Sampling("none", 1.0, 1000, 0, 10.0)
    accountant = rdp.RdpAccountant()
    accountant.compose(dp_accounting.SelfComposedDpEvent(dp_accounting.GaussianDpEvent(z), steps))
    assert epsilon_for(none, z, steps, delta, "rdp") == pytest.approx(accountant.get_epsilon(delta), rel=1e-12)
    assert epsilon_for(poisson, 0.0, steps, delta, "pld") == math.inf
    assert epsilon_for(poisson, z, 0, delta, "pld") == 0.0


@pytest.mark.parametrize(
    "kind, accountant", [("poisson", "pld"), ("poisson", "rdp"), ("fixed_size", "rdp"), ("none", "rdp")]
)
def test_more_noise_spends_less_epsilon_and_more_releases_more(kind, accountant):
    sampling = Sampling(kind, 0.05, 400, 20 if kind == "fixed_size" else 0, 20.0)
    epsilons = [epsilon_for(sampling, z, 20, 1e-4, accountant) for z in (1.0, 1.5, 2.0, 4.0)]
    assert all(b < a for a, b in zip(epsilons, epsilons[1:])), epsilons
    steps = [epsilon_for(sampling, 1.5, t, 1e-4, accountant) for t in (1, 10, 50)]
    assert all(b > a for a, b in zip(steps, steps[1:])), steps


@pytest.mark.parametrize(
    "kind, accountant, targets",
    [
        # PLD: the search used to start at z = 1e-3, where dp-accounting's PLD allocates tens of GiB
        ("poisson", "pld", (1.0,)),  # (seconds per target)
        ("poisson", "rdp", (0.5, 8.0)),
        ("fixed_size", "rdp", (2.0,)),
        ("none", "rdp", (0.5, 2.0, 8.0)),
    ],
)
def test_calibrated_noise_spends_at_most_the_target_epsilon_and_close_to_it(kind, accountant, targets):
    sampling = Sampling(kind, 0.05, 400, 20 if kind == "fixed_size" else 0, 20.0)
    steps = 5 if accountant == "pld" else 25
    for target in targets:
        z = calibrate_noise(sampling, target, 1e-4, steps, accountant)
        spent = epsilon_for(sampling, z, steps, 1e-4, accountant)
        assert 0.97 * target <= spent <= target, (target, z, spent)
        assert epsilon_for(sampling, z * 0.97, steps, 1e-4, accountant) > target  # no much smaller z would do


def test_an_unreachable_target_epsilon_is_one_line_naming_the_field():
    from fedsim.config import ConfigError  # noqa: PLC0415

    with pytest.raises(ConfigError, match="privacy.target_epsilon: 1e-06 is not reached") as info:
        calibrate_noise(Sampling("none", 1.0, 100, 0, 10.0), 1e-6, 1e-4, 1000, "pld")
    assert "\n" not in str(info.value)
