"""Numerical edge cases, on every backend, against a float64 PyTorch reference.

- float32 logits of +-1e4: StableSigmoid, Softmax, LogSoftmax, Softplus, TanH and the
  losses (CELogSoftmax, LogSoftmax + CrossEntropyLoss, MSELoss) give finite outputs and
  gradients equal to the float64 reference;
- BCELoss at yhat exactly 0 and 1 (logs clamped at -100, gradient denominator clamped
  at 1e-12, PyTorch's convention);
- Softmax / LogSoftmax of equal values (exactly 1/K and -log K, gradients exact);
- max-pool ties: the gradient goes to the first maximum of each window (PyTorch's
  choice), overlapping windows add up;
- denormal inputs and deltas (float32 and float64) through every layer and loss.

The reference is PyTorch autograd in float64 (``helpers.torch_reference``) evaluated on
the very values nnx received (float32 data is rounded first), so the comparison only
measures nnx's own rounding.
"""

from __future__ import annotations

import numpy as np
import pytest
from helpers import (
    host,
    module_vjp,
    torch_loss_forward,
    torch_module_reference,
    torch_reference,
)

import nnx
from nnx import backends

pytest.importorskip("torch")

BIG = 1e4
EXTREME = np.array(
    [
        [BIG, -BIG, 0.0, 1.0],
        [-BIG, -BIG, BIG, BIG],
        [BIG, BIG, BIG, BIG],
        [-BIG, -BIG, -BIG, -BIG],
        [-BIG, 0.5, -0.5, BIG / 2],
    ]
)
TINY32 = float(np.finfo(np.float32).tiny)  # smallest normal float32


def _finite(name: str, a: np.ndarray) -> None:
    assert np.all(np.isfinite(a)), f"{name} not finite: {a}"


def _close(
    name: str,
    actual: np.ndarray,
    desired: np.ndarray,
    rtol: float,
    atol: float,
    scaled: bool = False,
) -> None:
    """``assert_allclose``; with ``scaled``, ``atol`` also grows to ``rtol * max|desired|``
    (sums whose terms cancel lose absolute, not relative, precision)."""
    assert actual.shape == desired.shape, (name, actual.shape, desired.shape)
    if scaled:
        atol = atol + rtol * float(np.max(np.abs(desired), initial=0.0))
    np.testing.assert_allclose(actual, desired, rtol=rtol, atol=atol, err_msg=name)


def _rounded(x: np.ndarray, dtype: str) -> np.ndarray:
    """The float64 values of ``x`` as nnx sees them in ``dtype``."""
    return np.asarray(x).astype(dtype).astype(np.float64)


def check_module(module, x, weights, dtype, rtol, atol, scaled=False):
    """nnx's forward and vjps are finite and equal to torch float64 on the same values."""
    out, dx, grads = module_vjp(module, x, weights)
    _finite(f"{module!r} output", out)
    _finite(f"{module!r} dL/dx", dx)
    ref_out, ref_dx, ref_grads = torch_module_reference(
        module, _rounded(x, dtype), _rounded(weights, dtype)
    )
    _close(f"{module!r} output", out, ref_out, rtol, atol, scaled)
    _close(f"{module!r} dL/dx", dx, ref_dx, rtol, atol, scaled)
    for name, g in grads.items():
        _finite(f"{module!r} dL/d{name}", g)
        _close(f"{module!r} dL/d{name}", g, ref_grads[name], rtol, atol, scaled)
    return out, dx


def loss_pair(loss, y, yhat, dtype):
    """nnx's (per-sample losses, dL/dyhat) and torch's float64 reference."""
    yb = nnx.asarray(y, dtype=dtype if np.asarray(y).dtype.kind == "f" else None)
    yhatb = nnx.asarray(yhat, dtype=dtype)
    got = host(loss.forward(yb, yhatb)), host(loss.backward(yb, yhatb))
    y_ref = _rounded(y, dtype) if np.asarray(y).dtype.kind == "f" else np.asarray(y)
    ref_out, ref_grads = torch_reference(
        lambda y, yhat: torch_loss_forward(loss, y, yhat),
        {"y": y_ref, "yhat": _rounded(yhat, dtype)},
    )
    return got, (ref_out, ref_grads["yhat"])


# -- float32 logits of +-1e4 ---------------------------------------------------------------
ACTIVATIONS = ["StableSigmoid", "Softmax", "LogSoftmax", "Softplus", "TanH"]


