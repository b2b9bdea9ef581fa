"""nnx.save / nnx.load: round trips across backends and dtypes, and hostile files."""

from __future__ import annotations

import io
import json
import os
import pickle
import zipfile

import numpy as np
import pytest

import nnx
from nnx.serialization import ModelFileError

OTHER_BACKENDS = ["numpy", "array_api_strict", "torch"]


def _cnn():
    return nnx.Sequential(
        nnx.Conv1D(3, 1, 4, bias=True),
        nnx.LeakyReLU(0.2),
        nnx.MaxPool1D(2, 2),
        nnx.Flatten(),
        nnx.Linear(4 * 7, 5),
        nnx.Sequential(nnx.TanH(), nnx.Linear(5, 3, init_type="xavier_uniform")),
    )


def _trained(rng):
    net = _cnn()
    X, y = rng.standard_normal((32, 16, 1)), rng.integers(0, 3, 32)
    nnx.Optim(net, nnx.CELogSoftmax(), eps=0.01).SGD(X, y, 8, 2, progress=False)
    return net, X


def test_round_trip_same_backend(backend, rng, tmp_path):
    net, X = _trained(rng)
    path = tmp_path / "m.npz"
    nnx.save(net, path, metadata={"note": "hi", "acc": 0.5})
    loaded = nnx.load(path)
    assert repr(loaded) == repr(net)
    np.testing.assert_array_equal(
        nnx.to_numpy(loaded(nnx.asarray(X))), nnx.to_numpy(net(nnx.asarray(X)))
    )
    assert nnx.backends.backend_of(loaded[0]._parameters["weight"]).name == backend
    header = nnx.serialization.read_header(path)
    assert header["format"] == "nnx-model" and header["version"] == 1
    assert header["metadata"] == {"note": "hi", "acc": 0.5}
    assert header["parameters"]["5.1.weight"] == {"shape": [5, 3], "dtype": "float32"}
    assert sorted(os.listdir(tmp_path)) == ["m.npz"]  # no temporary file left


def test_round_trip_image_layers(backend, rng, tmp_path):
    """Conv2D (pairs, padding), 2-D pools, padded Conv1D: the config survives JSON."""
    net = nnx.Sequential(
        nnx.Conv2D((3, 2), 1, 4, stride=(1, 2), padding=(1, 0), bias=True),
        nnx.MaxPool2D(2),
        nnx.Conv2D(3, 4, 3, padding="same"),
        nnx.AvgPool2D((2, 1), stride=1),
        nnx.Flatten(),
    )
    X = rng.standard_normal((3, 9, 10, 1))
    nnx.save(net, tmp_path / "img.npz")
    loaded = nnx.load(tmp_path / "img.npz")
    assert repr(loaded) == repr(net)
    np.testing.assert_array_equal(
        nnx.to_numpy(loaded(nnx.asarray(X))), nnx.to_numpy(net(nnx.asarray(X)))
    )
    conv = nnx.Sequential(nnx.Conv1D(3, 2, 2, padding=(2, 1)), nnx.Conv1D(2, 2, 1, padding="same"))
    nnx.save(conv, tmp_path / "c1.npz")
    again = nnx.load(tmp_path / "c1.npz")
    assert repr(again) == repr(conv) and again[0].pads == ((2, 1),)


@pytest.mark.parametrize("target", OTHER_BACKENDS)
def test_trained_on_one_backend_predicts_the_same_on_another(backend, rng, tmp_path, target):
    pytest.importorskip(nnx.backends.BACKENDS[target].module_name)
    net, X = _trained(rng)
    expected = nnx.to_numpy(net(nnx.asarray(X)))
    nnx.save(net, tmp_path / "m.npz")
    with nnx.use_backend(target):
        loaded = nnx.load(tmp_path / "m.npz")
        got = nnx.to_numpy(loaded(nnx.asarray(X)))
        assert nnx.backends.backend_of(loaded[4]._parameters["bias"]).name == target
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_load_in_another_dtype(backend, rng, tmp_path):
    net, X = _trained(rng)
    nnx.save(net, tmp_path / "m.npz")
    loaded = nnx.load(tmp_path / "m.npz", dtype="float64")
    assert nnx.backends.dtype_name(loaded[0]._parameters["weight"]) == "float64"
    assert nnx.get_default_dtype() == "float32"  # restored
    out = loaded(nnx.asarray(X, dtype="float64"))
    np.testing.assert_allclose(
        nnx.to_numpy(out), nnx.to_numpy(net(nnx.asarray(X))), rtol=1e-5, atol=1e-5
    )
    np.testing.assert_array_equal(
        nnx.to_numpy(loaded[0]._parameters["weight"]),
        nnx.to_numpy(net[0]._parameters["weight"]).astype(np.float64),
    )


