"""Hostile and damaged model files, and interrupted saves, on every backend.

``nnx.load`` must refuse, with a clear ``ValueError`` (``nnx.serialization.
ModelFileError``) naming ``nnx.load``, the file and the problem, and without executing
anything:

- truncated files (every cut point class: empty, inside the zip entries, inside the
  central directory) and single-byte corruptions (which either fail cleanly or load
  the very same model, never a different one);
- files of other formats (``.npy``, text, JSON, PNG, a plain ``.npz`` of arrays, a
  zip of something else, a raw pickle, a PyTorch checkpoint);
- a wrong format name or version;
- parameters whose shapes, names or dtypes do not fit the architecture;
- pickle payloads (in a parameter, in the header, as the whole file): each one is
  crafted to create a marker file when unpickled (proved by unpickling a copy), and
  the marker must not exist after ``nnx.load``.

And ``nnx.save`` interrupted midway (the writer monkeypatched to raise after writing
part of the file) leaves the previous file byte-for-byte intact, no temporary file
behind, and no file at all when there was none.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import re
import zipfile
from pathlib import Path

import numpy as np
import pytest
from helpers import host

import nnx
from nnx import serialization
from nnx.serialization import ModelFileError

LOAD_ERROR = r"nnx\.load: '.*{name}'"


def make_net() -> nnx.Sequential:
    nnx.manual_seed(0)
    return nnx.Sequential(
        nnx.Conv1D(3, 1, 4, bias=True),
        nnx.MaxPool1D(2, 2),
        nnx.Flatten(),
        nnx.Linear(4 * 3, 3),
        nnx.LogSoftmax(),
    )


@pytest.fixture
def saved(tmp_path: Path, backend) -> tuple[Path, nnx.Sequential]:
    net = make_net()
    path = tmp_path / "model.npz"
    nnx.save(net, path)
    return path, net


def same_model(a: nnx.Module, b: nnx.Module) -> bool:
    if repr(a) != repr(b):
        return False
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(np.array_equal(sa[k], sb[k]) for k in sa)


def refuse(path: Path, *patterns: str) -> str:
    """``nnx.load(path)`` raises ModelFileError naming nnx.load and the file."""
    with pytest.raises(ModelFileError) as info:
        nnx.load(path)
    message = str(info.value)
    assert isinstance(info.value, ValueError)
    assert re.search(LOAD_ERROR.format(name=re.escape(path.name)), message), message
    for pattern in patterns:
        assert re.search(pattern, message), f"{pattern!r} not in {message!r}"
    return message


def npz_bytes(**arrays) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def header_of(path: Path) -> dict:
    with np.load(path, allow_pickle=False) as archive:
        return json.loads(archive["__nnx__"].tobytes().decode("utf-8"))


def rewrite(path: Path, out: Path, header: dict | None = None, **changes) -> None:
    """Copy a model file with a new header and/or replaced/removed entries (None)."""
    with np.load(path, allow_pickle=False) as archive:
        entries = {k: archive[k] for k in archive.files}
    if header is not None:
        entries["__nnx__"] = np.frombuffer(json.dumps(header).encode(), dtype=np.uint8)
    for key, value in changes.items():
        if key.startswith("param__"):
            key = key.replace("param__", "param/").replace("_dot_", ".")
        if value is None:
            entries.pop(key)
        else:
            entries[key] = value
    with open(out, "wb") as f:
        np.savez(f, **entries)


# -- baseline ------------------------------------------------------------------------------
def test_round_trip(saved, backend):
    path, net = saved
    loaded = nnx.load(path)
    assert same_model(loaded, net)
    x = nnx.asarray(np.random.default_rng(0).standard_normal((2, 8, 1)))
    np.testing.assert_array_equal(host(loaded(x)), host(net(x)))
    assert nnx.backends.backend_of(next(iter(loaded.parameters()))).name == backend


def test_missing_file(tmp_path, backend):
    with pytest.raises(FileNotFoundError, match=r"nnx\.load: no such file: '.*nothing\.npz'"):
        nnx.load(tmp_path / "nothing.npz")


# -- truncated and corrupted files ---------------------------------------------------------
def test_truncated_files(saved, tmp_path, backend):
    path, _ = saved
    data = path.read_bytes()
    cuts = sorted({0, 1, 4, 10, 30, 100, len(data) // 3, len(data) // 2, len(data) - 200})
    cuts += [len(data) - 22, len(data) - 21, len(data) - 1]  # inside the end-of-directory
    for cut in cuts:
        bad = tmp_path / f"cut_{cut}.npz"
        bad.write_bytes(data[:cut])
        refuse(bad, r"not an nnx model file|truncated|damaged|pickled")


def test_single_byte_corruptions_fail_cleanly_or_change_nothing(saved, tmp_path, backend):
    """Flip bytes all over the file: ModelFileError, or exactly the saved model."""
    path, net = saved
    data = path.read_bytes()
    positions = set(range(0, len(data), 17)) | set(range(max(0, len(data) - 400), len(data)))
    bad = tmp_path / "corrupt.npz"
    outcomes = {"refused": 0, "identical": 0}
    for i in sorted(positions):
        d = bytearray(data)
        d[i] ^= 0xFF
        bad.write_bytes(bytes(d))
        try:
            loaded = nnx.load(bad)
        except ModelFileError:
            outcomes["refused"] += 1
            continue
        except Exception as exc:  # noqa: BLE001 - the point of the test
            pytest.fail(f"byte {i}: {type(exc).__name__} escaped nnx.load: {exc}")
        assert same_model(loaded, net), f"byte {i}: a corrupted file loaded a different model"
        outcomes["identical"] += 1
    assert outcomes["refused"] > len(positions) // 2, outcomes


# -- other formats -------------------------------------------------------------------------
def _torch_checkpoint(path: Path) -> None:
    torch = pytest.importorskip("torch")
    torch.save({"weight": torch.zeros(2, 2)}, path)


OTHER_FORMATS = {
    "npy": (lambda p: np.save(p, np.zeros(3)), r"single \.npy array"),
    "text": (lambda p: p.write_text("epoch,loss\n1,0.5\n"), r"not an nnx model file"),
    "json": (lambda p: p.write_text(json.dumps({"format": "nnx-model"})), r"not an nnx model"),
    "png": (lambda p: p.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(64)), r"not an nnx model"),
    "empty": (lambda p: p.write_bytes(b""), r"not an nnx model file"),
    "plain_npz": (lambda p: p.write_bytes(npz_bytes(w=np.ones(3))), r"no '__nnx__' entry"),
    "zip_of_text": (
        lambda p: zipfile.ZipFile(p, "w").writestr("readme.txt", "hello"),
        r"no '__nnx__' entry",
    ),
    "torch_checkpoint": (_torch_checkpoint, r"no '__nnx__' entry|not an nnx model"),
}


@pytest.mark.parametrize("kind", list(OTHER_FORMATS))
def test_other_formats(tmp_path, backend, kind):
    write, pattern = OTHER_FORMATS[kind]
    path = tmp_path / f"{kind}.npz"
    write(path)
    if kind == "npy":  # np.save appends .npy
        path = tmp_path / f"{kind}.npz.npy"
    refuse(path, pattern)


# -- format name and version ---------------------------------------------------------------
@pytest.mark.parametrize(
    "field, value, pattern",
    [
        ("format", "keras-model", r"format 'keras-model', expected 'nnx-model'"),
        ("format", None, r"format None, expected 'nnx-model'"),
        ("version", 2, r"version 2\b.*reads versions 1 to 1"),
        ("version", 0, r"version 0\b.*reads versions 1 to 1"),
        ("version", "1", r"version '1'.*reads versions 1 to 1"),
        ("version", 1.5, r"version 1\.5.*reads versions 1 to 1"),
    ],
)
def test_wrong_format_or_version(saved, tmp_path, backend, field, value, pattern):
    path, _ = saved
    header = header_of(path)
    header[field] = value
    bad = tmp_path / "versioned.npz"
    rewrite(path, bad, header)
    refuse(bad, pattern)


def test_header_not_json(saved, tmp_path, backend):
    path, _ = saved
    bad = tmp_path / "garbled.npz"
    rewrite(path, bad, __nnx__=np.frombuffer(b"{not json", dtype=np.uint8))
    refuse(bad, r"unreadable header")


def test_unknown_module_class(saved, tmp_path, backend):
    path, _ = saved
    header = header_of(path)
    header["architecture"]["children"][0]["class"] = "os.system"
    bad = tmp_path / "class.npz"
    rewrite(path, bad, header)
    refuse(bad, r"unknown module class|module class 'os\.system', unknown")


def test_absurd_layer_size_in_the_header(saved, tmp_path, backend):
    """A crafted config asking for an exabyte-sized layer: refused, nothing allocated."""
    path, _ = saved
    header = header_of(path)
    header["architecture"]["children"][3]["config"].update(input_size=10**9, output_size=10**9)
    bad = tmp_path / "huge.npz"
    rewrite(path, bad, header)
    refuse(bad, r"do not fit the architecture", r"Linear", r"1000000000")


# -- parameters that do not fit ------------------------------------------------------------
def test_mismatched_shape(saved, tmp_path, backend):
    path, _ = saved
    header = header_of(path)
    header["parameters"]["3.weight"]["shape"] = [3, 12]
    bad = tmp_path / "shape.npz"
    rewrite(path, bad, header, param__3_dot_weight=np.zeros((3, 12), dtype=np.float32))
    refuse(bad, r"do not fit the architecture", r"'3\.weight'", r"\(12, 3\)", r"\(3, 12\)")


def test_architecture_changed_under_the_parameters(saved, tmp_path, backend):
    path, _ = saved
    header = header_of(path)
    header["architecture"]["children"][3]["config"]["output_size"] = 5
    bad = tmp_path / "arch.npz"
    rewrite(path, bad, header)
    refuse(bad, r"do not fit the architecture", r"\(12, 5\)", r"\(12, 3\)")


def test_missing_parameter_entry(saved, tmp_path, backend):
    path, _ = saved
    bad = tmp_path / "missing.npz"
    rewrite(path, bad, param__0_dot_bias=None)
    refuse(bad, r"'0\.bias'")


def test_extra_parameter_entry(saved, tmp_path, backend):
    path, _ = saved
    header = header_of(path)
    header["parameters"]["9.weight"] = {"shape": [2], "dtype": "float32"}
    bad = tmp_path / "extra.npz"
    rewrite(path, bad, header, param__9_dot_weight=np.zeros(2, dtype=np.float32))
    refuse(bad, r"'9\.weight'")


def test_non_numeric_parameter(saved, tmp_path, backend):
    path, _ = saved
    bad = tmp_path / "strings.npz"
    rewrite(path, bad, param__0_dot_bias=np.array(["a", "b", "c", "d"]))
    refuse(bad, r"'0\.bias'.*dtype")


# -- pickle payloads -----------------------------------------------------------------------
class Payload:
    """Unpickling this object calls ``open(marker, "w")``: it creates the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _object_array(marker: Path) -> np.ndarray:
    a = np.empty(1, dtype=object)
    a[0] = Payload(marker)
    return a


