"""Reading pickled data files without letting them run code or corrupt memory.

``pickle.load`` calls whatever callable a file names (``os.system`` included), so every
pickle fedsim reads (CIFAR-10 batches, FedScale availability traces) goes through
:func:`load`. Its unpickler only admits plain containers, numbers, strings and bytes, and
numpy arrays, scalars and dtypes of numeric, bool, bytes or str type. Anything else, a
truncated file or a file that is not a pickle raises :class:`DataFileError` with one line
naming the file. Torch files are read with ``torch.load(weights_only=True)``, torch's own
restricted unpickler.

numpy's own pickle hooks are not safe on hostile input: ``dtype.__setstate__`` trusts the
flags in the file (a bytes dtype can be marked as holding objects) and an object array's
``__setstate__`` reads past a short list, so a crafted file crashes the process or reads
arbitrary memory. fedsim therefore never lets numpy unpickle itself: the numpy names in a
pickle resolve to stand-ins that record their arguments, and :func:`load` rebuilds every
array from its raw bytes with a dtype made afresh from its type string, after checking that
the bytes match the declared shape. Callables that allocate what their argument says
(``bytearray(10**12)``, ``numpy.ndarray(shape)``) are refused.
"""

from __future__ import annotations

import math
import pickle
from collections import OrderedDict
from pathlib import Path
from typing import Any, BinaryIO, ClassVar

import numpy as np

__all__ = ["DataFileError", "load", "SafeUnpickler"]


class DataFileError(ValueError):
    """A data file fedsim cannot use; the message is one line and names the file."""


_NUMPY_CORE = ("numpy.core.multiarray", "numpy._core.multiarray")
_NUMERIC_KINDS = "biufcSU"  # bool, signed, unsigned, float, complex, bytes, str: never objects


