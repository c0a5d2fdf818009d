"""Hostile, damaged and foreign checkpoints: ``--resume`` refuses each with exit 2 and one line.

A tiny run (6 clients, 3 rounds, a checkpoint at update 2) is made once per module and
copied into each test's tmp_path, then tampered with. Hostile checkpoints carry a valid
checksum (an attacker can compute one): the decoder itself must refuse them. Each test
checks that no canary file appears and that nothing in tmp_path is created or changed.
"""

from __future__ import annotations

import hashlib
import pickle
import shutil
import tempfile
from pathlib import Path

import pytest
import torch
import yaml

import fedsim.run  # noqa: F401  (imports fedsim's modules: their classes register for checkpoints)
from fedsim.checkpoint import CHECKPOINT_NAME, CheckpointError, decode, encode, load_checkpoint, save_checkpoint
from fedsim.cli import main

BASE = [
    "--quiet",
    "--no-tensorboard",
    "--rounds",
    "3",
    "--executor",
    "serial",
    "--set",
    "data.num_clients=6",
    "--set",
    "population.clients_per_round=3",
    "--set",
    "output.checkpoint_every=2",
    "--set",
    "eval.every=1",
]


def _make_run(root: Path, name: str, *extra: str) -> Path:
    out = root / name
    assert main(["run", "--out", str(out), *BASE, *extra]) == 0
    (out / "summary.json").unlink()  # as if killed after the update-2 checkpoint
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    return {
        "fedavg": _make_run(root, "fedavg", "--strategy", "fedavg", "--seed", "3"),
        "other-seed": _make_run(root, "other-seed", "--strategy", "fedavg", "--seed", "4"),
        "same-config": _make_run(root, "same-config", "--strategy", "fedavg", "--seed", "3"),
        "fedbuff": _make_run(
            root,
            "fedbuff",
            "--strategy",
            "fedbuff",
            "--seed",
            "3",
            "--set",
            "scheduler.concurrency=3",
            "--set",
            "scheduler.buffer_size=2",
        ),
    }


@pytest.fixture
def run(runs, tmp_path):
    """A copy of the fedavg run in tmp_path, ready to resume."""
    return _copy(runs["fedavg"], tmp_path)


def _copy(source: Path, tmp_path: Path) -> Path:
    out = tmp_path / "run"
    shutil.copytree(source, out)
    return out


def _tree(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file() and p.name != ".lock"
    }


def _spill_dirs() -> set[str]:
    return {p.name for p in Path(tempfile.gettempdir()).glob("fedsim-client-state-*")}


def refused(capsys, tmp_path: Path, out: Path, *names: str) -> str:
    """Resume ``out``: exit 2, exactly one stderr line that names each of ``names``, nothing made or changed."""
    canary = tmp_path / "canary"
    before, spills = _tree(tmp_path), _spill_dirs()
    code = main(["run", "--resume", str(out), "--quiet"])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("fedsim: error: --resume:"), lines[0]
    for name in names:
        assert name in lines[0], lines[0]
    assert not canary.exists()
    assert _tree(tmp_path) == before, "the refused resume changed or created files"
    assert _spill_dirs() <= spills
    return lines[0]


def _tamper(out: Path, **entries) -> None:
    """Rewrite the checkpoint with some entries replaced, under a valid checksum."""
    state = load_checkpoint(out / CHECKPOINT_NAME)
    state.pop("format")
    state.update(entries)
    save_checkpoint(state, out / CHECKPOINT_NAME)


def _popen(canary: Path) -> dict:
    return {"__object__": "fedsim.run:subprocess.Popen", "values": [["touch", str(canary)]]}


# --------------------------------------------------------------------------- the untampered copy resumes


def test_an_untampered_copy_resumes(run, capsys):
    assert main(["run", "--resume", str(run), "--quiet"]) == 0, capsys.readouterr().err
    assert (run / "summary.json").exists()


# --------------------------------------------------------------------------- classes named in the file


def test_a_path_through_a_module_attribute_is_refused(run, tmp_path, capsys):
    _tamper(run, engine=_popen(tmp_path / "canary"))
    line = refused(capsys, tmp_path, run, str(run / CHECKPOINT_NAME), "fedsim.run:subprocess.Popen", "not registered")
    assert "engine" in line


def test_os_system_is_refused(run, tmp_path, capsys):
    _tamper(run, guard={"__object__": "fedsim.run:os.system", "values": [f"touch {tmp_path / 'canary'}"]})
    refused(capsys, tmp_path, run, CHECKPOINT_NAME, "fedsim.run:os.system")


def test_an_unregistered_fedsim_class_with_a_hostile_path_is_refused(run, tmp_path, capsys):
    evil = tmp_path / "evil-run"
    _tamper(run, scheduler={"__object__": "fedsim.metrics:RunRecorder", "attrs": {"out_dir": str(evil)}})
    refused(capsys, tmp_path, run, "fedsim.metrics:RunRecorder")
    assert not evil.exists()