def test_load_does_not_consume_the_seeded_generator(backend, tmp_path):
    nnx.save(_cnn(), tmp_path / "m.npz")
    nnx.manual_seed(123)
    nnx.load(tmp_path / "m.npz")
    a = nnx.Linear(3, 3).state_dict()["weight"]
    nnx.manual_seed(123)
    b = nnx.Linear(3, 3).state_dict()["weight"]
    np.testing.assert_array_equal(a, b)


def test_state_dict_round_trip(backend, rng):
    net, _ = _trained(rng)
    other = _cnn()
    other.load_state_dict(net.state_dict())
    for (k, a), (k2, b) in zip(net.state_dict().items(), other.state_dict().items(), strict=True):
        assert k == k2
        np.testing.assert_array_equal(a, b)


def test_save_is_atomic_on_failure(backend, tmp_path, monkeypatch):
    path = tmp_path / "m.npz"
    nnx.save(nnx.Sequential(nnx.Linear(2, 2)), path)
    original = path.read_bytes()

    def broken(*args, **kwargs):
        args[0].write(b"PK\x03\x04 half a file")
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", broken)
    with pytest.raises(OSError, match="disk full"):
        nnx.save(nnx.Sequential(nnx.Linear(3, 3)), path)
    assert path.read_bytes() == original
    assert sorted(os.listdir(tmp_path)) == ["m.npz"]


# -- hostile and broken files ----------------------------------------------------------
def _write_npz(path, entries: dict[str, np.ndarray], pickled: dict[str, object] | None = None):
    """An .npz written by hand; ``pickled`` entries are object arrays (pickle inside)."""
    with zipfile.ZipFile(path, "w") as zf:
        for name, arr in entries.items():
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.asarray(arr), allow_pickle=False)
            zf.writestr(name + ".npy", buf.getvalue())
        for name, obj in (pickled or {}).items():
            buf = io.BytesIO()
            arr = np.empty(1, dtype=object)
            arr[0] = obj
            np.lib.format.write_array(buf, arr, allow_pickle=True)
            zf.writestr(name + ".npy", buf.getvalue())


def _header_array(header: dict) -> np.ndarray:
    return np.frombuffer(json.dumps(header).encode(), dtype=np.uint8)


def _good_header(**changes):
    header = {
        "format": "nnx-model",
        "version": 1,
        "architecture": {
            "class": "Sequential",
            "config": {},
            "children": [
                {"class": "Linear", "config": {"input_size": 2, "output_size": 3}, "children": []}
            ],
        },
        "parameters": {
            "0.weight": {"shape": [2, 3], "dtype": "float32"},
            "0.bias": {"shape": [1, 3], "dtype": "float32"},
        },
        "metadata": {},
    }
    header.update(changes)
    return header


class Boom:
    """Unpickling this would create a marker file: proof that code ran."""

    marker = ""

    def __reduce__(self):
        return (open, (Boom.marker, "w"))


def test_crafted_pickle_never_runs(backend, tmp_path):
    Boom.marker = str(tmp_path / "pwned")
    path = tmp_path / "evil.npz"
    _write_npz(
        path,
        {"__nnx__": _header_array(_good_header()), "param/0.weight": np.zeros((2, 3), np.float32)},
        pickled={"param/0.bias": Boom()},
    )
    with pytest.raises(ModelFileError, match="pickled"):
        nnx.load(path)
    assert not (tmp_path / "pwned").exists()
    # a plain pickle file is refused as well
    plain = tmp_path / "evil.pkl"
    plain.write_bytes(pickle.dumps(Boom()))
    with pytest.raises(ModelFileError, match="not an nnx model file"):
        nnx.load(plain)
    assert not (tmp_path / "pwned").exists()


