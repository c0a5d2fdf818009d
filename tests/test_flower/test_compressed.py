"""The ClientApp sends a compressor's wire arrays instead of the dense delta; the server decodes them
with the same compressor and ends at fedsim's model, having received fewer bytes."""

from __future__ import annotations

import pytest
import torch

from clients.transforms import ClientContext
from clients.transforms.compress import COMPRESSORS
from fedsim.flower import make_client_app, task_for
from fedsim.flower.strategy import KEYS
from fedsim.params import ParamLayout
from tests.test_flower.conftest import InProcessGrid
from tests.test_flower.test_strategy import config_for, fedsim_params, partition_nodes, run_flower

CASES = {
    "topk": {"compressor": "topk", "ratio": 0.05},
    "randomk": {"compressor": "randomk", "ratio": 0.05},
    "qsgd": {"compressor": "qsgd", "levels": 4},
    "sign": {"compressor": "sign", "error_feedback": True},
    "powersgd": {"compressor": "powersgd", "rank": 1},
    "lgreco": {"compressor": "lgreco", "rank": 2},
}
BIT_EXACT = ("topk", "randomk", "sign")  # QSGD and PowerSGD decode to float rounding


class RecordingGrid(InProcessGrid):
    def send_and_receive(self, messages, *, timeout=None):
        replies = super().send_and_receive(messages, timeout=timeout)
        self.replies.extend(r for r in replies if not r.has_error() and r.metadata.message_type == "train")
        return replies


def _run(communication: dict):
    config = config_for("fedavg", communication=communication)
    grid = RecordingGrid(make_client_app(task_for(config)), partition_nodes(6))
    grid.replies = []
    return config, run_flower(config, grid), grid


@pytest.mark.parametrize("case", list(CASES))
def test_compressed_arrays_decode_to_fedsims_model_and_are_smaller(case):
    config, strategy, grid = _run(CASES[case])
    expected = fedsim_params(config)
    tolerance = 1e-6 if case in BIT_EXACT else 1e-5
    torch.testing.assert_close(strategy.state.params, expected, rtol=0, atol=tolerance)
    compressed = [r.content.array_records[KEYS.DELTA_COMPRESSED].count_bytes() for r in grid.replies]
    assert compressed and not any(KEYS.DELTA in r.content.array_records for r in grid.replies)
    _, _, plain = _run({"compressor": "none"})
    dense = [r.content.array_records[KEYS.DELTA].count_bytes() for r in plain.replies]
    assert max(compressed) < min(dense), (case, max(compressed), min(dense))


def test_a_noisy_uplink_after_the_compressor_sends_the_dense_delta():
    _, _, grid = _run({"compressor": "topk", "ratio": 0.05, "uplink_snr_db": 20.0})
    assert all(KEYS.DELTA in r.content.array_records for r in grid.replies)


@pytest.mark.parametrize("case", list(CASES))
def test_wire_round_trip_on_awkward_blocks(case):
    """Exact zeros, a one-entry tensor and an all-zero tensor survive encode -> decode."""
    layout = ParamLayout(("w", "b", "z"), ((6, 5), (1,), (3, 4)), (False, False, False))
    opts = {k: v for k, v in CASES[case].items() if k != "compressor"}
    compressor = COMPRESSORS.get(CASES[case]["compressor"])(**opts)
    x = torch.randn(1, layout.numel, generator=torch.Generator().manual_seed(1))
    x[0, 3] = 0.0
    x[0, 31:] = 0.0
    ctx = ClientContext(layout, [7], [0], [0], [{}])
    out = compressor.apply(x, ctx)[0][0]
    decoded = compressor.decode(compressor.encode(out, layout, compressor.levels(layout, None)), layout)
    torch.testing.assert_close(decoded, out, rtol=0, atol=0 if case in BIT_EXACT else 1e-6)
