"""The backend API: selection, start-up default, errors, dtypes, data moves, seeding, ``to``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import host

import nnx
from nnx import backends

ROOT = Path(__file__).resolve().parents[1]
NAMES = ("numpy", "cupy", "torch", "array_api_strict")


def run_python(code: str, nnx_backend: str | None) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter with ``NNX_BACKEND`` set (or unset)."""
    env = {k: v for k, v in os.environ.items() if k != "NNX_BACKEND"}
    if nnx_backend is not None:
        env["NNX_BACKEND"] = nnx_backend
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    return subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )


PROBE = (
    "import nnx; w = nnx.Linear(2, 2)._parameters['weight']; "
    "print(nnx.get_backend(), nnx.get_default_dtype(), type(w).__module__.split('.')[0])"
)
MODULE_OF = {
    "numpy": "numpy",
    "torch": "torch",
    "array_api_strict": "array_api_strict",
    "jax": "jaxlib",
}


# -- selection ---------------------------------------------------------------------------
def test_default_backend_is_numpy():
    result = run_python(PROBE, None)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["numpy", "float32", "numpy"]


def test_empty_env_var_means_numpy():
    result = run_python(PROBE, "  ")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[0] == "numpy"


def test_env_var_sets_startup_default(backend):
    result = run_python(PROBE, backend)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [backend, "float32", MODULE_OF.get(backend, backend)]


def test_env_var_unknown_backend_fails_clearly():
    result = run_python("import nnx", "mxnet")
    assert result.returncode != 0
    assert "ValueError" in result.stderr and "'mxnet'" in result.stderr
    assert "NNX_BACKEND" in result.stderr.splitlines()[-1]
    for name in NAMES:
        assert name in result.stderr


def test_use_backend_restores(backend):
    assert nnx.get_backend() == backend
    with nnx.use_backend("numpy"):
        assert nnx.get_backend() == "numpy"
        with nnx.use_backend("array_api_strict"):
            assert nnx.get_backend() == "array_api_strict"
        assert nnx.get_backend() == "numpy"
        nnx.set_backend("array_api_strict")  # undone by the enclosing block's exit
    assert nnx.get_backend() == backend


def test_use_backend_restores_after_exception(backend):
    with pytest.raises(KeyError, match="boom"), nnx.use_backend("numpy"):
        assert nnx.get_backend() == "numpy"
        raise KeyError("boom")
    assert nnx.get_backend() == backend


def test_set_backend_then_get(backend):
    other = "numpy" if backend != "numpy" else "array_api_strict"
    try:
        nnx.set_backend(other)
        assert nnx.get_backend() == other
        assert nnx.get_device() is None
    finally:
        nnx.set_backend(backend)
    assert nnx.get_backend() == backend


@pytest.mark.parametrize("bad", ["mxnet", "Numpy", "", "cuda", None, 3])
def test_unknown_backend_value_error(backend, bad):
    with pytest.raises(ValueError) as info:
        nnx.set_backend(bad)
    message = str(info.value)
    for name in NAMES:
        assert name in message
    assert nnx.get_backend() == backend  # unchanged
    with pytest.raises(ValueError), nnx.use_backend(bad):
        pass
    assert nnx.get_backend() == backend


@pytest.mark.parametrize(
    "name, modules, hint",
    [
        ("torch", ["torch", "array_api_compat.torch"], "pip install torch"),
        ("array_api_strict", ["array_api_strict"], "pip install array-api-strict"),
        ("cupy", ["cupy", "array_api_compat.cupy"], "pip install cupy"),
    ],
)
def test_missing_library_import_error(backend, monkeypatch, name, modules, hint):
    """A library that cannot be imported: ImportError naming it, with the install command."""
    fresh = type(backends.BACKENDS[name])()  # not loaded yet
    monkeypatch.setitem(backends.BACKENDS, name, fresh)
    for module in modules:
        monkeypatch.setitem(sys.modules, module, None)  # makes `import module` fail
    with pytest.raises(ImportError) as info:
        nnx.set_backend(name)
    message = str(info.value)
    assert repr(name) in message and hint in message
    assert nnx.get_backend() == backend


