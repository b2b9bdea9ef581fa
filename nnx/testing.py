r"""Checks for a module's (or a loss's) hand-written derivatives: public, for your layers.

:func:`check_gradients` compares ``backward_delta`` and ``backward_update_gradient``
(or a loss's ``backward``) with central finite differences in float64;
:func:`compare_with_reference` compares forward and both derivatives with a reference
implementation run by PyTorch autograd (the built-in layers have one; pass your own
for a new layer). A mismatch raises :class:`GradientCheckError` (an
``AssertionError``, so test runners report it as a failure) naming the module, the
parameter (or the input) and the worst entry.

>>> import nnx
>>> from nnx.testing import check_gradients
>>> nnx.set_default_dtype("float64")
>>> check_gradients(nnx.Linear(3, 2), nnx.asarray([[1.0, 2.0, 3.0]]))  # passes silently
>>> class BadScale(nnx.Module):
...     def __init__(self):
...         super().__init__()
...         self._register("gamma", nnx.asarray([[1.0, 2.0]]))
...     def forward(self, X):
...         return X * self._parameters["gamma"]
...     def backward_update_gradient(self, input, delta):
...         self.accumulate_gradient("gamma", (delta * 2.0).sum(axis=0, keepdims=True))
...     def backward_delta(self, input, delta):
...         return delta * self._parameters["gamma"]
>>> check_gradients(BadScale(), nnx.asarray([[0.5, -1.0]]), weights=[[1.0, 1.0]])
Traceback (most recent call last):
...
nnx.testing.GradientCheckError: BadScale(): dL/dgamma differs from central differences in 2 of 2 checked entries; worst at index (0, 1): analytic 2, numeric -1 (|difference| 3 > tolerance 1.01e-05)
>>> nnx.set_default_dtype("float32")

Everything here works on host NumPy copies in float64 and talks to modules through
their public protocol and parameter API, so the same checks serve every backend.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import numpy as np

from . import backends
from .backends import asarray, get_default_dtype
from .module import Loss, Module

__all__ = [
    "Case",
    "GradientCheckError",
    "assert_close",
    "cases",
    "check_gradients",
    "compare_with_reference",
    "has_reference",
    "host",
    "module_vjp",
    "numerical_gradient",
    "numerical_gradient_rows",
    "register_case",
    "register_reference",
    "torch_forward",
    "torch_module_reference",
    "torch_reference",
]


class GradientCheckError(AssertionError):
    """A derivative differs from its finite-difference or reference value."""


def host(x: Any) -> np.ndarray:
    """Any backend's array (or host data) as a NumPy copy."""
    return np.array(backends.to_numpy(x), copy=True)


def assert_close(
    actual: Any, desired: Any, rtol: float = 1e-7, atol: float = 0.0, err_msg: str = ""
) -> None:
    """``numpy.testing.assert_allclose`` on arrays of any backend (shape checked too)."""
    a, d = host(actual), host(desired)
    if a.shape != d.shape:
        raise AssertionError(f"{err_msg}: shape {a.shape} != expected {d.shape}")
    np.testing.assert_allclose(a, d, rtol=rtol, atol=atol, err_msg=err_msg)


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise GradientCheckError(message)


def _subset(size: int, max_elements: int | None, rng: np.random.Generator) -> np.ndarray:
    """All flat indices, or a sorted random subset of ``max_elements`` of them."""
    if max_elements is None or size <= max_elements:
        return np.arange(size)
    return np.sort(rng.choice(size, size=max_elements, replace=False))


