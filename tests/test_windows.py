"""Sliding windows: every code path gives the same ``(batch, out_length, chan, k)`` windows.

``windows[b, o, c, k] = x[b, o * stride + k, c]``. Paths: the NumPy strided view, the
CuPy code path (same function, driven here by NumPy's ``as_strided``, which has CuPy's
signature, so its stride arithmetic is checked without a GPU), PyTorch ``unfold``, and
the generic gather with array_api_strict's and NumPy's namespaces.
"""

from __future__ import annotations

import inspect

import array_api_compat.numpy as np_xp
import numpy as np
import pytest
from helpers import host

import nnx
from nnx import backends
from nnx.backends import gather_windows, sliding_window, strided_windows

as_strided = np.lib.stride_tricks.as_strided

# (k_size, stride, length, chan): k 1-5, stride 1-4 (also > k), length == k,
# (length - k) not a multiple of the stride.
GEOMETRIES = [
    (1, 1, 4, 1),
    (1, 3, 8, 2),
    (2, 1, 5, 3),
    (2, 2, 9, 1),
    (2, 4, 11, 2),
    (3, 1, 3, 2),
    (3, 2, 10, 3),
    (3, 3, 12, 1),
    (4, 1, 9, 2),
    (4, 3, 14, 3),
    (4, 4, 4, 1),
    (5, 2, 12, 2),
    (5, 4, 19, 3),
    (5, 1, 6, 1),
]
IDS = [f"k{k}s{s}L{n}c{c}" for k, s, n, c in GEOMETRIES]


def reference(x: np.ndarray, k_size: int, stride: int) -> np.ndarray:
    """Windows by plain index arithmetic, one element at a time."""
    batch, length, chan = x.shape
    out_length = (length - k_size) // stride + 1
    ref = np.empty((batch, out_length, chan, k_size), dtype=x.dtype)
    for o in range(out_length):
        for k in range(k_size):
            ref[:, o, :, k] = x[:, o * stride + k, :]
    return ref


def data(geometry: tuple[int, int, int, int], batch: int = 2) -> np.ndarray:
    """Distinct integer-valued floats: every mix-up of positions shows."""
    _, _, length, chan = geometry
    return np.arange(batch * length * chan, dtype=np.float64).reshape(batch, length, chan)


@pytest.mark.parametrize("geometry", GEOMETRIES, ids=IDS)
def test_sliding_window_every_backend(backend, geometry):
    k, s, _, _ = geometry
    x_host = data(geometry)
    x = nnx.asarray(x_host)
    w = sliding_window(x, k, s)
    assert type(w) is type(x)
    assert backends.dtype_name(w) == backends.dtype_name(x)
    np.testing.assert_array_equal(host(w), reference(x_host.astype(np.float32), k, s))
    np.testing.assert_array_equal(host(x), x_host)  # the input is untouched


@pytest.mark.parametrize("geometry", GEOMETRIES, ids=IDS)
def test_numpy_strided_view(geometry):
    k, s, _, _ = geometry
    x = data(geometry)
    w = strided_windows(as_strided, x, k, s)
    np.testing.assert_array_equal(w, reference(x, k, s))
    assert np.shares_memory(w, x)  # a view, no copy
    w_backend = backends.BACKENDS["numpy"].windows(x, k, s)
    np.testing.assert_array_equal(w_backend, w)
    assert np.shares_memory(w_backend, x)


@pytest.mark.parametrize(
    "layout",
    ["channels_first_transposed", "strided_length", "sliced_channels", "fortran", "int32"],
)
def test_numpy_strided_view_of_non_contiguous_input(layout):
    """The stride arithmetic uses the input's own strides: views of any layout work."""
    base = np.arange(3 * 40 * 6, dtype=np.float64)
    if layout == "channels_first_transposed":
        x = base.reshape(3, 6, 40).transpose(0, 2, 1)
    elif layout == "strided_length":
        x = base.reshape(3, 40, 6)[:, 1::3, :]
    elif layout == "sliced_channels":
        x = base.reshape(3, 40, 6)[:, 2:37, 1:5]
    elif layout == "fortran":
        x = np.asfortranarray(base.reshape(3, 40, 6))
    else:
        x = base.astype(np.int32).reshape(3, 40, 6)
    for k, s in [(1, 1), (3, 2), (4, 3), (5, 4), (2, 5)]:
        w = strided_windows(as_strided, x, k, s)
        np.testing.assert_array_equal(w, reference(np.ascontiguousarray(x), k, s))
        assert np.shares_memory(w, x)


