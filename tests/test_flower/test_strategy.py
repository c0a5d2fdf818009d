"""FedsimStrategy + fedsim ClientApp over an in-process Grid: same models as fedsim's engine,
sparse node ids, nodes joining and leaving, absent and failing nodes, plain Flower on either side."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp.strategy import FedAvg as FlowerFedAvg

from clients import CLIENTS
from fedsim.config import load_config
from fedsim.flower import (
    KEYS,
    STATE_KEY,
    ArrayCodec,
    FedsimStrategy,
    ParticipationSampler,
    make_client_app,
    make_strategy,
    task_for,
)
from fedsim.population.base import slot_of
from fedsim.run import build, initial_params
from strategies import STRATEGIES, build_strategy
from tests.conftest import small_values
from tests.test_flower.conftest import InProcessGrid

NODE_IDS = [9_007_199_254_740_993, 17, 4_611_686_018_427_387_904, 123_456_789_012, 5, 2**62 + 7]  # sparse 64-bit


def config_for(name: str, **overrides):
    values = small_values(
        rounds=3,
        data={"num_clients": 6},
        population={"participation": "uniform", "clients_per_round": 3},
        strategy={"name": name},
    )
    from fedsim.config import deep_merge

    return load_config(values=deep_merge(values, overrides))


def fedsim_params(config) -> torch.Tensor:
    experiment = build(config)
    experiment.run()
    return experiment.engine.state.params


def run_flower(config, grid: InProcessGrid, strategy: FedsimStrategy | None = None) -> FedsimStrategy:
    task = task_for(config)
    strategy = strategy or make_strategy(config, task)
    arrays = strategy.codec.encode(initial_params(task, config.seed))
    for server_round in range(1, config.rounds + 1):
        replies = grid.send_and_receive(strategy.configure_train(server_round, arrays, ConfigRecord(), grid))
        arrays, _ = strategy.aggregate_train(server_round, replies)
    return strategy


def partition_nodes(n: int) -> dict[int, dict]:
    # node ids deliberately not in partition order
    return {NODE_IDS[(5 * i + 1) % len(NODE_IDS)]: {"partition-id": i, "num-partitions": n} for i in range(n)}


PRESETS = [  # every synchronous preset except the oracle (a Flower server cannot know probabilities)
    name
    for name, preset in ((n, STRATEGIES.get(n)) for n in STRATEGIES.names())
    if preset.weighting != "known_prob" and preset.config_defaults.get("scheduler", {}).get("name", "sync") == "sync"
]


def test_asynchronous_strategies_are_refused_with_a_clear_error():
    from fedsim.config import ConfigError

    config = config_for("fedbuff")
    with pytest.raises(ConfigError, match="Flower runs synchronous rounds"):
        make_strategy(config, task_for(config))


@pytest.mark.parametrize("name", PRESETS)
def test_every_strategy_gives_fedsims_model(name):
    config = config_for(name)
    expected = fedsim_params(config)
    grid = InProcessGrid(make_client_app(task_for(config)), partition_nodes(6))
    strategy = run_flower(config, grid)
    assert strategy.state.version == config.rounds
    torch.testing.assert_close(strategy.state.params, expected, rtol=0, atol=1e-6)


DP_CASES = {
    "local": ("fedavg", {"mode": "local", "clip": 0.05, "noise_multiplier": 0.5, "accountant": "rdp"}),
    "central-adaptive-per-layer": (
        "dp-fedavg",
        {
            "mode": "central",
            "clip": 0.05,
            "clipping": "per_layer_normalized",
            "adaptive": True,
            "count_noise": 2.0,
            "accountant": "rdp",
        },
    ),
}


@pytest.mark.parametrize("case", list(DP_CASES))
def test_client_transforms_in_the_client_app_give_fedsims_model(case):
    """The ClientApp clips (to the adaptive clip the job config carries) and adds local noise from the
    job's seed exactly as fedsim's executors do."""
    name, privacy = DP_CASES[case]
    config = config_for(name, privacy=privacy)
    expected = fedsim_params(config)
    strategy = run_flower(config, InProcessGrid(make_client_app(task_for(config)), partition_nodes(6)))
    assert strategy.strategy.client_transforms
    torch.testing.assert_close(strategy.state.params, expected, rtol=0, atol=1e-6)


def test_fedau_absent_and_failing_nodes_count_as_absent():
    """Sampled nodes that send no reply or an error reply are absent, exactly like clients
    that did not participate in fedsim: compare against fedsim with those clients removed."""
    rounds, n = 6, 5
    pattern = {r: [c for c in range(n) if (r + c) % 2 == 0 or c == 0] for r in range(rounds)}
    silent = {(1, 0), (2, 2), (4, 4)}  # (round, client): sampled, no reply
    failing = {(3, 1), (5, 3)}  # (round, client): the client raises

    class Pattern:
        """A fixed participation pattern, one availability slot per round."""

        probabilities = None
        time_varying = True
        round_length = 60.0  # fedsim's default population.round_length

        def __init__(self, skip=()):
            self.skip = set(skip)

        def participants(self, round):
            return np.array([c for c in pattern.get(round, []) if (round, c) not in self.skip], dtype=np.int64)

        def available(self, ids, now):
            return np.isin(ids, self.participants(slot_of(now, self.round_length)))

    # full-batch local steps: the result does not depend on job seeds, which differ because
    # fedsim never dispatches the jobs that Flower sends and loses
    config = config_for(
        "fedau", rounds=rounds, data={"num_clients": n}, client={"batch_size": 10_000, "local_steps": 2}
    )
    experiment = build(config)
    experiment.population.participation = Pattern(skip=silent | failing)
    experiment.run()

    task = task_for(config)
    inner = make_client_app(task)
    app = ClientApp()

    @app.train()
    def train(msg, context):
        version, client = msg.content[KEYS.CONFIG][KEYS.VERSION], context.node_config["partition-id"]
        if (version, client) in failing:
            raise RuntimeError("client crashed")
        return inner(msg, context)

    @app.query()
    def query(msg, context):
        return inner(msg, context)

    def no_reply(node_id, msg):
        if msg.metadata.message_type != "train":
            return False
        return (msg.content[KEYS.CONFIG][KEYS.VERSION], grid.nodes[node_id]["partition-id"]) in silent

    grid = InProcessGrid(app, partition_nodes(n), silent=no_reply)
    strategy = FedsimStrategy(
        build_strategy(config.strategy),
        ArrayCodec(task.build_model()),
        ParticipationSampler(Pattern()),
        config.client.model_dump(),
        config.seed,
    )
    run_flower(config, grid, strategy)
    torch.testing.assert_close(strategy.state.params, experiment.engine.state.params, rtol=0, atol=1e-5)
    absent = [record["absent"] for record in strategy.history]
    assert absent == [0, 1, 1, 1, 1, 1]
    assert np.array_equal(strategy.state.aggregator.count, experiment.engine.state.aggregator.count)
    assert np.array_equal(strategy.state.aggregator.total, experiment.engine.state.aggregator.total)


def test_nodes_joining_later_grow_fedau_and_count_from_their_arrival():
    config = config_for("fedau", rounds=4, population={"participation": "always"})
    task = task_for(config)
    nodes = partition_nodes(6)
    first = dict(list(nodes.items())[:3])
    grid = InProcessGrid(make_client_app(task), first)
    strategy = make_strategy(config, task)
    arrays = strategy.codec.encode(initial_params(task, config.seed))
    for server_round in range(1, 5):
        if server_round == 3:  # three more nodes join before version 2
            for node_id, node_config in list(nodes.items())[3:]:
                grid.connect(node_id, node_config)
        replies = grid.send_and_receive(strategy.configure_train(server_round, arrays, ConfigRecord(), grid))
        arrays, _ = strategy.aggregate_train(server_round, replies)
    fedau = strategy.state.aggregator
    assert fedau.num_clients == len(strategy.nodes) == 6
    # everyone participated every round since it joined: every recorded interval is 1
    assert fedau.count.tolist() == [4, 4, 4, 2, 2, 2]
    assert fedau.total.tolist() == [4.0, 4.0, 4.0, 2.0, 2.0, 2.0]
    assert [strategy.nodes.partition_of[i] for i in range(6)] == [0, 1, 2, 3, 4, 5]


def test_a_returning_partition_takes_its_index_back():
    config = config_for("fedau", rounds=4, population={"participation": "always"})
    task = task_for(config)
    grid = InProcessGrid(make_client_app(task), partition_nodes(3))
    strategy = make_strategy(config, task)
    arrays = strategy.codec.encode(initial_params(task, config.seed))
    leaving = next(n for n, c in grid.nodes.items() if c["partition-id"] == 1)
    for server_round in range(1, 5):
        if server_round == 2:
            grid.disconnect(leaving)
        if server_round == 4:  # the same partition comes back under a new node id
            grid.connect(77, {"partition-id": 1, "num-partitions": 3})
        replies = grid.send_and_receive(strategy.configure_train(server_round, arrays, ConfigRecord(), grid))
        arrays, _ = strategy.aggregate_train(server_round, replies)
    assert len(strategy.nodes) == 3 and strategy.nodes.index(77) == 1
    # partition 1: interval 1 (version 0), then absent at 1 and 2, back at 3 -> interval 3
    assert strategy.state.aggregator.count[1] == 2 and strategy.state.aggregator.total[1] == 4.0


class NaNFeatures:
    """Federated data whose training inputs are NaN: every local update comes out non-finite."""

    def __init__(self, data):
        self.data = data
        self.num_clients, self.num_classes, self.num_samples = data.num_clients, data.num_classes, data.num_samples

    def train(self, cid):
        x, y = self.data.train(cid)
        return torch.full_like(x, float("nan")), y

    def test(self, cid):
        return self.data.test(cid)


def test_non_finite_updates_are_dropped():
    config = config_for("fedavg", population={"participation": "always"}, rounds=1)
    task = dataclasses.replace(task_for(config), data=NaNFeatures(task_for(config).data))
    grid = InProcessGrid(make_client_app(task), partition_nodes(3))
    strategy = make_strategy(config, task)
    run_flower(config, grid, strategy)
    assert strategy.history[0]["participants"] == 0 and strategy.history[0]["failed"] == 3
    torch.testing.assert_close(strategy.state.params, initial_params(task, config.seed))


class CountingClient:
    """A stateful client (a torch.optim-style ``train``): its state counts its jobs, as a flat vector."""

    name = "test_flower_counting"

    def num_steps(self, config, num_samples):
        return 1

    def options(self, config):
        return None  # no step function: workers call train()

    def train(self, ctx, params, data, config, state, rng):
        from fedsim.types import ClientResult

        count = (state["count"] if state is not None else torch.zeros_like(params)) + 1
        return ClientResult(-1, -1, torch.zeros_like(params), len(data[0]), 1, state={"count": count})


@pytest.fixture
def counting_client():
    CLIENTS.register(CountingClient.name, "test: counts its jobs in its client state")(CountingClient)
    yield CountingClient.name
    CLIENTS._entries.pop(CountingClient.name)  # leave the global registry as it was


def test_client_state_lives_in_the_node_context(counting_client):
    config = config_for("fedavg", population={"participation": "always"}, rounds=3)
    grid = InProcessGrid(make_client_app(task_for(config), algorithm=counting_client), partition_nodes(2))
    run_flower(config, grid)
    for context in grid.contexts.values():
        count = context.state.array_records[STATE_KEY]["dict.count"].numpy()
        assert count.shape == (task_for(config).build_model().weight.numel() + 10,) and (count == 3).all()


def test_plain_flower_client_works_with_fedsim_strategy():
    """A stock Flower ClientApp (arrays + num-examples, no fedsim keys) is read as local model - global."""
    config = config_for("fedavg", population={"participation": "always"}, rounds=1)
    task = task_for(config)
    app = ClientApp()

    @app.query()
    def query(msg, context):
        return Message(RecordDict(), reply_to=msg)  # knows nothing of partitions: indexed by node id

    @app.train()
    def train(msg, context):
        state = msg.content["arrays"].to_torch_state_dict()
        state = {k: v + context.node_config["partition-id"] for k, v in state.items()}
        metrics = MetricRecord({"num-examples": 1})
        return Message(RecordDict({"arrays": ArrayRecord(state), "metrics": metrics}), reply_to=msg)

    grid = InProcessGrid(app, {11: {"partition-id": 1}, 12: {"partition-id": 3}})
    strategy = run_flower(config, grid)
    start = initial_params(task, config.seed)
    torch.testing.assert_close(strategy.state.params, start + 2.0)


def test_fedsim_client_works_under_flowers_own_fedavg():
    config = config_for("fedavg", population={"participation": "always"}, rounds=1)
    task = task_for(config)
    grid = InProcessGrid(make_client_app(task, client_config=config.client.model_dump()), partition_nodes(2))
    codec = ArrayCodec(task.build_model())
    arrays = codec.encode(initial_params(task, config.seed))
    flower = FlowerFedAvg(min_available_nodes=2, min_train_nodes=2)
    replies = grid.send_and_receive(flower.configure_train(1, arrays, ConfigRecord(), grid))
    new_arrays, metrics = flower.aggregate_train(1, replies)
    new_params, _ = codec.decode(new_arrays)
    assert not torch.equal(new_params, initial_params(task, config.seed))
    assert metrics["train_loss"] > 0