def test_cupy_without_gpu_runtime_error(backend):
    cupy = pytest.importorskip("cupy")
    if cupy.is_available():
        pytest.skip("a GPU is available: CuPy works here")
    with pytest.raises(RuntimeError, match="GPU") as info:
        nnx.set_backend("cupy")
    assert "cupy" in str(info.value).lower()
    assert nnx.get_backend() == backend


def test_cupy_without_gpu_env_var_fails_at_import():
    cupy = pytest.importorskip("cupy")
    if cupy.is_available():
        pytest.skip("a GPU is available: CuPy works here")
    result = run_python("import nnx", "cupy")
    assert result.returncode != 0 and "RuntimeError" in result.stderr
    assert "NNX_BACKEND='cupy'" in result.stderr.splitlines()[-1]


def test_cpu_backends_refuse_gpu_devices(backend):
    if backend == "cupy":
        pytest.skip("CuPy takes GPU devices")
    for name in ("numpy", "array_api_strict"):
        with pytest.raises(ValueError, match="CPU"):
            nnx.set_backend(name, device="cuda:0")
    assert nnx.get_backend() == backend


# -- dtypes ------------------------------------------------------------------------------
def test_array_api_strict_after_numpy_warns_nothing(tmp_path):
    """Naming dtypes of two libraries in one process never compares one library's dtype
    with another's (array-api-strict warns when that happens)."""
    pytest.importorskip("array_api_strict")
    code = (
        "import warnings, numpy as np, nnx\n"
        "warnings.simplefilter('error')\n"
        "X, y = np.random.rand(16, 4), np.random.randint(0, 3, 16)\n"
        "fit = lambda: nnx.Optim(nnx.Sequential(nnx.Linear(4, 3)), nnx.CrossEntropyLoss())"
        ".SGD(X, y, 8, 1, progress=False)\n"
        "fit()\n"
        "with nnx.use_backend('array_api_strict'):\n"
        "    fit()\n"
        f"    net = nnx.Sequential(nnx.Linear(4, 3)); nnx.save(net, {str(tmp_path / 'n.npz')!r})\n"
        f"    nnx.load({str(tmp_path / 'n.npz')!r}).to('numpy').to('array_api_strict')\n"
        "print('ok')\n"
    )
    done = run_python(code, "numpy")
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]


def test_meeting_a_jax_array_leaves_jax_settings_alone():
    """Only choosing JAX switches on its float64 (``jax_enable_x64``); converting or
    refusing a JAX array does not change the user's own JAX code."""
    pytest.importorskip("jax")
    code = (
        "import jax, jax.numpy as jnp, nnx\n"
        "nnx.to_numpy(jnp.ones(3))\n"
        "try:\n"
        "    nnx.Linear(3, 2)(jnp.ones((2, 3)))\n"
        "except TypeError:\n"
        "    pass\n"
        "print(jax.config.jax_enable_x64, jnp.arange(3.0).dtype)\n"
        "with nnx.use_backend('jax'):\n"
        "    print(nnx.asarray([1.0], dtype='float64').dtype)\n"
    )
    done = run_python(code, "numpy")
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["False", "float32", "float64"]


def test_default_dtype(backend):
    assert nnx.get_default_dtype() == "float32"
    nnx.set_default_dtype("float64")
    assert nnx.get_default_dtype() == "float64"
    assert backends.dtype_name(nnx.Linear(2, 3)._parameters["weight"]) == "float64"
    nnx.set_default_dtype("float32")
    assert backends.dtype_name(nnx.Linear(2, 3)._parameters["weight"]) == "float32"
    nnx.set_default_dtype(np.dtype("float64"))  # dtype objects are understood too
    assert nnx.get_default_dtype() == "float64"


@pytest.mark.parametrize("bad", ["float16", "int32", "bool", "double", "", None, 64])
def test_default_dtype_errors(backend, bad):
    nnx.set_default_dtype("float64")
    with pytest.raises(ValueError) as info:
        nnx.set_default_dtype(bad)
    assert "float32" in str(info.value) and "float64" in str(info.value)
    assert nnx.get_default_dtype() == "float64"  # unchanged


