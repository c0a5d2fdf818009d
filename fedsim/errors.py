"""Errors that end a run, light to import (the CLI maps them to exit codes without importing torch)."""

from __future__ import annotations

__all__ = ["RunFailed"]


class RunFailed(RuntimeError):
    """The run crashed (e.g. a bug in client code); the message is one line, the traceback is in log.txt."""
