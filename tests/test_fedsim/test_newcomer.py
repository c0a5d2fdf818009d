"""Newcomer-facing output: table and plot labels, the automatic target, notices, a sweep's console."""

from __future__ import annotations

from pathlib import Path

from fedsim.plot import COLOURS
from fedsim.table import Run, default_target, group_label, group_runs, shown_keys


def _run(name: str, strategy: str, weighting: str, accuracies: list[float], alpha: float = 0.5) -> Run:
    config = {"strategy.name": strategy, "strategy.weighting": weighting, "data.alpha": alpha, "seed": 0}
    evals = [{"round": i, "virtual_time": float(i), "test_accuracy": a} for i, a in enumerate(accuracies)]
    return Run(path=Path(name), config=config, evals=evals, summary=None)


def test_a_setting_that_follows_from_the_strategy_is_not_a_column_or_a_label():
    runs = [_run("a", "fedau", "fedau", [0.1, 0.5]), _run("b", "fedavg", "samples", [0.1, 0.6])]
    keys, groups = group_runs(runs)
    assert keys == ["strategy.name", "strategy.weighting"]
    shown = shown_keys(keys, runs)
    assert shown == ["strategy.name"]
    assert [group_label(shown, g[0]) for g in groups] == ["fedau", "fedavg"]


def test_independent_settings_stay_and_label_as_key_value_pairs():
    runs = [
        _run("a", "fedau", "fedau", [0.1, 0.5], alpha=0.1),
        _run("b", "fedau", "fedau", [0.1, 0.5], alpha=1.0),
        _run("c", "fedavg", "samples", [0.1, 0.6], alpha=0.1),
        _run("d", "fedavg", "samples", [0.1, 0.6], alpha=1.0),
    ]
    keys, groups = group_runs(runs)
    shown = shown_keys(keys, runs)
    assert shown == ["data.alpha", "strategy.name"]
    assert group_label(shown, groups[0][0]) == "alpha=0.1, strategy=fedau"


def test_automatic_target_is_above_the_initial_accuracy():
    runs = [_run("a", "fedau", "fedau", [0.09, 0.09, 0.09]), _run("b", "fedavg", "samples", [0.09, 0.5, 0.7])]
    target = default_target(runs, "test_accuracy", higher_is_better=True)
    assert target == 0.1  # not 0.09, which every run "reaches" at round 0
    improving = [_run("a", "fedau", "fedau", [0.09, 0.4]), _run("b", "fedavg", "samples", [0.09, 0.7])]
    assert default_target(improving, "test_accuracy", higher_is_better=True) == 0.4


def test_plot_colours_are_okabe_ito():
    assert COLOURS[:3] == ("#0072B2", "#E69F00", "#009E73") and len(set(COLOURS)) == len(COLOURS)


def test_a_notice_when_rounds_is_smaller_than_eval_every(small_config, tmp_path, caplog):
    import logging  # noqa: PLC0415

    from fedsim.run import run_experiment  # noqa: PLC0415

    config = small_config(rounds=2, eval={"every": 5}, output={"progress": False, "tensorboard": False})
    with caplog.at_level(logging.WARNING, logger="fedsim"):
        run_experiment(config, out_dir=tmp_path / "run")
    assert "rounds=2 is smaller than eval.every=5" in caplog.text


def test_a_sweeps_console_shows_its_lines_without_info_or_bars(tmp_path, capsys):
    import logging  # noqa: PLC0415

    from fedsim.cli import main  # noqa: PLC0415

    logger = logging.getLogger("fedsim")
    before = list(logger.handlers)
    try:
        assert (
            main(
                [
                    "run",
                    "--sweep",
                    "seed=1,2",
                    "--rounds",
                    "1",
                    "--set",
                    "data.num_clients=6",
                    "--set",
                    "population.clients_per_round=3",
                    "--set",
                    "eval.every=1",
                    "--out",
                    str(tmp_path / "sweep"),
                ]
            )
            == 0
        )
    finally:
        for handler in logger.handlers[len(before) :]:
            logger.removeHandler(handler)
    captured = capsys.readouterr()
    console = captured.out + captured.err
    assert "[1/2] seed=1" in console and "[2/2] seed=2" in console
    assert "INFO" not in console and "it/s" not in console and "\r" not in console
    assert "INFO" in (tmp_path / "sweep" / "seed=1" / "log.txt").read_text()  # the run's own log keeps them


def test_a_plugin_runs_folder_is_named_after_the_plugin_part(small_config):
    from fedsim import registries  # noqa: PLC0415
    from fedsim.run import default_out_dir, run_name  # noqa: PLC0415

    weightings = registries.get("weighting")
    weightings.register("test_newcomer_weighting", "test only")(lambda *a, **k: None)  # this module: a plugin
    try:
        assert run_name(small_config()) == "fedavg"  # built-in parts: the strategy
        config = small_config(strategy={"name": "fedavg", "weighting": "test_newcomer_weighting"})
        assert run_name(config) == "test_newcomer_weighting"
        assert default_out_dir(config, root="/nonexistent").name.endswith("-test_newcomer_weighting")
    finally:
        weightings._entries.pop("test_newcomer_weighting")