def test_a_hostile_object_nested_in_a_list_is_refused(run, tmp_path, capsys):
    engine = load_checkpoint(run / CHECKPOINT_NAME)["engine"]
    for pair in engine["__dict__"]:
        if pair[0] == "history":
            pair[1].append(_popen(tmp_path / "canary"))
    _tamper(run, engine=engine)
    refused(capsys, tmp_path, run, "engine.history[", "fedsim.run:subprocess.Popen")


def test_a_registered_class_with_an_extra_field_is_refused(run, tmp_path, capsys):
    engine = decode(load_checkpoint(run / CHECKPOINT_NAME)["engine"])
    server = encode(engine["server_state"])
    server["attrs"]["evil"] = str(tmp_path / "canary")
    engine = encode(engine)
    for pair in engine["__dict__"]:
        if pair[0] == "server_state":
            pair[1] = server
    _tamper(run, engine=engine)
    refused(capsys, tmp_path, run, "strategies.base:ServerState", "evil")


def test_a_client_state_store_gets_no_spill_dir_from_the_file(run, tmp_path, capsys):
    store = {
        "__object__": "fedsim.state:ClientStateStore",
        "state": {
            "__dict__": [
                ["memory_limit", 0],
                ["states", [[0, torch.ones(4)], [1, torch.ones(4)]]],
                ["spill_dir", str(tmp_path / "canary")],
            ]
        },
    }
    _tamper(run, guard={"__dict__": [["first_failure", store]]})
    refused(capsys, tmp_path, run, "fedsim.state:ClientStateStore", "spill_dir")


def test_a_client_state_store_is_rebuilt_without_touching_disk(tmp_path):
    spills = _spill_dirs()
    state = {"memory_limit": 0, "states": [[0, torch.ones(4)], [1, torch.ones(4)]]}
    store = decode(
        {"__object__": "fedsim.state:ClientStateStore", "state": encode(state)}, spill_dir=str(tmp_path / "spill")
    )
    assert len(store) == 2 and store.num_spilled == 0 and _spill_dirs() == spills and not (tmp_path / "spill").exists()
    with pytest.raises(CheckpointError, match="memory_limit"):
        decode({"__object__": "fedsim.state:ClientStateStore", "state": encode({"memory_limit": -1, "states": []})})


def test_a_registered_class_stored_the_wrong_way_is_refused():
    with pytest.raises(CheckpointError, match="stored by 'attrs'"):
        decode({"__object__": "strategies.base:ServerState", "values": [torch.ones(2)]})
    with pytest.raises(CheckpointError, match="fields"):
        decode({"__object__": "fedsim.engine:Event", "values": [0.0, 1]})
    with pytest.raises(CheckpointError, match="not plain checkpoint data"):
        decode({"__object__": "fedsim.engine:Event", "values": [], "attrs": {}})
    with pytest.raises(CheckpointError, match="unknown dtype"):
        decode({"__dtype__": "Tensor"})


# --------------------------------------------------------------------------- damaged files


def test_a_zero_byte_checkpoint_is_refused(run, tmp_path, capsys):
    (run / CHECKPOINT_NAME).write_bytes(b"")
    refused(capsys, tmp_path, run, str(run / CHECKPOINT_NAME), "empty")