@pytest.mark.parametrize("geometry", GEOMETRIES, ids=IDS)
def test_generic_gather_numpy_and_strict(geometry):
    xps = pytest.importorskip("array_api_strict")
    k, s, _, _ = geometry
    x = data(geometry)
    expected = reference(x, k, s)
    np.testing.assert_array_equal(gather_windows(np_xp, x, k, s), expected)
    w_strict = gather_windows(xps, xps.asarray(x), k, s)
    assert isinstance(w_strict, type(xps.asarray(0.0)))
    np.testing.assert_array_equal(np.from_dlpack(w_strict), expected)


@pytest.mark.parametrize("geometry", GEOMETRIES, ids=IDS)
def test_torch_unfold(geometry):
    torch = pytest.importorskip("torch")
    k, s, _, _ = geometry
    x_host = data(geometry)
    x = torch.from_numpy(x_host.copy())
    w = backends.BACKENDS["torch"].load().windows(x, k, s)
    np.testing.assert_array_equal(w.numpy(), reference(x_host, k, s))
    assert w.untyped_storage().data_ptr() == x.untyped_storage().data_ptr()  # no copy
    # a non-contiguous tensor (channels-first transposed) too
    xt = torch.from_numpy(np.ascontiguousarray(x_host.transpose(0, 2, 1))).permute(0, 2, 1)
    np.testing.assert_array_equal(
        backends.BACKENDS["torch"].windows(xt, k, s).numpy(), reference(x_host, k, s)
    )


@pytest.mark.parametrize("geometry", GEOMETRIES, ids=IDS)
def test_cupy_code_path_without_gpu(geometry):
    """CupyBackend.windows with a stand-in CuPy module whose as_strided is NumPy's."""
    k, s, _, _ = geometry
    x = data(geometry)
    fake = type("FakeCupy", (), {})()
    fake.lib = type("lib", (), {})()
    fake.lib.stride_tricks = type("stride_tricks", (), {"as_strided": staticmethod(as_strided)})()
    cupy_backend = backends.CupyBackend()
    cupy_backend._cupy = fake  # the attribute its _load sets to the cupy module
    w = cupy_backend.windows(x, k, s)
    np.testing.assert_array_equal(w, reference(x, k, s))
    assert np.shares_memory(w, x)


def test_cupy_as_strided_has_numpy_signature():
    """The CuPy path passes shape= and strides= by keyword; CuPy's function takes them."""
    cupy = pytest.importorskip("cupy")
    params = inspect.signature(cupy.lib.stride_tricks.as_strided).parameters
    assert {"shape", "strides"} <= set(params)
    np_params = inspect.signature(as_strided).parameters
    assert list(params)[:3] == list(np_params)[:3]


@pytest.mark.parametrize("k, s", [(3, 2), (4, 1), (2, 4)])
def test_all_paths_agree(k, s):
    """One random input, every path, element for element."""
    x = np.random.default_rng(0).standard_normal((3, 17, 4))
    paths = {
        "reference": reference(x, k, s),
        "numpy": strided_windows(as_strided, x, k, s),
        "gather_numpy": np.asarray(gather_windows(np_xp, x, k, s)),
    }
    try:
        import array_api_strict as xps

        paths["gather_strict"] = np.from_dlpack(gather_windows(xps, xps.asarray(x), k, s))
    except ImportError:
        pass
    try:
        import torch

        paths["torch"] = backends.BACKENDS["torch"].load().windows(torch.from_numpy(x), k, s)
        paths["torch"] = paths["torch"].numpy()
    except ImportError:
        pass
    for name, w in paths.items():
        np.testing.assert_array_equal(w, paths["reference"], err_msg=name)


# -- 2-D windows -------------------------------------------------------------------------
# (k_size, stride, height, width, chan): kernels 1-5 per axis, strides 1-3 per axis (also
# larger than the kernel), an image exactly the kernel's size, sizes not multiples of the
# stride.
GEOMETRIES_2D = [
    ((1, 1), (1, 1), 3, 4, 1),
    ((2, 2), (2, 2), 6, 7, 2),
    ((3, 2), (1, 3), 7, 9, 3),
    ((3, 3), (2, 2), 3, 3, 1),
    ((2, 5), (3, 1), 8, 6, 2),
    ((4, 1), (2, 3), 9, 10, 1),
    ((5, 5), (1, 1), 8, 7, 2),
    ((1, 3), (3, 2), 7, 8, 3),
]
IDS_2D = [f"k{k[0]}x{k[1]}s{s[0]}x{s[1]}_{h}x{w}c{c}" for k, s, h, w, c in GEOMETRIES_2D]


