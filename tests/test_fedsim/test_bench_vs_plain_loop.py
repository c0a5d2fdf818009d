"""experiments/bench/vs_plain_loop.py at its --quick size: both sides train the same model."""

import torch


def test_the_user_task_keeps_nchw_data_and_fedsim_makes_it_channels_last(load_experiment):
    bench = load_experiment("bench/vs_plain_loop.py")
    task = bench.make_task("cnn", users=2, samples=4)
    x, _ = task.data.train(1)
    assert x.shape == (4, 3, 32, 32) and x.is_contiguous()  # the user's layout, not a built-in task's


def test_quick_run_trains_the_same_model_on_every_side(capsys, load_experiment):
    bench = load_experiment("bench/vs_plain_loop.py")
    size = {**bench.QUICK, "reps": 1}
    for name in ("cnn", "mlp"):
        result = bench.bench(name, size)
        assert result["diff"] < 1e-6  # same init, clients and batches: the same deltas to float rounding
        assert result["plain"] > 0 and ("plain-cl" in result) == (name == "cnn")
    threads = torch.get_num_threads()
    try:
        assert bench.main(["--quick", "--models", "mlp", "--reps", "1"]) == 0
    finally:
        torch.set_num_threads(threads)  # main runs on one thread
    assert "fedsim/plain" in capsys.readouterr().out
