"""Hostile data files: every loader checks declared sizes before allocating and refuses data that
would train silently wrong, with one line naming the file (and the array) - exit 2 from the CLI."""

import gzip
import io
import json
import pickle
import re
import resource
import struct
import zipfile

import numpy as np
import pytest

from fedsim.cli import main
from fedsim.safe_pickle import DataFileError
from fedsim.safe_pickle import load as safe_load
from fedsim.tasks import TaskSpec, build_task, files


def npy(array=None, *, shape=None, dtype="<f4", data=b"") -> bytes:
    """An .npy file: ``array`` saved by numpy, or a hand-made header declaring ``shape`` followed by ``data``."""
    buffer = io.BytesIO()
    if array is not None:
        np.save(buffer, array, allow_pickle=True)
        return buffer.getvalue()
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False, "shape": shape}
    np.lib.format.write_array_header_1_0(buffer, header)
    return buffer.getvalue() + data


def write_npz(path, compression=zipfile.ZIP_STORED, **members) -> str:
    with zipfile.ZipFile(path, "w", compression) as archive:
        for name, content in members.items():
            archive.writestr(f"{name}.npy", content if isinstance(content, bytes) else npy(content))
    return str(path)


X, Y = np.ones((8, 2), np.float32), np.arange(8) % 2  # a valid pair


def npz_error(path) -> str:
    with pytest.raises(DataFileError) as info:
        files.load_npz(path)
    message = str(info.value)
    assert "\n" not in message and str(path) in message
    return message


# ---------------------------------------------------------------- declared sizes: nothing allocated first


