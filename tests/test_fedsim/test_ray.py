"""Ray executor: serial inner bit-identical to serial, vmap chunks bit-identical to vmap, one put per
model version, task data shared through the object store, actor deaths, GPUs, clusters.

The quick tests share one local Ray session (module fixture; Ray takes seconds to start). The
multi-node test starts its own two-node cluster with `ray start` subprocesses and stops them by
their process ids (never `ray stop`: other people's Ray processes may share this machine).
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch

from clients import CLIENTS, LocalSGD
from fedsim.executors import WorkerSpec
from fedsim.run import build, task_spec
from fedsim.types import ClientJob

ray = pytest.importorskip("ray")

from fedsim.executors.ray_executor import RayExecutor, init_local_ray, resolve_ray_address  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


class CrashyClient(LocalSGD):
    """Local SGD that kills its worker process for chosen clients (the Ray actor-death test).

    Rules travel in the job config (``_crash``): ``{"<client id>": "once" | "always"}``. In a Ray
    actor, "once" calls ``os._exit(1)`` the first time (a marker file in ``_crash_dir`` remembers
    it) and "always" every time. In the driver process (serial reference run) "once" does nothing
    and "always" raises, so serial and Ray runs must end up with identical results.
    """

    name = "test_ray_crashy"

    def options(self, config):
        return None  # not a step function: train through ``train``

    def train(self, ctx, params, data, config, state, rng):
        rule = config.get("_crash", {}).get(str(config.get("_client_id")))
        if rule is not None:
            in_driver = os.getpid() == config["_driver_pid"]
            if rule == "always":
                if in_driver:
                    raise RuntimeError("simulated crash")
                os._exit(1)
            if rule == "once" and not in_driver:
                marker = Path(config["_crash_dir"]) / f"died-{config['_client_id']}"
                try:
                    os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
                except FileExistsError:
                    pass
                else:
                    os._exit(1)
        return super().train(ctx, params, data, config, state, rng)


if CrashyClient.name not in CLIENTS:  # Ray actors import this module too (it registers the client)
    CLIENTS.register(CrashyClient.name, "test only: kills its Ray worker for chosen clients")(CrashyClient)


def history(experiment):
    summary = experiment.run()
    rows = [{k: v for k, v in row.items() if k != "wall_time"} for row in experiment.engine.history]
    return rows, experiment.engine.state.params.clone(), summary


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def _ray_module():
    yield
    if ray.is_initialized():
        ray.shutdown()


@pytest.fixture
def local_ray(_ray_module, monkeypatch):
    """A shared local Ray session (2 CPUs), started the way the executor starts one."""
    if not ray.is_initialized():
        # a dead RAY_ADDRESS must not matter: local mode always starts a fresh instance
        with monkeypatch.context() as m:
            m.setenv("RAY_ADDRESS", f"127.0.0.1:{free_port()}")
            init_local_ray(num_cpus=2)
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)  # the serial reference runs pin this process to 1 thread


# ------------------------------------------------------------------------------ determinism


@pytest.mark.timeout(240)
def test_serial_and_ray_with_1_and_2_workers_are_bit_identical(local_ray, small_config):
    reference, params, _ = history(build(small_config(executor={"threads": 1})))
    for workers in (1, 2):
        experiment = build(
            small_config(executor={"name": "ray", "workers": workers, "threads": 1, "ray_inner": "serial"})
        )
        executor = experiment.executor
        assert len(executor.actor_nodes) == workers
        rows, final, summary = history(experiment)
        assert rows == reference, f"ray with {workers} worker(s) differs from serial"
        assert torch.equal(final, params)
        assert summary["dropouts"] == 0
        assert executor.puts == 3  # one ray.put per model version (3 rounds), not one per client
    assert ray.is_initialized()  # the executor did not start this session, so it did not shut it down


@pytest.mark.timeout(240)
@pytest.mark.parametrize("strategy", ["scaffold", "fedspeed"])
def test_stateful_algorithms_on_ray_are_bit_identical_to_serial(local_ray, small_config, strategy):
    """Client state travels per job, SCAFFOLD's c once per version; results equal serial bit for bit."""
    values = {
        "strategy": {"name": strategy},
        "population": {"participation": "uniform", "clients_per_round": 8},
        "data": {"num_clients": 10},
        "executor": {"threads": 1},
    }
    reference = build(small_config(**values))
    rows_ref, params_ref, _ = history(reference)
    experiment = build(
        small_config(**(values | {"executor": {"name": "ray", "workers": 2, "threads": 1, "ray_inner": "serial"}}))
    )
    rows, params, summary = history(experiment)
    assert rows == rows_ref and torch.equal(params, params_ref) and summary["dropouts"] == 0
    states = experiment.engine.client_states
    assert len(states) == len(reference.engine.client_states) > 0
    for cid, state in reference.engine.client_states.items():
        other = states.get(cid)
        assert all(torch.equal(other[k], v) and other[k].device.type == "cpu" for k, v in state.items())
    assert experiment.executor.broadcast_puts == (3 if strategy == "scaffold" else 0)  # once per version