def compare(
    analytic: Any,
    expected: Any,
    what: str,
    rtol: float,
    atol: float,
    shape: tuple[int, ...] | None = None,
    indices: np.ndarray | None = None,
    against: str = "central differences",
) -> None:
    """Raise :class:`GradientCheckError` naming ``what`` and the worst entry unless
    ``|analytic - expected| <= atol * max(1, max|expected|) + rtol * |expected|``.

    ``analytic``/``expected`` are flat values at flat ``indices`` of an array of
    ``shape`` (both default to the arrays' own)."""
    a = np.asarray(analytic, dtype=np.float64)
    e = np.asarray(expected, dtype=np.float64)
    if shape is None:
        shape = a.shape
    a, e = a.reshape(-1), e.reshape(-1)
    if indices is None:
        indices = np.arange(a.size)
    _check(a.shape == e.shape, f"{what}: {a.size} values, expected {e.size}")
    scale = max(1.0, float(np.max(np.abs(e), initial=0.0)))
    tol = atol * scale + rtol * np.abs(e)
    err = np.abs(a - e)
    bad = ~(err <= tol)  # NaN counts as bad
    if not bad.any():
        return
    worst = int(np.argmax(np.where(np.isnan(err), np.inf, err - tol)))
    entry = tuple(int(i) for i in np.unravel_index(int(indices[worst]), shape))
    raise GradientCheckError(
        f"{what} differs from {against} in {int(bad.sum())} of {a.size} checked "
        f"entries; worst at index {entry}: analytic {a[worst]:.6g}, "
        f"{'numeric' if against == 'central differences' else 'reference'} {e[worst]:.6g} "
        f"(|difference| {err[worst]:.3g} > tolerance {tol[worst]:.3g})"
    )


# -- finite differences ------------------------------------------------------------------
def numerical_gradient(
    fn: Callable[[np.ndarray], float],
    x: np.ndarray,
    indices: np.ndarray | None = None,
    h: float = 1e-6,
) -> np.ndarray:
    """Central differences :math:`(f(x + h e_i) - f(x - h e_i)) / 2h` at flat ``indices``.

    ``fn`` maps a float64 array shaped like ``x`` to a scalar. Returns the derivatives
    at ``indices`` (all elements when ``None``) as a 1-D array. ``x`` is not modified.
    """
    x = np.array(x, dtype=np.float64, copy=True)
    idx = np.arange(x.size) if indices is None else np.asarray(indices)
    out = np.empty(idx.size)
    flat = x.reshape(-1)
    for n, i in enumerate(idx):
        saved = flat[i]
        flat[i] = saved + h
        plus = float(fn(x))
        flat[i] = saved - h
        minus = float(fn(x))
        flat[i] = saved
        out[n] = (plus - minus) / (2 * h)
    return out


def numerical_gradient_rows(
    fn: Callable[[np.ndarray, np.ndarray], Any],
    x: np.ndarray,
    weights: np.ndarray,
    indices: np.ndarray | None = None,
    h: float = 1e-6,
) -> np.ndarray:
    """Central differences of :math:`\\sum \\text{fn}(x) \\odot \\text{weights}` in one call.

    For a *row-independent* ``fn`` (sample ``b`` of the output depends only on sample
    ``b`` of the input: :attr:`nnx.Module.row_independent`, true of every nnx loss and
    layer but BatchNorm in training mode), perturbing element ``(b, j)``
    changes only row ``b``. So all perturbed samples are stacked into one batch of
    ``2 n`` rows and ``fn`` is called once: ``fn(rows_x, rows)`` gets the stacked
    samples and, in ``rows``, the index of the sample each one came from (to pick
    matching targets). Returns the derivatives at flat ``indices`` (default: all).
    """
    x = np.asarray(x, dtype=np.float64)
    weights = np.asarray(weights, dtype=np.float64)
    per_row = int(np.prod(x.shape[1:], dtype=np.int64))
    idx = np.arange(x.size) if indices is None else np.asarray(indices)
    rows, cols = np.divmod(idx, per_row)
    n = idx.size
    base = x.reshape(x.shape[0], per_row)[rows]
    plus, minus = base.copy(), base.copy()
    plus[np.arange(n), cols] += h
    minus[np.arange(n), cols] -= h
    stacked = np.concatenate([plus, minus]).reshape((2 * n,) + x.shape[1:])
    out = np.asarray(fn(stacked, np.concatenate([rows, rows])), dtype=np.float64)
    w = weights[rows].reshape(n, -1)
    l_plus = (out[:n].reshape(n, -1) * w).sum(axis=1)
    l_minus = (out[n:].reshape(n, -1) * w).sum(axis=1)
    return (l_plus - l_minus) / (2 * h)


