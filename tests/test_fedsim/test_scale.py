"""Large populations: per-client bookkeeping stays O(1) numbers end to end."""

from __future__ import annotations

import numpy as np

from fedsim.config import load_config
from fedsim.data.federated import LazyFederatedData
from fedsim.run import build, task_spec


def test_fedau_preset_with_100k_clients_stays_lazy_and_small():
    # exactly what `--strategy fedau --set data.num_clients=100000` gives, with fewer rounds
    config = load_config(
        overrides=[
            "strategy.name=fedau",
            "data.num_clients=100000",
            "rounds=3",
            "task.max_test_clients=50",
            "eval.every=3",
            "eval.max_clients=50",
            "output.progress=false",
            "output.tensorboard=false",
        ]
    )
    assert task_spec(config).partition == "natural"  # the preset does not force a pooled split
    assert config.population.participation == "bernoulli"
    assert config.population.mean_prob == 10 / 100_000  # expected clients per round as for uniform
    experiment = build(config)
    data = experiment.task.data
    assert isinstance(data, LazyFederatedData) and len(data._cache) <= 200  # not every client materialised
    summary = experiment.run()
    assert summary["rounds"] == 3
    state = experiment.engine.state.aggregator
    per_client_bytes = (state.last_close.nbytes + state.total.nbytes + state.count.nbytes) / 100_000
    assert per_client_bytes <= 24
    participated = int((state.count > 0).sum())
    assert 0 < participated < 1000  # only the participants were touched
    assert np.isfinite(experiment.engine.history[-1]["test_loss"])