@pytest.mark.parametrize("name", ACTIVATIONS)
def test_extreme_logits_activations(backend, name, rng):
    weights = rng.standard_normal(EXTREME.shape)
    check_module(getattr(nnx, name)(), EXTREME, weights, "float32", rtol=1e-6, atol=1e-6)


def test_extreme_logits_stable_sigmoid_saturates(backend):
    out = host(nnx.StableSigmoid()(nnx.asarray(np.array([[-BIG, BIG]]))))
    np.testing.assert_array_equal(out, np.array([[0.0, 1.0]], dtype=np.float32))


def test_extreme_logits_ce_logsoftmax(backend, rng):
    labels = np.array([0, 1, 2, 3, 2])
    for y in (labels, np.eye(4)[labels]):
        (out, grad), (ref_out, ref_grad) = loss_pair(nnx.CELogSoftmax(), y, EXTREME, "float32")
        _finite("CELogSoftmax loss", out)
        _finite("CELogSoftmax grad", grad)
        _close("CELogSoftmax loss", out, ref_out, 1e-6, 1e-6)
        _close("CELogSoftmax grad", grad, ref_grad, 1e-6, 1e-6)
    # row 0: right with certainty (exactly 0); row 1: two tied wrong classes
    np.testing.assert_allclose(out[:2], [0.0, 2 * BIG + np.log(2)], rtol=1e-7, atol=0)


def test_extreme_logits_logsoftmax_then_nll(backend, rng):
    """The seed's classifier head: LogSoftmax followed by CrossEntropyLoss."""
    labels = np.array([1, 0, 3, 2, 3])
    net = nnx.LogSoftmax()
    logp = net(nnx.asarray(EXTREME))
    loss = nnx.CrossEntropyLoss()
    y = nnx.asarray(labels)
    out = host(loss.forward(y, logp))
    dx = host(net.backward_delta(nnx.asarray(EXTREME), loss.backward(y, logp)))

    def torch_chain(x, y):
        import torch
        import torch.nn.functional as F

        return F.nll_loss(torch.log_softmax(x, dim=-1), y, reduction="none")

    ref_out, ref_grads = torch_reference(torch_chain, {"x": EXTREME, "y": labels})
    _finite("loss", out)
    _finite("dL/dx", dx)
    _close("loss", out, ref_out, 1e-6, 1e-6)
    _close("dL/dx", dx, ref_grads["x"], 1e-6, 1e-6)


def test_extreme_logits_mse(backend, rng):
    y = rng.standard_normal(EXTREME.shape)
    (out, grad), (ref_out, ref_grad) = loss_pair(nnx.MSELoss(), y, EXTREME, "float32")
    _finite("MSE loss", out)
    _finite("MSE grad", grad)
    _close("MSE loss", out, ref_out, 1e-6, 0.0)
    _close("MSE grad", grad, ref_grad, 1e-6, 1e-6)


def test_extreme_logits_through_linear(backend, rng):
    """A Linear layer producing +-1e4 logits, then CELogSoftmax: a full training step."""
    net = nnx.Sequential(nnx.Linear(2, 3, init_type="zeros"))
    net[0]._parameters["weight"] = nnx.asarray(np.array([[BIG, -BIG, 0.0], [0.0, BIG, -BIG]]))
    opt = nnx.Optim(net, nnx.CELogSoftmax(), eps=1e-6)
    losses = host(opt.step(np.array([[1.0, 0.0], [0.0, 1.0]]), np.array([1, 0])))
    _finite("losses", losses)
    np.testing.assert_allclose(losses, [2 * BIG, BIG], rtol=1e-6)
    for name, p in net.named_parameters():
        _finite(name, host(p))


# -- BCE at yhat exactly 0 and 1 -----------------------------------------------------------
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_bce_at_exact_zero_and_one(backend, dtype):
    yhat = np.array([[0.0, 1.0, 0.0, 1.0, 0.0, 1.0, 0.5]])
    y = np.array([[0.0, 1.0, 1.0, 0.0, 0.3, 0.7, 1.0]])
    (out, grad), (ref_out, ref_grad) = loss_pair(nnx.BCELoss(), y, yhat, dtype)
    _finite("BCE loss", out)
    _finite("BCE grad", grad)
    # per feature: 0, 0, 100, 100, 30, 30, log 2  (logs clamped at -100)
    np.testing.assert_allclose(out, [260 + np.log(2)], rtol=1e-6)
    _close("BCE loss", out, ref_out, 1e-6, 1e-6)
    _close("BCE grad", grad, ref_grad, 1e-6, 0.0)
    np.testing.assert_allclose(grad[0, 2:4], [-1e12, 1e12], rtol=1e-6)  # clamped denominator


