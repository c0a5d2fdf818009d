"""Partitioners and the federated data containers (fedsim.data)."""

import numpy as np
import pytest
import torch

from fedsim.data import PARTITIONERS, ArrayFederatedData, LazyFederatedData, held_out_sizes, make_partition
from fedsim.registry import UnknownNameError
from fedsim.rng import numpy_generator

NUM_CLASSES = 10


def balanced_labels(per_class: int = 100, shuffle_seed: int | None = 0) -> np.ndarray:
    labels = np.repeat(np.arange(NUM_CLASSES), per_class)
    if shuffle_seed is not None:
        labels = np.random.default_rng(shuffle_seed).permutation(labels)
    return labels


PARTITION_CASES = [
    ("iid", {}),
    ("dirichlet", {"alpha": 0.3}),
    ("shards", {"shards_per_client": 2}),
]


# ---------------------------------------------------------------- partitioners


@pytest.mark.parametrize("name,params", PARTITION_CASES)
def test_partition_assigns_every_sample_exactly_once(name, params):
    labels = balanced_labels()
    rng = numpy_generator(0, "test")
    parts = PARTITIONERS.get(name)(labels, 20, rng, **params)
    assert len(parts) == 20
    assigned = np.concatenate(parts)
    np.testing.assert_array_equal(np.sort(assigned), np.arange(len(labels)))


@pytest.mark.parametrize("name,params", PARTITION_CASES)
def test_partition_is_deterministic_under_seed(name, params):
    labels = balanced_labels()
    first = make_partition(name, labels, 20, seed=3, params=params)
    again = make_partition(name, labels, 20, seed=3, params=params)
    other = make_partition(name, labels, 20, seed=4, params=params)
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    assert not all(np.array_equal(a, b) for a, b in zip(first, other))


def mean_max_class_fraction(labels: np.ndarray, parts: list[np.ndarray]) -> float:
    fractions = [np.bincount(labels[p], minlength=NUM_CLASSES).max() / len(p) for p in parts if len(p)]
    return float(np.mean(fractions))


def test_dirichlet_skew_grows_as_alpha_shrinks():
    labels = balanced_labels(per_class=500)
    skewed = make_partition("dirichlet", labels, 50, seed=0, params={"alpha": 0.05})
    mild = make_partition("dirichlet", labels, 50, seed=0, params={"alpha": 10.0})
    skewed_score = mean_max_class_fraction(labels, skewed)
    mild_score = mean_max_class_fraction(labels, mild)
    assert skewed_score > 0.6  # mostly one class per client
    assert mild_score < 0.3  # close to the balanced 0.1
    assert skewed_score > mild_score + 0.3


@pytest.mark.parametrize("alpha", [0.0, -1.0])
def test_dirichlet_rejects_non_positive_alpha(alpha):
    with pytest.raises(ValueError, match="alpha"):
        make_partition("dirichlet", balanced_labels(), 10, seed=0, params={"alpha": alpha})


@pytest.mark.parametrize("min_samples", [1, 3])
def test_dirichlet_leaves_no_client_below_min_samples(min_samples):
    # 200 clients, 1000 samples, tiny alpha: redraws alone essentially never succeed, so this
    # exercises the move-from-largest fallback.
    labels = balanced_labels()
    parts = make_partition("dirichlet", labels, 200, seed=0, params={"alpha": 0.01, "min_samples": min_samples})
    assert min(len(p) for p in parts) >= min_samples
    np.testing.assert_array_equal(np.sort(np.concatenate(parts)), np.arange(len(labels)))


def test_dirichlet_rejects_impossible_min_samples():
    with pytest.raises(ValueError, match="samples"):
        make_partition("dirichlet", balanced_labels(per_class=1), 5, seed=0, params={"alpha": 1.0, "min_samples": 3})


def test_shards_give_each_client_at_most_shards_per_client_classes():
    # 10 classes x 100 samples, 50 clients x 2 shards -> 100 shards of 10: each lies in one class.
    labels = balanced_labels(per_class=100)
    parts = make_partition("shards", labels, 50, seed=0, params={"shards_per_client": 2})
    classes_per_client = [len(np.unique(labels[p])) for p in parts]
    assert max(classes_per_client) <= 2
    assert all(len(p) == 20 for p in parts)
    assert np.mean(classes_per_client) > 1.5  # random shard pairs usually come from two classes


def test_iid_sizes_differ_by_at_most_one():
    parts = make_partition("iid", balanced_labels(), 7, seed=0)
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 1