@pytest.mark.timeout(240)
@pytest.mark.parametrize("algorithm", ["apfl", "fedrep"])
def test_personal_state_on_ray_is_bit_identical_to_serial(local_ray, small_config, algorithm):
    """Personal models (APFL's v and alpha, FedRep's head) travel per job; per-client evaluation agrees."""
    values = {
        "client": {"algorithm": algorithm},
        "eval": {"per_client": True},
        "data": {"num_clients": 10},
        "population": {"participation": "uniform", "clients_per_round": 8},
        "executor": {"threads": 1},
    }
    rows_ref, params_ref, _ = history(reference := build(small_config(**values)))
    experiment = build(
        small_config(**(values | {"executor": {"name": "ray", "workers": 2, "threads": 1, "ray_inner": "serial"}}))
    )
    rows, params, summary = history(experiment)
    assert rows == rows_ref and torch.equal(params, params_ref) and summary["dropouts"] == 0
    assert "client_accuracy_mean" in rows[-1]
    for cid, state in reference.engine.client_states.items():
        assert all(torch.equal(experiment.engine.client_states.get(cid)[k], v) for k, v in state.items())


def test_buffered_async_on_ray_is_bit_identical_to_serial(local_ray, small_config):
    # jobs of several model versions in flight at once; inputs fixed at dispatch
    values = {"rounds": 4, "strategy": {"name": "fedbuff"}, "scheduler": {"buffer_size": 3, "concurrency": 6}}
    reference, params, _ = history(build(small_config(executor={"threads": 1}, **values)))
    rows, final, _ = history(
        build(small_config(executor={"name": "ray", "workers": 2, "threads": 1, "ray_inner": "serial"}, **values))
    )
    assert rows == reference
    assert torch.equal(final, params)


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_dp_client_transforms_on_ray_are_bit_identical_to_serial(local_ray, small_config):
    """Clipping (adaptive: the clip norm travels in each job's config) and local noise drawn from each
    job's seed run inside the actors and give serial's results bit for bit."""
    privacy = {"clip": 0.05, "clipping": "per_layer", "accountant": "rdp"}
    for values in (
        {
            "strategy": {"name": "dp-fedavg"},
            "privacy": {"mode": "central", "adaptive": True, "count_noise": 2.0, **privacy},
        },
        {"privacy": {"mode": "local", "noise_multiplier": 0.5, **privacy}},
    ):
        reference, params, expected = history(build(small_config(executor={"threads": 1}, **values)))
        rows, final, summary = history(
            build(small_config(executor={"name": "ray", "workers": 2, "threads": 1, "ray_inner": "serial"}, **values))
        )
        assert rows == reference and torch.equal(final, params)
        assert summary["privacy"] == expected["privacy"]


@pytest.mark.timeout(120)
def test_params_put_once_per_version_and_fetched_once_per_actor(local_ray, small_config):
    config = small_config()
    spec = WorkerSpec(task=task_spec(config), client="sgd", threads=1)
    executor = RayExecutor(spec, workers=2)
    try:
        v0, v1 = torch.zeros(executor_numel(config)), torch.ones(executor_numel(config)) * 0.01
        client = config.client.model_dump()
        jobs = [
            ClientJob(
                job_id=k, client_id=k, version=0 if k < 6 else 1, params=v0 if k < 6 else v1, config=client, seed=k
            )
            for k in range(8)
        ]
        results = executor.run(jobs)
        assert [r.client_id for r in results] == list(range(8))  # job order
        assert all(r.ok and r.delta.shape == v0.shape for r in results)
        assert executor.puts == 2
        stats = executor.actor_stats()
        assert sum(s["jobs"] for s in stats) == 8
        assert all(s["fetches"] <= 2 for s in stats)  # each actor fetches each version at most once
        executor.run(jobs[6:])  # same version, same tensor: the cached ref is reused
        assert executor.puts == 2
    finally:
        executor.close()
    assert ray.is_initialized()


