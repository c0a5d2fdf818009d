"""fedsim's flat layout <-> Flower ArrayRecords: lossless, integer buffers included."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fedsim.flower import ArrayCodec, record_to_state, state_to_record
from fedsim.params import ParamLayout


def model_with_buffers() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3), nn.ReLU(), nn.Linear(3, 2))
    model.train()
    model(torch.randn(8, 4))  # moves running stats and num_batches_tracked off their initial values
    return model


def test_round_trip_is_bit_exact_and_keeps_integer_buffers():
    model = model_with_buffers()
    codec = ArrayCodec(model)
    flat = ParamLayout.of(model).flatten(model)
    flat = flat + torch.randn_like(flat) * 1e-3  # arbitrary float32 values
    buffers = {"1.num_batches_tracked": torch.tensor(7)}
    record = codec.encode(flat, buffers)
    assert list(record) == list(model.state_dict())  # same names, same order as state_dict
    back, back_buffers = codec.decode(record)
    assert torch.equal(back, flat)
    assert back_buffers["1.num_batches_tracked"].dtype == torch.int64
    assert int(back_buffers["1.num_batches_tracked"]) == 7 and back_buffers["1.num_batches_tracked"].shape == ()


def test_record_loads_into_a_stock_torch_model():
    model = model_with_buffers()
    codec = ArrayCodec(model)
    record = codec.encode(ParamLayout.of(model).flatten(model))  # default: the model's own integer buffers
    fresh = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3), nn.ReLU(), nn.Linear(3, 2))
    fresh.load_state_dict(record.to_torch_state_dict())
    for (name, a), b in zip(model.state_dict().items(), fresh.state_dict().values()):
        assert torch.equal(a, b), name


def test_mismatched_records_fail_clearly():
    model = model_with_buffers()
    codec = ArrayCodec(model)
    record = codec.encode(ParamLayout.of(model).flatten(model))
    del record["3.bias"]
    with pytest.raises(ValueError, match="missing"):
        codec.decode(record)
    other = ArrayCodec(nn.Linear(4, 5))
    with pytest.raises(ValueError, match="shape"):
        other.encode(torch.zeros(3))


@pytest.mark.parametrize(
    "state",
    [
        torch.arange(6, dtype=torch.float64).reshape(2, 3),
        {"c": torch.randn(5), "count": torch.tensor(3), "mask": torch.tensor([True, False])},
    ],
)
def test_client_state_round_trips(state):
    back = record_to_state(state_to_record(state))
    if isinstance(state, torch.Tensor):
        assert torch.equal(back, state) and back.dtype == state.dtype
    else:
        assert set(back) == set(state)
        for key in state:
            assert (
                torch.equal(back[key], state[key])
                and back[key].dtype == state[key].dtype
                and back[key].shape == state[key].shape
            )


def test_unsupported_client_state_is_named():
    with pytest.raises(TypeError, match="tensor or a dict of tensors"):
        state_to_record([1, 2])