def _float64_parameters(module: Module) -> None:
    for name, p in module.named_parameters():
        _check(
            backends.dtype_name(p) == "float64",
            f"check_gradients needs a float64 module; {name} is {backends.dtype_name(p)} "
            f"(nnx.set_default_dtype('float64') before building it, or module.to(dtype="
            f"'float64'))",
        )


def check_gradients(
    module: Module | Loss,
    input: Any,
    *,
    target: Any = None,
    weights: Any = None,
    h: float = 1e-6,
    rtol: float = 1e-5,
    atol: float = 1e-7,
    max_input_elements: int | None = 400,
    max_param_elements: int | None = 48,
    seed: int = 0,
) -> None:
    r"""Check a module's two backward methods (or a loss's ``backward``) against central
    differences in float64; raise :class:`GradientCheckError` on a mismatch.

    **Module.** With :math:`L = \sum \text{module}(x) \odot R` (``R`` = ``weights``,
    random normal by default): ``backward_delta(x, R)`` against the differences along
    every input element (or ``max_input_elements`` random ones), in one batched
    forward call; the gradient of one ``backward_update_gradient(x, R)`` after
    ``zero_grad`` against the differences along every parameter element (or
    ``max_param_elements`` random ones each), perturbed through
    :meth:`~Module.set_parameter` and restored afterwards. The module's parameters
    must be float64; ``input`` (host data or an array) is converted to float64 on the
    current backend.

    **Loss** (``target`` = ``y``, ``input`` = ``yhat``). With random per-sample weights
    :math:`w`, the derivative of :math:`\sum_i w_i \ell_i(y_i, \hat y_i)` along every
    element of ``yhat`` must equal ``w[:, None] * backward(y, yhat)``: row ``i`` of
    ``backward`` is the derivative of sample ``i``'s loss only. Integer labels keep
    their dtype, float targets become float64.

    Modules whose samples interact (:attr:`Module.row_independent` false:
    :class:`~nnx.BatchNorm` in training mode) are perturbed a whole batch at a time;
    their buffers (running statistics) are put back afterwards. A module whose forward
    is random (Dropout in training mode) is refused: check it in eval mode.

    The error names the module, ``dL/dinput`` or ``dL/d<parameter>``, how many of the
    checked entries are off, and the worst entry with both values.
    """
    if isinstance(module, Loss):
        if target is None:
            raise TypeError("check_gradients: a Loss needs target= (the y of forward(y, yhat))")
        _check_loss(module, target, input, h=h, rtol=rtol, atol=atol, seed=seed)
        return
    if not isinstance(module, Module):
        raise TypeError(
            f"check_gradients: expected a nnx Module or Loss, got {type(module).__name__}"
        )
    _float64_parameters(module)
    buffers = {name: host(b).copy() for name, b in module.named_buffers()}
    try:
        _check_module(module, input, weights, h, rtol, atol, max_input_elements,
                      max_param_elements, seed)  # fmt: skip
    finally:  # BatchNorm's running statistics moved with every forward in training mode
        if buffers:
            module.load_state_dict(buffers, strict=False)


