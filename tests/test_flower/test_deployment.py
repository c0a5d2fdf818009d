"""A real Flower deployment on loopback: one SuperLink, two SuperNodes, the fedsim App via `flwr run`.

Every process the test starts gets its own session; whatever happens, everything in those
sessions (and any descendant that left them) is stopped by process id at the end.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
APP = REPO / "experiments" / "flower_app"
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def processes() -> dict[int, tuple[int, int]]:
    """pid -> (parent pid, session id) for every process we can see."""
    table = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            table[int(entry.name)] = (int(fields[1]), int(fields[3]))
    return table


def stop_all(started: list[subprocess.Popen]) -> None:
    """SIGTERM, then SIGKILL, every started process, its descendants and its session."""
    roots = {p.pid for p in started}
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for _ in range(2):  # a second pass catches children spawned while we were killing
            table = processes()
            doomed = {pid for pid, (_, sid) in table.items() if sid in roots} | roots
            changed = True
            while changed:
                children = {pid for pid, (ppid, _) in table.items() if ppid in doomed} - doomed
                changed = bool(children)
                doomed |= children
            for pid in doomed:
                try:
                    os.kill(pid, sig)
                except (ProcessLookupError, PermissionError):
                    pass
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(p.poll() is None for p in started):
            time.sleep(0.2)
    for p in started:
        p.wait(timeout=5)


def wait_for_port(port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.5)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout:.0f} s")


@pytest.mark.slow
def test_superlink_two_supernodes_and_flwr_run(tmp_path):
    home = tmp_path / "flwr-home"
    home.mkdir()
    env = os.environ | {
        "FLWR_HOME": str(home),
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
        "FLWR_DISABLE_UPDATE_CHECK": "1",
        "FLWR_TELEMETRY_ENABLED": "0",
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    link = free_port()
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "loopback"\n\n[superlink.loopback]\naddress = "127.0.0.1:{link}"\ninsecure = true\n'
    )
    out = tmp_path / "run"
    started: list[subprocess.Popen] = []

    def start(name: str, *args: str) -> subprocess.Popen:
        log = open(tmp_path / f"{name}.log", "w")
        process = subprocess.Popen(
            [str(BIN / args[0]), *args[1:]],
            env=env,
            cwd=tmp_path,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        started.append(process)
        return process

    try:
        start("superlink", "flower-superlink", "--insecure", "--host", "127.0.0.1", "--port", str(link))
        wait_for_port(link, timeout=90)
        for i in range(2):
            start(
                f"supernode{i}",
                "flower-supernode",
                "--insecure",
                "--superlink",
                f"127.0.0.1:{link}",
                "--port",
                str(free_port()),
                "--node-config",
                f"partition-id={i} num-partitions=2",
            )
        run_config = (
            f"rounds=2 data.num_clients=2 population.participation='always' eval.every=1 "
            f"flower.min_nodes=2 output.out='{out}'"
        )
        submit = subprocess.run(
            [str(BIN / "flwr"), "run", str(APP), "loopback", "--run-config", run_config],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert submit.returncode == 0, submit.stdout + submit.stderr
        summary_file = out / "flower_summary.json"
        deadline = time.monotonic() + 420
        while not summary_file.exists() and time.monotonic() < deadline:
            assert all(p.poll() is None for p in started), "a Flower process exited early"
            time.sleep(1.0)
        assert summary_file.exists(), (tmp_path / "superlink.log").read_text()[-3000:]
    finally:
        stop_all(started)

    summary = json.loads(summary_file.read_text())
    assert [r["participants"] for r in summary["train"]] == [2, 2]
    assert summary["clients_indexed"] == 2
    accuracy = {int(r): m["test_accuracy"] for r, m in summary["eval"].items()}
    assert accuracy[2] > accuracy[0]
