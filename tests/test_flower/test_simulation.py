"""Side by side: the same task, seed, client data and strategy through fedsim and through
Flower's simulation runtime (``flwr.simulation.run_simulation``, Ray backend) give the same
final model, for FedAvg (uniform sampling), FedAU (Bernoulli participation), SCAFFOLD
(client state kept by each node between rounds, the server's control variate broadcast) and
FedRep (each node keeps its personal head between rounds)."""

from __future__ import annotations

import pytest
import torch
from flwr.serverapp import ServerApp
from flwr.simulation import run_simulation

from fedsim.config import load_config
from fedsim.flower import make_client_app, make_strategy, task_for
from fedsim.run import build, initial_params
from tests.conftest import small_values

NUM_CLIENTS = 8


def config_for(strategy: str, population: dict):
    values = small_values(
        seed=3,
        rounds=4,
        data={"num_clients": NUM_CLIENTS, "partition": "natural"},
        population=population,
        strategy={"name": strategy},
    )
    return load_config(values=values)


CONFIGS = {
    # personal state in each node's Context: FedRep's head (first: the nodes' Context is shared by the
    # runs below, and SCAFFOLD reads a missing c_i as zeros, as on its first round)
    "fedrep": load_config(
        values=small_values(
            seed=3,
            rounds=4,
            data={"num_clients": NUM_CLIENTS, "partition": "natural"},
            population={"participation": "uniform", "clients_per_round": 3},
            client={"algorithm": "fedrep", "head_steps": 2},
        )
    ),
    "fedavg": config_for("fedavg", {"participation": "uniform", "clients_per_round": 3}),
    "fedau": config_for("fedau", {"participation": "bernoulli", "mean_prob": 0.4, "min_prob": 0.1}),
    # stateful on both sides: the server's c travels as the broadcast, each node keeps its c_i
    # in its Context state and sends its change of c_i back as extras
    "scaffold": config_for("scaffold", {"participation": "uniform", "clients_per_round": 3}),
}


@pytest.mark.slow
def test_fedsim_and_flower_simulation_give_the_same_model():
    task = task_for(CONFIGS["fedavg"])
    assert all(task_for(c) is task for c in CONFIGS.values())  # one task, one data split for both

    expected, scaffold_engine, fedrep_engine = {}, None, None
    for name, config in CONFIGS.items():
        experiment = build(config, task=task)
        experiment.run()
        expected[name] = (experiment.engine.state.params, [h["participants"] for h in experiment.engine.history])
        if name == "scaffold":
            scaffold_engine = experiment.engine
        if name == "fedrep":
            fedrep_engine = experiment.engine
    assert max(fedrep_engine.run_state.dispatch_counts.values()) >= 2  # a stored head is used
    # the SCAFFOLD case only tests client state if some node trains twice (its stored c_i is used)
    assert max(scaffold_engine.run_state.dispatch_counts.values()) >= 2

    # every node connected before sampling, as in fedsim where the whole population exists
    strategies = {name: make_strategy(config, task, {"min_nodes": NUM_CLIENTS}) for name, config in CONFIGS.items()}
    server = ServerApp()

    @server.main()
    def main(grid, context):  # every strategy, one after the other, on the same simulated nodes
        for name, config in CONFIGS.items():
            initial = strategies[name].codec.encode(initial_params(task, config.seed))
            strategies[name].start(grid, initial_arrays=initial, num_rounds=config.rounds, timeout=300)

    run_simulation(
        server,
        make_client_app(task),
        num_supernodes=NUM_CLIENTS,
        backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0}},
    )
    for name, strategy in strategies.items():
        params, participants = expected[name]
        assert strategy.state is not None and strategy.state.version == CONFIGS[name].rounds, name
        assert [r["participants"] for r in strategy.history] == participants, name
        torch.testing.assert_close(strategy.state.params, params, rtol=0, atol=1e-6, msg=name)
    fedau = strategies["fedau"].state.aggregator
    assert fedau.num_clients == NUM_CLIENTS and fedau.count.sum() == sum(
        r["participants"] for r in strategies["fedau"].history
    )
    c = strategies["scaffold"].state.aggregator.c
    assert bool(c.abs().sum() > 0)
    torch.testing.assert_close(c, scaffold_engine.state.aggregator.c, rtol=0, atol=1e-6)