def _check_module(
    module: Module,
    input: Any,
    weights: Any,
    h: float,
    rtol: float,
    atol: float,
    max_input_elements: int | None,
    max_param_elements: int | None,
    seed: int,
) -> None:
    rng = np.random.default_rng(seed)
    x_host = np.asarray(backends.to_numpy(input), dtype=np.float64)
    xb = asarray(x_host, dtype="float64")
    out = module.forward(xb)
    again = host(module.forward(xb))
    _check(
        bool(np.array_equal(host(out), again, equal_nan=True)),
        f"{module!r}: two forward calls on the same input differ, so finite differences "
        f"mean nothing (Dropout in training mode draws a new mask each call): check it "
        f"in eval mode (module.eval())",
    )
    R = rng.standard_normal(tuple(out.shape)) if weights is None else np.asarray(weights)
    delta = asarray(R, dtype="float64")
    module.zero_grad()
    module.backward_update_gradient(xb, delta)
    dx = host(module.backward_delta(xb, delta))
    _check(
        dx.shape == x_host.shape,
        f"{module!r}: backward_delta returned shape {dx.shape}, the input has {x_host.shape}",
    )

    def rows_forward(stacked: np.ndarray, rows: np.ndarray) -> np.ndarray:
        return host(module.forward(asarray(stacked, dtype="float64")))

    def batch_loss(x: np.ndarray) -> float:
        return float(np.sum(host(module.forward(asarray(x, dtype="float64"))) * R))

    idx = _subset(x_host.size, max_input_elements, rng)
    if module.row_independent:  # one batched call for every perturbed element
        numeric = numerical_gradient_rows(rows_forward, x_host, R, idx, h)
    else:  # samples interact (BatchNorm training): the whole batch, element by element
        numeric = numerical_gradient(batch_loss, x_host, idx, h)
    compare(dx.reshape(-1)[idx], numeric, f"{module!r}: dL/dinput", rtol, atol, x_host.shape, idx)

    grads = {name: host(g) for name, g in module.named_gradients()}
    for name, original in list(module.named_parameters()):
        p_host = host(original)

        def loss_at(p: np.ndarray, name: str = name, like: Any = original) -> float:
            module.set_parameter(name, backends.from_numpy(p.copy(), like))
            return float(np.sum(host(module.forward(xb)) * R))

        try:
            pidx = _subset(p_host.size, max_param_elements, rng)
            numeric = numerical_gradient(loss_at, p_host, pidx, h)
        finally:
            module.set_parameter(name, original)
        compare(
            grads[name].reshape(-1)[pidx],
            numeric,
            f"{module!r}: dL/d{name}",
            rtol,
            atol,
            p_host.shape,
            pidx,
        )