def test_truncated_file(backend, tmp_path):
    path = tmp_path / "m.npz"
    nnx.save(_cnn(), path)
    data = path.read_bytes()
    for cut in (len(data) // 2, 10):
        path.write_bytes(data[:cut])
        with pytest.raises(ModelFileError, match="not an nnx model file|truncated|damaged"):
            nnx.load(path)


def test_other_formats(backend, tmp_path):
    plain = tmp_path / "plain.npz"
    np.savez(plain, a=np.zeros(3))
    with pytest.raises(ModelFileError, match="no '__nnx__' entry"):
        nnx.load(plain)
    npy = tmp_path / "a.npy"
    np.save(npy, np.zeros(3))
    with pytest.raises(ModelFileError, match="single .npy"):
        nnx.load(npy)
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(ModelFileError, match="not an nnx model file"):
        nnx.load(text)
    other = tmp_path / "other.npz"
    _write_npz(other, {"__nnx__": _header_array(_good_header(format="keras"))})
    with pytest.raises(ModelFileError, match="format 'keras'"):
        nnx.load(other)
    with pytest.raises(FileNotFoundError, match="no such file"):
        nnx.load(tmp_path / "missing.npz")


def test_wrong_version(backend, tmp_path):
    path = tmp_path / "future.npz"
    _write_npz(
        path,
        {
            "__nnx__": _header_array(_good_header(version=99)),
            "param/0.weight": np.zeros((2, 3), np.float32),
            "param/0.bias": np.zeros((1, 3), np.float32),
        },
    )
    with pytest.raises(ModelFileError, match="version 99.*reads versions 1 to 1"):
        nnx.load(path)


def test_mismatched_shapes_and_names(backend, tmp_path):
    path = tmp_path / "bad.npz"
    _write_npz(
        path,
        {
            "__nnx__": _header_array(_good_header()),
            "param/0.weight": np.zeros((5, 3), np.float32),
            "param/0.bias": np.zeros((1, 3), np.float32),
        },
    )
    with pytest.raises(ModelFileError, match=r"do not fit.*'0.weight'.*\(2, 3\).*\(5, 3\)"):
        nnx.load(path)
    _write_npz(
        path,
        {"__nnx__": _header_array(_good_header()), "param/0.weight": np.zeros((2, 3), np.float32)},
    )
    with pytest.raises(ModelFileError, match="do not match the header"):
        nnx.load(path)


def test_absurd_sizes_refused_before_allocating(backend, tmp_path):
    """A header declaring Linear(40000, 40000) next to tiny arrays: refused at once."""
    header = _good_header()
    header["architecture"]["children"][0]["config"].update(input_size=40000, output_size=40000)
    path = tmp_path / "huge.npz"
    _write_npz(
        path,
        {
            "__nnx__": _header_array(header),
            "param/0.weight": np.zeros((2, 3), np.float32),
            "param/0.bias": np.zeros((1, 3), np.float32),
        },
    )
    import tracemalloc

    tracemalloc.start()
    with pytest.raises(ModelFileError, match=r"\(40000, 40000\).*\(2, 3\)"):
        nnx.load(path)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 50_000_000, f"load allocated {peak} bytes before refusing"


def test_unknown_class_is_not_imported(backend, tmp_path):
    header = _good_header(
        architecture={"class": "os.system", "config": {"command": "touch x"}, "children": []},
        parameters={},
    )
    path = tmp_path / "m.npz"
    _write_npz(path, {"__nnx__": _header_array(header)})
    with pytest.raises(ModelFileError, match="unknown here"):
        nnx.load(path)


def test_custom_module_needs_registration(backend, tmp_path):
    class Scale(nnx.Module):
        def __init__(self, factor: float = 2.0) -> None:
            super().__init__()
            self.factor = factor

        def get_config(self):
            return {"factor": self.factor}

        def forward(self, X):
            return X * self.factor

    net = nnx.Sequential(nnx.Linear(2, 2), Scale(3.0))
    with pytest.raises(TypeError, match="register"):
        nnx.save(net, tmp_path / "m.npz")
    nnx.serialization.register(Scale)
    nnx.save(net, tmp_path / "m.npz")
    loaded = nnx.load(tmp_path / "m.npz")
    assert isinstance(loaded[1], Scale) and loaded[1].factor == 3.0
    with pytest.raises(TypeError, match="Module subclass"):
        nnx.serialization.register(int)


def test_save_argument_errors(tmp_path):
    with pytest.raises(TypeError, match="nnx.save: expected a nnx Module"):
        nnx.save({"w": 1}, tmp_path / "m.npz")
    with pytest.raises(TypeError, match="metadata"):
        nnx.save(nnx.Sequential(nnx.Linear(1, 1)), tmp_path / "m.npz", metadata={"f": object()})
