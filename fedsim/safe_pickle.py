"""Reading pickled data files without letting them run code.

``pickle.load`` calls whatever callable a file names (``os.system`` included), so every
pickle fedsim reads (CIFAR-10 batches, FedScale availability traces) goes through
:func:`load`, whose unpickler only admits plain containers, numbers, strings, bytes and
numpy arrays and scalars. Anything else, a truncated file or a file that is not a pickle
raises :class:`DataFileError` with one line naming the file. Torch files are read with
``torch.load(weights_only=True)``, torch's own restricted unpickler.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any, BinaryIO

__all__ = ["DataFileError", "load", "SafeUnpickler"]


class DataFileError(ValueError):
    """A data file fedsim cannot use; the message is one line and names the file."""


class SafeUnpickler(pickle.Unpickler):
    """An unpickler that refuses every global outside a short list of data types."""

    ALLOWED = frozenset({
        ("collections", "OrderedDict"),
        ("_codecs", "encode"),  # protocol-2 pickles store bytes through it
        ("builtins", "set"),
        ("builtins", "frozenset"),
        ("builtins", "bytearray"),
        ("builtins", "complex"),
        ("numpy", "dtype"),
        ("numpy", "ndarray"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
    })

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} (only plain data is allowed)")
        return super().find_class(module, name)

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("refusing a persistent id (only plain data is allowed)")


def load(file: str | Path | BinaryIO, what: str = "pickle file", encoding: str = "ASCII") -> Any:
    """Unpickle plain data from ``file``; anything else -> DataFileError naming ``what`` and the file.

    ``encoding`` is passed to the unpickler (``"bytes"`` for Python 2 pickles such as the
    CIFAR-10 batches).
    """
    name = str(file) if isinstance(file, (str, Path)) else str(getattr(file, "name", "<stream>"))
    try:
        if isinstance(file, (str, Path)):
            with open(file, "rb") as f:
                return SafeUnpickler(f, encoding=encoding).load()
        return SafeUnpickler(file, encoding=encoding).load()
    except OSError as exc:
        raise DataFileError(f"{what} {name}: cannot read it ({exc.strerror or exc})") from None
    except MemoryError:
        raise DataFileError(f"{what} {name}: too large to load") from None
    except EOFError:
        raise DataFileError(f"{what} {name} is truncated or empty") from None
    except Exception as exc:  # noqa: BLE001  (anything the unpickler raises means: not usable data)
        message = str(exc).splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataFileError(f"{what} {name} is not a readable data pickle: {message}") from None