def test_parameters_on_current_backend(backend, float64):
    for module in (nnx.Linear(3, 2), nnx.Conv1D(2, 3, 4, bias=True)):
        for table in (module._parameters, module._gradient):
            for value in table.values():
                assert backends.backend_of(value).name == backend
                assert backends.dtype_name(value) == "float64"


# -- asarray / to_numpy ------------------------------------------------------------------
@pytest.mark.parametrize(
    "data, dtype_arg, default, expected",
    [
        (np.arange(6, dtype=np.int32).reshape(2, 3), None, "float32", "int32"),
        (np.arange(6, dtype=np.int64), None, "float64", "int64"),
        (np.array([1, 0, 1], dtype=np.uint8), None, "float32", "uint8"),
        (np.array([True, False]), None, "float32", "bool"),
        (np.linspace(0, 1, 5), None, "float32", "float32"),
        (np.linspace(0, 1, 5), None, "float64", "float64"),
        (np.linspace(0, 1, 5).astype(np.float32), None, "float64", "float64"),
        (np.linspace(0, 1, 5), "float64", "float32", "float64"),
        (np.linspace(0, 1, 5), "float32", "float64", "float32"),
        (np.arange(4), "float64", "float32", "float64"),
        ([[1.0, 2.5], [3.0, 4.0]], None, "float32", "float32"),
        ([1, 2, 3], None, "float32", "int64"),
        (2.5, None, "float64", "float64"),
    ],
)
def test_asarray_dtypes(backend, data, dtype_arg, default, expected):
    nnx.set_default_dtype(default)
    before = np.array(data, copy=True)
    out = nnx.asarray(data, dtype=dtype_arg)
    assert backends.backend_of(out).name == backend
    assert backends.dtype_name(out) == expected
    np.testing.assert_array_equal(np.asarray(data), before)  # the input is untouched
    np.testing.assert_allclose(host(out).astype(np.float64), before.astype(np.float64), 1e-6)


@pytest.mark.parametrize(
    "data", [np.array([1 + 2j]), np.array(["a"], dtype=object), np.array(["x"])]
)
def test_asarray_refuses_non_numeric_data_on_every_backend(backend, data):
    with pytest.raises(TypeError, match=r"nnx.asarray: expected numeric data"):
        nnx.asarray(data)


def test_asarray_moves_arrays_of_other_backends(backend):
    torch = pytest.importorskip("torch")
    xps = pytest.importorskip("array_api_strict")
    values = np.arange(6.0).reshape(2, 3)
    for source in (values, torch.tensor(values), xps.asarray(values)):
        out = nnx.asarray(source)
        assert backends.backend_of(out).name == backend
        assert backends.dtype_name(out) == "float32"
        np.testing.assert_array_equal(host(out), values)
    labels = nnx.asarray(torch.tensor([1, 2, 3]))
    assert backends.backend_of(labels).name == backend
    assert backends.dtype_name(labels) == "int64"


@pytest.mark.parametrize("dtype", ["float32", "float64", "int32", "int64", "bool"])
def test_to_numpy(backend, dtype):
    values = (np.arange(12).reshape(3, 4) % 3).astype(dtype)
    x = nnx.asarray(values, dtype=dtype if dtype.startswith("float") else None)
    out = nnx.to_numpy(x)
    assert isinstance(out, np.ndarray)
    assert out.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(out, values)
    np.testing.assert_array_equal(nnx.to_numpy(x[1:, ::2]), values[1:, ::2])
    np.testing.assert_array_equal(nnx.to_numpy([1.0, 2.0]), np.array([1.0, 2.0]))


# -- seeding -----------------------------------------------------------------------------
def _net() -> nnx.Sequential:
    return nnx.Sequential(
        *(nnx.Linear(3, 4, init_type=t) for t in nnx.init.INIT_TYPES),
        nnx.Conv1D(3, 2, 4, bias=True, init_type="he_uniform"),
        nnx.Conv1D(2, 1, 3, bias=True, init_type="normal"),
    )


