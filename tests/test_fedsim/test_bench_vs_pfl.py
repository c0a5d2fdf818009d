"""experiments/bench/vs_pfl.py at its --quick size: the fedsim side runs end to end and the pfl CNN copy matches."""

import torch


def test_pfl_side_gets_fedsims_initial_cnn(tmp_path, load_experiment):
    vs_pfl = load_experiment("bench/vs_pfl.py")
    data_file = tmp_path / "data.npz"
    vs_pfl.make_data(data_file, users=4, samples=10, test=8)
    vs_pfl.save_initial_model({**vs_pfl.QUICK, "users": 4, "cohort": 2}, data_file, tmp_path / "init.pt")
    copy = vs_pfl.cnn()
    copy.load_state_dict(torch.load(tmp_path / "init.pt"))
    assert sum(p.numel() for p in copy.parameters()) > 300_000


def test_quick_run_of_the_fedsim_side(tmp_path, capsys, load_experiment):
    vs_pfl = load_experiment("bench/vs_pfl.py")
    assert vs_pfl.main(["--quick", "--sides", "serial", "--threads", "1", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "| serial | 1 |" in out and "test accuracy range" in out
