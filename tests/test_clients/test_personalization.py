"""Personalization (APFL, Ditto, FedPer, FedRep, eval fine-tuning): hand-computed steps, the
reference invariants, per-client evaluation of each client's own model, executors and resume."""

from __future__ import annotations

import logging

import pytest
import torch

from clients import CLIENTS, make_grad_fn, run_client
from clients.base import batch_schedule
from clients.personal import bind_client_config, head_spans, spans_mask
from fedsim.config import ConfigError, load_config
from fedsim.evaluation import Evaluator
from fedsim.executors import EXECUTORS, SerialExecutor, WorkerSpec
from fedsim.params import ParamLayout
from fedsim.rng import derive_seed
from fedsim.run import build, initial_params, run_experiment, task_spec
from fedsim.tasks import build_task
from fedsim.types import ClientJob

pytestmark = pytest.mark.usefixtures("one_torch_thread")

BASE = {
    "lr": 0.1,
    "local_epochs": 1,
    "local_steps": None,
    "batch_size": 1,
    "optimizer": "sgd",
    "momentum": 0.0,
    "weight_decay": 0.0,
    "optimizer_kwargs": {},
    "lr_decay": 1.0,
    "clip_norm": None,
}
X0 = torch.tensor([0.5, -1.0, 2.0])


def quadratic(a: float, b: torch.Tensor):
    def grad(y, batch):
        return 0.5 * a * ((y - b) ** 2).sum(), a * (y - b)

    return grad


def local(name, grad, config, steps=1, state=None, params=X0):
    algorithm = CLIENTS.get(name)()
    config = BASE | config
    data = (torch.zeros(steps, 1), torch.zeros(steps, dtype=torch.long))  # batch 1: `steps` steps per epoch
    return run_client(
        algorithm,
        algorithm.options(config),
        grad,
        params,
        data,
        config,
        state,
        None,
        torch.Generator().manual_seed(0),
        0,
    )


@pytest.fixture(scope="module")
def mlp():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    layout = ParamLayout.of(model)
    grad = make_grad_fn(model, layout, torch.nn.functional.cross_entropy)
    data = (torch.randn(23, 5), torch.randint(0, 3, (23,)))
    return model, layout, grad, layout.flatten(model), data


def run_mlp(mlp, name, config, state=None, params=None):
    model, _, grad, p0, data = mlp
    algorithm = CLIENTS.get(name)()
    config = (
        BASE | {"batch_size": 5, "local_epochs": 2, "weight_decay": 1e-3, "clip_norm": 0.5, "lr_decay": 0.9} | config
    )
    config = bind_client_config(algorithm, config, ParamLayout.of(model))
    return run_client(
        algorithm,
        algorithm.options(config),
        grad,
        p0 if params is None else params,
        data,
        config,
        state,
        None,
        torch.Generator().manual_seed(7),
        3,
    )


# ----------------------------------------------------------------------------- APFL


def test_apfl_one_step_and_adaptive_alpha_by_hand():
    a, b = 2.0, torch.tensor([1.0, 0.0, -1.0])
    v0 = torch.tensor([0.0, 1.0, 1.0])
    r = local("apfl", quadratic(a, b), {"alpha": 0.5, "alpha_lr": 0.3}, state={"v": v0, "alpha": torch.tensor(0.4)})
    w1 = X0 - 0.1 * a * (X0 - b)
    mix = 0.4 * v0 + 0.6 * w1
    g_mix = a * (mix - b)
    alpha1 = min(max(0.4 - 0.3 * float(torch.dot(v0 - w1, g_mix)), 0.0), 1.0)
    torch.testing.assert_close(r.delta, w1 - X0)
    torch.testing.assert_close(r.state["alpha"], torch.tensor(alpha1))
    torch.testing.assert_close(r.state["v"], v0 - 0.1 * 0.4 * g_mix)  # v's step uses the alpha before the update
    algorithm = CLIENTS.get("apfl")()
    options = algorithm.options(BASE | {"alpha": 0.5, "alpha_lr": 0.3})
    torch.testing.assert_close(algorithm.personalize(options, X0, r.state), alpha1 * r.state["v"] + (1 - alpha1) * X0)
    # a fixed alpha ignores a stored one and stays alpha_0; a huge step clips alpha into [0, 1]
    fixed = local("apfl", quadratic(a, b), {"alpha": 0.5}, state={"v": v0, "alpha": torch.tensor(0.4)})
    assert float(fixed.state["alpha"]) == 0.5
    big = local("apfl", quadratic(a, b), {"alpha_lr": 1e6}, state={"v": v0, "alpha": torch.tensor(0.4)})
    assert float(big.state["alpha"]) in (0.0, 1.0)