class _NdarrayName:
    """What the name ``numpy.ndarray`` unpickles to: only ``_reconstruct`` may use it."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise pickle.UnpicklingError("refusing to call numpy.ndarray (it allocates whatever shape the file says)")


_NDARRAY = _NdarrayName()


class _PickledDtype:
    """A dtype as the file describes it; :func:`_plain_dtype` turns it into a fresh, checked one."""

    __hash__ = None  # type: ignore[assignment]  (never a dict key or set member)

    def __init__(self, spec: Any, align: Any = False, copy: Any = True):
        # copy=True always: setting the state of numpy's shared built-in dtypes would change them process-wide
        self.dtype = np.dtype(spec, align=bool(align), copy=True)

    def __setstate__(self, state: Any) -> None:
        self.dtype.__setstate__(state)  # only read back through .str, so forged flags go nowhere


class _PickledArray:
    """An ndarray as the file describes it (``_reconstruct`` then ``__setstate__``); rebuilt by :func:`load`."""

    __hash__ = None  # type: ignore[assignment]

    def __init__(self) -> None:
        self.array: np.ndarray | None = None

    def __setstate__(self, state: Any) -> None:
        if not isinstance(state, tuple) or len(state) not in (4, 5):
            raise pickle.UnpicklingError("malformed numpy array state")
        shape, dtype, fortran, raw = state[-4:]
        self.array = _array_from_bytes(raw, dtype, shape, "F" if fortran else "C")


def _plain_dtype(spec: Any) -> np.dtype:
    """A new dtype made from the type string of ``spec``; refuses objects, records, sub-arrays and voids."""
    dtype = spec.dtype if isinstance(spec, _PickledDtype) else None
    if isinstance(spec, (str, bytes)):
        dtype = np.dtype(spec.decode("latin1") if isinstance(spec, bytes) else spec)
    if dtype is None or dtype.kind not in _NUMERIC_KINDS or dtype.fields is not None or dtype.subdtype is not None:
        raise pickle.UnpicklingError(
            f"refusing numpy dtype {dtype if dtype is not None else type(spec).__name__} "
            "(only numeric, bool, bytes and str arrays are allowed)"
        )
    return np.dtype(dtype.str)


def _array_from_bytes(raw: Any, dtype: Any, shape: Any, order: Any) -> np.ndarray:
    dtype = _plain_dtype(dtype)
    if not isinstance(shape, tuple) or not all(isinstance(n, int) and n >= 0 for n in shape):
        raise pickle.UnpicklingError(f"malformed numpy array shape {shape!r}")
    if isinstance(raw, str):  # Python 2 pickles read with encoding="latin1"
        raw = raw.encode("latin1")
    if not isinstance(raw, (bytes, bytearray, pickle.PickleBuffer)) or order not in ("C", "F"):
        raise pickle.UnpicklingError("numpy array data must be raw bytes")
    size = memoryview(raw).nbytes
    if size != math.prod(shape) * dtype.itemsize:
        raise pickle.UnpicklingError(f"numpy array of shape {shape} and dtype {dtype} does not match its {size} bytes")
    return np.frombuffer(raw, dtype=dtype).reshape(shape, order=order).copy(order="K")  # a writable copy


def _reconstruct(subtype: Any, shape: Any, dtype: Any) -> _PickledArray:
    if subtype is not _NDARRAY or not isinstance(shape, tuple) or math.prod(shape) != 0:
        raise pickle.UnpicklingError("refusing numpy _reconstruct other than the empty ndarray numpy pickles write")
    return _PickledArray()


def _frombuffer(buf: Any, dtype: Any, shape: Any, order: Any) -> np.ndarray:
    return _array_from_bytes(buf, dtype, shape, order)


def _scalar(dtype: Any, raw: Any = None) -> Any:
    return _array_from_bytes(raw, dtype, (), "C")[()]


def _sized(kind: type) -> Any:
    def make(*args: Any) -> Any:
        if args and isinstance(args[0], int):
            raise pickle.UnpicklingError(f"refusing {kind.__name__}(<size>) (it allocates whatever size the file says)")
        return kind(*args)

    return make


def _encode(text: Any, encoding: Any = "utf-8") -> bytes:
    # pickle protocol 2 stores bytes as _codecs.encode(latin-1 text, "latin1"); other codecs are not data
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(f"refusing _codecs.encode with encoding {encoding!r}")
    return text.encode("latin1")


class SafeUnpickler(pickle.Unpickler):
    """An unpickler that maps a short list of data-type names to checked stand-ins and refuses all else."""

    ALLOWED: ClassVar[dict[tuple[str, str], Any]] = {
        ("collections", "OrderedDict"): OrderedDict,
        ("_codecs", "encode"): _encode,
        ("builtins", "set"): set,
        ("builtins", "frozenset"): frozenset,
        ("builtins", "bytearray"): _sized(bytearray),
        ("builtins", "bytes"): _sized(bytes),  # protocol 2 writes b"" as bytes()
        ("builtins", "complex"): complex,
        ("numpy", "dtype"): _PickledDtype,
        ("numpy", "ndarray"): _NDARRAY,
        **{(module, "scalar"): _scalar for module in _NUMPY_CORE},
        **{(module, "_reconstruct"): _reconstruct for module in _NUMPY_CORE},
        ("numpy.core.numeric", "_frombuffer"): _frombuffer,
        ("numpy._core.numeric", "_frombuffer"): _frombuffer,
    }

    def find_class(self, module: str, name: str) -> Any:
        module = "builtins" if module == "__builtin__" else module  # Python 2 pickles
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} (only plain data is allowed)")
        return self.ALLOWED[module, name]

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("refusing a persistent id (only plain data is allowed)")

    def load(self) -> Any:
        return _finish(super().load(), {})


def _finish(obj: Any, done: dict[int, Any]) -> Any:
    """``obj`` with every stand-in replaced by the array or dtype it describes (shared objects stay shared)."""
    if id(obj) in done:
        return done[id(obj)]
    if isinstance(obj, _PickledArray):
        if obj.array is None:
            raise pickle.UnpicklingError("a numpy array without data")
        result: Any = obj.array
    elif isinstance(obj, _PickledDtype):
        result = _plain_dtype(obj)
    elif isinstance(obj, _NdarrayName):
        raise pickle.UnpicklingError("a bare numpy.ndarray name is not data")
    elif isinstance(obj, list):
        done[id(obj)] = obj
        obj[:] = [_finish(item, done) for item in obj]
        return obj
    elif isinstance(obj, dict):  # keys are hashable, so never stand-ins
        done[id(obj)] = obj
        for key in obj:
            obj[key] = _finish(obj[key], done)
        return obj
    elif isinstance(obj, tuple):
        result = tuple(_finish(item, done) for item in obj)
    else:  # numbers, strings, bytes, sets (whose members are hashable: no stand-ins), arrays already built
        return obj
    done[id(obj)] = result
    return result


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
