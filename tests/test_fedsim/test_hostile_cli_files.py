"""Hostile files given to the CLI: every file fedsim reads fails in one line naming it (exit 2),
never with a traceback, never silently, and nothing is written or overwritten on the way.

Run folders are written by hand in the format a real run writes (no training here).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import json
import logging
import os
from pathlib import Path

import pytest
import yaml

from fedsim.cli import main
from fedsim.config import ConfigError

ROWS = [
    {
        "round": 0,
        "virtual_time": 0.0,
        "wall_time": 0.0,
        "train_loss": None,
        "test_loss": 2.6,
        "test_accuracy": 0.07,
        "participants": 0,
        "updates": 0,
        "dropouts": 0,
    },
    {
        "round": 2,
        "virtual_time": 1.6,
        "wall_time": 1.5,
        "train_loss": 0.43,
        "test_loss": 2.3,
        "test_accuracy": 0.25,
        "participants": 10,
        "updates": 20,
        "dropouts": 0,
    },
]


def fake_run(folder: Path, seed: int = 0, **files: str) -> Path:
    """A run folder as a 2-round run writes it; ``files`` replace (text) or, when None, remove a file."""
    folder.mkdir(parents=True)
    contents = {
        "config.yaml": yaml.safe_dump(
            {"plugins": [], "seed": seed, "rounds": 2, "strategy": {"name": "fedavg"}, "output": {"out": str(folder)}},
            sort_keys=False,
        ),
        "metrics.jsonl": "".join(json.dumps(row) + "\n" for row in ROWS),
        "rounds.jsonl": "".join(
            json.dumps(
                {
                    "round": r,
                    "virtual_time": 0.8 * r,
                    "participants": 10,
                    "dropouts": 0,
                    "train_loss": 0.5,
                    "staleness": 0.0,
                }
            )
            + "\n"
            for r in (1, 2)
        ),
        "summary.json": json.dumps(
            {"status": "completed", "rounds": 2, "dropouts": 0, "final": ROWS[-1], "best_test_accuracy": 0.25}, indent=2
        )
        + "\n",
        "log.txt": "2026-01-01 00:00:00,000 INFO started\n",
        **files,
    }
    for name, text in contents.items():
        if text is not None:
            (folder / name).write_text(text)
    return folder


def make_folder(path: Path) -> None:
    """Replace the file at ``path`` with a folder of the same name."""
    path.unlink(missing_ok=True)
    path.mkdir()


def snapshot(root: Path) -> dict[str, bytes | None]:
    """Every path under ``root`` and its bytes (None for folders): to check nothing was touched."""
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None) for p in sorted(root.rglob("*"))}


def one_error_line(capsys, *needles: str) -> str:
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("fedsim: error:"), lines[0]
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert "Traceback" not in captured.err and captured.out == ""
    return lines[0]


def compare(command: str, runs: list[Path], tmp_path: Path) -> list[str]:
    argv = [command, *map(str, runs)]
    return argv + ["--out", str(tmp_path / "p.png")] if command == "plot" else argv


# ------------------------------------------------------------------ fedsim table / plot


BAD_METRICS = {
    "a list per line": ("[1, 2, 3]\n", "line 1: expected a JSON object {...}, got list"),
    "a number per line": ('{"round": 0}\n5\n', "line 2: expected a JSON object {...}, got int"),
    "a string per line": ('"hello"\n', "got str"),
    "invalid JSON": ('{"round": 0,\n', "line 1 is not valid JSON"),
    "binary content": (None, "not UTF-8 text"),
    "nested too deeply": ('{"round": 0, "x": ' + "[" * 100000 + "]" * 100000 + "}\n", "nested too deeply"),
    "a text value": ('{"round": 0, "test_accuracy": "0.5"}\n', "'test_accuracy' is \"0.5\", expected a number"),
    "a boolean value": ('{"round": 0, "test_accuracy": true}\n', "'test_accuracy' is true"),
    "no round": ('{"test_accuracy": 0.5}\n', "'round' is null (missing or not a number"),
    "an integer too large": ('{"round": 1' + "0" * 400 + ', "test_accuracy": 0.5}\n', "'round' is 1000"),
}


@pytest.mark.parametrize("command", ["table", "plot"])
@pytest.mark.parametrize("case", list(BAD_METRICS))
def test_malformed_metrics_jsonl_is_one_line_naming_it(tmp_path, capsys, command, case):
    text, needle = BAD_METRICS[case]
    good = fake_run(tmp_path / "good")
    bad = fake_run(tmp_path / "bad", seed=1)
    if text is None:
        (bad / "metrics.jsonl").write_bytes(b"\x96\xff\x00binary")
    else:
        (bad / "metrics.jsonl").write_text(text)
    assert main(compare(command, [good, bad], tmp_path)) == 2
    one_error_line(capsys, str(bad / "metrics.jsonl"), needle)
    assert not (tmp_path / "p.png").exists()


@pytest.mark.parametrize("command", ["table", "plot"])
@pytest.mark.parametrize(
    "name, what",
    [("metrics.jsonl", "is a directory"), ("config.yaml", "is a directory"), ("summary.json", "is a directory")],
)
def test_a_folder_named_like_a_run_file_is_one_line(tmp_path, capsys, command, name, what):
    good = fake_run(tmp_path / "good")
    bad = fake_run(tmp_path / "bad", seed=1)
    make_folder(bad / name)
    assert main(compare(command, [good, bad], tmp_path)) == 2
    one_error_line(capsys, str(bad / name), what)
    assert not (tmp_path / "p.png").exists()


@pytest.mark.parametrize("command", ["table", "plot"])
@pytest.mark.parametrize(
    "text, needle",
    [
        ("strategy: [fedavg\n", "is not valid YAML"),
        ("- a\n- list\n", "must hold a mapping at top level, got list"),
        ("just a string\n", "got str"),
    ],
)
def test_malformed_config_yaml_is_one_line(tmp_path, capsys, command, text, needle):
    bad = fake_run(tmp_path / "bad", **{"config.yaml": text})
    assert main(compare(command, [fake_run(tmp_path / "good"), bad], tmp_path)) == 2
    one_error_line(capsys, str(bad / "config.yaml"), needle)
    assert not (tmp_path / "p.png").exists()


@pytest.mark.parametrize("command", ["table", "plot"])
@pytest.mark.parametrize(
    "text, needle",
    [
        ("{not json", "is not valid JSON"),
        ("[1, 2]", "expected a JSON object"),
        ('{"dropouts": "many"}', "'dropouts' is \"many\""),
        ('{"status": 5}', "'status' is 5, expected a string"),
    ],
)
def test_malformed_summary_json_is_one_line(tmp_path, capsys, command, text, needle):
    bad = fake_run(tmp_path / "bad", **{"summary.json": text})
    assert main(compare(command, [bad], tmp_path)) == 2
    one_error_line(capsys, str(bad / "summary.json"), needle)
    assert not (tmp_path / "p.png").exists()


@pytest.mark.parametrize("command", ["table", "plot"])
def test_a_folder_without_config_yaml_is_skipped_with_one_notice(tmp_path, capsys, command):
    root = tmp_path / "sweep"
    fake_run(root / "a")
    fake_run(root / "b", seed=1)
    stray = fake_run(root / "stray", **{"config.yaml": None, "metrics.jsonl": '{"round": 0, "test_accuracy": 0.99}\n'})
    assert main(compare(command, [root], tmp_path)) == 0
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and "skipped 1 folder" in lines[0] and str(stray) in lines[0], captured.err
    if command == "table":
        # the stray folder's 0.99 is not grouped with the runs: one group of the two real runs
        assert "| 2 | 0.2500 ± 0.0000 |" in captured.out and "0.99" not in captured.out
    else:
        assert (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("command", ["table", "plot"])
def test_only_folders_without_config_yaml_is_an_error(tmp_path, capsys, command):
    stray = fake_run(tmp_path / "stray", **{"config.yaml": None})
    assert main(compare(command, [stray], tmp_path)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "skipped 1 folder" in err[0] and "none has a config.yaml" in err[1], err
    assert not (tmp_path / "p.png").exists()


@pytest.mark.parametrize("command", ["table", "plot"])
def test_a_file_instead_of_a_run_folder_is_one_line(tmp_path, capsys, command):
    run = fake_run(tmp_path / "run")
    assert main(compare(command, [run / "metrics.jsonl"], tmp_path)) == 2
    one_error_line(capsys, str(run / "metrics.jsonl"), "is a file")


def test_nan_and_infinity_read_as_missing_values(tmp_path, capsys):
    run = fake_run(
        tmp_path / "run",
        **{
            "metrics.jsonl": '{"round": 0, "test_accuracy": NaN}\n'
            '{"round": 1, "test_accuracy": 1e400}\n'
            '{"round": 2, "test_accuracy": 0.5}\n'
        },
    )
    assert main(["table", str(run)]) == 0
    assert "| 1 | 0.5000 | 0.5000 |" in capsys.readouterr().out  # not nan, not inf


def test_a_last_line_cut_short_is_ignored_but_not_a_broken_line_before_it(tmp_path, capsys):
    lines = "".join(json.dumps(row) + "\n" for row in ROWS)
    run = fake_run(tmp_path / "run", **{"metrics.jsonl": lines + '{"round": 4, "test_accura'})
    assert main(["table", str(run)]) == 0  # a killed run's last write
    assert "| 1 | 0.2500 | 0.2500 |" in capsys.readouterr().out
    (run / "metrics.jsonl").write_text('{"round": 4, "test_accura\n' + lines)
    assert main(["table", str(run)]) == 2
    one_error_line(capsys, "metrics.jsonl line 1 is not valid JSON")


def test_table_target_must_be_finite(tmp_path, capsys):
    assert main(["table", str(fake_run(tmp_path / "run")), "--target", "nan"]) == 2
    one_error_line(capsys, "--target must be a finite number")


@pytest.mark.parametrize(
    "out, needle",
    [(".", "is a folder"), ("afile/p.png", "is a file, not a folder"), ("p.xyz", "unknown image format '.xyz'")],
)
def test_plot_out_is_checked_before_drawing(tmp_path, capsys, out, needle):
    run = fake_run(tmp_path / "run")
    (tmp_path / "afile").write_text("keep me")
    before = snapshot(tmp_path)
    assert main(["plot", str(run), "--out", str(tmp_path / out)]) == 2
    one_error_line(capsys, needle)
    assert snapshot(tmp_path) == before


def test_plot_out_without_suffix_says_the_file_it_wrote(tmp_path, capsys):
    assert main(["plot", str(fake_run(tmp_path / "run")), "--out", str(tmp_path / "curve")]) == 0
    assert capsys.readouterr().out.strip() == f"wrote {tmp_path / 'curve.png'}"
    assert (tmp_path / "curve.png").is_file()


# ------------------------------------------------------------------ sweeps


def test_sweep_out_naming_a_file_is_one_line(tmp_path, capsys):
    target = tmp_path / "results.txt"
    target.write_text("my notes")
    for out in (target, target / "sub"):
        assert main(["run", "--seeds", "0,1", "--rounds", "1", "--out", str(out)]) == 2
        one_error_line(capsys, str(out))
    assert target.read_text() == "my notes" and sorted(os.listdir(tmp_path)) == ["results.txt"]


def test_sweeping_output_out_is_refused(tmp_path, capsys):
    assert main(["run", "--sweep", f"output.out={tmp_path / 'a'},{tmp_path / 'b'}", "--rounds", "1"]) == 2
    one_error_line(capsys, "--sweep output.out")
    assert list(tmp_path.iterdir()) == []


def test_sweep_run_folders_must_differ_and_fit_a_file_name(monkeypatch):
    from fedsim import sweep
    from fedsim.config import load_config

    config = load_config()
    monkeypatch.setattr(sweep, "load_config", lambda *args, **kwargs: config)  # any value is valid here
    with pytest.raises(ConfigError, match="two runs would share the folder note=a_b"):
        sweep.expand(None, [], [("note", ["a/b", "a_b"])])
    with pytest.raises(ConfigError, match="longer than 255 bytes"):
        sweep.expand(None, [], [("note", ["x" * 300])])


def test_sweep_config_that_is_a_yaml_list_is_one_line(tmp_path, capsys):
    config = tmp_path / "sweep.yaml"
    config.write_text("- rounds: 2\n")
    assert main(["run", "--config", str(config), "--seeds", "0,1", "--out", str(tmp_path / "s")]) == 2
    one_error_line(capsys, str(config), "mapping")
    assert not (tmp_path / "s").exists()


# ------------------------------------------------------------------ run --resume


@pytest.mark.parametrize("name", ["metrics.jsonl", "rounds.jsonl", "summary.json", "log.txt"])
def test_resume_with_a_folder_named_like_a_run_file_is_one_line(tmp_path, capsys, name):
    run = fake_run(tmp_path / "run", **{"summary.json": None})
    make_folder(run / name)
    before = snapshot(run)
    assert main(["run", "--resume", str(run)]) == 2
    one_error_line(capsys, str(run / name), "is a directory, not a file")
    assert snapshot(run) == before


@pytest.mark.parametrize("name", ["metrics.jsonl", "rounds.jsonl"])
def test_resume_with_junk_lines_is_one_line_and_appends_nothing(tmp_path, capsys, name):
    run = fake_run(tmp_path / "run", **{"summary.json": None, name: '{"round": 0}\n[1, 2]\n'})
    before = snapshot(run)
    assert main(["run", "--resume", str(run)]) == 2
    one_error_line(capsys, str(run / name), "line 2: expected a JSON object")
    assert snapshot(run) == before


def test_resume_ignores_a_last_line_cut_short_by_a_kill(tmp_path):
    from fedsim.metrics import check_resumable

    run = fake_run(tmp_path / "run", **{"metrics.jsonl": '{"round": 0}\n{"round": 2, "test_acc'})
    check_resumable(run)  # the recorder cuts that line; it is no reason to refuse


def test_recorder_refuses_files_shorter_than_the_checkpoint(tmp_path):
    from fedsim.metrics import RunRecorder

    run = fake_run(tmp_path / "run", **{"metrics.jsonl": ""})
    handlers = list(logging.getLogger("fedsim").handlers)
    with pytest.raises(ConfigError, match=r"metrics.jsonl holds 0 complete lines, the checkpoint counts 1"):
        RunRecorder(run, 2, "x", progress=False, tensorboard=False, resume={"metrics_lines": 1, "rounds_lines": 0})
    assert logging.getLogger("fedsim").handlers == handlers  # no log.txt handler left behind


# ------------------------------------------------------------------ plugins


PLUGINS = {
    "raises": ('raise RuntimeError("boom")\n', "RuntimeError: boom", 1),
    "syntax": ("x = 1\ndef f(:\n", "SyntaxError: ", 2),
    "exits_0": ("import sys\nsys.exit(0)\n", "it called sys.exit(0)", 2),
    "imports_missing": (
        "import does_not_exist_anywhere_42\n",
        "ModuleNotFoundError: No module named 'does_not_exist_anywhere_42'",
        1,
    ),
}


@pytest.fixture
def plugin_dir(tmp_path, monkeypatch):
    folder = tmp_path / "plugins"
    folder.mkdir()
    monkeypatch.syspath_prepend(str(folder))
    monkeypatch.chdir(tmp_path)

    def write(name: str, code: str) -> str:
        (folder / f"{name}.py").write_text(code)
        importlib.invalidate_caches()
        return name

    return write


@pytest.mark.parametrize("case", list(PLUGINS))
@pytest.mark.parametrize("command", [["run", "--dry-run"], ["list"], ["show", "fedavg"]])
def test_a_failing_plugin_is_one_line_and_exit_2(plugin_dir, capsys, case, command):
    code, needle, line = PLUGINS[case]
    name = plugin_dir(f"hostile_plugin_{case}", code)
    assert main([*command, "--plugin", name]) == 2
    one_error_line(capsys, f"plugin {name} failed to import: {needle}", f"{name}.py:{line})")


def test_a_failing_plugins_traceback_goes_to_the_debug_log(plugin_dir, caplog):
    from fedsim.plugins import PluginError, import_plugins, take_failure_traceback

    name = plugin_dir("hostile_plugin_debug", "def helper():\n    raise ValueError('deep inside')\nhelper()\n")
    with caplog.at_level(logging.DEBUG, logger="fedsim"), pytest.raises(PluginError) as info:
        import_plugins([name])
    assert "\n" not in str(info.value)
    assert "Traceback" in caplog.text and "in helper" in caplog.text
    assert "in helper" in take_failure_traceback() and take_failure_traceback() is None


def test_a_failing_entry_point_plugin_is_one_line(monkeypatch, plugin_dir, capsys):
    from fedsim import plugins

    name = plugin_dir("hostile_entry_point", "import sys\nsys.exit(0)\n")
    entry = importlib.metadata.EntryPoint(name="hostile", value=name, group=plugins.ENTRY_POINT_GROUP)
    monkeypatch.setattr(
        plugins.metadata, "entry_points", lambda group: [entry] if group == plugins.ENTRY_POINT_GROUP else []
    )
    monkeypatch.setattr(plugins, "_entry_points_loaded", False)
    assert main(["list"]) == 2
    one_error_line(capsys, "plugin entry point 'hostile'", "failed to load: it called sys.exit(0)")


def test_resume_with_a_failing_plugin_keeps_the_traceback_in_log_txt(plugin_dir, tmp_path, capsys):
    name = plugin_dir("hostile_resume_plugin", "def register():\n    raise RuntimeError('no')\nregister()\n")
    run = fake_run(
        tmp_path / "run", **{"summary.json": None, "config.yaml": yaml.safe_dump({"plugins": [name], "rounds": 2})}
    )
    assert main(["run", "--resume", str(run)]) == 2
    one_error_line(capsys, f"plugin {name} failed to import: RuntimeError: no")
    log = (run / "log.txt").read_text()
    assert log.startswith("2026-01-01 00:00:00,000 INFO started\n")  # appended to, not replaced
    assert "a plugin failed to import" in log and "in register" in log and "RuntimeError: no" in log
