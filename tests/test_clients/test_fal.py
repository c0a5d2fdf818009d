"""PGD on inputs (clients/pgd.py), the FAL client (clients/fal.py) and robust evaluation (eval.adversarial)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from clients import CLIENTS, input_grad_of, make_grad_fn, resident_grad_fn, run_client
from clients.pgd import PGD, per_sample_norm, pgd
from fedsim.config import ConfigError, load_config
from fedsim.evaluation import robust_accuracy
from fedsim.executors import EXECUTORS, SerialExecutor, WorkerSpec
from fedsim.params import ParamLayout, ResidentModel
from fedsim.rng import derive_seed
from fedsim.run import initial_params, task_spec
from fedsim.tasks import build_task
from fedsim.types import ClientJob

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CLIENT = {
    "lr": 0.1,
    "local_epochs": 2,
    "local_steps": None,
    "batch_size": 5,
    "optimizer": "sgd",
    "momentum": 0.0,
    "weight_decay": 1e-3,
    "optimizer_kwargs": {},
    "lr_decay": 0.9,
    "clip_norm": 0.5,  # active on this model: the clip path is compared too
}


@pytest.fixture(scope="module")
def mlp():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    layout = ParamLayout.of(model)
    params = layout.flatten(model)
    data = (torch.randn(23, 5), torch.randint(0, 3, (23,)))
    return model, layout, params, data


def input_grad(model, x_labels):
    def g(xa):
        xa = xa.detach().requires_grad_(True)
        (gx,) = torch.autograd.grad(F.cross_entropy(model(xa), x_labels), [xa])
        return gx

    return g


# ----------------------------------------------------------------------------- PGD


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_pgd_stays_in_the_ball_and_raises_the_loss(mlp, norm):
    model, _, _, (x, y) = mlp
    eps = 0.3 if norm == "linf" else 0.6  # about the same volume in 5 dimensions
    x_adv = pgd(input_grad(model, y), x, PGD(eps=eps, steps=10, norm=norm))
    delta = x_adv - x
    if norm == "linf":
        assert float(delta.abs().max()) <= eps + 1e-6
        assert float(delta.abs().max()) == pytest.approx(eps, rel=1e-5)  # it walks to the boundary
    else:
        norms = per_sample_norm(delta).flatten()
        assert float(norms.max()) <= eps * (1 + 1e-6)
        assert float(norms.min()) == pytest.approx(eps, rel=1e-4)
    with torch.no_grad():
        clean, attacked = F.cross_entropy(model(x), y), F.cross_entropy(model(x_adv), y)
    assert float(attacked) > float(clean) + 0.05
    # more steps of the same size inside a bigger ball: never a smaller loss here
    stronger = pgd(input_grad(model, y), x, PGD(eps=2 * eps, steps=20, norm=norm))
    with torch.no_grad():
        assert float(F.cross_entropy(model(stronger), y)) > float(attacked)


def test_pgd_linf_one_step_is_fgsm_and_eps_zero_is_the_input(mlp):
    model, _, _, (x, y) = mlp
    g = input_grad(model, y)(x)
    torch.testing.assert_close(pgd(input_grad(model, y), x, PGD(eps=0.1, steps=1, step=0.1)), x + 0.1 * g.sign())
    for norm in ("linf", "l2"):
        assert torch.equal(pgd(input_grad(model, y), x, PGD(eps=0.0, steps=3, step=0.1, norm=norm)), x)


def test_pgd_default_step_and_bad_arguments():
    assert PGD(eps=0.2, steps=10).step_size == pytest.approx(0.05)  # 2.5 eps / steps
    with pytest.raises(ValueError, match="norm"):
        PGD(eps=0.1, norm="l1")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="steps >= 1"):
        PGD(eps=0.1, steps=0)


def test_input_gradients_of_both_oracles_agree_with_weights(mlp):
    model, layout, params, (x, y) = mlp
    functional = input_grad_of(make_grad_fn(model, layout, F.cross_entropy))
    resident = input_grad_of(resident_grad_fn(ResidentModel(model, "cpu"), F.cross_entropy))
    w = (torch.arange(23) % 4 != 0).float()  # padded rows masked out
    for batch in ((x, y, None), (x, y, w)):
        (la, ga), (lb, gb) = functional(params, batch), resident(params, batch)
        torch.testing.assert_close(la, lb)
        torch.testing.assert_close(ga, gb)
    assert float(ga[w == 0].abs().max()) == 0.0
    with pytest.raises(TypeError, match="no gradient w.r.t. the inputs"):
        input_grad_of(lambda flat, batch: (flat.sum(), flat))


# ----------------------------------------------------------------------------- the FAL client


def run_local(mlp, name, config, resident=False):
    model, layout, params, data = mlp
    algorithm = CLIENTS.get(name)()
    config = CLIENT | config
    grad = (
        resident_grad_fn(ResidentModel(model, "cpu"), F.cross_entropy)
        if resident
        else make_grad_fn(model, layout, F.cross_entropy)
    )
    return run_client(
        algorithm,
        algorithm.options(config),
        grad,
        params,
        data,
        config,
        None,
        None,
        torch.Generator().manual_seed(7),
        3,
    )


@pytest.mark.parametrize("resident", [False, True])
@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_fal_with_eps_zero_is_sgd_bit_for_bit(mlp, resident, norm):
    sgd = run_local(mlp, "sgd", {}, resident)
    fal = run_local(mlp, "fal", {"adv_eps": 0.0, "adv_step": 0.05, "adv_steps": 3, "adv_norm": norm}, resident)
    assert torch.equal(fal.delta, sgd.delta)
    assert fal.metrics["train_loss"] == sgd.metrics["train_loss"]


def test_fal_trains_on_a_harder_loss_and_moves_differently(mlp):
    sgd = run_local(mlp, "sgd", {})
    fal = run_local(mlp, "fal", {"adv_eps": 0.5})
    assert fal.metrics["train_loss"] > sgd.metrics["train_loss"]  # the loss on adversarial batches
    assert not torch.allclose(fal.delta, sgd.delta)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_fal_vmap_equals_serial(norm, caplog):
    config = load_config(values={
        "task": {"name": "digits"}, "data": {"num_clients": 6, "partition": "dirichlet", "alpha": 0.5},
        "population": {"clients_per_round": 6},
        "client": {"algorithm": "fal", "lr": 0.05, "batch_size": 16, "weight_decay": 1e-3, "clip_norm": 1.0,
                   "adv_eps": 0.2 if norm == "linf" else 1.0, "adv_steps": 3, "adv_norm": norm},
        "output": {"progress": False, "tensorboard": False},
    })  # fmt: skip
    spec = task_spec(config)
    task = build_task(spec)
    params = initial_params(task, 0)
    worker_spec = WorkerSpec(task=spec, client="fal")
    base = config.client.model_dump()
    jobs = [
        ClientJob(job_id=c, client_id=c, version=0, params=params, config=base | {"local_steps": 2 + c % 3},
                  seed=derive_seed(0, "fal", c))
        for c in range(6)
    ]  # fmt: skip
    assert any(int(task.data.num_samples[c]) % 16 for c in range(6))  # short, padded batches are compared too
    serial = SerialExecutor(worker_spec, task).run(jobs)
    batched = EXECUTORS.get("vmap")(config.executor, worker_spec, task).run(jobs)
    assert "vmap executor" not in caplog.text  # everything took the batched path
    for a, b in zip(serial, batched):
        assert a.ok and b.ok, (a.error, b.error)
        torch.testing.assert_close(b.delta, a.delta, atol=2e-5, rtol=1e-4)
        assert b.metrics["train_loss"] == pytest.approx(a.metrics["train_loss"], rel=1e-5)


# ----------------------------------------------------------------------------- robust evaluation


def test_robust_accuracy_eps_zero_is_clean_accuracy_and_attacks_lower_it():
    task = build_task(
        task_spec(
            load_config(
                values={"task": {"name": "digits"}, "data": {"num_clients": 4}, "population": {"clients_per_round": 2}}
            )
        )
    )
    model = ResidentModel(task.build_model(), "cpu")
    x, y = task.data.train(0)
    for _ in range(60):  # a model that is right more often than chance
        _, g = resident_grad_fn(model, task.loss_fn)(model.flat, (x, y, None))
        model.load(model.flat - 0.5 * g)
    clean = task.evaluate(model.model, *task.data.global_test())["accuracy"]
    assert clean > 0.3
    tx, ty = task.data.global_test()
    assert robust_accuracy(model.model, task.loss_fn, tx, ty, PGD(eps=0.0, steps=2, step=0.1)) == clean
    weak = robust_accuracy(model.model, task.loss_fn, tx, ty, PGD(eps=0.05))
    strong = robust_accuracy(model.model, task.loss_fn, tx, ty, PGD(eps=0.2))
    assert strong < weak < clean
    assert robust_accuracy(model.model, task.loss_fn, tx, ty, PGD(eps=0.05), batch_size=37) == weak  # deterministic


def test_run_reports_test_robust_accuracy_and_fedsim_table_shows_it(tmp_path):
    from fedsim.run import run_experiment
    from fedsim.table import compare_table

    values = {
        "task": {"name": "digits"}, "data": {"num_clients": 4}, "population": {"clients_per_round": 2},
        "rounds": 1, "client": {"algorithm": "fal", "local_steps": 2, "adv_steps": 2},
        "eval": {"every": 1, "adversarial": {"eps": 0.0, "steps": 2}},
        "executor": {"name": "serial"}, "output": {"progress": False, "tensorboard": False},
    }  # fmt: skip
    summary, out = run_experiment(load_config(values=values), tmp_path / "run")
    assert summary["status"] == "completed"
    final = summary["final"]
    assert final["test_robust_accuracy"] == final["test_accuracy"]  # eps 0: the clean accuracy
    table = compare_table([out])
    assert "final test_robust_accuracy" in table.splitlines()[0]


# ----------------------------------------------------------------------------- config errors


@pytest.mark.parametrize("values, match", [
    ({"client": {"adv_eps": 0.1}}, "client.adv_eps is not used by client algorithm 'sgd'"),
    ({"client": {"algorithm": "fal", "adv_norm": "l1"}}, "client.adv_norm: Input should be 'linf' or 'l2'"),
    ({"client": {"algorithm": "fal", "adv_steps": 0}}, "client.adv_steps"),
    ({"client": {"algorithm": "fal", "adv_eps": -0.1}}, "client.adv_eps"),
    ({"client": {"algorithm": "fal", "momentum": 0.9}}, "client.momentum does not apply"),
    ({"eval": {"adversarial": {"steps": 3}}}, "eval.adversarial.eps: Field required"),
    ({"eval": {"adversarial": {"eps": 0.1, "norm": "l1"}}}, "eval.adversarial.norm"),
    ({"eval": {"adversarial": {"eps": 0.1, "stride": 2}}}, "eval.adversarial.stride: unknown key; valid keys: eps, "),
])  # fmt: skip
def test_config_errors_are_one_line(values, match):
    with pytest.raises(ConfigError, match=match) as info:
        load_config(values=values)
    assert "\n" not in str(info.value)


def test_cli_exits_2_on_a_bad_adversarial_option():
    proc = subprocess.run(
        [sys.executable, "-m", "fedsim", "run", "--set", "client.algorithm=fal", "--set", "client.adv_norm=l3",
         "--rounds", "1"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2
    assert "client.adv_norm" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