def test_apfl_with_alpha_zero_trains_the_global_model_exactly_as_fedavg(mlp):
    reference = run_mlp(mlp, "sgd", {})
    apfl = run_mlp(mlp, "apfl", {"alpha": 0.0, "weight_decay": 0.0})
    sgd = run_mlp(mlp, "sgd", {"weight_decay": 0.0})
    assert torch.equal(apfl.delta, sgd.delta)
    assert torch.equal(apfl.state["v"], mlp[3])  # alpha 0: v gets no gradient (and no decay here)
    assert torch.equal(run_mlp(mlp, "apfl", {"alpha": 0.0}).delta, reference.delta)  # clip and decay as FedAvg's


# ----------------------------------------------------------------------------- Ditto


def test_ditto_lambda_to_infinity_keeps_the_personal_model_at_the_round_start_global(mlp):
    v = mlp[3] + 0.5 * torch.randn_like(mlp[3])
    r = run_mlp(mlp, "ditto", {"lamb": 1e9}, state={"v": v})
    torch.testing.assert_close(r.state["v"], mlp[3], atol=1e-5, rtol=0)
    assert torch.equal(r.delta, run_mlp(mlp, "sgd", {}).delta)  # the global copy is FedAvg's
    # lambda 0: the personal model is plain local training from v
    free = run_mlp(mlp, "ditto", {"lamb": 0.0}, state={"v": mlp[3].clone()})
    torch.testing.assert_close(free.state["v"] - mlp[3], run_mlp(mlp, "sgd", {}).delta, atol=1e-7, rtol=0)


def test_ditto_one_step_by_hand():
    a, b = 2.0, torch.tensor([1.0, 0.0, -1.0])
    v0, lamb, lr = torch.tensor([0.0, 1.0, 1.0]), 0.5, 0.1
    r = local("ditto", quadratic(a, b), {"lamb": lamb}, state={"v": v0})
    expected_v = (v0 - lr * a * (v0 - b) + lr * lamb * X0) / (1 + lr * lamb)  # the prox step on the round-start x
    torch.testing.assert_close(r.state["v"], expected_v)
    torch.testing.assert_close(r.delta, -lr * a * (X0 - b))


# ----------------------------------------------------------------------------- FedPer / FedRep


def test_head_spans_by_count_and_by_name(mlp):
    layout = mlp[1]  # 0.weight [8,5], 0.bias [8], 2.weight [3,8], 2.bias [3]
    assert head_spans(layout, None) == head_spans(layout, 1) == head_spans(layout, ["2"]) == ((48, 72), (72, 75))
    assert head_spans(layout, 0) == head_spans(layout, []) == ()
    assert head_spans(layout, 2) == ((0, 40), (40, 48), (48, 72), (72, 75))
    with pytest.raises(ValueError, match="no parameter named 'fc9'.*valid choices: 0.weight"):
        head_spans(layout, ["fc9"])
    with pytest.raises(ValueError, match="3 final layers asked, the model has 2"):
        head_spans(layout, 3)


@pytest.mark.parametrize("name", ["fedper", "fedrep"])
def test_no_personal_layer_is_fedavg(mlp, name):
    r = run_mlp(mlp, name, {"personal_layers": 0, "head_steps": 0} if name == "fedrep" else {"personal_layers": 0})
    assert torch.equal(r.delta, run_mlp(mlp, "sgd", {}).delta) and r.state is None


def test_fedper_sends_only_the_body_and_keeps_its_head(mlp):
    _, layout, _, p0, _ = mlp
    mask = spans_mask(head_spans(layout, 1), p0)
    first = run_mlp(mlp, "fedper", {})
    full = run_mlp(mlp, "sgd", {})
    assert torch.equal(first.delta[mask], torch.zeros(int(mask.sum())))
    assert torch.equal(first.delta[~mask], full.delta[~mask])  # FedPer trains the whole model together
    torch.testing.assert_close(first.state["head"] - p0[mask], full.delta[mask], atol=1e-7, rtol=0)
    # next round: starts from the client's head, not the server's
    second = run_mlp(mlp, "fedper", {}, state=first.state)
    start = p0.clone()
    start[mask] = first.state["head"]
    algorithm = CLIENTS.get("fedper")()
    options = algorithm.options(bind_client_config(algorithm, BASE, ParamLayout.of(mlp[0])))
    assert torch.equal(algorithm.personalize(options, p0, first.state), start)
    assert not torch.equal(second.delta[~mask], first.delta[~mask])


