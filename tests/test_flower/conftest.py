"""An in-process Flower Grid: ClientApps called directly, one Context per node (no Ray, no network)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable

# No telemetry, no update checks, no reinstalling the app's dependencies (offline)
for _name in ("FLWR_TELEMETRY_ENABLED", "FLWR_DISABLE_UPDATE_CHECK", "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION"):
    os.environ.setdefault(_name, "0" if _name == "FLWR_TELEMETRY_ENABLED" else "1")

import pytest
from flwr.app import Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.supercore.task_identity import TaskIdentity


class InProcessGrid:
    """``nodes``: node id -> node config. ``silent(node_id, message)`` -> True: that node sends no reply."""

    def __init__(self, app: ClientApp, nodes: dict[int, dict], silent: Callable[[int, Message], bool] | None = None):
        self.app = app
        self.nodes = dict(nodes)
        self.silent = silent or (lambda node_id, message: False)
        self.contexts = {
            n: Context(run_id=1, node_id=n, node_config=c, state=RecordDict(), run_config={}) for n, c in nodes.items()
        }
        self.sent: list[Message] = []

    def connect(self, node_id: int, node_config: dict) -> None:
        self.nodes[node_id] = node_config
        self.contexts[node_id] = Context(
            run_id=1, node_id=node_id, node_config=node_config, state=RecordDict(), run_config={}
        )

    def disconnect(self, node_id: int) -> None:
        del self.nodes[node_id]

    def get_node_ids(self) -> Iterable[int]:
        return list(self.nodes)

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> list[Message]:
        replies = []
        for message in messages:
            self.sent.append(message)
            node_id = message.metadata.dst_node_id
            if node_id not in self.nodes or self.silent(node_id, message):
                continue
            try:
                replies.append(self.app(message, self.contexts[node_id]))
            except Exception as exc:  # noqa: BLE001  (as Flower's runtime does: the exception becomes an error reply)
                replies.append(Message(Error(code=0, reason=f"{type(exc).__name__}: {exc}"), reply_to=message))
        return replies


@pytest.fixture(autouse=True)
def task_identity():
    """Messages need a run id and a source node; the simulation runtime sets these for its ServerApp."""
    saved = (TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id)
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, SUPERLINK_NODE_ID
    yield
    TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id = saved
