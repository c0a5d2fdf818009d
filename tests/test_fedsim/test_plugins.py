"""Plugins as a user meets them: code in their own folder, imported with --plugin, entry points,
Ray actors importing the plugin, and a user's clients.py shadowing fedsim's package."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from fedsim.cli import main

REPO = Path(__file__).resolve().parents[2]
EXTENDING = (REPO / "docs" / "pages" / "extending.md").read_text()

# a plugin task: the synthetic task with few features (Ray actors must import it to build their data)
TASK_PLUGIN = textwrap.dedent("""
    import dataclasses
    from fedsim.tasks import TASKS
    from fedsim.tasks.synthetic import build_synthetic

    @TASKS.register("tiny_plugin_task", "synthetic data with 5 features (test plugin)")
    def tiny(spec):
        return build_synthetic(dataclasses.replace(spec, options={"num_features": 5, **spec.options}))
""")
FAST = [
    "--rounds",
    "2",
    "--quiet",
    "--no-tensorboard",
    "--set",
    "data.num_clients=12",
    "--set",
    "population.clients_per_round=3",
    "--set",
    "task.max_test_clients=12",
]


def fedsim(args: list[str], cwd: Path, timeout: float = 240, env: dict[str, str] | None = None):
    """``python -m fedsim ARGS`` run from ``cwd`` (outside the repository), as a user would."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "fedsim", *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=full_env
    )


def readme_extending_example() -> tuple[str, str, list[str]]:
    """(file name, code, commands) of the docs' plugin example (docs/pages/extending.md), verbatim."""
    section = EXTENDING.split("## Plugins", 1)[1].split("\n## ", 1)[0]
    code = re.search(r"```python\n# (\S+\.py)[^\n]*\n(.*?)```", section, re.S)
    assert code, "docs/pages/extending.md lost its python example"
    commands = re.findall(r"^(python -m fedsim .*--plugin .*)$", section, re.M)
    assert commands, "docs/pages/extending.md lost its command"
    return code.group(1), code.group(2), commands


@pytest.mark.slow
def test_readme_extending_example_works_verbatim_outside_the_repository(tmp_path):
    name, code, commands = readme_extending_example()
    (tmp_path / name).write_text(code)
    for command in commands:
        args = command.split()[3:]
        if "run" in args:
            args += FAST + ["--out", str(tmp_path / "run")]
        proc = fedsim(args, tmp_path)
        assert proc.returncode == 0, proc.stderr
    config = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert config["plugins"] == [Path(name).stem]
    assert config["strategy"]["weighting"] == "sqrt_samples"
    # the saved config imports the plugin again
    proc = fedsim(["run", "--config", str(tmp_path / "run" / "config.yaml"), "--dry-run"], tmp_path)
    assert proc.returncode == 0 and "sqrt_samples" in proc.stdout, proc.stderr


def test_plugin_errors_are_one_line(tmp_path):
    (tmp_path / "broken_plugin.py").write_text("import does_not_exist_anywhere\n")
    for plugin, needle in [
        ("no_such_plugin", "no module named 'no_such_plugin'"),
        ("broken_plugin", "plugin broken_plugin failed to import: ModuleNotFoundError"),
        ("broken_plugin.py", "is a path"),
    ]:
        proc = fedsim(["run", "--plugin", plugin, "--dry-run"], tmp_path, timeout=120)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1 and needle in lines[0], proc.stderr


@pytest.mark.slow
def test_plugin_task_on_ray_actors_gives_the_serial_model(tmp_path):
    (tmp_path / "my_task.py").write_text(TASK_PLUGIN)
    out = tmp_path / "ray"
    proc = fedsim(
        [
            "run",
            "--plugin",
            "my_task",
            "--task",
            "tiny_plugin_task",
            "--executor",
            "ray",
            "--workers",
            "1",
            "--set",
            "data.partition=natural",
            "--out",
            str(out),
            *FAST,
        ],
        tmp_path,
        timeout=280,
    )
    assert proc.returncode == 0, proc.stderr
    # the same data without the plugin, computed serially in this process
    assert (
        main(
            [
                "run",
                "--task",
                "synthetic",
                "--set",
                "task.num_features=5",
                "--executor",
                "serial",
                "--set",
                "data.partition=natural",
                "--out",
                str(tmp_path / "serial"),
                *FAST,
            ]
        )
        == 0
    )
    ray_rows, serial_rows = (
        [
            {k: v for k, v in json.loads(line).items() if k != "wall_time"}
            for line in (folder / "metrics.jsonl").read_text().splitlines()
        ]
        for folder in (out, tmp_path / "serial")
    )
    assert ray_rows == serial_rows  # the actor imported the plugin and built the same data


def test_entry_point_plugins_are_loaded(tmp_path):
    site = tmp_path / "site"
    (site / "ep_plugin_pkg").mkdir(parents=True)
    (site / "ep_plugin_pkg" / "__init__.py").write_text(
        textwrap.dedent("""
        from strategies.weighting import WEIGHTINGS, WeightedAverage
        import numpy as np

        @WEIGHTINGS.register("entry_point_uniform", "test: registered through an entry point")
        def entry_point_uniform():
            return WeightedAverage(lambda results, population: np.full(len(results), 1.0 / len(results)))
    """)
    )
    dist = site / "ep_plugin_pkg-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: ep-plugin-pkg\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[fedsim.plugins]\nep = ep_plugin_pkg\n")
    env = {"PYTHONPATH": str(site)}
    proc = fedsim(
        ["run", "--set", "strategy.weighting=entry_point_uniform", "--dry-run"], tmp_path, timeout=120, env=env
    )
    assert proc.returncode == 0 and "entry_point_uniform" in proc.stdout, proc.stderr


@pytest.mark.parametrize("shadow", ["clients.py", "strategies/__init__.py"])
def test_a_users_clients_py_or_strategies_folder_is_named_in_one_line(tmp_path, shadow):
    path = tmp_path / shadow
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("# the user's own code\n")
    proc = fedsim(["list"], tmp_path, timeout=120)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert "shadows fedsim's" in lines[0] and shadow.split("/")[0].removesuffix(".py") in lines[0]
