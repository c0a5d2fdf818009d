"""experiments/byzantine.py: one grid cell runs end to end and the table/plot writers work."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "experiments"))

import byzantine  # noqa: E402


def test_one_cell_and_the_report(tmp_path, monkeypatch):
    monkeypatch.setattr(byzantine, "OUT", tmp_path)
    row = byzantine.run_one(("ALIE", "Krum", 0.1, 0.3, 1, 1))
    assert row["status"] == "completed" and 0 <= row["accuracy"] <= 1
    rows = [row]
    byzantine.write_table(rows, [0.1], [0.3], [1], 1, tmp_path / "t.md")
    assert "| Krum |" in (tmp_path / "t.md").read_text()
    byzantine.plot(rows, [0.1], [0.3], tmp_path / "t.png")
    assert (tmp_path / "t.png").stat().st_size > 0