def test_fedrep_trains_the_head_first_then_the_body(mlp):
    model, layout, grad, p0, data = mlp
    head_steps, config = 3, {"head_steps": 3, "local_steps": 2, "clip_norm": None, "weight_decay": 0.0, "lr_decay": 1.0}
    r = run_mlp(mlp, "fedrep", config)
    assert r.num_steps == 5
    mask = spans_mask(head_spans(layout, 1), p0)
    y = p0.clone()
    x, t = data
    for k, idx in enumerate(batch_schedule(len(x), 5, 5, torch.Generator().manual_seed(7))):
        _, g = grad(y, (x[idx], t[idx], None))
        trained = mask if k < head_steps else ~mask
        y = torch.where(trained, y - 0.1 * g, y)
    torch.testing.assert_close(r.state["head"], y[mask], rtol=0, atol=1e-7)
    torch.testing.assert_close(r.delta, torch.where(mask, 0.0, y - p0), rtol=0, atol=1e-7)


def test_only_shared_layers_change_the_server_model(small_config):
    for name in ("fedper", "fedrep"):
        experiment = build(small_config(rounds=2, client={"algorithm": name}))
        before = experiment.engine.state.params.clone()
        experiment.run()
        after = experiment.engine.state.params
        mask = spans_mask(tuple(map(tuple, experiment.engine.client_config["personal_spans"])), after)
        assert torch.equal(after[mask], before[mask]) and not torch.equal(after[~mask], before[~mask])
        assert len(experiment.engine.client_states) > 0


# ----------------------------------------------------------------------------- evaluation


def test_untrained_personal_models_are_evaluated_as_the_global_model(small_config):
    experiment = build(small_config(client={"algorithm": "apfl"}, eval={"per_client": True}))
    record = experiment.engine.evaluate()  # no client has state yet
    assert record["clients_unseen"] == 20
    assert record["client_accuracy_mean"] == record["global_client_accuracy_mean"]
    assert record["client_accuracy_worst10"] == record["global_client_accuracy_worst10"]
    summary = experiment.run()
    final = summary["final"]
    assert 0 < final["clients_unseen"] < 20  # 3 rounds of 5 clients
    assert final["client_accuracy_mean"] != final["global_client_accuracy_mean"]


def test_personalized_evaluation_uses_each_clients_state(small_config):
    experiment = build(small_config(client={"algorithm": "ditto"}, eval={"per_client": True}))
    task, params, evaluator = experiment.task, experiment.engine.state.params, experiment.engine.evaluator
    zero = {cid: {"v": torch.zeros_like(params)} for cid in range(0, 20, 2)}  # an all-zero model predicts class 0
    record = evaluator.evaluate(params, zero)
    assert record["clients_unseen"] == 10
    global_only = Evaluator(task, True, seed=1)  # no personalization: the global model on every client
    per_client_global = []
    expected = []
    for cid in range(20):
        x, y = task.data.test(cid)
        global_only.model.load(params)
        acc = task.evaluate(global_only.model.model, x, y)["accuracy"]
        per_client_global.append(acc)
        expected.append(float((y == 0).float().mean()) if cid % 2 == 0 else acc)
    assert record["client_accuracy_mean"] == pytest.approx(sum(expected) / 20)
    assert record["global_client_accuracy_mean"] == pytest.approx(sum(per_client_global) / 20)
    assert record["client_accuracy_worst10"] == pytest.approx(sum(sorted(expected)[:2]) / 2)


def test_finetuning_before_evaluation_is_seeded_and_changes_only_the_personal_numbers(small_config):
    config = small_config(eval={"per_client": True, "finetune_steps": 5})
    experiment = build(config)
    a, b = experiment.engine.evaluate(), experiment.engine.evaluate()
    assert a["client_accuracy_mean"] == b["client_accuracy_mean"]  # the same batches every time
    assert a["client_accuracy_mean"] != a["global_client_accuracy_mean"]
    plain = build(small_config(eval={"per_client": True})).engine.evaluate()
    assert plain["test_accuracy"] == a["test_accuracy"] and "global_client_accuracy_mean" not in plain
    assert plain["client_accuracy_mean"] == a["global_client_accuracy_mean"]


def test_config_errors_are_one_line(small_config):
    with pytest.raises(ConfigError, match="eval.finetune_steps needs eval.per_client"):
        small_config(eval={"finetune_steps": 3})
    with pytest.raises(ConfigError, match="client.alpha_lr is not used by client algorithm 'sgd'"):
        small_config(client={"alpha_lr": 0.1})
    with pytest.raises(ConfigError, match="client.head_steps is not used by client algorithm 'fedper'"):
        small_config(client={"algorithm": "fedper", "head_steps": 2})
    with pytest.raises(ConfigError, match="personal_layers"):
        small_config(client={"algorithm": "fedper", "personal_layers": -1})
    with pytest.raises(ConfigError, match="client.personal_layers: no parameter named 'nope'"):
        run_experiment(small_config(client={"algorithm": "fedper", "personal_layers": ["nope"]}))


# ----------------------------------------------------------------------------- executors and resume

PERSONAL = ["apfl", "ditto", "fedper", "fedrep"]