def _unpickle_on_purpose(blob: bytes) -> None:
    if blob[:2] == b"PK":
        with np.load(io.BytesIO(blob), allow_pickle=True) as archive:
            archive["x"].item()
    else:
        pickle.loads(blob)


def _assert_payload_is_live(tmp_path: Path, blob_writer) -> None:
    """The same payload, unpickled on purpose, does create its marker (the test is real)."""
    control = tmp_path / "control_marker"
    blob = blob_writer(control)
    assert not control.exists()
    _unpickle_on_purpose(blob)
    assert control.exists(), "the crafted payload does not run when unpickled"
    control.unlink()


def _npz_with_object(marker: Path) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, x=_object_array(marker), allow_pickle=True)
    return buf.getvalue()


def test_payloads_are_live(tmp_path, backend):
    _assert_payload_is_live(tmp_path, _npz_with_object)
    _assert_payload_is_live(tmp_path, lambda m: pickle.dumps(Payload(m)))


def _write_with_object(path: Path, out: Path, entry: str, marker: Path) -> None:
    """Copy a model file, adding/replacing ``entry`` by a pickled payload."""
    with np.load(path, allow_pickle=False) as archive:
        entries = {k: archive[k] for k in archive.files}
    if entry.startswith("param/") and entry not in entries:  # declare it: names match
        header = header_of(path)
        header["parameters"][entry[len("param/") :]] = {"shape": [1], "dtype": "float32"}
        entries["__nnx__"] = np.frombuffer(json.dumps(header).encode(), dtype=np.uint8)
    entries[entry] = _object_array(marker)
    with open(out, "wb") as f:
        np.savez(f, allow_pickle=True, **entries)


