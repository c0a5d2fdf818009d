"""A small name -> object registry with one-line descriptions.

Used for tasks, partitioners and other pluggable pieces so configs can name them and
errors can list the valid choices.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable
from typing import Any, Generic, TypeVar

__all__ = ["Registry", "UnknownNameError", "unknown_name_message"]

T = TypeVar("T")


class UnknownNameError(KeyError):
    """Raised by :meth:`Registry.get` for a name that was never registered."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:  # KeyError would wrap the message in quotes
        return self.message


def unknown_name_message(kind: str, name: str, choices: Iterable[str]) -> str:
    """ "unknown KIND 'NAME' (did you mean 'X'?); valid choices: ..." -- the hint only when a choice is close."""
    choices = list(choices)
    close = difflib.get_close_matches(str(name), choices, n=3, cutoff=0.6)
    hint = f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""
    return f"unknown {kind} {name!r}{hint}; valid choices: {', '.join(choices)}"


class Registry(Generic[T]):
    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, tuple[T, str]] = {}
        self._options: dict[str, Any] = {}

    def register(self, name: str, description: str, options: Any = None) -> Callable[[T], T]:
        """Decorator registering its target under ``name``; returns the target unchanged.

        ``options`` says what the entry takes, for ``fedsim show``: a dict of option -> default
        (task options) or a tuple of the dotted config keys it reads (participation models).
        """

        def decorator(obj: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._entries[name] = (obj, description)
            if options is not None:
                self._options[name] = options
            return obj

        return decorator

    def options(self, name: str) -> Any:
        """What ``register(..., options=...)`` recorded for ``name`` (None if nothing)."""
        self.get(name)
        return self._options.get(name)

    def description(self, name: str) -> str:
        self.get(name)
        return self._entries[name][1]

    def get(self, name: str) -> T:
        try:
            return self._entries[name][0]
        except KeyError:
            raise UnknownNameError(unknown_name_message(self.kind, name, self.names())) from None

    def names(self) -> list[str]:
        return sorted(self._entries)

    def describe(self) -> list[tuple[str, str]]:
        return [(name, self._entries[name][1]) for name in self.names()]

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __len__(self) -> int:
        return len(self._entries)