def reference_2d(x: np.ndarray, k_size: tuple, stride: tuple) -> np.ndarray:
    """2-D windows by plain index arithmetic, one tap at a time."""
    batch, height, width, chan = x.shape
    (kh, kw), (sh, sw) = k_size, stride
    oh, ow = (height - kh) // sh + 1, (width - kw) // sw + 1
    ref = np.empty((batch, oh, ow, chan, kh, kw), dtype=x.dtype)
    for p, q, i, j in np.ndindex(oh, ow, kh, kw):
        ref[:, p, q, :, i, j] = x[:, p * sh + i, q * sw + j, :]
    return ref


def data_2d(geometry: tuple, batch: int = 2) -> np.ndarray:
    _, _, h, w, c = geometry
    return np.arange(batch * h * w * c, dtype=np.float64).reshape(batch, h, w, c)


@pytest.mark.parametrize("geometry", GEOMETRIES_2D, ids=IDS_2D)
def test_sliding_window_2d_every_backend(backend, geometry):
    k, s, _, _, _ = geometry
    x_host = data_2d(geometry)
    x = nnx.asarray(x_host)
    w = backends.sliding_window_2d(x, k, s)
    assert type(w) is type(x)
    assert backends.dtype_name(w) == backends.dtype_name(x)
    np.testing.assert_array_equal(host(w), reference_2d(x_host.astype(np.float32), k, s))
    np.testing.assert_array_equal(host(x), x_host)


@pytest.mark.parametrize("geometry", GEOMETRIES_2D, ids=IDS_2D)
def test_numpy_strided_view_2d(geometry):
    k, s, _, _, _ = geometry
    x = data_2d(geometry)
    w = backends.strided_windows_2d(as_strided, x, k, s)
    np.testing.assert_array_equal(w, reference_2d(x, k, s))
    assert np.shares_memory(w, x)
    w_backend = backends.BACKENDS["numpy"].windows_2d(x, k, s)
    np.testing.assert_array_equal(w_backend, w)
    assert np.shares_memory(w_backend, x)


@pytest.mark.parametrize("layout", ["nchw_transposed", "strided_rows", "cropped", "fortran"])
def test_numpy_strided_view_2d_of_non_contiguous_input(layout):
    base = np.arange(2 * 13 * 11 * 4, dtype=np.float64)
    if layout == "nchw_transposed":
        x = base.reshape(2, 4, 13, 11).transpose(0, 2, 3, 1)
    elif layout == "strided_rows":
        x = base.reshape(2, 13, 11, 4)[:, ::2, 1::2, :]
    elif layout == "cropped":
        x = base.reshape(2, 13, 11, 4)[:, 1:12, 2:10, 1:3]
    else:
        x = np.asfortranarray(base.reshape(2, 13, 11, 4))
    for k, s in [((1, 1), (1, 1)), ((3, 2), (2, 1)), ((2, 2), (2, 2)), ((2, 3), (3, 4))]:
        w = backends.strided_windows_2d(as_strided, x, k, s)
        np.testing.assert_array_equal(w, reference_2d(np.ascontiguousarray(x), k, s))
        assert np.shares_memory(w, x)


@pytest.mark.parametrize("geometry", GEOMETRIES_2D, ids=IDS_2D)
def test_generic_gather_2d_numpy_and_strict(geometry):
    xps = pytest.importorskip("array_api_strict")
    k, s, _, _, _ = geometry
    x = data_2d(geometry)
    expected = reference_2d(x, k, s)
    np.testing.assert_array_equal(backends.gather_windows_2d(np_xp, x, k, s), expected)
    w_strict = backends.gather_windows_2d(xps, xps.asarray(x), k, s)
    assert isinstance(w_strict, type(xps.asarray(0.0)))
    np.testing.assert_array_equal(np.from_dlpack(w_strict), expected)


@pytest.mark.parametrize("geometry", GEOMETRIES_2D, ids=IDS_2D)
def test_torch_unfold_2d(geometry):
    torch = pytest.importorskip("torch")
    k, s, _, _, _ = geometry
    x_host = data_2d(geometry)
    x = torch.from_numpy(x_host.copy())
    torch_backend = backends.BACKENDS["torch"].load()
    w = torch_backend.windows_2d(x, k, s)
    np.testing.assert_array_equal(w.numpy(), reference_2d(x_host, k, s))
    assert w.untyped_storage().data_ptr() == x.untyped_storage().data_ptr()  # no copy
    xt = torch.from_numpy(np.ascontiguousarray(x_host.transpose(0, 3, 1, 2))).permute(0, 2, 3, 1)
    np.testing.assert_array_equal(
        torch_backend.windows_2d(xt, k, s).numpy(), reference_2d(x_host, k, s)
    )


