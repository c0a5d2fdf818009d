"""experiments/server_optimizers.py end to end on a tiny slice: runs, table, plot."""

from __future__ import annotations

import importlib.util
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "experiments" / "server_optimizers.py"


def test_quick_slice_writes_table_and_plot(tmp_path):
    spec = importlib.util.spec_from_file_location("server_optimizers_experiment", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(
        [
            "--quick",
            "--rounds",
            "2",
            "--jobs",
            "1",
            "--tasks",
            "synthetic-mlp",
            "--arms",
            "SGD",
            "AdaBelief",
            "client Lion",
            "--out",
            str(tmp_path),
        ]
    )
    table = (tmp_path / "results.md").read_text()
    for arm in ("SGD", "AdaBelief", "client Lion"):
        assert f"| {arm} |" in table
    assert (tmp_path / "results.png").stat().st_size > 0
    assert len((tmp_path / "results.csv").read_text().splitlines()) == 4  # header + 3 runs
    assert len(list((tmp_path / "raw").iterdir())) == 3  # one run folder per run
