"""Task registry, the built-in tasks and the on-disk dataset loaders (fedsim.tasks)."""

import gzip
import json
import math
import pickle
import struct
import time

import numpy as np
import pytest
import torch

from fedsim.data import ArrayFederatedData, LazyFederatedData
from fedsim.registry import Registry, UnknownNameError
from fedsim.tasks import TaskSpec, build_task
from fedsim.tasks.files import read_idx
from fedsim.tasks.synthetic import synthetic_sizes


def spec(name="synthetic", num_clients=10, partition="natural", seed=0, test_fraction=0.2, params=None, **options):
    return TaskSpec(
        name=name,
        num_clients=num_clients,
        partition=partition,
        partition_params=params or {},
        test_fraction=test_fraction,
        seed=seed,
        options=options,
    )


# ---------------------------------------------------------------- registry


def test_unknown_task_lists_valid_choices_sorted():
    with pytest.raises(UnknownNameError) as err:
        build_task(spec(name="foo"))
    assert str(err.value) == "unknown task 'foo'; valid choices: cifar10, digits, femnist, mnist, npz, synthetic"
    assert isinstance(err.value, KeyError)


def test_registry_basics():
    things: Registry[int] = Registry("thing")
    things.register("b", "second")(2)
    things.register("a", "first")(1)
    assert things.get("a") == 1 and "b" in things and "c" not in things
    assert things.names() == ["a", "b"]
    assert things.describe() == [("a", "first"), ("b", "second")]
    with pytest.raises(ValueError, match="already registered"):
        things.register("a", "again")(3)
    with pytest.raises(KeyError, match="valid choices: a, b"):
        things.get("zzz")


def test_unknown_or_invalid_options_are_rejected():
    with pytest.raises(ValueError, match=r"task\.alpah.*valid options: alpha, beta"):
        build_task(spec(alpah=1.0))
    with pytest.raises(ValueError, match=r"task\.model"):
        build_task(spec(model="resnet"))


# ---------------------------------------------------------------- synthetic


def test_synthetic_same_seed_same_data_and_seed_matters():
    first, again, other = (build_task(spec(seed=s)).data for s in (0, 0, 1))
    for cid in range(10):
        assert torch.equal(first.train(cid)[0], again.train(cid)[0])
        assert torch.equal(first.test(cid)[1], again.test(cid)[1])
    assert not torch.equal(first.train(0)[0][:5], other.train(0)[0][:5])


def test_synthetic_client_data_independent_of_population_size():
    small = build_task(spec(num_clients=10)).data
    large = build_task(spec(num_clients=20)).data
    assert isinstance(small, LazyFederatedData)
    np.testing.assert_array_equal(small.num_samples, large.num_samples[:10])
    for cid in (0, 7, 9):
        assert torch.equal(small.train(cid)[0], large.train(cid)[0])
        assert torch.equal(small.train(cid)[1], large.train(cid)[1])


def test_synthetic_num_samples_matches_generated_data():
    task = build_task(spec(num_clients=30, test_fraction=0.25))
    data = task.data
    for cid in range(30):
        x, y = data.train(cid)
        x_test, _ = data.test(cid)
        assert len(x) == len(y) == data.num_samples[cid]
        total = len(x) + len(x_test)
        assert len(x_test) == round(0.25 * total)
        assert x.shape[1] == 60 and x.dtype == torch.float32 and y.dtype == torch.int64
        assert 0 <= int(y.min()) and int(y.max()) < 10


def test_synthetic_size_distribution():
    sizes = synthetic_sizes(0, np.arange(100_000))
    assert sizes.min() >= 50 and sizes.max() == 1000
    assert 95 <= np.median(sizes) <= 115  # floor(e^4) + 50 = 104
    assert 0.06 < np.mean(sizes == 1000) < 0.095  # P(LogNormal(4, 2) >= 950) ~ 0.077


def test_synthetic_feature_covariance_decays_with_index():
    data = build_task(spec(num_clients=50)).data
    big = int(np.argmax(data.num_samples))
    x = data.train(big)[0].numpy()
    stds = x.std(axis=0)
    # Sigma_jj = j^-1.2 -> std_j = j^-0.6: std_1 / std_60 = 60^0.6 ~ 11.7
    assert len(x) >= 300
    assert 8 < stds[0] / stds[59] < 16


