"""Compressors, error feedback, per-client transform state, bytes on the wire and links on the clock."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from clients.transforms import (
    TRANSFORM_STATE_PREFIX,
    ClientContext,
    algorithm_state,
    apply_client_transforms,
    build_client_transforms,
)
from clients.transforms.compress import (
    COMPRESSORS,
    QSGD,
    LGreCo,
    PowerSGD,
    Sign,
    TopK,
    choose_levels,
    powersgd_rows,
    topk_count,
)
from clients.transforms.link_noise import LinkNoise
from fedsim.communication import Link, Payload, load_bandwidth_trace
from fedsim.config import ConfigError, load_config
from fedsim.params import ParamLayout
from fedsim.population.base import Population
from fedsim.types import ClientJob, ClientResult


def _layout() -> ParamLayout:
    return ParamLayout.of(nn.Sequential(nn.Linear(20, 30), nn.ReLU(), nn.Linear(30, 5)))  # 600, 30, 150, 5


def _ctx(k: int, states=None, seeds=None) -> ClientContext:
    seeds = list(range(1, k + 1)) if seeds is None else seeds
    return ClientContext(_layout(), seeds, list(range(k)), [0] * k, [{}] * k, states)


def _x(k: int = 3, seed: int = 0) -> torch.Tensor:
    return torch.randn(k, _layout().numel, generator=torch.Generator().manual_seed(seed))


def test_identity_settings_reproduce_the_input():
    x = _x()
    assert torch.equal(TopK(ratio=1.0).apply(x, _ctx(3))[0], x)
    assert torch.allclose(QSGD(levels=2**20).apply(x, _ctx(3))[0], x, atol=1e-4)
    m = x[:, :600].reshape(3, 30, 20)  # PowerSGD at full rank is exact
    approx, _ = powersgd_rows(m, torch.randn(3, 20, 20))
    assert torch.allclose(approx, m, atol=1e-4)


def test_topk_keeps_exactly_k_entries_per_tensor():
    x = _x()
    out = TopK(ratio=0.05).apply(x, _ctx(3))[0]
    for a, b in _layout().offsets():
        k = topk_count(b - a, 0.05)
        assert ((out[:, a:b] != 0).sum(dim=1) == k).all()
        kept = out[:, a:b].abs().min(dim=1).values  # noqa: F841  (the largest ones)
        assert (x[:, a:b].abs().topk(k, dim=1).values.min(dim=1).values <= out[:, a:b].abs().max(dim=1).values).all()
    assert topk_count(1234, 0.01) == 13  # FLSim's rounding


def test_qsgd_is_unbiased():
    layout = ParamLayout(("w",), ((40,),), (False,))
    v = torch.randn(40, generator=torch.Generator().manual_seed(3))
    s, n = 2, 4000
    ctx = ClientContext(layout, list(range(n)), [0] * n, [0] * n, [{}] * n)
    mean = QSGD(levels=s).apply(v.expand(n, 40).contiguous(), ctx)[0].mean(dim=0)
    p = s * v.abs() / v.norm() - torch.floor(s * v.abs() / v.norm())
    variance = float(((v.norm() / s) ** 2 * p * (1 - p)).sum()) / n  # E||mean - v||^2, exactly
    assert float((mean - v).norm() ** 2) < 4 * variance
    assert float((mean - v).norm() ** 2) < 1e-3 * float(v.norm() ** 2)


@pytest.mark.parametrize(
    "name, options",
    [
        ("topk", {"ratio": 0.1}),
        ("sign", {}),
        ("qsgd", {"levels": 4}),
        ("powersgd", {"rank": 1}),
        ("lgreco", {"rank": 2}),
    ],
)
def test_error_feedback_keeps_what_was_not_sent(name, options):
    compressor = COMPRESSORS.get(name)(error_feedback=True, **options)
    x, old = _x(2, 1), _x(2, 2)
    states = [{"residual": old[0]}, {"residual": old[1]}]
    sent, metrics, new = compressor.apply(x, _ctx(2, states))
    for r in range(2):
        assert torch.allclose(sent[r] + new[r]["residual"], x[r] + old[r], atol=1e-5)


def test_byte_counts_by_hand():
    layout = _layout()  # tensors (30, 20), (30,), (5, 30), (5,)
    assert TopK(ratio=0.1).upload_bytes(layout) == 8 * 60 + 8 * 3 + 8 * 15 + 8 * 1
    assert TopK(ratio=1.0).upload_bytes(layout) == 4 * layout.numel  # dense is cheaper than indices
    assert QSGD(levels=4).upload_bytes(layout) == sum(4 + math.ceil(n * 4 / 8) for n in (600, 30, 150, 5))  # 1 + 3 bits
    assert Sign().upload_bytes(layout) == sum(4 * math.ceil(n / 32) + 4 for n in (600, 30, 150, 5))
    # rank 1: (30 + 20) and (5 + 30) floats; biases dense
    assert PowerSGD(rank=1).upload_bytes(layout) == 4 * 50 + 4 * 30 + 4 * 35 + 4 * 5
    # rank 3 on (5, 30): 2 * 3 * 35 >= 150, so that matrix goes dense
    assert PowerSGD(rank=3).upload_bytes(layout) == 4 * 3 * 50 + 4 * 30 + 4 * 150 + 4 * 5
    x = _x()
    for c in (TopK(ratio=0.1), QSGD(levels=4), Sign(), PowerSGD(rank=1)):
        assert c.apply(x, _ctx(3))[1]["bytes_up"].tolist() == [c.upload_bytes(layout)] * 3


def test_lgreco_levels_are_stored_and_sized_at_dispatch():
    c = LGreCo(rank=2, error_budget=1.0)
    x = _x(2)
    out, metrics, states = c.apply(x, _ctx(2))
    levels = [s["levels"].tolist() for s in states]
    for s in states:
        assert c.upload_bytes(_layout(), s) == sum(
            c.block_bytes(shape, lv) for shape, lv in zip(_layout().shapes, s["levels"].tolist())
        )
    assert all(len(lv) == 4 for lv in levels)


def test_lgreco_dp_at_budget_one_never_exceeds_the_default():
    sizes = [[10, 20, 30], [10, 20, 30]]
    errors = [[3.0, 2.0, 1.0], [3.0, 2.0, 1.0]]
    picked = choose_levels(sizes, errors, [1, 1], alpha=1.0)
    assert sum(errors[layer][c] for layer, c in enumerate(picked)) <= 4.0 + 1e-9
    assert sum(sizes[layer][c] for layer, c in enumerate(picked)) <= 40
    # unequal layers: trading error between them saves bytes at the same total error
    assert choose_levels([[10, 20, 30], [10, 100, 200]], [[3.0, 2.0, 1.0], [3.0, 2.0, 1.0]], [1, 1], 1.0) == [2, 0]
    # a larger budget picks the cheapest levels
    assert choose_levels(sizes, errors, [1, 1], alpha=2.0) == [0, 0]


def test_transform_state_lives_beside_the_algorithms_and_is_hidden_from_it():
    layout = _layout()
    transforms = build_client_transforms([("compress", {"compressor": "topk", "ratio": 0.1, "error_feedback": True})])
    job = ClientJob(0, 7, 0, torch.zeros(layout.numel), {}, 11, state={"c_i": torch.ones(2)})
    result = ClientResult(7, 0, _x(1)[0], 5, 1, state={"c_i": torch.full((2,), 2.0)})
    apply_client_transforms(transforms, [result], [job], layout)
    assert set(result.state) == {"c_i", f"{TRANSFORM_STATE_PREFIX}0.topk/residual"}
    assert torch.equal(result.state["c_i"], torch.full((2,), 2.0))
    assert set(algorithm_state(result.state)) == {"c_i"}
    # a stateless algorithm: the residual alone is stored; the next job hands it back
    job2 = ClientJob(
        1,
        7,
        1,
        torch.zeros(layout.numel),
        {},
        12,
        state={"k": torch.zeros(1)} | {k: v for k, v in result.state.items() if k.startswith(TRANSFORM_STATE_PREFIX)},
    )
    before = job2.state[f"{TRANSFORM_STATE_PREFIX}0.topk/residual"]
    delta = _x(1, 5)[0]
    result2 = ClientResult(7, 1, delta.clone(), 5, 1)
    apply_client_transforms(transforms, [result2], [job2], layout)
    assert torch.allclose(
        result2.delta + result2.state[f"{TRANSFORM_STATE_PREFIX}0.topk/residual"], delta + before, atol=1e-5
    )
    assert "k" in result2.state  # the algorithm returned no state: the job's is kept


def test_link_time_is_bytes_over_bandwidth_plus_latency():
    link = Link(np.array([1e6, 4e6]), asymmetry=2.0, latency=0.1)
    ids = np.array([0, 1])
    seconds = link.seconds(ids, np.array([8e6, 8e6]), np.array([4e6, 4e6]), 0.0, np.zeros(2))
    assert np.allclose(seconds, [4e6 / 2e6 + 0.1 + 8e6 / 1e6 + 0.1, 4e6 / 8e6 + 0.1 + 8e6 / 4e6 + 0.1])


def test_a_faster_link_arrives_first_and_compression_shortens_the_job():
    class Fixed:
        def step_time(self, ids):
            return np.full(len(ids), 0.01)

    class All:
        probabilities = None
        time_varying = False

    pop = Population(All(), Fixed(), 0.0, np.array([10, 10]), link=Link(np.array([1e6, 1e7])))
    d = pop.timing(
        np.array([0, 1]),
        np.array([5, 5]),
        np.zeros(2, dtype=np.int64),
        up_bits=np.array([8e5, 8e5]),
        down_bits=np.array([8e5, 8e5]),
    ).durations
    assert d[1] < d[0]
    small = pop.timing(
        np.array([0]), np.array([5]), np.zeros(1, dtype=np.int64), up_bits=np.array([8e3]), down_bits=np.array([8e5])
    ).durations
    assert small[0] < d[0] and math.isclose(d[0] - small[0], (8e5 - 8e3) / 1e6)


def test_bandwidth_trace_is_piecewise_constant(tmp_path):
    path = tmp_path / "bw.csv"
    path.write_text("time,mbps\n0,1\n10,4\n")
    link = Link(None, trace=load_bandwidth_trace(path, 3))
    assert link.up_rate(np.array([0, 2]), 5.0).tolist() == [1e6, 1e6]
    assert link.up_rate(np.array([1]), 10.0).tolist() == [4e6]
    path.write_text("client,time,mbps\n0,0,1\n")
    with pytest.raises(ConfigError, match="client 1 has no rows"):
        load_bandwidth_trace(path, 2)


def test_payload_reads_the_compressors_state_at_dispatch():
    layout = _layout()
    c = LGreCo(rank=2)
    payload = Payload(layout, c, "transform/0.lgreco/")
    job = ClientJob(0, 1, 0, torch.zeros(1), {}, 0, state={"transform/0.lgreco/levels": torch.tensor([1, 2, 1, 2])})
    assert payload.up_bytes(job) == c.upload_bytes(layout, {"levels": torch.tensor([1, 2, 1, 2])})
    assert Payload(layout).up_bytes(job) == 4 * layout.numel


def test_link_noise_has_the_asked_snr():
    x = _x(1)
    out, metrics = LinkNoise(snr_db=10.0).apply(x, _ctx(1))
    noise = out - x
    snr = float(x.norm() ** 2 / noise.norm() ** 2)
    assert 8.0 < snr < 12.5


def test_config_errors_are_one_line():
    with pytest.raises(ConfigError, match="communication.compressor"):
        load_config(None, values={"communication": {"compressor": "zip"}})
    with pytest.raises(ConfigError, match="bandwidth_trace"):
        load_config(None, values={"communication": {"link": "trace"}})