@pytest.mark.parametrize("entry", ["param/3.weight", "param/9.extra", "__nnx__"])
def test_pickle_payload_in_an_entry(saved, tmp_path, backend, entry):
    path, _ = saved
    marker = tmp_path / "pwned"
    bad = tmp_path / "evil.npz"
    _write_with_object(path, bad, entry, marker)
    try:
        refuse(bad, r"pickled \(object\) data", re.escape(repr(entry)))
    finally:
        assert not marker.exists(), "nnx.load executed a pickle payload"


def test_whole_file_is_a_pickle(tmp_path, backend):
    marker = tmp_path / "pwned_raw"
    bad = tmp_path / "evil.pkl"
    bad.write_bytes(pickle.dumps({"state": Payload(marker)}))
    try:
        refuse(bad, r"pickled|not an nnx model")
    finally:
        assert not marker.exists(), "nnx.load executed a pickle payload"


def test_read_header_refuses_pickle_too(tmp_path, backend):
    marker = tmp_path / "pwned_header"
    bad = tmp_path / "evil_header.npz"
    buf = io.BytesIO()
    np.savez(buf, __nnx__=_object_array(marker), allow_pickle=True)
    bad.write_bytes(buf.getvalue())
    with pytest.raises(ModelFileError, match=r"pickle"):
        serialization.read_header(bad)
    assert not marker.exists()