def test_manual_seed_same_weights_on_every_backend(backend):
    nnx.manual_seed(123)
    here = _net().state_dict()
    with nnx.use_backend("numpy"):
        nnx.manual_seed(123)
        on_numpy = _net().state_dict()
    assert list(here) == list(on_numpy)
    for name in here:
        np.testing.assert_array_equal(here[name], on_numpy[name], err_msg=name)
        assert here[name].dtype == np.float32
    nnx.manual_seed(123)
    np.testing.assert_array_equal(_net().state_dict()["0.weight"], here["0.weight"])
    nnx.manual_seed(124)
    assert not np.array_equal(_net().state_dict()["0.weight"], here["0.weight"])


def test_manual_seed_float64_is_the_unrounded_draw(backend):
    nnx.manual_seed(5)
    w32 = nnx.to_numpy(nnx.Linear(6, 5, init_type="normal")._parameters["weight"])
    nnx.set_default_dtype("float64")
    nnx.manual_seed(5)
    w64 = nnx.to_numpy(nnx.Linear(6, 5, init_type="normal")._parameters["weight"])
    assert w64.dtype == np.float64
    np.testing.assert_array_equal(w64.astype(np.float32), w32)


# -- Module.to ---------------------------------------------------------------------------
def test_module_to(backend, rng):
    with nnx.use_backend("numpy"):
        net = nnx.Sequential(
            nnx.Conv1D(3, 2, 3, bias=True), nnx.ReLU(), nnx.Flatten(), nnx.Linear(12, 2)
        )
        x_np = rng.standard_normal((4, 6, 2)).astype(np.float32)
        out_np = nnx.to_numpy(net(nnx.asarray(x_np)))
        delta = nnx.asarray(rng.standard_normal(out_np.shape))
        net.backward(nnx.asarray(x_np), delta)
    params = net.state_dict()
    grads = {k: nnx.to_numpy(g).copy() for k, g in net.named_gradients()}

    assert net.to(backend, "float64") is net
    for table in (dict(net.named_parameters()), dict(net.named_gradients())):
        for name, value in table.items():
            assert backends.backend_of(value).name == backend, name
            assert backends.dtype_name(value) == "float64", name
    for name, value in net.named_parameters():
        np.testing.assert_array_equal(host(value), params[name].astype(np.float64))
    for name, value in net.named_gradients():
        np.testing.assert_array_equal(host(value), grads[name].astype(np.float64))
    x = nnx.asarray(x_np, dtype="float64")
    np.testing.assert_allclose(host(net(x)), out_np, rtol=1e-5, atol=1e-5)
    net.backward(x, nnx.asarray(rng.standard_normal(out_np.shape), dtype="float64"))
    net.update_parameters(0.1)  # the moved buffers work in place

    # dtype only (stays on this backend), then back to numpy float32
    assert net.to(dtype="float32") is net
    assert all(backends.dtype_name(p) == "float32" for p in net.parameters())
    assert all(backends.backend_of(p).name == backend for p in net.parameters())
    net.to("numpy")
    assert all(isinstance(p, np.ndarray) for p in net.parameters())
    with pytest.raises(ValueError):
        net.to(dtype="float16")
    with pytest.raises(ValueError):
        net.to("mxnet")


def test_to_dtype_keeps_the_modules_backend_whatever_is_selected(backend):
    """``to(dtype=...)`` alone changes the dtype where the module is (as PyTorch's
    ``to(dtype)`` keeps the device); a bare ``to()`` goes to the current selection."""
    net = nnx.Sequential(nnx.Linear(3, 2), nnx.BatchNorm(2))
    other = "numpy" if backend != "numpy" else "array_api_strict"
    pytest.importorskip(other)
    with nnx.use_backend(other):
        net.to(dtype="float64")
        arrays = [*net.parameters(), *(b for _, b in net.named_buffers())]
        assert all(backends.backend_of(a).name == backend for a in arrays)
        assert all(backends.dtype_name(a) == "float64" for a in arrays)
        net.to()
        assert all(backends.backend_of(p).name == other for p in net.parameters())
    assert nnx.ReLU().to(dtype="float64") is not None  # nothing to move: fine


