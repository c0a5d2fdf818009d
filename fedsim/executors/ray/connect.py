"""Starting Ray: a fresh quiet local instance, or a probed connection to an existing cluster."""

from __future__ import annotations

import logging
import os
import socket
import time
import warnings
from pathlib import Path
from typing import Any

log = logging.getLogger("fedsim")


def ray_init(**kwargs: Any) -> None:
    """``ray.init`` quietly: no dashboard, no usage stats, warnings only, worker output not forwarded."""
    import ray  # noqa: PLC0415

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # offline simulator: no usage reporting
    with warnings.catch_warnings():
        # Ray 2.x warns at every init that a future version will stop hiding GPUs from actors
        # with num_gpus=0; fedsim relies on neither behaviour (CPU actors never touch cuda).
        warnings.filterwarnings("ignore", message=".*no longer override accelerator", category=FutureWarning)
        ray.init(include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False, **kwargs)


def init_local_ray(num_cpus: int | None = None, **kwargs: Any) -> None:
    """Start a fresh, quiet local Ray instance in this process.

    Always ``address="local"``: never joins whatever ``RAY_ADDRESS`` or a (possibly stale)
    ``ray_current_cluster`` file points to.
    """
    log.info("ray: starting a local Ray instance (%s CPUs; usually 5-30 s)...", num_cpus or "all")
    start = time.monotonic()
    ray_init(address="local", num_cpus=num_cpus, **kwargs)
    log.info("ray: local instance up in %.1f s", time.monotonic() - start)


def _address_file() -> Path:
    """Where ``ray start`` records the last cluster it started (what ``address="auto"`` reads)."""
    try:
        from ray._common.utils import get_ray_address_file  # noqa: PLC0415  (Ray-internal, may move)

        return Path(get_ray_address_file(None))
    except ImportError:
        root = os.environ.get("RAY_TMPDIR") or os.environ.get("TMPDIR") or "/tmp"
        return Path(root) / "ray" / "ray_current_cluster"


def resolve_ray_address(address: str, probe_timeout: float = 5.0) -> str:
    """Return a connectable ``host:port`` (or ``ray://...``); ValueError with one line if none answers.

    "auto" means ``RAY_ADDRESS``, else the address Ray's last ``ray start`` wrote to
    ``/tmp/ray/ray_current_cluster``. The address is probed with a TCP connect, because
    ``ray.init`` keeps retrying a dead address for minutes.
    """
    source = f"executor.ray_address={address}"
    if address == "auto":
        env = os.environ.get("RAY_ADDRESS", "").strip()
        file = _address_file()
        if env and env not in ("auto", "local"):
            address, source = env, f"executor.ray_address=auto (RAY_ADDRESS={env})"
        elif file.is_file() and file.read_text().strip():
            address = file.read_text().strip()
            source = f"executor.ray_address=auto ({file} says {address}; stale after a killed head?)"
        else:
            raise ValueError(
                "executor.ray_address=auto but no running Ray cluster was found (RAY_ADDRESS unset, "
                f"no {file}); start one with `ray start --head` or pass host:port"
            )
    hostport = address.split("://", 1)[1] if "://" in address else address
    host, sep, port = hostport.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"{source}: expected 'auto' or host:port")
    try:
        with socket.create_connection((host, int(port)), timeout=probe_timeout):
            pass
    except OSError as exc:
        raise ValueError(f"{source}: no Ray cluster reachable at {host}:{port} ({exc.strerror or exc})") from None
    return address


def first_line(exc: BaseException, limit: int = 300) -> str:
    text = str(exc).strip().splitlines()
    line = text[0] if text else type(exc).__name__
    return line[:limit]


def describe_error(exc: BaseException) -> str:
    """One line: the underlying cause of a Ray error, without Ray's multi-line boilerplate."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, BaseException) and cause is not exc:
        return f"{type(cause).__name__}: {first_line(cause)}"
    return f"{type(exc).__name__}: {first_line(exc)}"