def test_synthetic_million_clients_is_lazy_and_fast():
    start = time.perf_counter()
    task = build_task(spec(num_clients=1_000_000))
    build_seconds = time.perf_counter() - start
    data = task.data
    assert build_seconds < 5.0
    assert data.num_samples.shape == (1_000_000,) and data.num_samples.dtype == np.int64
    x, y = data.train(999_999)
    assert len(y) == data.num_samples[999_999] and x.shape[1] == 60
    assert len(data._cache) == 1  # nothing else was generated


def test_synthetic_pooled_partition_keeps_every_sample():
    task = build_task(spec(num_clients=20, partition="dirichlet", params={"alpha": 0.1}, test_fraction=0.2))
    data = task.data
    assert isinstance(data, ArrayFederatedData)
    total = int(synthetic_sizes(0, np.arange(20)).sum())
    assert len(data.y_train) + len(data.y_test) == total
    assert data.num_samples.min() >= 1
    assert (data.label_histograms().max(axis=1) > 0.5).mean() > 0.5  # alpha=0.1 -> strong label skew


def test_synthetic_models_forward():
    for model, params in (("logreg", 610), ("mlp", 60 * 32 + 32 + 32 * 10 + 10)):
        task = build_task(spec(model=model, hidden=32, num_features=60))
        torch.manual_seed(0)
        net = task.build_model()
        assert sum(p.numel() for p in net.parameters()) == params
        x, y = task.data.train(0)
        assert net(x).shape == (len(y), 10)


# ---------------------------------------------------------------- digits


@pytest.mark.parametrize("model,shape", [("mlp", (64,)), ("cnn", (1, 8, 8))])
def test_digits_builds_and_models_run(model, shape):
    task = build_task(spec(name="digits", num_clients=20, partition="iid", model=model))
    assert task.input_shape == shape and task.num_classes == 10
    data = task.data
    assert data.num_samples.sum() + len(data.global_test()[1]) == 1797
    x, y = data.train(0)
    assert tuple(x.shape[1:]) == shape and float(x.max()) <= 1.0 and float(x.min()) >= 0.0
    torch.manual_seed(0)
    net = task.build_model()
    torch.manual_seed(0)
    assert all(torch.equal(a, b) for a, b in zip(net.parameters(), task.build_model().parameters()))
    assert net(x).shape == (len(y), 10)
    net.train()
    metrics = task.evaluate(net, *data.global_test(), batch_size=100)
    assert 0.0 <= metrics["accuracy"] <= 1.0 and math.isfinite(metrics["loss"])
    assert net.training  # mode restored
    net.eval()
    task.evaluate(net, x, y)
    assert not net.training


def test_evaluate_matches_direct_computation():
    task = build_task(spec(name="digits", num_clients=5, partition="iid"))
    torch.manual_seed(1)
    net = task.build_model()
    x, y = task.data.global_test()
    metrics = task.evaluate(net, x, y, batch_size=7)  # uneven batches
    with torch.no_grad():
        logits = net(x)
    assert metrics["loss"] == pytest.approx(float(torch.nn.functional.cross_entropy(logits, y)), rel=1e-5)
    assert metrics["accuracy"] == pytest.approx(float((logits.argmax(1) == y).float().mean()))


def test_digits_has_no_natural_partition():
    with pytest.raises(ValueError, match="natural"):
        build_task(spec(name="digits", partition="natural"))


# ---------------------------------------------------------------- files: mnist, cifar10, femnist


def write_idx(path, array: np.ndarray, compress: bool):
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    if compress:
        with gzip.open(str(path) + ".gz", "wb") as f:
            f.write(payload)
    else:
        path.write_bytes(payload)


def test_read_idx_round_trip(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (4, 28, 28), dtype=np.uint8)
    write_idx(tmp_path / "imgs", images, compress=True)
    np.testing.assert_array_equal(read_idx(tmp_path / "imgs.gz"), images)