def test_bce_after_saturated_sigmoid(backend):
    """StableSigmoid(+-1e4) is exactly 0 or 1; BCE of it stays finite."""
    p = nnx.StableSigmoid()(nnx.asarray(np.array([[-BIG, BIG]])))
    loss = nnx.BCELoss()
    y = nnx.asarray(np.array([[1.0, 1.0]]))
    np.testing.assert_allclose(host(loss.forward(y, p)), [100.0], rtol=1e-6)
    _finite("BCE grad", host(loss.backward(y, p)))


# -- Softmax of equal values ---------------------------------------------------------------
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("value", [0.0, 3.0, -7.5, BIG, -BIG])
def test_softmax_equal_values(backend, dtype, value, rng):
    K = 5
    x = np.full((3, K), value)
    delta = rng.standard_normal((3, K))
    xb = nnx.asarray(x, dtype=dtype)
    sm, lsm = nnx.Softmax(), nnx.LogSoftmax()
    np.testing.assert_allclose(host(sm(xb)), np.full((3, K), 1 / K), rtol=1e-7)
    np.testing.assert_allclose(host(lsm(xb)), np.full((3, K), -np.log(K)), rtol=1e-7)
    d = _rounded(delta, dtype)
    expected_sm = (d - d.mean(axis=1, keepdims=True)) / K
    expected_lsm = d - d.sum(axis=1, keepdims=True) / K
    tol = 1e-6 if dtype == "float32" else 1e-13
    db = nnx.asarray(delta, dtype=dtype)
    np.testing.assert_allclose(host(sm.backward_delta(xb, db)), expected_sm, rtol=tol, atol=tol)
    np.testing.assert_allclose(host(lsm.backward_delta(xb, db)), expected_lsm, rtol=tol, atol=tol)


# -- max-pool ties -------------------------------------------------------------------------
TIES = [
    # (signal, k, stride, expected dX for delta = 1, 2, 3, ... per window)
    ([1, 1, 1, 1], 2, 1, [1, 2, 3, 0]),
    ([1, 1, 1, 1], 2, 2, [1, 0, 2, 0]),
    ([0, 2, 2, 1], 3, 1, [0, 3, 0, 0]),
    ([5, 5, 5, 5, 5], 5, 1, [1, 0, 0, 0, 0]),
    ([1, 3, 3, 3, 0, 3], 3, 2, [0, 1, 2, 0, 0, 0]),
    ([-2, -2, -1, -1, -1, -2], 2, 1, [1, 0, 2 + 3, 4, 5, 0]),
    ([7, 7, 7, 7, 7, 7, 7], 2, 3, [1, 0, 0, 2, 0, 0, 0]),
]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("signal, k, stride, expected", TIES)
def test_maxpool_ties_go_to_first_maximum(backend, dtype, signal, k, stride, expected):
    nnx.set_default_dtype(dtype)
    x = np.array(signal, dtype=np.float64).reshape(1, -1, 1)
    x = np.concatenate([x, 2 * x], axis=2)  # two channels, same tie pattern
    pool = nnx.MaxPool1D(k, stride)
    n_out = (x.shape[1] - k) // stride + 1
    delta = np.tile(np.arange(1.0, n_out + 1).reshape(1, -1, 1), (1, 1, 2))
    out, dx = check_module(pool, x, delta, dtype, rtol=1e-7, atol=0.0)
    want = np.array(expected, dtype=np.float64).reshape(1, -1, 1)
    np.testing.assert_array_equal(dx, np.concatenate([want, want], axis=2))


def test_maxpool_ties_with_a_cached_forward(backend):
    """backward_delta right after forward (cached maxima) equals a fresh one."""
    x = nnx.asarray(np.array([[[1.0], [1.0], [0.0], [1.0], [1.0]]]))
    pool = nnx.MaxPool1D(3, 1)
    pool(x)
    delta = nnx.asarray(np.array([[[1.0], [10.0], [100.0]]]))
    cached = host(pool.backward_delta(x, delta))
    fresh = host(nnx.MaxPool1D(3, 1).backward_delta(x, delta))
    np.testing.assert_array_equal(cached, fresh)
    np.testing.assert_array_equal(cached[0, :, 0], [1.0, 10.0, 0.0, 100.0, 0.0])


