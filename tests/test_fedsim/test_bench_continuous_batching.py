"""experiments/bench/continuous_batching.py at its --quick size: both executors run whole runs and the table prints."""

import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "experiments" / "bench" / "continuous_batching.py"

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_one_side_prints_its_seconds(capsys, load_experiment):
    bench = load_experiment("bench/continuous_batching.py")
    bench.main(["--one", "scaffold", "vmap", "0", "1", "5", "1", "2"])  # 2 slots for 5 clients
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["seconds"] > 0


def test_quick_table_has_every_side(monkeypatch, capsys, load_experiment):
    bench = load_experiment("bench/continuous_batching.py")
    sides = []

    def in_process(side, preset, args):  # the subprocess's work, without starting one
        sides.append((side["name"], preset, args.rounds, args.clients_per_round))
        return bench.run_once(preset, side["executor"], side["compile"], args.rounds, args.clients_per_round, 1)

    monkeypatch.setattr(bench, "run_side", in_process)
    bench.main(["--quick", "--presets", "fedspeed", "--no-compile", "--baseline", str(SCRIPT.parents[2])])
    assert sides == [(name, "fedspeed", 2, 10) for name in ("serial", "vmap", "baseline vmap")]
    row = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| fedspeed")][0]
    assert row.count("x |") == 2  # serial/vmap and serial/baseline vmap
