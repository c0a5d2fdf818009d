"""experiments/fal.py: one grid cell runs end to end (robust accuracy recomputed = the run's) and the writers work."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "experiments"))

import fal  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_one_cell_and_the_report(tmp_path, monkeypatch):
    monkeypatch.setattr(fal, "OUT", tmp_path)
    row = fal.run_one(("FAL eps 0.1", "Dirichlet 0.3", 1, 1))  # raises if the recomputed eps 0.1 != the run's
    assert row["status"] == "completed"
    assert 0 <= row["robust_0.1"] <= row["robust_0.05"] <= 1 and 0 <= row["clean"] <= 1
    rows = [row, fal.run_one(("FedAvg", "Dirichlet 0.3", 1, 1))]
    fal.write_table(rows, list(fal.METHODS)[::2], ["Dirichlet 0.3"], [1], 1, tmp_path / "t.md")
    text = (tmp_path / "t.md").read_text()
    assert "| Dirichlet 0.3 | FAL eps 0.1 |" in text and "| Dirichlet 0.3 | FedAvg |" in text
    fal.plot(rows, list(fal.METHODS)[::2], ["Dirichlet 0.3"], tmp_path / "t.png")
    assert (tmp_path / "t.png").stat().st_size > 0