@pytest.mark.parametrize("geometry", GEOMETRIES_2D, ids=IDS_2D)
def test_cupy_code_path_2d_without_gpu(geometry):
    """CupyBackend.windows_2d with a stand-in CuPy module whose as_strided is NumPy's."""
    k, s, _, _, _ = geometry
    x = data_2d(geometry)
    fake = type("FakeCupy", (), {})()
    fake.lib = type("lib", (), {})()
    fake.lib.stride_tricks = type("stride_tricks", (), {"as_strided": staticmethod(as_strided)})()
    cupy_backend = backends.CupyBackend()
    cupy_backend._cupy = fake
    w = cupy_backend.windows_2d(x, k, s)
    np.testing.assert_array_equal(w, reference_2d(x, k, s))
    assert np.shares_memory(w, x)
    # and on a non-contiguous (NCHW viewed NHWC) input
    xt = np.ascontiguousarray(x.transpose(0, 3, 1, 2)).transpose(0, 2, 3, 1)
    np.testing.assert_array_equal(cupy_backend.windows_2d(xt, k, s), reference_2d(x, k, s))


def test_generic_backend_default_windows_2d():
    """A backend without its own windows_2d (e.g. a new library) gets the gather."""
    x = data_2d(GEOMETRIES_2D[2])
    generic = backends.Backend()
    generic.xp = np_xp
    k, s = GEOMETRIES_2D[2][:2]
    np.testing.assert_array_equal(generic.windows_2d(x, k, s), reference_2d(x, k, s))


@pytest.mark.parametrize("k, s", [((3, 2), (2, 1)), ((2, 2), (2, 2)), ((4, 1), (1, 3))])
def test_all_2d_paths_agree(k, s):
    x = np.random.default_rng(0).standard_normal((3, 11, 9, 4))
    paths = {
        "reference": reference_2d(x, k, s),
        "numpy": backends.strided_windows_2d(as_strided, x, k, s),
        "gather_numpy": np.asarray(backends.gather_windows_2d(np_xp, x, k, s)),
    }
    try:
        import array_api_strict as xps

        paths["gather_strict"] = np.from_dlpack(
            backends.gather_windows_2d(xps, xps.asarray(x), k, s)
        )
    except ImportError:
        pass
    try:
        import torch

        paths["torch"] = backends.BACKENDS["torch"].load().windows_2d(torch.from_numpy(x), k, s)
        paths["torch"] = paths["torch"].numpy()
    except ImportError:
        pass
    for name, w in paths.items():
        np.testing.assert_array_equal(w, paths["reference"], err_msg=name)


def test_uniform_draws_reproducible_on_the_backend(backend):
    """backends.uniform: [0, 1) values of like's backend and dtype, same seed same draws."""
    like = nnx.asarray(np.zeros((2, 3)))
    nnx.manual_seed(7)
    a = backends.uniform((500, 4), like)
    b = backends.uniform((500, 4), like)
    nnx.manual_seed(7)
    a2 = backends.uniform((500, 4), like)
    assert type(a) is type(like) and backends.dtype_name(a) == backends.dtype_name(like)
    assert tuple(a.shape) == (500, 4)
    ha, hb = host(a), host(b)
    np.testing.assert_array_equal(ha, host(a2))
    assert not np.array_equal(ha, hb)
    assert ha.min() >= 0.0 and ha.max() < 1.0
    assert abs(ha.mean() - 0.5) < 0.03


@pytest.mark.parametrize(
    ("shape", "k_size", "stride"),
    [((2, 9, 3), 10, 1), ((2, 9, 3), 3, 0), ((2, 9, 3), 0, 1), ((2, 9, 3), 3, -1), ((9, 3), 3, 1)],
    ids=["window-longer-than-input", "stride-0", "k-0", "stride-negative", "no-batch-axis"],
)
def test_sizes_that_give_no_window_are_one_error_everywhere(backend, shape, k_size, stride):
    x = nnx.asarray(np.zeros(shape))
    with pytest.raises(ValueError, match=r"nnx.backends.sliding_window: expected an input of 3"):
        sliding_window(x, k_size, stride)
    x2 = nnx.asarray(np.zeros((2, 5, 5, 1)))
    with pytest.raises(ValueError, match=r"sliding_window_2d: .* k_size \(6, 2\)"):
        backends.sliding_window_2d(x2, (6, 2), (1, 1))


def test_numpy_windows_cannot_be_written_through():
    """Windows overlap and share the input's memory: NumPy's view is read-only."""
    x = np.arange(12.0).reshape(1, 6, 2)
    for w in (
        sliding_window(x, 3, 1),
        backends.sliding_window_2d(x.reshape(1, 3, 2, 2), (2, 2), (1, 1)),
    ):
        assert not w.flags.writeable
        with pytest.raises(ValueError, match="read-only"):
            w[...] = 0.0
    np.testing.assert_array_equal(x, np.arange(12.0).reshape(1, 6, 2))
