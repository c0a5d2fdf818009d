"""experiments/server_optimizers.py end to end on a tiny slice: runs, table, plot."""

from __future__ import annotations


def test_quick_slice_writes_table_and_plot(tmp_path, capsys, load_experiment):
    module = load_experiment("server_optimizers.py")
    argv = [
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
    module.main(argv)
    table = (tmp_path / "results.md").read_text()
    for arm in ("SGD", "AdaBelief", "client Lion"):
        assert f"| {arm} |" in table
    assert (tmp_path / "results.png").stat().st_size > 0
    assert len((tmp_path / "results.csv").read_text().splitlines()) == 4  # header + 3 runs
    assert len(list((tmp_path / "raw").iterdir())) == 3  # one run folder per run

    # a second sweep reuses the finished run folders (an interrupted sweep resumes) ...
    capsys.readouterr()
    module.main(argv)
    assert "reused 3 finished runs" in capsys.readouterr().out
    assert (tmp_path / "results.md").read_text() == table
    # ... but not when the job differs (here: more rounds)
    module.main([*argv[:2], "3", *argv[3:]])
    assert "reused" not in capsys.readouterr().out