# -- state_dict --------------------------------------------------------------------------
def test_state_dict_round_trip(backend, rng):
    def build() -> nnx.Sequential:
        return nnx.Sequential(
            nnx.Conv1D(3, 1, 4, bias=True),
            nnx.MaxPool1D(2, 2),
            nnx.Flatten(),
            nnx.Sequential(nnx.Linear(12, 5), nnx.TanH()),
            nnx.Linear(5, 3, bias=False),
        )

    nnx.manual_seed(1)
    a = build()
    nnx.manual_seed(2)
    b = build()
    state = a.state_dict()
    assert list(state) == [
        "0.weight",
        "0.bias",
        "3.0.weight",
        "3.0.bias",
        "4.weight",
    ]
    assert all(isinstance(v, np.ndarray) for v in state.values())
    x = nnx.asarray(rng.standard_normal((2, 8, 1)))
    assert not np.allclose(host(a(x)), host(b(x)))
    b.load_state_dict(state)
    np.testing.assert_array_equal(host(b(x)), host(a(x)))
    for p in b.parameters():
        assert backends.backend_of(p).name == backend
    # the dict holds copies: changing it changes neither network
    state["0.weight"][...] = 0.0
    assert not np.all(host(a[0]._parameters["weight"]) == 0)
    assert not np.all(host(b[0]._parameters["weight"]) == 0)
    # values given as arrays of the current backend are accepted too
    b.load_state_dict({k: nnx.asarray(v) for k, v in a.state_dict().items()})
    np.testing.assert_array_equal(host(b(x)), host(a(x)))
    with pytest.raises(KeyError):
        b.load_state_dict({"0.weight": state["0.weight"]})
    bad = a.state_dict()
    bad["4.weight"] = np.zeros((3, 5), dtype=np.float32)
    with pytest.raises(ValueError):
        b.load_state_dict(bad)


# -- the NumPy backend's faster namespace --------------------------------------------------
def _fast_cases() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    a = rng.standard_normal((5, 7)).astype(np.float32)
    with_nan = a.copy()
    with_nan[2, 3] = np.nan
    ties = np.array([[1.0, 3.0, 3.0], [-0.0, 0.0, -1.0], [np.inf, -np.inf, 0.0]])
    return [
        a,
        with_nan,
        ties,
        rng.standard_normal((2, 3, 4)),
        rng.standard_normal((3, 1000)).astype(np.float32),  # rows too long for argmax
        np.full((2, 3), np.nan),
        np.array([[np.nan, np.inf, 1.0], [-np.inf, -np.inf, -np.inf], [1.0, 2.0, np.nan]]),
        np.asfortranarray(a),
        a[:, ::2],
        a.T,
        rng.integers(-3, 3, (4, 5)),
        rng.standard_normal((4, 5)) > 0,
        np.zeros((3, 0), dtype=np.float32),
        np.float64(2.5) * np.ones(()),
    ]


@pytest.mark.parametrize("name", ["sum", "max", "min", "count_nonzero", "argmax"])
def test_numpy_fast_namespace_matches_array_api_compat(name):
    import array_api_compat.numpy as compat

    if not hasattr(compat, name):
        pytest.skip(f"this array-api-compat has no {name}")
    fast = backends.BACKENDS["numpy"].load().xp
    with np.errstate(all="ignore"):  # inf - inf in a sum: the same NaN, no warning
        _compare_fast(compat, fast, name)


def _compare_fast(compat, fast, name):
    for x in _fast_cases():
        axes = [None, *range(-x.ndim, x.ndim)]
        for axis in axes:
            for keepdims in (False, True):
                kwargs = {"axis": axis, "keepdims": keepdims}
                try:
                    want = getattr(compat, name)(x, **kwargs)
                except ValueError:  # max/min of an empty axis: both must refuse
                    with pytest.raises(ValueError):
                        getattr(fast, name)(x, **kwargs)
                    continue
                got = getattr(fast, name)(x, **kwargs)
                msg = f"{name}({x.dtype} {x.shape}, {kwargs})"
                assert np.shape(got) == np.shape(want), msg
                assert np.asarray(got).dtype == np.asarray(want).dtype, msg
                np.testing.assert_array_equal(got, want, err_msg=msg)
                if name in ("sum", "count_nonzero"):  # max/min/argmax: no signed zeros
                    np.testing.assert_array_equal(np.signbit(got), np.signbit(want), err_msg=msg)