@pytest.mark.parametrize("algorithm", PERSONAL)
def test_vmap_equals_serial_with_personal_state(algorithm, caplog):
    config = load_config(values={
        "task": {"name": "synthetic", "max_samples": 90}, "data": {"num_clients": 8}, "population": {"clients_per_round": 4},
        "client": {"algorithm": algorithm, "lr": 0.05, "batch_size": 7, "weight_decay": 1e-3, "clip_norm": 1.0,
                   "lr_decay": 0.9} | ({"alpha_lr": 0.05} if algorithm == "apfl" else {})
                  | ({"head_steps": 2} if algorithm == "fedrep" else {}),
        "output": {"progress": False, "tensorboard": False},
    })  # fmt: skip
    spec = task_spec(config)
    task = build_task(spec)
    params = initial_params(task, 0)
    algo = CLIENTS.get(algorithm)()
    base = bind_client_config(algo, config.client.model_dump(), ParamLayout.of(task.build_model()))
    gen = torch.Generator().manual_seed(3)
    d = params.numel()
    head = sum(e - s for s, e in base.get("personal_spans", []))
    jobs = []
    for cid in range(8):
        state = (
            None
            if cid % 3 == 0
            else {
                "v": params + 0.1 * torch.randn(d, generator=gen),
                "alpha": torch.tensor(0.3),
                "head": 0.1 * torch.randn(head, generator=gen),
            }
        )
        extra = {"local_epochs": 1 + cid % 2} | ({"local_steps": 3} if cid == 5 else {})
        jobs.append(
            ClientJob(
                job_id=cid,
                client_id=cid,
                version=cid % 2,
                params=params if cid % 2 == 0 else params + 0.01,
                config=base | extra,
                seed=derive_seed(0, "t", cid),
                state=state,
            )
        )
    worker_spec = WorkerSpec(task=spec, client=algorithm)
    serial = SerialExecutor(worker_spec, task).run(jobs)
    with caplog.at_level(logging.WARNING, logger="fedsim"):
        batched = EXECUTORS.get("vmap")(config.executor, worker_spec, task).run(jobs)
    assert not caplog.records, caplog.text
    for a, b in zip(serial, batched):
        assert a.ok and b.ok, (a.error, b.error)
        torch.testing.assert_close(b.delta, a.delta, atol=2e-5, rtol=1e-4)
        assert set(a.state) == set(b.state)
        for key in a.state:
            torch.testing.assert_close(b.state[key], a.state[key], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("algorithm", ["apfl", "fedrep"])
def test_personal_state_survives_a_checkpoint(small_config, tmp_path, algorithm):
    import io
    import json

    from fedsim.run import resume_experiment

    config = small_config(
        rounds=4,
        client={"algorithm": algorithm} | ({"alpha_lr": 0.1} if algorithm == "apfl" else {}),
        eval={"per_client": True},
        output={"checkpoint_every": 2, "progress": False, "tensorboard": False},
    )
    out = tmp_path / "run"
    summary, _ = run_experiment(config, out_dir=out)
    assert summary["status"] == "completed"

    def rows():
        return [
            {k: v for k, v in json.loads(line).items() if k != "wall_time"}
            for line in (out / "metrics.jsonl").read_text().splitlines()
        ]

    expected, final = rows(), (out / "model_state.pt").read_bytes()
    assert expected[-1]["client_accuracy_mean"] != expected[-1]["global_client_accuracy_mean"]
    (out / "summary.json").unlink()  # as if killed after the update-2 checkpoint
    summary, _ = resume_experiment(out, ["output.progress=false", "output.tensorboard=false"])
    assert summary["status"] == "completed" and rows() == expected
    resumed = torch.load(out / "model_state.pt", weights_only=True)
    reference = torch.load(io.BytesIO(final), weights_only=True)
    assert all(torch.equal(resumed[k], reference[k]) for k in reference)


def test_personalization_experiment_quick_mode_writes_table_and_plot(tmp_path, load_experiment):
    module = load_experiment("personalization.py")
    module.main(
        [
            "--quick",
            "--rounds",
            "2",
            "--jobs",
            "1",
            "--methods",
            "FedAvg",
            "APFL (adaptive alpha)",
            "FedPer",
            "--partitions",
            "2 classes/client",
            "--out",
            str(tmp_path),
        ]
    )
    rows = module.read_rows(tmp_path)
    assert [r["method"] for r in rows] == ["FedAvg", "APFL (adaptive alpha)", "FedPer"]
    assert all(0 <= r["client_accuracy_mean"] <= 1 for r in rows)
    fedavg = rows[0]
    assert fedavg["client_accuracy_mean"] == fedavg["global_client_accuracy_mean"]  # no personal model
    assert "FedPer" in (tmp_path / "results.md").read_text() and (tmp_path / "results.png").stat().st_size > 0
    assert len(list((tmp_path / "raw").iterdir())) == 3
