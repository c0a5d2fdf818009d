"""Federated ADMM (clients/admm.py, strategies/admm.py): hand-computed invariants, vmap = serial, resume,
and the noisy downlink (communication.downlink_snr_db) it is meant for."""

from __future__ import annotations

import pytest
import torch

from fedsim.config import ConfigError, load_config
from fedsim.types import PopulationInfo
from strategies.admm import ADMMAggregator
from tests.conftest import small_values
from tests.test_clients.test_algorithms import CLIENT_A, CLIENT_B, X0, local, result, run_rounds


def test_zero_duals_first_round_is_twice_fedprox_and_the_dual_is_hand_computed():
    rho = 0.5
    prox = local("fedprox", CLIENT_A, steps=3, config={"mu": rho})
    r = local("admm", CLIENT_A, steps=3, config={"mu": rho})
    # lambda = 0: the local model is FedProx's (mu = rho) bit for bit; lambda+ = rho (w - z); sent w - z + lambda+/rho
    torch.testing.assert_close(r.state["lam"], rho * prox.delta)
    torch.testing.assert_close(r.delta, 2 * prox.delta)


def test_one_step_with_a_dual_by_hand():
    rho, lr = 0.5, 0.1
    a, b = CLIENT_A
    lam = torch.tensor([0.3, -0.2, 0.1])
    r = local("admm", CLIENT_A, steps=1, config={"mu": rho}, state={"lam": lam})
    w = X0 - lr * (a * (X0 - b) + lam + rho * (X0 - X0))  # g + lambda + rho (w - z) at w = z
    lam_new = lam + rho * (w - X0)
    torch.testing.assert_close(r.state["lam"], lam_new)
    torch.testing.assert_close(r.delta, (w - X0) + lam_new / rho)


def test_large_rho_keeps_the_local_model_at_z_and_the_server_step_is_the_unweighted_mean():
    r = local("admm", CLIENT_B, steps=2, config={"mu": 1e6, "lr": 1e-7})
    assert float((r.state["lam"] / 1e6).abs().max()) < 1e-5  # w stays within ~|g|/rho of z
    ra, rb = result(0, local("admm", CLIENT_A, config={"mu": 0.5})), result(1, local("admm", CLIENT_B))
    ra.num_samples, rb.num_samples = 1, 100  # sample counts must not weigh ADMM's z-step
    aggregator = ADMMAggregator()
    u, _ = aggregator.aggregate(aggregator.init(X0, PopulationInfo(2, torch.ones(2).numpy())), [ra, rb], 0)
    torch.testing.assert_close(u, (ra.delta + rb.delta) / 2)
    empty, _ = aggregator.aggregate(aggregator.init(X0, PopulationInfo(2, torch.ones(2).numpy())), [], 0)
    assert torch.equal(empty, torch.zeros_like(X0))


def test_admm_reaches_the_consensus_minimiser_on_quadratics_where_fedavg_drifts():
    """Noise 0, full participation: ADMM's fixed point is the minimiser of sum_i f_i (lambda_i absorbs the drift)."""
    clients = [CLIENT_A, CLIENT_B]
    optimum = (CLIENT_A[0] * CLIENT_A[1] + CLIENT_B[0] * CLIENT_B[1]) / (CLIENT_A[0] + CLIENT_B[0])
    x, _, states = run_rounds("admm", ADMMAggregator(), clients, 300, 20, {"mu": 1.0})
    assert (x - optimum).norm() < 1e-4
    torch.testing.assert_close(states[0]["lam"] + states[1]["lam"], torch.zeros(3), atol=1e-4, rtol=0)  # sum = 0


def test_mu_must_be_positive_and_admm_pairs_only_with_its_server_part():
    with pytest.raises(ValueError, match="client.mu is ADMM's penalty rho"):
        local("admm", CLIENT_A, config={"mu": 0.0})
    with pytest.raises(ConfigError, match="'admm' runs with strategy fedadmm"):
        load_config(values=small_values(strategy={"name": "fedavg"}, client={"algorithm": "admm"}))


def _admm_config(tmp_path, **extra):
    values = small_values(rounds=4, strategy={"name": "fedadmm"}, **extra)
    values.setdefault("output", {}).update({"checkpoint_every": 2, "progress": False, "tensorboard": False})
    return load_config(values=values)


def test_serial_and_vmap_give_the_same_admm_run():
    from fedsim.run import build

    params = {}
    for name in ("serial", "vmap"):
        experiment = build(
            load_config(values=small_values(rounds=2, strategy={"name": "fedadmm"}, executor={"name": name}))
        )
        experiment.run()
        params[name] = experiment.engine.state.params
        states = experiment.engine.client_states
    torch.testing.assert_close(params["serial"], params["vmap"], rtol=0, atol=1e-6)
    assert any("lam" in (states.get(c) or {}) for c in range(8))


def test_admm_with_noisy_links_resumes_bit_for_bit(tmp_path):
    import io

    from fedsim.run import run_experiment
    from tests.test_fedsim.test_resume import run_experiment_resumed

    config = _admm_config(tmp_path, communication={"uplink_snr_db": 10.0, "downlink_snr_db": 10.0})
    out = tmp_path / "run"
    summary, _ = run_experiment(config, out_dir=out)
    assert summary["status"] == "completed"
    final = (out / "model_state.pt").read_bytes()
    (out / "summary.json").unlink()  # as if killed after the update-2 checkpoint
    run_experiment_resumed(out)
    resumed = torch.load(out / "model_state.pt", weights_only=True)
    reference = torch.load(io.BytesIO(final), weights_only=True)
    assert all(torch.equal(resumed[k], reference[k]) for k in reference)


def test_downlink_noise_is_at_the_snr_and_stays_in_what_the_server_receives():
    from fedsim.communication import DOWNLINK_NOISE_KEY, Payload

    z = torch.randn(10_000, generator=torch.Generator().manual_seed(0))
    payload = Payload(z.numel(), downlink_snr_db=10.0)
    noisy, noted = payload.receive(z, seed=123)
    noise = noisy - z
    snr = 10 * torch.log10(z.pow(2).sum() / noise.pow(2).sum())
    assert abs(float(snr) - 10.0) < 0.2
    job = type("Job", (), {"config": noted, "seed": 123})()
    torch.testing.assert_close(payload.received_noise(job, z), noise)  # regenerated from the seed
    assert DOWNLINK_NOISE_KEY in noted and Payload(5).receive(z, 1)[0] is z  # clean: the shared tensor


def test_downlink_noise_changes_the_run_and_is_refused_by_flower():
    from fedsim.run import build

    def final(communication):
        experiment = build(load_config(values=small_values(rounds=1, communication=communication)))
        experiment.run()
        return experiment.engine.state.params, experiment.engine.last_results

    clean, _ = final({})
    noisy, results = final({"downlink_snr_db": 20.0})
    assert not torch.equal(clean, noisy)
    assert all(r.metrics["downlink_noise_std"] > 0 for r in results)
    from fedsim.flower import make_strategy, task_for

    config = load_config(values=small_values(communication={"downlink_snr_db": 20.0}))
    with pytest.raises(ConfigError, match="downlink_snr_db"):
        make_strategy(config, task_for(config))