# ------------------------------------------------------------------------------ batched chunks


CHUNK_CASES = {
    "fedavg": {},
    "scaffold": {
        "strategy": {"name": "scaffold"},
        "population": {"participation": "uniform", "clients_per_round": 8},
        "data": {"num_clients": 10},
    },
    "fedbuff": {"rounds": 4, "strategy": {"name": "fedbuff"}, "scheduler": {"buffer_size": 3, "concurrency": 6}},
}


@pytest.mark.timeout(240)
@pytest.mark.parametrize("case", list(CHUNK_CASES))
def test_ray_vmap_chunks_equal_vmap_bit_for_bit_and_serial_within_tolerance(local_ray, small_config, case):
    """A vmap result does not depend on which jobs share its chunk, so Ray's vmap chunks equal the vmap
    executor bit for bit; the batched arithmetic equals serial within float tolerance."""
    values = CHUNK_CASES[case]
    serial_rows, serial_params, _ = history(build(small_config(**(values | {"executor": {"threads": 1}}))))
    vmap_rows, vmap_params, _ = history(build(small_config(**(values | {"executor": {"name": "vmap", "threads": 1}}))))
    chunking = {"chunk_size": 2} if case == "fedbuff" else {}  # several calls per actor and run() too
    experiment = build(
        small_config(
            **(values | {"executor": {"name": "ray", "workers": 2, "threads": 1, "ray_inner": "vmap", **chunking}})
        )
    )
    executor = experiment.executor
    rows, params, summary = history(experiment)
    assert executor.inner == "vmap" and summary["dropouts"] == 0
    assert rows == vmap_rows and torch.equal(params, vmap_params)
    torch.testing.assert_close(params, serial_params, rtol=1e-5, atol=1e-6)
    assert [r["round"] for r in rows] == [r["round"] for r in serial_rows]
    assert executor.calls < executor.jobs_sent  # chunks, not one job per call
    assert executor.timings() == {"ray_startup_s": executor.startup_s} and executor.startup_s > 0


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_compiled_vmap_chunks_on_ray_equal_the_compiled_vmap_executor(local_ray, small_config):
    """executor.compile reaches every actor's vmap inner; its compile seconds join Ray's start-up in the timings."""
    values = {"rounds": 2}
    reference, params, _ = history(
        build(small_config(**values, executor={"name": "vmap", "threads": 1, "compile": "on"}))
    )
    experiment = build(
        small_config(
            **values, executor={"name": "ray", "workers": 2, "threads": 1, "ray_inner": "vmap", "compile": "on"}
        )
    )
    rows, final, summary = history(experiment)
    assert rows == reference and torch.equal(final, params)
    assert (
        set(summary["executor_timings"]) == {"ray_startup_s", "compile_s"}
        and summary["executor_timings"]["compile_s"] > 0
    )


@pytest.mark.timeout(120)
def test_ray_inner_auto_takes_vmap_one_chunk_per_actor_and_counts_calls(local_ray, small_config, caplog):
    config = small_config()
    spec = WorkerSpec(task=task_spec(config), client="sgd", threads=1)
    executor = RayExecutor(spec, workers=2)
    try:
        params = torch.zeros(executor_numel(config))
        jobs = [
            ClientJob(job_id=k, client_id=k, version=0, params=params, config=config.client.model_dump(), seed=k)
            for k in range(9)
        ]
        with caplog.at_level(logging.INFO, logger="fedsim"):
            results = executor.run(jobs)
        assert "actors run chunks of ~4.5 jobs batched with vmap" in caplog.text  # >= 4 per call: vmap pays
        assert executor.inner == "vmap"
        assert [r.client_id for r in results] == list(range(9)) and all(r.ok for r in results)
        assert executor.calls == 2 and executor.jobs_sent == 9  # ceil(9 / 2) = 5 jobs, then 4
        stats = executor.actor_stats()
        assert sorted(s["jobs"] for s in stats) == [4, 5] and all(s["calls"] == 1 for s in stats)
    finally:
        executor.close()