def test_mnist_from_fake_idx_files(tmp_path):
    rng = np.random.default_rng(0)
    train_images = rng.integers(0, 256, (20, 28, 28))
    train_labels = np.arange(20) % 10
    write_idx(tmp_path / "train-images-idx3-ubyte", train_images, compress=True)
    write_idx(tmp_path / "train-labels-idx1-ubyte", train_labels, compress=False)
    write_idx(tmp_path / "t10k-images-idx3-ubyte", np.full((5, 28, 28), 255), compress=False)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.full(5, 3), compress=False)

    task = build_task(spec(name="mnist", num_clients=5, partition="iid", path=str(tmp_path)))
    data = task.data
    assert task.input_shape == (784,)
    all_y = torch.cat([data.y_train, data.y_test]).numpy()
    np.testing.assert_array_equal(
        np.bincount(all_y, minlength=10), np.bincount(np.r_[train_labels, [3] * 5], minlength=10)
    )
    all_x = torch.cat([data.x_train, data.x_test])
    assert all_x.shape == (25, 784) and float(all_x.max()) == 1.0 and float(all_x.min()) >= 0.0
    assert int((all_x == 1.0).all(dim=1).sum()) >= 5  # the five all-white t10k images

    cnn_task = build_task(spec(name="mnist", num_clients=5, partition="iid", path=str(tmp_path), model="cnn"))
    x, y = cnn_task.data.train(0)
    assert x.shape[1:] == (1, 28, 28)
    assert cnn_task.build_model()(x).shape == (len(y), 10)


def write_cifar_batch(path, labels: list[int], red: int):
    n = len(labels)
    data = np.zeros((n, 3072), dtype=np.uint8)
    data[:, :1024] = red  # the red channel comes first in each row
    with open(path, "wb") as f:
        pickle.dump({b"data": data, b"labels": labels}, f)


def test_cifar10_from_fake_pickles(tmp_path):
    for i in range(1, 6):
        write_cifar_batch(tmp_path / f"data_batch_{i}", [i, i, 0], red=255)
    write_cifar_batch(tmp_path / "test_batch", [9, 9, 9], red=255)
    task = build_task(spec(name="cifar10", num_clients=3, partition="iid", path=str(tmp_path)))
    data = task.data
    x = torch.cat([data.x_train, data.x_test])
    y = torch.cat([data.y_train, data.y_test])
    assert x.shape == (18, 3, 32, 32) and task.input_shape == (3, 32, 32)
    assert torch.all(x[:, 0] == 1.0) and torch.all(x[:, 1:] == 0.0)
    np.testing.assert_array_equal(np.bincount(y.numpy(), minlength=10), [5, 2, 2, 2, 2, 2, 0, 0, 0, 3])
    assert task.build_model()(x).shape == (18, 10)

    (tmp_path / "test_batch").unlink()
    with pytest.raises(FileNotFoundError, match="test_batch"):
        build_task(spec(name="cifar10", num_clients=3, partition="iid", path=str(tmp_path)))


def write_leaf_json(path, users: dict[str, list[int]]):
    content = {
        "users": list(users),
        "num_samples": [len(v) for v in users.values()],
        "user_data": {u: {"x": [[label / 61.0] * 784 for label in labels], "y": labels} for u, labels in users.items()},
    }
    path.write_text(json.dumps(content))


def test_femnist_natural_partition_by_writer(tmp_path):
    write_leaf_json(tmp_path / "all_data_0.json", {"w0": [0, 1, 2, 3, 4], "w1": [61] * 10})
    write_leaf_json(tmp_path / "all_data_1.json", {"w2": [7, 7, 8]})
    task = build_task(spec(name="femnist", num_clients=3, test_fraction=0.2, path=str(tmp_path)))
    data = task.data
    assert task.num_classes == 62 and task.input_shape == (1, 28, 28)
    assert [len(data.train(c)[1]) + len(data.test(c)[1]) for c in range(3)] == [5, 10, 3]
    np.testing.assert_array_equal(data.num_samples, [4, 8, 2])
    assert torch.all(data.train(1)[1] == 61)
    x, y = data.train(0)
    # features were stored as label / 61 in every pixel: rows stay with their labels
    np.testing.assert_allclose(x[:, 0, 0, 0].numpy(), y.numpy() / 61.0, rtol=1e-6)
    assert task.build_model()(x).shape == (len(y), 62)

    first_two = build_task(spec(name="femnist", num_clients=2, path=str(tmp_path))).data
    assert first_two.num_clients == 2
    with pytest.raises(ValueError, match="writers"):
        build_task(spec(name="femnist", num_clients=4, path=str(tmp_path)))


def test_femnist_uses_leaf_train_test_split_when_present(tmp_path):
    (tmp_path / "train").mkdir()
    (tmp_path / "test").mkdir()
    write_leaf_json(tmp_path / "train" / "t.json", {"a": [1, 1, 1], "b": [2, 2]})
    write_leaf_json(tmp_path / "test" / "t.json", {"a": [5], "b": [6, 6]})
    data = build_task(spec(name="femnist", num_clients=2, path=str(tmp_path), model="mlp")).data
    np.testing.assert_array_equal(data.num_samples, [3, 2])
    assert data.test(0)[1].tolist() == [5] and data.test(1)[1].tolist() == [6, 6]
    assert data.train(0)[0].shape == (3, 784)