# -- denormals -----------------------------------------------------------------------------
DENORMAL = {"float32": 1e-40, "float64": 1e-310}
NORMAL_TINY = {"float32": TINY32, "float64": float(np.finfo(np.float64).tiny)}


def _as_backend_sees(x: np.ndarray, dtype: str) -> np.ndarray:
    """``x`` with subnormals flushed to (signed) zero where the backend computes so
    (CuPy float32): the reference then gets the values the backend really computed on."""
    if not backends.current().flushes_subnormals(dtype):
        return x
    x = np.array(x, dtype=np.float64)
    tiny = np.abs(x) < NORMAL_TINY[dtype]
    x[tiny] = np.copysign(0.0, x[tiny])
    return x


def _denormal_data(dtype: str, shape: tuple[int, ...], rng) -> np.ndarray:
    d = DENORMAL[dtype]
    x = rng.choice([d, -d, 3 * d, 0.0, 1.0, -0.5], size=shape)
    xd = x.astype(dtype)
    assert np.any((xd != 0) & (np.abs(xd) < NORMAL_TINY[dtype]))  # really subnormal
    return x


DENORMAL_MODULES = {
    "Linear": (lambda: nnx.Linear(4, 3, init_type="normal"), (3, 4)),
    "Conv1D": (lambda: nnx.Conv1D(2, 4, 3, stride=1, bias=True, init_type="normal"), (2, 5, 4)),
    "MaxPool1D": (lambda: nnx.MaxPool1D(2, 1), (2, 5, 4)),
    "AvgPool1D": (lambda: nnx.AvgPool1D(2, 1), (2, 5, 4)),
    **{name: (getattr(nnx, name), (3, 4)) for name in ACTIVATIONS + ["ReLU", "Sigmoid"]},
}


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("name", list(DENORMAL_MODULES))
def test_denormal_inputs_and_deltas(backend, dtype, name, rng):
    nnx.set_default_dtype(dtype)  # parameters in dtype too (restored by the fixture)
    make, shape = DENORMAL_MODULES[name]
    module = make()
    x = _denormal_data(dtype, shape, rng)
    out = module(nnx.asarray(x))
    weights = _denormal_data(dtype, tuple(out.shape), rng)
    x, weights = _as_backend_sees(x, dtype), _as_backend_sees(weights, dtype)
    # flush-to-zero of a subnormal may change a result by at most the smallest normal
    tol = 1e-6 if dtype == "float32" else 1e-13
    check_module(module, x, weights, dtype, rtol=tol, atol=NORMAL_TINY[dtype], scaled=True)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_denormal_losses(backend, dtype, rng):
    d = DENORMAL[dtype]
    tol = 1e-6 if dtype == "float32" else 1e-13
    yhat = np.array([[d, 1 - 1e-3, 0.5], [0.25, d, 3 * d]])
    cases = [
        (nnx.BCELoss(), np.array([[1.0, 0.0, d], [d, 1.0, 0.0]])),
        (nnx.MSELoss(), np.array([[d, -d, 0.0], [1.0, d, 2 * d]])),
        (nnx.CELogSoftmax(), np.array([2, 0])),
        (nnx.CrossEntropyLoss(), np.array([[d, 1.0, 0.0], [0.0, 0.0, 1.0]])),
    ]
    yhat = _as_backend_sees(yhat, dtype)
    for loss, y in cases:
        y = y if y.dtype.kind == "i" else _as_backend_sees(y, dtype)
        (out, grad), (ref_out, ref_grad) = loss_pair(loss, y, yhat, dtype)
        _finite(f"{loss!r} loss", out)
        _finite(f"{loss!r} grad", grad)
        _close(f"{loss!r} loss", out, ref_out, tol, NORMAL_TINY[dtype], scaled=True)
        # PyTorch clamps BCE's denominator at float32(1e-12) even in float64: 4e-9 apart
        gtol = max(tol, 1e-8) if isinstance(loss, nnx.BCELoss) else tol
        _close(f"{loss!r} grad", grad, ref_grad, gtol, NORMAL_TINY[dtype], scaled=True)