def test_bad_ray_inner_or_chunk_size_is_one_line_naming_the_field(small_config):
    from fedsim.config import ConfigError, load_config  # noqa: PLC0415

    for override, expected in (
        ("executor.ray_inner=gpu", "executor.ray_inner: unknown ray_inner 'gpu'; valid choices: auto, vmap, serial"),
        ("executor.chunk_size=0", "executor.chunk_size: Input should be greater than"),
    ):
        with pytest.raises(ConfigError) as info:
            load_config(overrides=[override])
        assert expected in str(info.value) and "\n" not in str(info.value)
    spec = WorkerSpec(task=task_spec(small_config()), client="sgd")
    with pytest.raises(ValueError, match=r"^executor.ray_inner='gpu': expected one of auto, vmap, serial$"):
        RayExecutor(spec, inner="gpu")
    with pytest.raises(ValueError, match=r"^executor.chunk_size=0: expected >= 1"):
        RayExecutor(spec, chunk_size=0)


# ------------------------------------------------------------------------------ shared task data


@pytest.mark.timeout(120)
def test_actors_map_the_drivers_task_data_identical_to_a_locally_built_task(local_ray, small_config):
    from fedsim.tasks import build_task  # noqa: PLC0415

    config = small_config(data={"partition": "iid"})  # ArrayFederatedData (natural: generated lazily per client)
    spec = WorkerSpec(task=task_spec(config), client="sgd", threads=1)
    executor = RayExecutor(spec, build_task(spec.task), workers=2)
    try:
        assert executor.actor_data == ["shared", "shared"]

        def actor_data(body):
            data = body.task.data
            arrays = {name: getattr(data, name).numpy().copy() for name in ("x_train", "y_train", "x_test", "y_test")}
            return arrays | {
                "train_offsets": data.train_offsets,
                "test_offsets": data.test_offsets,
                "num_classes": data.num_classes,
                "input_shape": body.task.input_shape,
            }

        local = build_task(spec.task)  # built here from the spec alone, as an actor used to
        for actor in executor._actors:
            remote = ray.get(actor.__ray_call__.remote(actor_data))
            for name in ("x_train", "y_train", "x_test", "y_test"):
                assert (remote[name] == getattr(local.data, name).numpy()).all(), name
            assert (remote["train_offsets"] == local.data.train_offsets).all()
            assert (remote["test_offsets"] == local.data.test_offsets).all()
            assert remote["num_classes"] == local.data.num_classes and remote["input_shape"] == local.input_shape
    finally:
        executor.close()


def executor_numel(config) -> int:
    from fedsim.run import initial_params  # noqa: PLC0415
    from fedsim.tasks import build_task  # noqa: PLC0415

    return initial_params(build_task(task_spec(config)), 0).numel()


# ------------------------------------------------------------------------------ actor deaths


@pytest.mark.timeout(240)
@pytest.mark.parametrize("chunks", [{}, {"ray_inner": "vmap", "chunk_size": 3}], ids=["one-job-calls", "vmap-chunks"])
def test_dead_actor_is_restarted_job_retried_once_then_dropped(
    local_ray, tmp_path, caplog, monkeypatch, small_config, chunks
):
    """With chunks, every unfinished job of the dead actor's chunks is retried alone (the vmap inner
    runs this non-batchable client on its serial fallback)."""
    crash = {"1": "once", "2": "always"}

    data = {"num_clients": 6} | ({"partition": "iid"} if chunks else {})  # iid: shared data; a restart rebuilds it

    def make(executor):
        experiment = build(
            small_config(
                rounds=1,
                data=data,
                population={"participation": "always"},
                client={"algorithm": CrashyClient.name},
                executor=executor,
            )
        )
        configure = experiment.engine.strategy.configure
        extra = {"_crash": crash, "_crash_dir": str(tmp_path), "_driver_pid": os.getpid()}
        monkeypatch.setattr(
            experiment.engine.strategy,
            "configure",
            lambda state, cid, now: configure(state, cid, now) | {"_client_id": cid, **extra},
        )
        return experiment

    reference, params, serial_summary = history(make({"threads": 1}))
    assert serial_summary["dropouts"] == 1  # client 2 raises

    experiment = make({"name": "ray", "workers": 2, "threads": 1, **chunks})
    executor = experiment.executor
    assert executor.actor_data == (["shared"] * 2 if chunks else ["rebuilt"] * 2)
    with caplog.at_level(logging.WARNING, logger="fedsim"):
        rows, final, summary = history(experiment)
    # client 1 killed its worker once and its retry succeeded; client 2 killed it again when
    # retried alone -> dropout. Other jobs in flight on a dying worker are retried too.
    assert summary["dropouts"] == 1
    assert rows == reference
    assert torch.equal(final, params)
    if chunks:  # clients 1 and 2 share the first chunk: one death for both, one more for client 2 alone
        assert executor.deaths == 2 and executor.retries == 3 and executor.jobs_sent == 6 + 3
    else:
        assert executor.deaths == 3 and executor.retries >= 2
    assert (tmp_path / "died-1").exists()
    text = caplog.text
    assert "ray worker process died" in text and "retrying each of these jobs once" in text
    assert "again running client 2 (version 0) alone; counting it as a dropout" in text
    assert "again running client 1" not in text
    assert "client 2 dropped" in text  # the engine's dropout log