def test_numpy_fast_take_matches_array_api_compat():
    import array_api_compat.numpy as compat

    fast = backends.BACKENDS["numpy"].load().xp
    rng = np.random.default_rng(3)
    for x in _fast_cases():
        for axis in range(-x.ndim, x.ndim):
            n = x.shape[axis]
            for idx in (np.arange(n)[::-1], rng.integers(0, n, 7) if n else np.arange(0)):
                got, want = fast.take(x, idx, axis=axis), compat.take(x, idx, axis=axis)
                assert got.shape == want.shape and got.dtype == want.dtype
                np.testing.assert_array_equal(got, want)
                if got.size:  # a copy, never a view of x
                    assert not np.shares_memory(got, x)
    with pytest.raises(IndexError):
        fast.take(np.ones((2, 3)), np.array([5]), axis=0)


def test_numpy_fast_max_of_short_rows():
    """max over short rows (through argmax): many shapes, a fresh array every time."""
    fast = backends.BACKENDS["numpy"].load().xp
    rng = np.random.default_rng(1)
    for n in range(1, 80):  # more shapes than the row-start cache keeps
        x = rng.standard_normal((n, 1 + n % 5)).astype(np.float32)
        for _ in range(2):
            m = fast.max(x, axis=-1, keepdims=True)
            np.testing.assert_array_equal(m, np.max(x, axis=-1, keepdims=True))
            m[...] = 7.0
            assert not np.any(x == 7.0)


def test_numpy_fast_matmul_matches_array_api_compat():
    import array_api_compat.numpy as compat

    fast = backends.BACKENDS["numpy"].load().xp
    rng = np.random.default_rng(2)
    shapes = [(32, 256, 100), (1, 256, 100), (32, 100, 1), (1, 5, 1), (7, 1, 3), (3, 0, 4)]
    for dtype in (np.float32, np.float64):
        for n, k, m in shapes:
            a = rng.standard_normal((n, k)).astype(dtype)
            b = rng.standard_normal((k, m)).astype(dtype)
            for x1, x2 in ((a, b), (np.asfortranarray(a), b), (a.T.copy().T, b.T.copy().T)):
                got = fast.matmul(x1, x2)
                assert type(got) is np.ndarray and got.dtype == dtype
                np.testing.assert_array_equal(got, compat.matmul(x1, x2))
            np.testing.assert_array_equal(fast.matmul(b.T, a.T), compat.matmul(b.T, a.T))
    # anything but two 2-D arrays of one float dtype: array-api-compat's matmul
    a3 = rng.standard_normal((2, 3, 4))
    for x1, x2 in (
        (a3, a3.mT),
        (a3[0], a3[0, 0]),
        (a3[0].astype(np.float32), a3[0].T),
        (np.arange(6).reshape(2, 3), np.arange(6).reshape(3, 2)),
    ):
        got, want = fast.matmul(x1, x2), compat.matmul(x1, x2)
        assert got.dtype == want.dtype and got.shape == want.shape
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("version", ["1.26.4", np.__version__], ids=["numpy1-path", "installed"])
def test_quiet_float_errors(monkeypatch, version):
    import warnings

    monkeypatch.setattr(np, "__version__", version)  # read when decorating

    @backends.quiet_float_errors
    def square(x):
        return x * x, np.geterr()

    before = np.geterr()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out, inside = square(np.float32(1e30))
    assert np.isinf(out)
    assert inside["over"] == inside["invalid"] == inside["divide"] == "ignore"
    assert np.geterr() == before
    with pytest.warns(RuntimeWarning):
        _ = np.float32(1e30) * np.float32(1e30)


def test_which_backends_flush_subnormals():
    """CuPy compiles its kernels with -ftz=true (seen on an H200: ReLU's mask and BCE's
    log of a float32 subnormal read it as 0); the denormal tests compare against a
    reference with the same flush. The other libraries keep subnormals."""
    assert backends.BACKENDS["cupy"].flushes_subnormals("float32")
    assert not backends.BACKENDS["cupy"].flushes_subnormals("float64")
    for name in ("numpy", "torch", "array_api_strict"):
        assert not backends.BACKENDS[name].flushes_subnormals("float32")