def test_natural_partitioner_explains_itself():
    assert "natural" in PARTITIONERS
    with pytest.raises(ValueError, match="natural"):
        make_partition("natural", balanced_labels(), 10, seed=0)


def test_make_partition_rejects_unknown_names_and_parameters():
    with pytest.raises(UnknownNameError, match="valid choices: dirichlet, iid, natural, shards"):
        make_partition("nope", balanced_labels(), 10, seed=0)
    with pytest.raises(ValueError, match="alpha, min_samples"):
        make_partition("dirichlet", balanced_labels(), 10, seed=0, params={"beta": 1.0})


# ---------------------------------------------------------------- ArrayFederatedData


def id_tagged_data(n: int = 200, num_clients: int = 8, test_fraction: float = 0.25, seed: int = 0):
    """Features whose first column is the sample's index, so we can trace where rows went."""
    x = np.stack([np.arange(n), np.zeros(n)], axis=1).astype(np.float32)
    y = np.arange(n) % NUM_CLASSES
    parts = make_partition("dirichlet", y, num_clients, seed=seed, params={"alpha": 0.5})
    data = ArrayFederatedData.from_partition(x, y, parts, NUM_CLASSES, test_fraction, seed)
    return data, parts, y


def test_array_data_train_test_disjoint_and_cover_everything():
    data, parts, _ = id_tagged_data()
    seen = []
    for cid, part in enumerate(parts):
        train_ids = data.train(cid)[0][:, 0].long().numpy()
        test_ids = data.test(cid)[0][:, 0].long().numpy()
        assert not set(train_ids) & set(test_ids)
        np.testing.assert_array_equal(np.sort(np.concatenate([train_ids, test_ids])), np.sort(part))
        seen.append(train_ids)
        seen.append(test_ids)
    np.testing.assert_array_equal(np.sort(np.concatenate(seen)), np.arange(200))
    assert data.num_samples.dtype == np.int64
    assert data.num_samples.sum() + len(data.global_test()[1]) == 200


def test_array_data_labels_follow_their_features():
    data, _, y = id_tagged_data()
    for cid in range(data.num_clients):
        x_train, y_train = data.train(cid)
        np.testing.assert_array_equal(y_train.numpy(), y[x_train[:, 0].long().numpy()])
        assert x_train.dtype == torch.float32 and y_train.dtype == torch.int64


def test_array_data_returns_views_not_copies():
    data, _, _ = id_tagged_data()
    x_train, y_train = data.train(3)
    x_test, _ = data.test(3)
    assert x_train.untyped_storage().data_ptr() == data.x_train.untyped_storage().data_ptr()
    assert y_train.untyped_storage().data_ptr() == data.y_train.untyped_storage().data_ptr()
    assert x_test.untyped_storage().data_ptr() == data.x_test.untyped_storage().data_ptr()
    x_train[0, 1] = 42.0  # writes through to the shared tensor
    assert data.x_train[data.train_offsets[3], 1] == 42.0


def test_array_data_split_sizes():
    sizes = np.array([1, 2, 10, 0])
    np.testing.assert_array_equal(held_out_sizes(sizes, 0.2), [0, 0, 2, 0])
    np.testing.assert_array_equal(held_out_sizes(sizes, 0.9), [0, 1, 9, 0])
    x = np.zeros((13, 3), np.float32)
    y = np.zeros(13, np.int64)
    parts = [np.array([0]), np.array([1, 2]), np.arange(3, 13)]
    data = ArrayFederatedData.from_partition(x, y, parts, 2, test_fraction=0.9, seed=0)
    np.testing.assert_array_equal(data.num_samples, [1, 1, 1])
    assert [len(data.test(c)[1]) for c in range(3)] == [0, 1, 9]
    with pytest.raises(ValueError, match="test_fraction"):
        ArrayFederatedData.from_partition(x, y, parts, 2, test_fraction=1.0, seed=0)


def test_array_data_split_depends_on_seed_only():
    a, _, _ = id_tagged_data(seed=0)
    b, _, _ = id_tagged_data(seed=0)
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.x_test, b.x_test)
    x = np.arange(100, dtype=np.float32)[:, None]
    y = np.zeros(100, np.int64)
    first = ArrayFederatedData.from_partition(x, y, [np.arange(100)], 1, 0.5, seed=1)
    second = ArrayFederatedData.from_partition(x, y, [np.arange(100)], 1, 0.5, seed=2)
    assert not torch.equal(first.x_test, second.x_test)