# ------------------------------------------------------------------------------ GPUs


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU error")
@pytest.mark.timeout(60)
def test_gpus_per_client_without_gpu_fails_early(local_ray, small_config):
    spec = WorkerSpec(task=task_spec(small_config()), client="sgd")
    with pytest.raises(ValueError, match=r"^executor.gpus_per_client=0.25 but the Ray cluster has no GPUs$"):
        RayExecutor(spec, workers=2, gpus_per_client=0.25)
    assert ray.is_initialized()  # not ours: left running


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU error")
@pytest.mark.timeout(120)
def test_cli_gpus_per_client_without_gpu_exits_2_with_one_line(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "fedsim",
            "run",
            "--executor",
            "ray",
            "--gpus-per-client",
            "0.25",
            "--rounds",
            "1",
            "--quiet",
            "--no-tensorboard",
            "--out",
            str(tmp_path / "run"),
        ],
        capture_output=True,
        text=True,
        timeout=110,
        cwd=ROOT,
    )
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(
        "fedsim: error: executor.gpus_per_client=0.25 but the Ray cluster has no GPUs"
    ), proc.stderr


# ------------------------------------------------------------------------------ addresses


@pytest.mark.timeout(60)
def test_dead_or_stale_addresses_fail_fast_with_one_line(tmp_path, monkeypatch):
    port = free_port()
    start = time.monotonic()
    with pytest.raises(ValueError, match=rf"executor.ray_address=127.0.0.1:{port}: no Ray cluster reachable"):
        resolve_ray_address(f"127.0.0.1:{port}")
    # a killed head leaves its address in <RAY_TMPDIR>/ray/ray_current_cluster
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path))
    with pytest.raises(ValueError, match="no running Ray cluster was found"):
        resolve_ray_address("auto")
    (tmp_path / "ray").mkdir()
    (tmp_path / "ray" / "ray_current_cluster").write_text(f"127.0.0.1:{port}")
    with pytest.raises(ValueError, match="stale after a killed head"):
        resolve_ray_address("auto")
    monkeypatch.setenv("RAY_ADDRESS", f"127.0.0.1:{port}")
    with pytest.raises(ValueError, match="RAY_ADDRESS"):
        resolve_ray_address("auto")
    with pytest.raises(ValueError, match="expected 'auto' or host:port"):
        resolve_ray_address("nonsense")
    assert time.monotonic() - start < 30


# ------------------------------------------------------------------------------ multi-node cluster


# Ray refuses multi-node clusters in its loopback mode (tests/conftest.py turns that mode on for
# the single-node tests), so the two nodes of this test run in Ray's cluster mode, where Ray
# advertises this machine's own interface address; every process and all traffic stay on this machine.
CLUSTER_MODE = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "1"}