def test_truncated_npz_is_one_line(tmp_path):
    np.savez(tmp_path / "ok.npz", x=X, y=Y)
    raw = (tmp_path / "ok.npz").read_bytes()
    (tmp_path / "cut.npz").write_bytes(raw[: len(raw) // 2])
    assert "cannot read it as an .npz file" in npz_error(tmp_path / "cut.npz")


def test_header_claiming_1e14_values_is_refused_before_allocating(tmp_path):
    path = write_npz(tmp_path / "d.npz", x=npy(shape=(10**14, 1), data=bytes(64)), y=Y)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    assert (
        "x.npy declares shape (100000000000000, 1) of float32 (400000000000000 bytes) but holds 64 bytes"
        in npz_error(path)
    )
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 100_000  # KiB: nothing big was touched


def test_labels_header_claiming_1e11_entries_is_refused(tmp_path):
    path = write_npz(tmp_path / "d.npz", x=X, y=npy(shape=(10**11,), dtype="<i8", data=bytes(64)))
    assert "y.npy declares shape (100000000000,) of int64" in npz_error(path)


def test_honest_sizes_over_the_memory_limit_are_refused(tmp_path, monkeypatch):
    # a deflated member whose zip directory and header agree (a zip bomb): only the limit stops it
    path = write_npz(
        tmp_path / "bomb.npz", zipfile.ZIP_DEFLATED, x=np.zeros((4096, 64), np.float32), y=np.arange(4096) % 2
    )
    monkeypatch.setattr(files, "data_memory_limit", lambda: 1_000_000)
    assert "x declares shape (4096, 64)" in npz_error(path) and "half the physical memory" in npz_error(path)


def test_zip_directory_larger_than_the_member_is_refused(tmp_path):
    path = tmp_path / "d.npz"
    np.savez(path, x=X, y=Y)
    raw = bytearray(path.read_bytes())
    entry = raw.find(b"PK\x01\x02")  # first central directory entry: x.npy
    size = struct.unpack("<I", raw[entry + 24 : entry + 28])[0]
    raw[entry + 24 : entry + 28] = struct.pack("<I", size + 1000)  # its uncompressed size
    path.write_bytes(raw)
    assert "x.npy declares shape (8, 2) of float32 (64 bytes) but holds 1064 bytes" in npz_error(path)


def test_idx_header_larger_than_memory_is_refused_before_reading(tmp_path, monkeypatch):
    path = tmp_path / "train-images-idx3-ubyte.gz"
    with gzip.open(path, "wb") as f:  # 4 MiB of zeros: a few KiB on disk
        f.write(b"\x00\x00\x08\x03" + struct.pack(">3I", 5350, 28, 28) + bytes(5350 * 28 * 28))
    monkeypatch.setattr(files, "data_memory_limit", lambda: 1_000_000)
    with pytest.raises(DataFileError, match=r"train-images-idx3-ubyte\.gz declares shape \(5350, 28, 28\)"):
        files.read_idx(path)


def test_idx_header_promising_more_than_the_file_holds(tmp_path):
    path = tmp_path / "imgs"
    path.write_bytes(b"\x00\x00\x08\x03" + struct.pack(">3I", 4_000_000_000, 28, 28) + bytes(100))
    with pytest.raises(DataFileError, match="imgs is truncated: its header promises 3136000000000 values"):
        files.read_idx(path)


# ---------------------------------------------------------------- npz values that would train silently wrong


@pytest.mark.parametrize(
    "members, message",
    [
        ({"x": np.array([[1, 2]] * 8, dtype=object), "y": Y}, "x.npy is an object array (a pickle)"),
        ({"x": np.array([[np.nan, 1]] * 8), "y": Y}, "x has 8 NaN values; features must be finite"),
        ({"x": np.array([[np.inf, 1]] * 8), "y": Y}, "x has 8 infinite values; features must be finite"),
        ({"x": np.full((8, 2), 1e300), "y": Y}, "x has 16 values beyond float32's range"),
        ({"x": np.ones((8, 2), np.complex64), "y": Y}, "x has complex values; features must be real numbers"),
        ({"x": np.full((8, 2), "a"), "y": Y}, "x has dtype <U1; features must be numbers"),
        ({"x": np.ones((8, 1, 1, 2, 2)), "y": Y}, "x has shape (8, 1, 1, 2, 2); features must be"),
        ({"x": np.ones((8,)), "y": Y}, "x has shape (8,); features must be"),
        ({"x": np.ones((8, 32, 32, 3)), "y": Y}, "images must be square and channels-first"),
        ({"x": np.ones((8, 0)), "y": Y}, "its rows hold no values"),
        ({"x": np.ones((0, 2)), "y": Y[:0]}, "x has no rows"),
        ({"x": X, "y": np.arange(7) % 2}, "x has 8 rows but y has 7"),
        ({"x": X, "y": Y.reshape(8, 1)}, "y has shape (8, 1); labels must be one value per row"),
        ({"x": X, "y": Y + 0.5}, "y has 8 values with a fraction (e.g. 0.5); labels must be whole numbers"),
        ({"x": X, "y": np.array([0, 1, np.nan, 0, 1, 0, 1, 0])}, "y has 1 NaN values"),
        ({"x": X, "y": Y - 1}, "y has 4 negative values (smallest -1)"),
        ({"x": X, "y": Y.astype(bool)}, "y has dtype bool; labels must be integers"),
        ({"x": X, "y": np.full(8, 3)}, "y has a single class (3); a classifier needs at least two"),
        ({"x": X, "y": Y + 1}, "y has no rows of class 0"),
        ({"x": X, "y": Y * 2**40}, "y has values up to 1099511627776; labels must be below 2**31"),
        ({"x": X, "y": Y, "x_test": X[:2], "y_test": np.array([0, 2])}, "y_test has labels up to 2 but y only 0..1"),
        ({"x": X, "y": Y, "x_test": np.ones((2, 3)), "y_test": Y[:2]}, "x_test rows have shape (3,), x rows (2,)"),
        ({"x": X, "y": Y, "x_test": X[:2]}, "x_test and y_test come together"),
        ({"x": X, "y": Y, "client": np.arange(7)}, "x has 8 rows but client has 7"),
        ({"x": X, "y": Y, "client": -np.arange(8)}, "client has 7 negative values"),
        ({"x": X, "y": Y, "x_tst": X}, "unexpected member 'x_tst.npy'; valid arrays: x, y, client, x_test, y_test"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_npz_data_that_would_train_wrong_is_refused(tmp_path, members, message):
    assert message in npz_error(write_npz(tmp_path / "data.npz", **members))


def test_npz_is_read_without_unpickling(tmp_path):
    class RunsCode:
        def __reduce__(self):
            return (print, ("ran",))

    path = write_npz(tmp_path / "d.npz", x=npy(np.array([RunsCode()] * 8, dtype=object)), y=Y)
    assert "object array" in npz_error(path)


def test_valid_npz_still_loads_with_whole_float_labels(tmp_path):
    arrays = files.load_npz(write_npz(tmp_path / "d.npz", x=X.astype(np.float64), y=Y.astype(np.float64)))
    assert arrays["x"].dtype == np.float32 and arrays["y"].dtype == np.int64 and arrays["y"].tolist() == Y.tolist()


# ---------------------------------------------------------------- the other loaders


def test_cifar_labels_with_fractions_and_non_uint8_pixels_are_refused(tmp_path):
    spec = TaskSpec(name="cifar10", num_clients=2, partition="iid", options={"path": str(tmp_path)})
    for data, labels, message in (
        (np.zeros((2, 3072), np.uint8), [0, 1.5], "'labels' must be a list of integers"),
        (np.full((2, 3072), 300, np.int16), [0, 1], "uint8 array of rows of 3072 pixels"),
    ):
        for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
            (tmp_path / name).write_bytes(pickle.dumps({b"data": data, b"labels": labels}))
        with pytest.raises(DataFileError, match=message):
            build_task(spec)


def test_mnist_with_a_single_class_is_refused(tmp_path):
    for name, array in (("train-images-idx3-ubyte", np.zeros((4, 28, 28))), ("train-labels-idx1-ubyte", np.full(4, 7))):
        (tmp_path / name).write_bytes(
            b"\x00\x00\x08"
            + bytes([array.ndim])
            + struct.pack(f">{array.ndim}I", *array.shape)
            + array.astype(np.uint8).tobytes()
        )
    spec = TaskSpec(name="mnist", num_clients=2, partition="iid", options={"path": str(tmp_path)})
    with pytest.raises(DataFileError, match="MNIST labels in .* a single class \\(7\\)"):
        build_task(spec)


@pytest.mark.parametrize(
    "samples, message",
    [
        ({"x": [[float("nan")] * 784] * 2, "y": [0, 1]}, " has 1568 pixel values that are not finite"),
        ({"x": [[0.0] * 784] * 2, "y": [0, 1.5]}, ": 'y' must be a list of integer labels"),
        ({"x": [[0.0] * 10] * 2, "y": [0, 1]}, r" has inputs of shape \(2, 10\); expected 784 pixels"),
    ],
)
def test_femnist_bad_values_are_refused(tmp_path, samples, message):
    (tmp_path / "a.json").write_text(json.dumps({"users": ["u"], "user_data": {"u": samples}}))
    spec = TaskSpec(name="femnist", num_clients=1, partition="natural", options={"path": str(tmp_path)})
    with pytest.raises(DataFileError, match=r"a\.json: user 'u'" + message):
        build_task(spec)


# ---------------------------------------------------------------- the safe unpickler


def global_name(module: str, name: str) -> bytes:
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


@pytest.mark.parametrize(
    "payload, message",
    [
        (global_name("builtins", "bytearray") + b"(J\x00\x00\x00\x40tR.", "refusing bytearray(<size>)"),
        (global_name("numpy", "ndarray") + b"((J\x00\x00\x00\x40tS'u1'\ntR.", "refusing to call numpy.ndarray"),
        (
            global_name("numpy._core.multiarray", "_reconstruct")
            + b"("
            + global_name("numpy", "ndarray")
            + b"(J\x00\x00\x00\x40tS'u1'\ntR.",
            "refusing numpy _reconstruct",
        ),
        (global_name("_codecs", "encode") + b"(Vabc\nVrot13\ntR.", "refusing _codecs.encode with encoding 'rot13'"),
    ],
    ids=["bytearray", "ndarray", "reconstruct", "codecs"],
)
def test_pickles_that_allocate_what_they_say_are_refused(payload, message):
    with pytest.raises(DataFileError, match=re.escape(message)):
        safe_load(io.BytesIO(payload))


def test_pickled_object_array_cannot_make_numpy_read_past_its_list():
    # numpy's own __setstate__ reads 2*10**7 pointers from a 1-element list here (a segfault)
    from numpy._core.multiarray import _reconstruct

    class ShortObjectArray:
        def __reduce__(self):
            return _reconstruct, (np.ndarray, (0,), b"b"), (1, (2 * 10**7,), np.dtype(object), False, [1])

    with pytest.raises(DataFileError, match="refusing numpy dtype object"):
        safe_load(io.BytesIO(pickle.dumps(ShortObjectArray(), protocol=2)))


def test_forged_dtype_flags_do_not_reach_the_array():
    # dtype.__setstate__ trusts the flags: a void dtype marked as holding objects (0x3F) would make numpy
    # read the 8 bytes as an object pointer; the stand-in refuses void dtypes whatever their flags
    state = (3, "|", None, None, None, 8, 1, 0x3F)

    class ForgedArray:
        def __reduce__(self):
            class Dtype:
                def __reduce__(self):
                    return np.dtype, ("V8", False, True), state

            from numpy._core.multiarray import _reconstruct

            return _reconstruct, (np.ndarray, (0,), b"b"), (1, (1,), Dtype(), False, bytes(8))

    with pytest.raises(DataFileError, match="refusing numpy dtype"):
        safe_load(io.BytesIO(pickle.dumps(ForgedArray(), protocol=2)))


def test_ordinary_numpy_pickles_round_trip_as_plain_arrays():
    data = {
        "f": np.asfortranarray(np.arange(6.0).reshape(2, 3)),
        "be": np.arange(3, dtype=">i4"),
        "s": np.array(["ab", "c"]),
        "scalar": np.float32(1.5),
        "dt": np.dtype("<u2"),
        "empty": np.zeros((0, 5)),
    }
    for protocol in (2, 5):
        loaded = safe_load(io.BytesIO(pickle.dumps(data, protocol=protocol)))
        for key in ("f", "be", "s", "empty"):
            assert type(loaded[key]) is np.ndarray and loaded[key].dtype == data[key].dtype
            np.testing.assert_array_equal(loaded[key], data[key])
            assert loaded[key].flags.writeable
        assert loaded["scalar"] == np.float32(1.5) and loaded["dt"] == np.dtype("<u2")


# ---------------------------------------------------------------- through the CLI: exit 2, one line


@pytest.mark.parametrize(
    "members, message",
    [
        ({"x": npy(shape=(10**14, 1), data=bytes(64)), "y": Y}, "x.npy declares shape (100000000000000, 1)"),
        ({"x": np.array([[np.nan, 1]] * 8), "y": Y}, "x has 8 NaN values; features must be finite"),
    ],
    ids=["huge-header", "nan"],
)
def test_hostile_npz_through_the_cli_is_exit_2_and_one_line(tmp_path, capsys, members, message):
    path = write_npz(tmp_path / "data.npz", **members)
    code = main(
        [
            "run",
            "--set",
            "task.name=npz",
            "--set",
            f"task.path={path}",
            "--set",
            "data.partition=iid",
            "--set",
            "data.num_clients=2",
            "--set",
            "population.clients_per_round=2",
            "--rounds",
            "1",
            "--out",
            str(tmp_path / "run"),
            "--quiet",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith("fedsim: error: ") and f"{path}: {message}" in err
    assert not (tmp_path / "run").exists()
