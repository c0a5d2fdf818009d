"""LEAF Synthetic(alpha, beta): per-client logistic-regression data with tunable heterogeneity.

The generator is the one defined in the FedProx paper (Li et al. 2020, arXiv 1812.06127) and
shipped with LEAF (Caldas et al. 2018, arXiv 1812.01097). For client k:

    u_k ~ N(0, alpha^2), B_k ~ N(0, beta^2)            (alpha, beta are standard deviations,
    W_k ~ N(u_k, 1)^(C x d), b_k ~ N(u_k, 1)^C          as in the reference code)
    v_k ~ N(B_k, 1)^d,  x ~ N(v_k, Sigma), Sigma_jj = j^-1.2 (j = 1..d)
    y = argmax(W_k x + b_k)

alpha controls how much the clients' models differ, beta how much their feature
distributions differ. With ``iid=True`` (FedProx's "Synthetic IID") every client shares one
W, b drawn from N(0, 1) and v_k = 0.

Samples per client (train + test) follow LEAF's heavy-tailed size distribution:
``n_k = min(floor(LogNormal(mean=4, sigma=2)) + min_samples, max_samples)`` with defaults
min_samples=50, max_samples=1000 (median ~105, ~8% of clients at the cap). It is drawn with the
counter-based ``fedsim.rng.uniform`` and the inverse normal CDF, so the sizes of 10^6 clients
are computed in one vectorised call without generating any data.

Client k's data comes from its own stream ``numpy_generator(seed, "synthetic-client", k)``, so
it never depends on the number of clients. ``partition="natural"`` keeps this per-client split
and generates clients lazily; iid/dirichlet/shards pool all clients' samples first and
re-partition them (meant for up to ~10^4 clients).
"""

from __future__ import annotations

import numpy as np
from scipy.special import ndtri
from torch import nn

from fedsim.data.federated import LazyFederatedData, held_out_sizes
from fedsim.rng import numpy_generator, uniform
from fedsim.tasks.base import TASKS, Task, TaskSpec, mlp, partition_pool, resolve_options

__all__ = ["build_synthetic", "synthetic_sizes", "generate_client", "DEFAULTS"]

DEFAULTS = {
    "alpha": 1.0,
    "beta": 1.0,
    "num_features": 60,
    "num_classes": 10,
    "model": "logreg",
    "hidden": 64,
    "hidden_layers": 1,  # model "mlp": number of hidden layers of width `hidden`
    "iid": False,
    "min_samples": 50,
    "max_samples": 1000,
    "max_test_clients": 1000,
}
MODELS = ("logreg", "mlp")
MINIMUM = {
    "alpha": 0.0,
    "beta": 0.0,
    "num_features": 1,
    "num_classes": 2,
    "hidden": 1,
    "hidden_layers": 1,
    "min_samples": 1,
    "max_samples": 1,
    "max_test_clients": 1,
}


def synthetic_sizes(seed: int, client_ids: np.ndarray, min_samples: int = 50, max_samples: int = 1000) -> np.ndarray:
    """Total samples (train + test) of each client in ``client_ids``, vectorised."""
    if not 1 <= min_samples <= max_samples:
        raise ValueError(f"need 1 <= min_samples <= max_samples, got {min_samples}, {max_samples}")
    z = ndtri(uniform(seed, "synthetic-size", np.asarray(client_ids), 0))  # u == 0 gives -inf -> size 0
    lognormal = np.floor(np.exp(4.0 + 2.0 * z))
    return np.minimum(lognormal + min_samples, max_samples).astype(np.int64)


def generate_client(
    seed: int,
    cid: int,
    num_samples: int,
    alpha: float,
    beta: float,
    num_features: int,
    num_classes: int,
    iid: bool,
) -> tuple[np.ndarray, np.ndarray]:
    """All ``num_samples`` samples of client ``cid``: float32 features, int64 labels."""
    rng = numpy_generator(seed, "synthetic-client", cid)
    if iid:
        shared = numpy_generator(seed, "synthetic-iid-model")
        weights = shared.normal(0.0, 1.0, (num_classes, num_features))
        bias = shared.normal(0.0, 1.0, num_classes)
        feature_mean = np.zeros(num_features)
    else:
        model_shift = rng.normal(0.0, alpha)
        feature_shift = rng.normal(0.0, beta)
        weights = rng.normal(model_shift, 1.0, (num_classes, num_features))
        bias = rng.normal(model_shift, 1.0, num_classes)
        feature_mean = rng.normal(feature_shift, 1.0, num_features)
    feature_std = np.arange(1, num_features + 1, dtype=np.float64) ** -0.6  # sqrt of j^-1.2
    x = feature_mean + rng.standard_normal((num_samples, num_features)) * feature_std
    y = np.argmax(x @ weights.T + bias, axis=1)
    return x.astype(np.float32), y.astype(np.int64)


@TASKS.register(
    "synthetic", "LEAF Synthetic(alpha, beta) logistic-regression data (FedProx generator)", options=DEFAULTS
)
def build_synthetic(spec: TaskSpec) -> Task:
    opts = resolve_options(spec, DEFAULTS, {"model": MODELS}, MINIMUM)
    if opts["max_samples"] < opts["min_samples"]:
        raise ValueError(
            f"task.max_samples ({opts['max_samples']}) must be >= task.min_samples ({opts['min_samples']})"
        )
    num_features, num_classes = int(opts["num_features"]), int(opts["num_classes"])
    client_ids = np.arange(spec.num_clients)
    total_sizes = synthetic_sizes(spec.seed, client_ids, int(opts["min_samples"]), int(opts["max_samples"]))

    def client_samples(cid: int) -> tuple[np.ndarray, np.ndarray]:
        return generate_client(
            spec.seed, cid, int(total_sizes[cid]), float(opts["alpha"]), float(opts["beta"]),
            num_features, num_classes, bool(opts["iid"]),
        )  # fmt: skip

    if spec.partition == "natural":
        if spec.partition_params:
            raise ValueError(f"partition 'natural' takes no parameters, got {sorted(spec.partition_params)}")
        test_sizes = held_out_sizes(total_sizes, spec.test_fraction)

        def make_client(cid: int):
            x, y = client_samples(cid)
            n_train = len(y) - int(test_sizes[cid])  # samples are i.i.d. within a client: no shuffle needed
            return x[:n_train], y[:n_train], x[n_train:], y[n_train:]

        data = LazyFederatedData(
            spec.num_clients,
            num_classes,
            total_sizes - test_sizes,
            make_client,
            max_test_clients=int(opts["max_test_clients"]),
            seed=spec.seed,
            device=spec.device,
        )
    else:
        pooled = [client_samples(cid) for cid in client_ids]
        x = np.concatenate([p[0] for p in pooled])
        y = np.concatenate([p[1] for p in pooled])
        data = partition_pool(spec, x, y, num_classes)

    def build_model() -> nn.Module:
        if opts["model"] == "logreg":
            return nn.Linear(num_features, num_classes)
        return mlp(num_features, int(opts["hidden"]), num_classes, int(opts["hidden_layers"]))

    return Task(
        name=spec.name,
        data=data,
        build_model=build_model,
        num_classes=num_classes,
        input_shape=(num_features,),
        options=opts,
    )