@pytest.mark.parametrize("name", ["mnist", "cifar10", "femnist"])
def test_missing_path_names_the_config_field(name, tmp_path):
    for options in ({}, {"path": str(tmp_path / "does-not-exist")}):
        with pytest.raises(FileNotFoundError) as err:
            build_task(spec(name=name, partition="iid", **options))
        message = str(err.value)
        assert "task.path" in message and "\n" not in message
    with pytest.raises(FileNotFoundError, match="task.path"):  # folder exists but is empty
        build_task(spec(name=name, partition="iid", path=str(tmp_path)))


def test_npz_natural_split_by_client_array_and_held_out_set(tmp_path):
    rng = np.random.default_rng(0)
    client = np.array([2, 0, 1, 0, 2, 1, 0, 3, 3, 3])  # client 3 is not used with num_clients=3
    x = rng.normal(size=(10, 3, 10, 10)).astype(np.float32)
    x[:, 0, 0, 0] = client  # every row carries its client id, to check rows stay with their clients
    y = np.arange(10) % 4
    x_test, y_test = rng.normal(size=(5, 3, 10, 10)), np.array([0, 1, 2, 3, 3])
    np.savez(tmp_path / "d.npz", x=x, y=y, client=client, x_test=x_test, y_test=y_test)
    task = build_task(spec(name="npz", num_clients=3, test_fraction=0.0, path=str(tmp_path / "d.npz")))
    data = task.data
    assert task.options["model"] == "cnn" and task.input_shape == (3, 10, 10) and task.num_classes == 4
    np.testing.assert_array_equal(data.num_samples, [3, 2, 2])
    for cid in range(3):
        assert torch.all(data.train(cid)[0][:, 0, 0, 0] == cid)
    gx, gy = data.global_test()
    assert gy.tolist() == [0, 1, 2, 3, 3] and gx.dtype == torch.float32 and gx.shape == (5, 3, 10, 10)
    torch.testing.assert_close(gx, torch.from_numpy(x_test).float())
    # CNN image data is stored channels-last on CPU (faster conv and max-pool), and minibatches keep it
    assert gx.is_contiguous(memory_format=torch.channels_last)
    assert data.train(0)[0][torch.tensor([1, 0])].is_contiguous(memory_format=torch.channels_last)
    assert task.build_model()(data.train(0)[0]).shape == (3, 4)
    with pytest.raises(ValueError, match="holds clients 0..3"):
        build_task(spec(name="npz", num_clients=5, path=str(tmp_path / "d.npz")))


def test_npz_pooled_partition_and_mlp_on_features(tmp_path):
    np.savez(tmp_path / "f.npz", x=np.ones((20, 6)), y=np.arange(20) % 3)
    task = build_task(
        spec(name="npz", num_clients=4, partition="iid", test_fraction=0.25, path=str(tmp_path / "f.npz"))
    )
    assert task.options["model"] == "mlp" and task.num_classes == 3
    assert int(task.data.num_samples.sum()) + len(task.data.global_test()[1]) == 20
    assert task.build_model()(task.data.train(0)[0]).shape[1] == 3
    with pytest.raises(ValueError, match="needs an array 'client'"):
        build_task(spec(name="npz", num_clients=4, path=str(tmp_path / "f.npz")))
    with pytest.raises(ValueError, match="square images"):
        build_task(spec(name="npz", num_clients=4, partition="iid", model="cnn", path=str(tmp_path / "f.npz")))


def test_npz_bad_files_say_what_is_wrong(tmp_path):
    with pytest.raises(FileNotFoundError, match="task.path"):
        build_task(spec(name="npz", partition="iid"))
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    np.savez(tmp_path / "no_y.npz", x=np.ones((4, 2)))
    np.savez(tmp_path / "ragged.npz", x=np.ones((4, 2)), y=np.zeros(3, dtype=np.int64))
    np.savez(tmp_path / "float_labels.npz", x=np.ones((4, 2)), y=np.array([0, 1, 1.5, 0]))
    for name, message in (
        ("junk", "cannot read"),
        ("no_y", "missing array 'y'"),
        ("ragged", "4 rows but y has 3"),
        ("float_labels", "1 values with a fraction"),
    ):
        with pytest.raises(ValueError, match=message):
            build_task(spec(name="npz", partition="iid", path=str(tmp_path / f"{name}.npz")))
