"""nnx.datasets: local MNIST-1D and digits, one_hot, clear errors without the extras."""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest

import nnx
from nnx import datasets


def test_mnist1d_shapes_dtypes_and_determinism():
    pytest.importorskip("mnist1d")
    X, y, Xt, yt = datasets.mnist1d()
    assert (X.shape, y.shape, Xt.shape, yt.shape) == (
        (4000, 40, 1),
        (4000,),
        (1000, 40, 1),
        (1000,),
    )
    assert X.dtype == np.float32 and y.dtype == np.int64
    assert set(np.unique(y)) == set(range(10)) and set(np.unique(yt)) == set(range(10))
    X2, y2, _, _ = datasets.mnist1d()
    np.testing.assert_array_equal(X, X2)
    np.testing.assert_array_equal(y, y2)
    X2[0, 0, 0] = 1e6  # fresh arrays: the cache is not affected
    assert datasets.mnist1d()[0][0, 0, 0] != 1e6
    flat = datasets.mnist1d(flatten=True)[0]
    assert flat.shape == (4000, 40)
    np.testing.assert_array_equal(flat, X[..., 0])


def test_mnist1d_matches_the_package_defaults():
    mnist1d = pytest.importorskip("mnist1d.data")
    ref = mnist1d.make_dataset(mnist1d.get_dataset_args())
    X, y, Xt, yt = datasets.mnist1d(flatten=True)
    np.testing.assert_allclose(X, ref["x"], rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(yt, ref["y_test"])


def test_digits():
    pytest.importorskip("sklearn")
    X, y, Xt, yt = datasets.digits()
    assert X.shape == (1437, 64, 1) and Xt.shape == (360, 64, 1)
    assert X.min() == 0.0 and X.max() == 1.0 and X.dtype == np.float32
    # stratified split: every class in both parts, in proportion
    assert np.all(np.bincount(yt) >= 35)
    X2, *_ = datasets.digits(seed=1)
    assert not np.array_equal(X, X2)
    with pytest.raises(ValueError, match="test_size"):
        datasets.digits(test_size=2)


def test_digits_as_images():
    pytest.importorskip("sklearn")
    X, y, Xt, yt = datasets.digits(images=True)
    assert X.shape == (1437, 8, 8, 1) and Xt.shape == (360, 8, 8, 1)
    rows, _, rows_t, _ = datasets.digits()
    np.testing.assert_array_equal(X.reshape(1437, 64, 1), rows)  # row-major pixels
    np.testing.assert_array_equal(Xt.reshape(360, 64, 1), rows_t)
    # the same image as scikit-learn's own 8x8 array
    from sklearn.datasets import load_digits

    images = load_digits().images / 16.0
    match = np.all(np.isclose(images, X[0, :, :, 0]), axis=(1, 2))
    assert match.any()
    np.testing.assert_array_equal(datasets.load("digits", images=True)[0], X)
    with pytest.raises(ValueError, match="images=True or flatten=True"):
        datasets.digits(images=True, flatten=True)
    with pytest.raises(ValueError, match="'mnist1d' holds 1-D signals"):
        datasets.load("mnist1d", images=True)


def test_load_by_name():
    pytest.importorskip("sklearn")
    assert datasets.load("digits", flatten=True)[0].shape == (1437, 64)
    with pytest.raises(ValueError, match="unknown data set 'cifar'"):
        datasets.load("cifar")


def _cache_files(folder):
    return sorted(p.name for p in folder.glob("mnist1d-*.npz"))


@pytest.mark.once
def test_mnist1d_disk_cache_is_written_once_and_read_back(tmp_path, monkeypatch):
    pytest.importorskip("mnist1d")
    import mnist1d.data

    calls = []
    real = mnist1d.data.make_dataset
    monkeypatch.setattr(mnist1d.data, "make_dataset", lambda a: calls.append(a) or real(a))
    datasets._mnist1d_split.cache_clear()
    first = datasets.mnist1d(cache=tmp_path)
    assert len(calls) == 1 and len(_cache_files(tmp_path)) == 1
    assert not list(tmp_path.glob(".*.tmp"))  # the temporary file was renamed, not left
    mode = (tmp_path / _cache_files(tmp_path)[0]).stat().st_mode & 0o777
    umask = os.umask(0)
    os.umask(umask)
    assert mode == 0o666 & ~umask
    datasets._mnist1d_split.cache_clear()  # a new process: only the disk cache is left
    second = datasets.mnist1d(cache=tmp_path)
    assert len(calls) == 1  # read back, not generated
    for a, b in zip(first, second, strict=True):
        np.testing.assert_array_equal(a, b)
        assert a.dtype == b.dtype
    # another generator argument is another file
    datasets.mnist1d(seed=7, cache=tmp_path)
    assert len(calls) == 2 and len(_cache_files(tmp_path)) == 2
    datasets._mnist1d_split.cache_clear()


@pytest.mark.once
@pytest.mark.parametrize("damage", ["truncate", "garbage", "delete"])
def test_mnist1d_corrupt_or_missing_cache_file_is_regenerated(tmp_path, damage):
    pytest.importorskip("mnist1d")
    datasets._mnist1d_split.cache_clear()
    good = datasets.mnist1d(cache=tmp_path)
    (path,) = tmp_path.glob("mnist1d-*.npz")
    size = path.stat().st_size
    if damage == "truncate":
        path.write_bytes(path.read_bytes()[: size // 2])
    elif damage == "garbage":
        path.write_bytes(b"not a zip file" * 100)
    else:
        path.unlink()
    datasets._mnist1d_split.cache_clear()
    again = datasets.mnist1d(cache=tmp_path)
    for a, b in zip(good, again, strict=True):
        np.testing.assert_array_equal(a, b)
    assert path.stat().st_size == size  # rewritten whole
    datasets._mnist1d_split.cache_clear()


def test_cache_location_argument_environment_and_off(tmp_path, monkeypatch):
    monkeypatch.setenv(datasets.CACHE_ENV, str(tmp_path / "env"))
    assert datasets.cache_dir() == tmp_path / "env"
    assert datasets.cache_dir(tmp_path / "arg") == tmp_path / "arg"  # the argument wins
    assert datasets.cache_dir(False) is None
    for off in ("off", "0", "false", "", "OFF"):
        monkeypatch.setenv(datasets.CACHE_ENV, off)
        assert datasets.cache_dir() is None
        assert datasets.cache_dir(tmp_path) == tmp_path
    monkeypatch.delenv(datasets.CACHE_ENV)
    default = datasets.cache_dir()
    assert default is not None and default.name == "datasets" and "nnx" in default.parts


@pytest.mark.once
def test_mnist1d_cache_off_and_unwritable_folder_write_nothing(tmp_path, monkeypatch):
    pytest.importorskip("mnist1d")
    datasets._mnist1d_split.cache_clear()
    monkeypatch.setenv(datasets.CACHE_ENV, "off")
    monkeypatch.chdir(tmp_path)
    assert datasets.mnist1d()[0].shape == (4000, 40, 1)
    assert list(tmp_path.iterdir()) == []
    blocker = tmp_path / "a-file"
    blocker.write_text("")  # a cache "folder" below a file cannot be created
    datasets._mnist1d_split.cache_clear()
    assert datasets.mnist1d(cache=blocker / "cache")[0].shape == (4000, 40, 1)
    datasets._mnist1d_split.cache_clear()


def test_one_hot(backend):
    y = np.array([2, 0, 1, 2])
    expected = np.eye(3, dtype=np.float32)[y]
    np.testing.assert_array_equal(datasets.one_hot(y), expected)
    np.testing.assert_array_equal(datasets.one_hot(nnx.asarray(y), 3), expected)  # backend array
    assert datasets.one_hot(y, 5).shape == (4, 5)
    assert datasets.one_hot(y, dtype=np.float64).dtype == np.float64
    assert datasets.one_hot(np.array([], dtype=int), 2).shape == (0, 2)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 2\)"):
        datasets.one_hot(y, 2)
    with pytest.raises(ValueError, match="shape"):
        datasets.one_hot(np.zeros((2, 2), dtype=int))
    with pytest.raises(TypeError, match="integer labels"):
        datasets.one_hot(np.array([0.5, 1.0]))


@pytest.mark.parametrize(
    ("loader", "module", "package"),
    [("mnist1d", "mnist1d", "mnist1d"), ("digits", "sklearn", "scikit-learn")],
)
def test_missing_optional_package_names_the_extra(monkeypatch, loader, module, package):
    monkeypatch.setenv(datasets.CACHE_ENV, "off")  # generate, do not read a cached copy
    datasets._mnist1d_split.cache_clear()
    datasets._digits_cached.cache_clear()
    for name in list(sys.modules):
        if name == module or name.startswith(module + "."):
            monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, module, None)  # import fails
    with pytest.raises(
        ImportError, match=rf"'{package}'.*pip install \"nnx-backprop\[datasets\]\""
    ):
        getattr(datasets, loader)()
    monkeypatch.undo()
    datasets._mnist1d_split.cache_clear()
    datasets._digits_cached.cache_clear()


def test_import_nnx_does_not_import_heavy_dependencies():
    import subprocess

    code = (
        "import sys, nnx; heavy = [m for m in ('pandas', 'matplotlib', 'tqdm', 'mnist1d', "
        "'sklearn', 'torch', 'cupy', 'array_api_strict') if m in sys.modules]; print(heavy)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={**__import__("os").environ, "NNX_BACKEND": "numpy"},
        cwd=__import__("pathlib").Path(__file__).resolve().parents[1],
    )
    assert out.stdout.strip() == "[]"