def test_a_truncated_checkpoint_is_refused(run, tmp_path, capsys):
    data = (run / CHECKPOINT_NAME).read_bytes()
    (run / CHECKPOINT_NAME).write_bytes(data[: len(data) // 2])
    refused(capsys, tmp_path, run, str(run / CHECKPOINT_NAME), "checksum")


def test_a_bit_flip_is_caught_by_the_checksum(run, tmp_path, capsys):
    data = bytearray((run / CHECKPOINT_NAME).read_bytes())
    data[len(data) * 3 // 4] ^= 0x01
    (run / CHECKPOINT_NAME).write_bytes(bytes(data))
    refused(capsys, tmp_path, run, str(run / CHECKPOINT_NAME), "checksum")


def test_a_checkpoint_of_the_old_format_or_another_file_is_refused(run, tmp_path, capsys):
    torch.save({"format": 1, "engine": None}, run / CHECKPOINT_NAME)
    refused(capsys, tmp_path, run, str(run / CHECKPOINT_NAME), "older fedsim")
    (run / CHECKPOINT_NAME).write_text("model: resnet\n")
    refused(capsys, tmp_path, run, str(run / CHECKPOINT_NAME), "not a fedsim checkpoint")


class _Boom:
    canary = ""

    def __reduce__(self):
        return (shutil.copy, (__file__, self.canary))


def test_a_pickle_that_runs_code_is_refused_even_with_a_valid_checksum(run, tmp_path, capsys):
    boom = _Boom()
    boom.canary = str(tmp_path / "canary")
    payload = pickle.dumps(boom)
    header = b"fedsim-checkpoint 00000002 %s\n" % hashlib.sha256(payload).hexdigest().encode()
    (run / CHECKPOINT_NAME).write_bytes(header + payload)
    refused(capsys, tmp_path, run, str(run / CHECKPOINT_NAME), "not a readable fedsim checkpoint")


# --------------------------------------------------------------------------- checkpoints from elsewhere


def test_a_checkpoint_copied_from_a_run_with_another_config_is_refused(run, runs, tmp_path, capsys):
    shutil.copy(runs["other-seed"] / CHECKPOINT_NAME, run / CHECKPOINT_NAME)
    refused(capsys, tmp_path, run, "config.yaml changed since the checkpoint", "seed was 4, now 3")


def test_a_checkpoint_copied_from_a_run_with_the_same_config_is_refused(run, runs, tmp_path, capsys):
    # same config and data, but its metrics lines (wall times) are another run's: it was not taken here
    shutil.copy(runs["same-config"] / CHECKPOINT_NAME, run / CHECKPOINT_NAME)
    refused(capsys, tmp_path, run, str(run / CHECKPOINT_NAME), "not taken in this run folder", "metrics.jsonl")


def test_metrics_shorter_than_the_checkpoint_records_are_refused(run, tmp_path, capsys):
    (run / "rounds.jsonl").write_text("")
    refused(capsys, tmp_path, run, str(run / CHECKPOINT_NAME), "rounds.jsonl")


def _edit(out: Path, key: str, value) -> None:
    config = yaml.safe_load((out / "config.yaml").read_text())
    *parents, leaf = key.split(".")
    section = config
    for part in parents:
        section = section[part]
    section[leaf] = value
    (out / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))


@pytest.mark.parametrize(
    "key, value, expected",
    [
        ("client.lr", 0.1, "client.lr was 0.05, now 0.1"),
        ("seed", 4, "seed was 3, now 4"),
        ("data.num_clients", 8, "data.num_clients was 6, now 8"),
        ("task.hidden", 32, "task.hidden was 64, now 32"),  # the model's shape
    ],
)
def test_an_edited_config_is_refused_naming_the_key(run, tmp_path, capsys, key, value, expected):
    _edit(run, key, value)
    refused(capsys, tmp_path, run, "config.yaml changed since the checkpoint", expected)


def test_an_edited_strategy_is_refused(run, tmp_path, capsys):
    _edit(run, "strategy.name", "fedavgm")
    refused(capsys, tmp_path, run, "strategy")


def test_an_edited_buffer_size_is_refused(runs, tmp_path, capsys):
    out = _copy(runs["fedbuff"], tmp_path)
    _edit(out, "scheduler.buffer_size", 3)
    refused(capsys, tmp_path, out, "scheduler.buffer_size was 2, now 3")


def test_other_data_is_refused(run, tmp_path, capsys):
    fingerprint = load_checkpoint(run / CHECKPOINT_NAME)["fingerprint"]
    fingerprint["data"]["partition_sha256"] = "0" * 64
    _tamper(run, fingerprint=fingerprint)
    refused(capsys, tmp_path, run, "data differs", "data.partition_sha256 was 0000")


def test_a_model_of_another_shape_is_one_line_not_a_runtime_error(run, tmp_path, capsys):
    engine = decode(load_checkpoint(run / CHECKPOINT_NAME)["engine"])
    engine["server_state"] = engine["server_state"].replace(params=torch.zeros(7))
    _tamper(run, engine=encode(engine))
    refused(capsys, tmp_path, run, "engine.server_state.params", "(7,)")


def test_a_checkpoint_without_a_fingerprint_is_refused(run, tmp_path, capsys):
    _tamper(run, fingerprint=None)
    refused(capsys, tmp_path, run, str(run / CHECKPOINT_NAME), "fingerprint")


def test_a_fingerprint_holding_a_tensor_is_refused(run, tmp_path, capsys):
    fingerprint = load_checkpoint(run / CHECKPOINT_NAME)["fingerprint"]
    fingerprint["config"]["client.lr"] = torch.ones(2)
    _tamper(run, fingerprint=fingerprint)
    refused(capsys, tmp_path, run, 'client.lr was "tensor(')


# --------------------------------------------------------------------------- registering a class


def test_a_state_class_registers_with_one_decorator_line():
    import dataclasses  # noqa: PLC0415

    from fedsim.checkpoint import checkpointable, registered_classes  # noqa: PLC0415

    @checkpointable(name="tests.hostile:PipelineState")
    @dataclasses.dataclass(frozen=True)
    class PipelineState:
        sums: torch.Tensor
        count: int

    state = decode(encode([PipelineState(torch.ones(3), 2)]))[0]
    assert isinstance(state, PipelineState) and state.count == 2 and torch.equal(state.sums, torch.ones(3))
    assert registered_classes()["tests.hostile:PipelineState"] is PipelineState
    with pytest.raises(ValueError, match="already taken"):
        checkpointable(name="tests.hostile:PipelineState")(type("Other", (tuple,), {"_fields": ()}))
    with pytest.raises(TypeError, match="from_state_dict"):
        checkpointable(type("Opaque", (), {}))

    class Unregistered:
        pass

    with pytest.raises(TypeError, match="checkpointable"):
        encode({"x": Unregistered()})