def _start_node(args: list[str], log: Path) -> subprocess.Popen:
    ray_cli = Path(sys.executable).with_name("ray")
    with open(log, "w") as out:
        return subprocess.Popen(
            [str(ray_cli), "start", *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=os.environ | CLUSTER_MODE,
            start_new_session=True,
        )  # own process group: stopped by its id below


def _stop_node(proc: subprocess.Popen) -> None:
    """SIGTERM the `ray start --block` process group we created (it stops its raylet, GCS...)."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait(timeout=10)


def _leftover_pids(marker: str) -> list[int]:
    out = subprocess.run(["ps", "-eo", "pid=,args="], capture_output=True, text=True).stdout
    return [int(line.split(None, 1)[0]) for line in out.splitlines() if marker in line]


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_existing_two_node_cluster_spreads_actors_over_both_nodes(_ray_module, monkeypatch, small_config):
    if ray.is_initialized():  # this test connects like a fresh driver would
        ray.shutdown()
    # the driver must agree with the nodes on cluster mode (read at ray import, so patch the constant)
    monkeypatch.setattr(ray._private.ray_constants, "ENABLE_RAY_CLUSTER", True)
    monkeypatch.setenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "1")
    tmp = Path(tempfile.mkdtemp(prefix="fsray"))  # short: Ray's socket paths must stay < 108 chars
    port = free_port()
    common = [
        "--node-ip-address=127.0.0.1",
        "--num-cpus=1",
        "--num-gpus=0",
        "--disable-usage-stats",
        "--object-store-memory=100000000",
        "--block",
    ]
    nodes: list[subprocess.Popen] = []
    try:
        nodes.append(
            _start_node(
                [
                    "--head",
                    f"--port={port}",
                    "--include-dashboard=false",
                    f"--ray-client-server-port={free_port()}",
                    f"--dashboard-agent-listen-port={free_port()}",
                    f"--temp-dir={tmp / 'head' / 'ray'}",
                    *common,
                ],
                tmp / "head.log",
            )
        )
        address_file = tmp / "head" / "ray" / "ray_current_cluster"
        deadline = time.monotonic() + 90
        while not address_file.exists():
            assert nodes[0].poll() is None, (tmp / "head.log").read_text()[-2000:]
            assert time.monotonic() < deadline, "head node did not start within 90 s"
            time.sleep(0.25)
        nodes.append(
            _start_node(
                [
                    f"--address=127.0.0.1:{port}",
                    f"--dashboard-agent-listen-port={free_port()}",
                    f"--temp-dir={tmp / 'node' / 'ray'}",
                    *common,
                ],
                tmp / "node.log",
            )
        )

        # batched chunks on both nodes, the task's data shipped once per node through the object store
        values = {"rounds": 2, "data": {"partition": "iid"}, "population": {"clients_per_round": 8}}
        reference, params, _ = history(build(small_config(**values, executor={"name": "vmap", "threads": 1})))
        # each node has 1 CPU and each actor needs 1: the two actors must land on different nodes
        experiment = build(
            small_config(
                **values,
                executor={
                    "name": "ray",
                    "workers": 2,
                    "threads": 1,
                    "ray_address": f"127.0.0.1:{port}",
                    "ray_inner": "vmap",
                    "chunk_size": 2,
                },
            )
        )
        executor = experiment.executor
        assert ray.is_initialized()
        assert len(set(executor.actor_nodes)) == 2
        assert executor.actor_data == ["shared", "shared"]
        for uris in executor.actor_py_modules:  # fedsim, strategies, clients shipped via runtime_env
            assert len(uris) == 3 and all(uri.startswith("gcs://") for uri in uris), uris
        assert len(ray.nodes()) == 2
        close, executor.close = executor.close, lambda: None  # read the actors' counters before closing
        rows, final, _ = history(experiment)
        stats = executor.actor_stats()
        close()  # actors killed, driver disconnected
        assert not ray.is_initialized()
        assert rows == reference and torch.equal(final, params)
        assert {s["node_id"] for s in stats} == set(executor.actor_nodes)  # chunks ran on both nodes...
        assert all(s["calls"] >= 1 and s["jobs"] > s["calls"] for s in stats), stats  # ...several jobs per call
    finally:
        if ray.is_initialized():
            ray.shutdown()
        for proc in reversed(nodes):
            _stop_node(proc)
        time.sleep(1)
        for pid in _leftover_pids(str(tmp)):  # only processes started for this test's own temp dir
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    assert not _leftover_pids(str(tmp))
    # the killed head left a stale address file: "auto" reports it in seconds, a local start ignores it
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setenv("RAY_TMPDIR", str(tmp / "head"))
    with pytest.raises(ValueError, match="stale"):
        resolve_ray_address("auto")
    shutil.rmtree(tmp, ignore_errors=True)