def test_label_histograms_are_normalised_train_label_counts():
    data, _, _ = id_tagged_data()
    hist = data.label_histograms()
    assert hist.shape == (data.num_clients, NUM_CLASSES) and hist.dtype == np.float64
    np.testing.assert_allclose(hist.sum(axis=1), 1.0)
    for cid in range(data.num_clients):
        counts = np.bincount(data.train(cid)[1].numpy(), minlength=NUM_CLASSES)
        np.testing.assert_allclose(hist[cid], counts / counts.sum())
    np.testing.assert_allclose(data.label_histograms(np.array([5, 2])), hist[[5, 2]])


def test_label_histogram_of_empty_client_is_zero():
    x = np.zeros((4, 1), np.float32)
    y = np.array([0, 1, 1, 2])
    data = ArrayFederatedData.from_client_splits(
        x, y, [np.array([0, 1]), np.array([], np.int64), np.array([2])], [np.array([3]), [], []], 3
    )
    hist = data.label_histograms()
    np.testing.assert_allclose(hist, [[0.5, 0.5, 0.0], [0, 0, 0], [0, 1, 0]])


def test_array_data_validates_its_inputs():
    x = np.zeros((5, 2), np.float32)
    y = np.array([0, 1, 0, 1, 0])
    with pytest.raises(ValueError, match="more than once"):
        ArrayFederatedData.from_partition(x, y, [np.array([0, 1]), np.array([1, 2])], 2, 0.0, 0)
    with pytest.raises(ValueError, match="lie in"):
        ArrayFederatedData.from_partition(x, y, [np.array([0, 7])], 2, 0.0, 0)
    with pytest.raises(ValueError, match="labels"):
        ArrayFederatedData.from_partition(x, y, [np.arange(5)], 1, 0.0, 0)
    with pytest.raises(ValueError, match="rows"):
        ArrayFederatedData.from_partition(x[:3], y, [np.arange(3)], 2, 0.0, 0)
    data = ArrayFederatedData.from_partition(x, y, [np.arange(5)], 2, 0.0, 0)
    with pytest.raises(IndexError):
        data.train(1)


# ---------------------------------------------------------------- LazyFederatedData


class CountingClientMaker:
    """Client c has c + 1 train samples labelled c % 3, and one test sample."""

    def __init__(self):
        self.calls = []

    def __call__(self, cid):
        self.calls.append(cid)
        n = cid + 1
        x = torch.full((n + 1, 2), float(cid))
        y = torch.full((n + 1,), cid % 3, dtype=torch.int64)
        return x[:n], y[:n], x[n:], y[n:]


def lazy_data(num_clients=10, **kwargs):
    maker = CountingClientMaker()
    data = LazyFederatedData(num_clients, 3, np.arange(1, num_clients + 1), maker, **kwargs)
    return data, maker


def test_lazy_data_generates_on_demand_and_caches():
    data, maker = lazy_data(cache_size=2)
    assert maker.calls == []  # construction generates nothing
    x, y = data.train(4)
    assert x.shape == (5, 2) and torch.all(x == 4) and torch.all(y == 1)
    data.test(4)
    data.train(5)
    assert maker.calls == [4, 5]
    data.train(6)  # evicts 4 (least recently used)
    data.train(5)
    data.train(4)
    assert maker.calls == [4, 5, 6, 4]


def test_lazy_global_test_uses_a_fixed_sample_of_clients():
    data, maker = lazy_data(num_clients=50, max_test_clients=7, seed=1)
    x, y = data.global_test()
    clients = data.global_test_clients()
    assert len(clients) == 7 and len(x) == 7
    np.testing.assert_array_equal(np.sort(x[:, 0].numpy()), clients)
    again, _ = lazy_data(num_clients=50, max_test_clients=7, seed=1)
    np.testing.assert_array_equal(again.global_test_clients(), clients)
    data.global_test()
    assert len(maker.calls) == 7  # cached after the first call
    small, _ = lazy_data(num_clients=5)
    assert len(small.global_test()[1]) == 5


def test_lazy_data_histograms_and_size_check():
    data, _ = lazy_data()
    hist = data.label_histograms(np.array([0, 4]))
    np.testing.assert_allclose(hist, [[1, 0, 0], [0, 1, 0]])
    wrong = LazyFederatedData(3, 3, np.array([1, 1, 1]), CountingClientMaker())
    with pytest.raises(RuntimeError, match="num_samples"):
        wrong.train(2)
    with pytest.raises(IndexError):
        wrong.train(3)
