"""experiments/dp_layerwise.py on a tiny grid: the cells run end to end at the epsilon they ask for."""

import csv
import math
from pathlib import Path

import yaml

SCRIPT = Path(__file__).resolve().parents[2] / "experiments" / "dp_layerwise.py"


def tiny_config(tmp_path: Path) -> Path:
    config = yaml.safe_load((SCRIPT.parent / "dp_layerwise.yaml").read_text())
    config["task"] |= {"hidden": 4, "hidden_layers": 2, "max_samples": 60, "max_test_clients": 20}
    config["data"]["num_clients"] = 500
    config["population"]["mean_prob"] = 0.02  # cohorts of ~10
    config["client"]["local_steps"] = 2
    config["eval"]["every"] = 1
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_cells_map_to_privacy_settings(load_experiment):
    dp = load_experiment("dp_layerwise.py")
    assert dp.cell_values("server Adam", "non-private", math.inf, 1, 5)["privacy"]["mode"] == "off"
    clip_only = dp.cell_values("server SGD", "per_layer", math.inf, 1, 5)
    assert clip_only["privacy"] == {"clipping": "per_layer", "target_epsilon": None, "noise_multiplier": 0.0}
    assert clip_only["strategy"] == {"name": "dp-fedavg"}
    assert dp.cell_values("server Adam", "flat", 2.0, 1, 5)["privacy"]["target_epsilon"] == 2.0


def test_quick_grid_writes_table_and_plot(tmp_path, capsys, load_experiment):
    dp = load_experiment("dp_layerwise.py")
    dp.main(
        [
            "--quick",
            "--config",
            str(tiny_config(tmp_path)),
            "--rounds",
            "2",
            "--jobs",
            "1",
            "--optimizers",
            "server Adam",
            "--clippings",
            "non-private",
            "per_layer_normalized",
            "--epsilons",
            "8",
            "inf",
            "--out",
            str(tmp_path / "out"),
        ]
    )
    out = tmp_path / "out"
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert [(r["clipping"], r["epsilon"]) for r in rows] == [
        ("non-private", "inf"),
        ("per_layer_normalized", "8.0"),
        ("per_layer_normalized", "inf"),
    ]
    assert all(r["status"] == "completed" for r in rows)
    assert abs(float(rows[1]["epsilon_reached"]) - 8.0) < 0.05  # z calibrated for exactly these 2 rounds
    assert float(rows[1]["noise_multiplier"]) > 0 and float(rows[2]["noise_multiplier"]) == 0.0
    assert (out / "results.png").stat().st_size > 0
    assert (out / "raw" / "dp-fedadam-per_layer_normalized-eps8-seed1" / "summary.json").exists()
    assert "| server Adam | per_layer_normalized | 8 |" in (out / "results.md").read_text()
    assert "3 runs, 2 rounds each" in capsys.readouterr().out