# -- interrupted saves ---------------------------------------------------------------------
def _broken_writer(real_savez, exc: BaseException):
    """A writer that writes the first half of the archive, then fails."""

    def savez(file, *args, **kwargs):
        buf = io.BytesIO()
        real_savez(buf, *args, **kwargs)
        data = buf.getvalue()
        file.write(data[: len(data) // 2])
        file.flush()
        raise exc

    return savez


@pytest.mark.parametrize("exc", [OSError("No space left on device"), KeyboardInterrupt()])
def test_interrupted_save_keeps_previous_file(saved, tmp_path, backend, monkeypatch, exc):
    path, net = saved
    before = path.read_bytes()
    listing = sorted(os.listdir(tmp_path))

    trained = make_net()
    trained[0]._parameters["weight"] = nnx.asarray(np.ones((3, 1, 4)))
    monkeypatch.setattr(serialization.np, "savez", _broken_writer(np.savez, exc))
    with pytest.raises(type(exc)):
        nnx.save(trained, path)
    monkeypatch.undo()

    assert path.read_bytes() == before, "the previous file was modified"
    assert sorted(os.listdir(tmp_path)) == listing, "a temporary file was left behind"
    assert same_model(nnx.load(path), net)


def test_interrupted_first_save_leaves_nothing(tmp_path, backend, monkeypatch):
    path = tmp_path / "sub" / "new.npz"
    monkeypatch.setattr(serialization.np, "savez", _broken_writer(np.savez, OSError("disk full")))
    with pytest.raises(OSError, match="disk full"):
        nnx.save(make_net(), path)
    monkeypatch.undo()
    assert not path.exists()
    assert os.listdir(path.parent) == []
    nnx.save(make_net(), path)  # and the next save works
    assert same_model(nnx.load(path), make_net())