class _NumpyAsCupy:
    """The parts of CuPy that ``capturable_namespace`` uses, done by NumPy: its
    reduction kernel ``a * b`` summed with ``+`` over ``axis`` is ``sum(a * b, axis)``."""

    swapaxes = staticmethod(np.swapaxes)
    empty = staticmethod(np.empty)

    class RawKernel:
        """nnx's GEMM kernel as its launch promises: block z of the grid writes
        ``A[:, chunk z] @ B[chunk z, :]`` into ``C[z]``, 64x64 outputs per block."""

        def __init__(self, source: str, name: str) -> None:
            assert name == "nnx_gemm" and "typedef" in source

        def __call__(self, grid, block, args) -> None:
            A, B, C, m, n, k, chunk, sam, sak, sbk, sbn = args
            assert block == (16, 16) and grid[0] * 64 >= n and grid[1] * 64 >= m
            assert (sam, sak) == tuple(s // A.itemsize for s in A.strides)
            assert (sbk, sbn) == tuple(s // B.itemsize for s in B.strides)
            assert C.shape == (grid[2], m, n) and (grid[2] - 1) * chunk < k <= grid[2] * chunk
            for z in range(grid[2]):
                C[z] = A[:, z * chunk : (z + 1) * chunk] @ B[z * chunk : (z + 1) * chunk, :]

    @staticmethod
    def ReductionKernel(in_params, out_params, map_expr, reduce_expr, post, identity, name):  # noqa: N802
        assert (map_expr, reduce_expr, post, identity) == ("a * b", "a + b", "c = a", "0")
        return lambda a, b, axis: np.sum(a * b, axis=axis)


@pytest.mark.parametrize(
    "shapes",
    [
        ((5, 3), (3, 4)),
        ((1, 7), (7, 1)),
        ((2, 5, 3), (3, 4)),
        ((2, 5, 3), (2, 3, 6)),
        ((3, 20000), (20000, 32)),  # a long sum into few outputs: split into chunks
        ((1000, 70), (70, 130)),  # many outputs: one chunk, several blocks
    ],
)
def test_cupy_graph_mode_matmul_arithmetic(shapes, rng, monkeypatch):
    """The CuPy namespace's graph-mode matmul (a reduction kernel over broadcast views,
    since CuPy calls no cuBLAS while capturing) equals matmul; run here with NumPy
    standing in for CuPy, as the as_strided window arithmetic is."""
    import array_api_compat.numpy as anp

    from nnx.backends import _cupy

    ns = _cupy.capturable_namespace(anp, _NumpyAsCupy)
    a, b = rng.standard_normal(shapes[0]), rng.standard_normal(shapes[1])
    np.testing.assert_array_equal(ns.matmul(a, b), np.matmul(a, b))  # not capturing: plain
    monkeypatch.setattr(_cupy._graph_state, "capturing", True, raising=False)
    np.testing.assert_allclose(ns.matmul(a, b), np.matmul(a, b), rtol=1e-12, atol=1e-12)
    if a.ndim == 2:  # the GEMM kernel reads any strides: transposed views too
        at, bt = np.asfortranarray(a), np.asfortranarray(b)
        np.testing.assert_allclose(ns.matmul(at, bt), np.matmul(a, b), rtol=1e-12, atol=1e-12)
    c = rng.standard_normal(shapes[0])
    np.testing.assert_allclose(ns.vecdot(a, c), np.sum(a * c, axis=-1), rtol=1e-12)
    np.testing.assert_allclose(ns.vecdot(a, c, axis=0), np.sum(a * c, axis=0), rtol=1e-12)


def test_cupy_fused_kernels_cover_the_fused_ops():
    """Each op of nnx.backends.fused has a CuPy kernel (by the name the op asks for),
    with an in-place output only for the in-place op; other libraries use the formula."""
    import inspect

    from nnx.backends import _cupy, fused

    asked = {
        name: inspect.getsource(getattr(fused, name)).split("_kernel(")[1].split('"')[1]
        for name in fused.__all__
    }
    assert set(asked.values()) == set(_cupy.FUSED_SOURCES)
    for op, (_inputs, outputs, body, kname) in _cupy.FUSED_SOURCES.items():
        assert kname == f"nnx_{op}" and body.startswith(outputs.split()[-1])
    for name in ("numpy", "torch", "array_api_strict"):
        assert backends.BACKENDS[name].fused_kernel("tanh_backward") is None


@pytest.mark.parametrize("ctype", ["float", "double"])
def test_cupy_gemm_kernel_compiles(ctype, tmp_path):
    """The CUDA source of the graph-mode GEMM compiles for Hopper (nvcc, where installed)."""
    import shutil

    from nnx.backends import _cupy

    nvcc = shutil.which("nvcc")
    if nvcc is None:
        pytest.skip("nvcc not installed")
    src = tmp_path / "gemm.cu"
    src.write_text(f"typedef {ctype} T;\n{_cupy.GEMM_SOURCE}")
    run = subprocess.run(
        [nvcc, "-arch=sm_90", "-c", str(src), "-o", str(tmp_path / "gemm.o")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert run.returncode == 0, run.stderr


# -- host allocator ------------------------------------------------------------------------
ALLOCATION_PROBE = """
import resource
import numpy as np
import nnx
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
nnx.manual_seed(0)
net = nnx.models.build("simple_cnn", 256, 1, 10)
X = np.random.default_rng(0).normal(size=(2560, 256, 1)).astype(np.float32)
y = np.arange(2560) % 10
optim = nnx.Optim(net, nnx.CrossEntropyLoss(), eps=1e-4)
optim.SGD(X, y, 256, 1, progress=False)  # warm-up: the heap grows to its working size
before = faults()
optim.SGD(X, y, 256, 2, progress=False)
print(nnx.backends.allocator_tuned(), faults() - before)
"""


@pytest.mark.once
@pytest.mark.skipif(
    not sys.platform.startswith("linux") or not os.confstr("CS_GNU_LIBC_VERSION"),
    reason="the allocator tuning is for glibc on Linux",
)
@pytest.mark.parametrize("setting", [None, "0"])
def test_freed_buffers_are_reused_without_page_faults(setting, monkeypatch):
    # Without the tuning, glibc returned ~2000 pages per step of this CNN to the kernel.
    if setting is None:
        monkeypatch.delenv("NNX_MALLOC_TUNING", raising=False)
    else:
        monkeypatch.setenv("NNX_MALLOC_TUNING", setting)
    out = run_python(ALLOCATION_PROBE, None)
    assert out.returncode == 0, out.stderr
    tuned, faults = out.stdout.split()
    if setting is None:
        assert tuned == "True"
        assert int(faults) < 2_000, f"{faults} page faults in 20 training steps"
    else:
        assert tuned == "False"


def test_host_view_shares_host_memory_only(backend):
    x = nnx.asarray(np.arange(4.0))
    view = backends.host_view(x)
    if backend in ("numpy", "torch"):  # host memory that NumPy can see, written in place
        view[0] = 7.0
        np.testing.assert_array_equal(host(x), [7.0, 1.0, 2.0, 3.0])
    else:  # device memory, immutable arrays, or a library NumPy cannot share with
        assert view is None
    if backend == "numpy":
        frozen = np.arange(3.0)
        frozen.flags.writeable = False
        assert backends.host_view(frozen) is None
    if backend == "torch":
        import torch

        assert backends.host_view(torch.ones(3, requires_grad=True)) is None
        assert backends.host_view(torch.ones(3, 2).T) is None  # not contiguous
    assert backends.host_view([1.0, 2.0]) is None


def test_from_host_memory_wraps_host_memory_without_a_copy(backend):
    like = nnx.asarray(np.zeros(2), dtype="float32")
    memory = np.arange(4, dtype=np.float32)
    x = backends.from_host_memory(memory, like)
    if backend in ("numpy", "torch"):  # the library's array over the same memory
        assert backends.backend_of(x) is backends.backend_of(like)
        memory[0] = 7.0
        np.testing.assert_array_equal(host(x), [7.0, 1.0, 2.0, 3.0])
        view = backends.host_view(x)  # and back: host_view is its inverse
        assert view is not None and np.shares_memory(view, memory)
    else:  # device memory, immutable arrays, or a library NumPy cannot share with
        assert x is None
    if backend == "torch":
        import torch

        assert backends.from_host_memory(memory, torch.ones(2, device="meta")) is None
    assert backends.from_host_memory(memory, [1.0]) is None