def _check_loss(
    loss: Loss, y: Any, yhat: Any, *, h: float, rtol: float, atol: float, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    y_host = np.asarray(backends.to_numpy(y))
    if y_host.dtype.kind == "f":
        y_host = y_host.astype(np.float64)
    yhat_host = np.asarray(backends.to_numpy(yhat), dtype=np.float64)
    w = rng.uniform(0.5, 2.0, yhat_host.shape[0])
    yb = asarray(y_host, dtype="float64" if y_host.dtype.kind == "f" else None)
    analytic = host(loss.backward(yb, asarray(yhat_host, dtype="float64")))
    _check(
        analytic.shape == yhat_host.shape,
        f"{loss!r}.backward returned shape {analytic.shape}, yhat has {yhat_host.shape}",
    )
    analytic = analytic * w.reshape((-1,) + (1,) * (yhat_host.ndim - 1))

    def rows_loss(stacked: np.ndarray, rows: np.ndarray) -> np.ndarray:
        y_rows = y_host[rows]
        yr = asarray(y_rows, dtype="float64" if y_rows.dtype.kind == "f" else None)
        return host(loss.forward(yr, asarray(stacked, dtype="float64")))

    numeric = numerical_gradient_rows(rows_loss, yhat_host, w, None, h)
    compare(analytic.reshape(-1), numeric, f"{loss!r}: dL/dyhat", rtol, atol, yhat_host.shape)


# -- the shared test tables ---------------------------------------------------------------
class Case(NamedTuple):
    """One module to check: ``make()`` builds it (in the current backend and dtype),
    ``input_shape`` is the shape of the test input, drawn by ``draw(rng, shape)``
    (default: standard normal)."""

    name: str
    make: Callable[[], Module]
    input_shape: tuple[int, ...]
    draw: Callable[[np.random.Generator, tuple[int, ...]], np.ndarray] | None = None

    def input(self, rng: np.random.Generator) -> np.ndarray:
        """A test input for this case."""
        if self.draw is not None:
            return np.asarray(self.draw(rng, self.input_shape), dtype=np.float64)
        return rng.standard_normal(self.input_shape)


_CASES: list[Case] = []
_BUILTIN_CASES_ADDED = False


def cases() -> list[Case]:
    """Every registered case (nnx's own layers first); nnx's tests check each one
    (finite differences, and PyTorch where a reference exists) on every backend."""
    global _BUILTIN_CASES_ADDED
    if not _BUILTIN_CASES_ADDED:
        _BUILTIN_CASES_ADDED = True
        own = list(_CASES)
        _CASES.clear()
        _builtin_cases()
        _CASES.extend(own)
    return list(_CASES)


def register_case(
    name: str,
    make: Callable[[], Module],
    input_shape: tuple[int, ...],
    draw: Callable[[np.random.Generator, tuple[int, ...]], np.ndarray] | None = None,
) -> Case:
    """Add a module to the shared test tables (:func:`cases`): nnx's test suite then
    checks its derivatives against finite differences and, when
    :func:`register_reference` gave it a torch reference, against PyTorch, on every
    backend, with no test file to edit."""
    case = Case(name, make, tuple(input_shape), draw)
    _CASES.append(case)
    return case


def away_from_kinks(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Standard normal values at least 0.05 away from 0 (ReLU's kink)."""
    x = rng.standard_normal(shape)
    return np.where(np.abs(x) < 0.05, np.where(x < 0, -0.05, 0.05), x)


def distinct_values(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Values at least 0.1 apart (no ties: a max-pool's argmax is stable under +-h)."""
    n = int(np.prod(shape))
    return (rng.permutation(n) * 0.1 - 0.05 * n).reshape(shape) + rng.uniform(0, 0.01, shape)


def _builtin_cases() -> None:
    import nnx

    register_case("Linear", lambda: nnx.Linear(4, 3, init_type="normal"), (5, 4))
    register_case("Linear-nobias", lambda: nnx.Linear(3, 2, bias=False), (1, 3))
    register_case(
        "Conv1D", lambda: nnx.Conv1D(3, 2, 4, stride=2, bias=True, init_type="normal"), (3, 11, 2)
    )
    register_case("Conv1D-same", lambda: nnx.Conv1D(3, 2, 3, padding="same", bias=True), (2, 7, 2))
    register_case(
        "Conv2D", lambda: nnx.Conv2D(3, 2, 3, stride=2, bias=True, init_type="normal"), (2, 7, 6, 2)
    )
    register_case("Conv2D-padded", lambda: nnx.Conv2D((2, 3), 2, 2, padding=1), (2, 5, 4, 2))
    register_case("MaxPool1D", lambda: nnx.MaxPool1D(3, 2), (3, 10, 2), distinct_values)
    register_case("MaxPool2D", lambda: nnx.MaxPool2D(2), (2, 6, 5, 2), distinct_values)
    register_case("AvgPool2D", lambda: nnx.AvgPool2D(3, stride=2), (2, 7, 7, 2))
    register_case("AvgPool1D", lambda: nnx.AvgPool1D(2, 3), (3, 11, 2))
    register_case("Flatten", nnx.Flatten, (3, 5, 2))
    register_case("Flatten-4d", nnx.Flatten, (3, 4, 2, 2))
    for cls in (nnx.ReLU, nnx.LeakyReLU):
        register_case(cls.__name__, cls, (4, 6), away_from_kinks)
    for cls in (nnx.Sigmoid, nnx.StableSigmoid, nnx.TanH, nnx.Softplus, nnx.Softmax):
        register_case(cls.__name__, cls, (4, 6))
    register_case("LogSoftmax", nnx.LogSoftmax, (4, 6))
    # random in training mode: checked in eval mode
    register_case("Dropout-eval", lambda: nnx.Dropout(0.5).eval(), (4, 6))
    register_case("BatchNorm-eval", lambda: nnx.BatchNorm(3).eval(), (5, 3))
    # training mode: the batch statistics tie the samples (whole-batch differences)
    register_case("BatchNorm", lambda: nnx.BatchNorm(3, affine=True), (5, 3))
    register_case("BatchNorm-3d", lambda: nnx.BatchNorm(2), (3, 4, 2))
    register_case(
        "Linear-BatchNorm-ReLU",
        lambda: nnx.Sequential(nnx.Linear(3, 4), nnx.BatchNorm(4), nnx.ReLU()),
        (6, 3),
        away_from_kinks,
    )
    register_case(
        "Sequential",
        lambda: nnx.Sequential(nnx.Linear(4, 3), nnx.TanH(), nnx.Linear(3, 2)),
        (5, 4),
    )


# -- against a reference -----------------------------------------------------------------
def module_vjp(
    module: Module, x: Any, weights: np.ndarray
) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """nnx's ``(out, dL/dx, {dotted name: dL/dparam})`` for :math:`L = \\sum out \\odot R`.

    ``x`` (host data) goes to the current backend in the dtype of the module's
    parameters (the default dtype for parameter-free modules). Runs ``forward``,
    ``zero_grad``, ``backward_update_gradient`` and ``backward_delta`` and raises
    ``AssertionError`` if any of them modified ``x`` or ``delta``, or returned an array
    of another backend, dtype or shape.
    """
    params = module.parameters()
    dtype = backends.dtype_name(params[0]) if params else get_default_dtype()
    xb = asarray(np.asarray(backends.to_numpy(x)), dtype=dtype)
    x_before = host(xb)
    out = module.forward(xb)
    delta = asarray(np.asarray(weights), dtype=dtype)
    delta_before = host(delta)
    module.zero_grad()
    module.backward_update_gradient(xb, delta)
    dx = module.backward_delta(xb, delta)
    for what, arr in (("output", out), ("backward_delta", dx)):
        _check(type(arr) is type(xb), f"{module!r}: {what} is {type(arr)}, not {type(xb)}")
        _check(
            backends.dtype_name(arr) == dtype,
            f"{module!r}: {what} has dtype {backends.dtype_name(arr)}, not {dtype}",
        )
    _check(tuple(dx.shape) == tuple(xb.shape), f"{module!r}: dL/dx shape {tuple(dx.shape)}")
    _check(tuple(delta.shape) == tuple(out.shape), f"{module!r}: weights shape != out shape")
    np.testing.assert_array_equal(host(xb), x_before, err_msg=f"{module!r} modified its input")
    np.testing.assert_array_equal(host(delta), delta_before, err_msg=f"{module!r} modified delta")
    grads = {name: host(g) for name, g in module.named_gradients()}
    return host(out), host(dx), grads


def compare_with_reference(
    module: Module,
    input: Any,
    reference: Callable[..., Any] | None = None,
    *,
    weights: Any = None,
    rtol: float | None = None,
    atol: float | None = None,
    seed: int = 0,
) -> None:
    r"""Compare forward, ``dL/dinput`` and every ``dL/dparameter`` of ``module`` with a
    reference run by PyTorch autograd in float64; :class:`GradientCheckError` names the
    first quantity off and its worst entry.

    ``reference(x, params)`` computes the module's output from a float64 tensor ``x``
    and ``params`` (dotted parameter names to float64 tensors), with torch operations;
    by default :func:`torch_forward` (nnx's built-in layers). With
    :math:`L = \sum out \odot R` (random ``R`` unless ``weights``). Tolerances default
    to the module's dtype (float64: ``1e-10``; float32: ``rtol=2e-4, atol=2e-5``).
    Needs PyTorch.
    """
    params = module.parameters()
    dtype = backends.dtype_name(params[0]) if params else get_default_dtype()
    x = np.asarray(backends.to_numpy(input), dtype=np.float64)
    out_shape = tuple(module.forward(asarray(x, dtype=dtype)).shape)
    R = np.random.default_rng(seed).standard_normal(out_shape) if weights is None else weights
    R = np.asarray(R, dtype=np.float64)
    out, dx, grads = module_vjp(module, x, R)
    x_seen = x.astype(dtype).astype(np.float64)  # the very values nnx saw
    t_out, t_dx, t_grads = torch_module_reference(module, x_seen, R, reference)
    if rtol is None:
        rtol = 1e-10 if dtype == "float64" else 2e-4
    if atol is None:
        atol = 1e-10 if dtype == "float64" else 2e-5
    name = repr(module)
    for what, a, e in (("output", out, t_out), ("dL/dinput", dx, t_dx)):
        compare(a, e, f"{name}: {what}", rtol, atol, against="the reference")
    _check(set(grads) == set(t_grads), f"{name}: parameters {sorted(grads)} != {sorted(t_grads)}")
    for pname, g in grads.items():
        compare(g, t_grads[pname], f"{name}: dL/d{pname}", rtol, atol, against="the reference")


def torch_reference(
    fn: Callable[..., Any],
    inputs: Mapping[str, Any],
    weights: np.ndarray | None = None,
    no_grad: tuple[str, ...] = (),
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Forward and gradients by PyTorch autograd, in float64.

    ``inputs`` maps keyword names of ``fn`` to host arrays; floating ones become float64
    leaf tensors requiring grad (unless named in ``no_grad``), integer ones plain int64
    tensors. Returns
    ``(out, grads)`` with ``grads[name]`` = :math:`\\partial L / \\partial
    \\text{inputs[name]}` for :math:`L = \\sum \\text{out} \\odot \\text{weights}`
    (``weights`` default: ones), zeros when ``out`` does not depend on it.
    """
    import torch

    tensors: dict[str, Any] = {}
    for name, value in inputs.items():
        a = np.asarray(backends.to_numpy(value))
        if a.dtype.kind == "f":
            tensors[name] = torch.tensor(a.astype(np.float64), requires_grad=name not in no_grad)
        else:
            tensors[name] = torch.tensor(a.astype(np.int64))
    out = fn(**tensors)
    w = torch.ones_like(out) if weights is None else torch.tensor(np.asarray(weights, np.float64))
    (out * w).sum().backward()
    grads = {
        name: (np.zeros(t.shape) if t.grad is None else t.grad.numpy().copy())
        for name, t in tensors.items()
        if t.requires_grad
    }
    return out.detach().numpy().copy(), grads


#: Torch references of module classes added with :func:`register_reference`.
_REFERENCES: dict[type, Callable[[Any, Any, dict[str, Any]], Any]] = {}


def register_reference(
    cls: type[Module],
) -> Callable[
    [Callable[[Any, Any, dict[str, Any]], Any]], Callable[[Any, Any, dict[str, Any]], Any]
]:
    """Decorator: ``fn(module, x, params)`` computes ``cls``'s output with torch
    (``params``: the module's own parameters by name, as float64 tensors), for
    :func:`torch_forward` and :func:`compare_with_reference` (also inside a
    :class:`~nnx.Sequential`)."""

    def add(
        fn: Callable[[Any, Any, dict[str, Any]], Any],
    ) -> Callable[[Any, Any, dict[str, Any]], Any]:
        _REFERENCES[cls] = fn
        return fn

    return add


def has_reference(module: Module) -> bool:
    """Whether :func:`torch_forward` knows ``module`` (every child, for a container)."""
    _builtin_references()
    if type(module).__name__ == "Sequential" and module.children():
        return all(has_reference(child) for child in module.children())
    return any(cls in _REFERENCES for cls in type(module).__mro__)


def torch_forward(module: Module, x: Any, params: Mapping[str, Any], prefix: str = "") -> Any:
    """The computation of an nnx module written with PyTorch, channels-last like nnx.

    ``params`` maps dotted parameter names (as in ``module.named_parameters()``) to
    torch tensors. A :class:`~nnx.Sequential` chains its children's references; other
    classes use the function :func:`register_reference` gave them (nnx's own layers
    have one). ``NotImplementedError`` for a class without a reference.
    """
    _builtin_references()
    children = module.children()
    if type(module).__name__ == "Sequential" and children:
        for i, child in enumerate(children):
            x = torch_forward(child, x, params, f"{prefix}{i}.")
        return x
    for cls in type(module).__mro__:
        reference = _REFERENCES.get(cls)
        if reference is not None:
            own = {k[len(prefix) :]: v for k, v in params.items() if k.startswith(prefix)}
            return reference(module, x, own)
    raise NotImplementedError(
        f"no torch reference for {module!r}; add one with nnx.testing.register_reference"
    )


_BUILTIN_REFERENCES_ADDED = False


def _builtin_references() -> None:
    """The references of nnx's own layers (registered on first use: torch is imported
    only then, and nnx's classes exist by then)."""
    global _BUILTIN_REFERENCES_ADDED
    if _BUILTIN_REFERENCES_ADDED:
        return
    _BUILTIN_REFERENCES_ADDED = True
    import torch
    import torch.nn.functional as F

    import nnx

    def channels_first(fn: Callable[[Any], Any]) -> Callable[[Any], Any]:
        return lambda x: fn(x.permute(0, 2, 1)).permute(0, 2, 1)

    @register_reference(nnx.Linear)
    def linear(m: Any, x: Any, p: dict[str, Any]) -> Any:
        out = x @ p["weight"]
        return out + p["bias"] if m.bias else out

    @register_reference(nnx.Conv1D)
    def conv1d(m: Any, x: Any, p: dict[str, Any]) -> Any:
        # (k, c_in, c_out) weight -> PyTorch's (c_out, c_in, k); the module's own zeros
        w, b = p["weight"].permute(2, 1, 0), p["bias"] if m.bias else None
        ((lo, hi),) = m.pads
        return channels_first(lambda t: F.conv1d(F.pad(t, (lo, hi)), w, b, stride=m.stride))(x)

    @register_reference(nnx.Conv2D)
    def conv2d(m: Any, x: Any, p: dict[str, Any]) -> Any:
        # (k_h, k_w, c_in, c_out) weight -> (c_out, c_in, k_h, k_w); slow_conv2d wants it
        # contiguous
        w, b = p["weight"].permute(3, 2, 0, 1).contiguous(), p["bias"] if m.bias else None
        (top, bottom), (left, right) = m.pads
        t = F.pad(x.permute(0, 3, 1, 2), (left, right, top, bottom))
        return F.conv2d(t, w, b, stride=m.stride).permute(0, 2, 3, 1)

    @register_reference(nnx.MaxPool1D)
    def maxpool1d(m: Any, x: Any, p: dict[str, Any]) -> Any:
        return channels_first(lambda t: F.max_pool1d(t, m.k_size, m.stride))(x)

    @register_reference(nnx.AvgPool1D)
    def avgpool1d(m: Any, x: Any, p: dict[str, Any]) -> Any:
        return channels_first(lambda t: F.avg_pool1d(t, m.k_size, m.stride))(x)

    @register_reference(nnx.MaxPool2D)
    def maxpool2d(m: Any, x: Any, p: dict[str, Any]) -> Any:
        t = F.max_pool2d(x.permute(0, 3, 1, 2), m.k_size, m.stride)
        return t.permute(0, 2, 3, 1)

    @register_reference(nnx.AvgPool2D)
    def avgpool2d(m: Any, x: Any, p: dict[str, Any]) -> Any:
        t = F.avg_pool2d(x.permute(0, 3, 1, 2), m.k_size, m.stride)
        return t.permute(0, 2, 3, 1)

    @register_reference(nnx.Flatten)
    def flatten(m: Any, x: Any, p: dict[str, Any]) -> Any:
        return x.reshape(x.shape[0], -1)

    @register_reference(nnx.LeakyReLU)
    def leaky_relu(m: Any, x: Any, p: dict[str, Any]) -> Any:
        return F.leaky_relu(x, m.alpha)

    elementwise: dict[type, Callable[[Any], Any]] = {
        nnx.ReLU: torch.relu,
        nnx.Sigmoid: torch.sigmoid,
        nnx.StableSigmoid: torch.sigmoid,
        nnx.TanH: torch.tanh,
        nnx.Softplus: F.softplus,
        nnx.Softmax: lambda t: torch.softmax(t, dim=-1),
        nnx.LogSoftmax: lambda t: torch.log_softmax(t, dim=-1),
    }
    for cls, fn in elementwise.items():
        register_reference(cls)(lambda m, x, p, fn=fn: fn(x))


def torch_module_reference(
    module: Module,
    x: Any,
    weights: np.ndarray,
    reference: Callable[..., Any] | None = None,
) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """PyTorch's ``(out, dL/dx, {dotted name: dL/dparam})``, same layout as :func:`module_vjp`.

    Uses the module's current parameter values; :math:`L = \\sum out \\odot R`.
    ``reference(x, params)``: the computation in torch (default :func:`torch_forward`).
    """
    state = module.state_dict()

    def fn(x: Any, **params: Any) -> Any:
        named = {k.replace("__", "."): v for k, v in params.items()}
        if reference is None:
            return torch_forward(module, x, named)
        return reference(x, named)

    inputs = {"x": x, **{k.replace(".", "__"): v for k, v in state.items()}}
    out, grads = torch_reference(fn, inputs, weights)
    dx = grads.pop("x")
    return out, dx, {k.replace("__", "."): v for k, v in grads.items()}
