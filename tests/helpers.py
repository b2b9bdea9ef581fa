"""Shared test helpers: finite differences and PyTorch autograd references.

Everything here works on host NumPy arrays in float64 and talks to nnx modules through
their public protocol, so the same helpers serve every backend. No bare ``assert``:
the helpers raise ``AssertionError`` themselves (or use ``numpy.testing``), so they
keep checking under ``python -O`` (pytest only rewrites asserts of test modules).

Main entry points
-----------------
``finite_difference_check(module, x)``
    ``backward_delta`` and ``backward_update_gradient`` of ``module`` against central
    differences of :math:`L = \\sum \\text{out} \\odot R` (random ``R``).
``finite_difference_check_loss(loss, y, yhat)``
    ``loss.backward`` against central differences of :math:`\\sum_i w_i \\ell_i`.
``torch_reference(fn, inputs, weights)``
    forward value and gradients of :math:`\\sum \\text{fn}(\\ldots) \\odot R` by
    PyTorch autograd in float64.
``torch_module_reference(module, x, weights)``
    the same computation as an nnx module (and its current parameters) built in torch.
``module_vjp(module, x, weights)``
    nnx's forward, ``dL/dx`` and ``dL/dparams`` as NumPy arrays, checking that no input
    array was modified.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np

import nnx
from nnx import backends

__all__ = [
    "assert_close",
    "finite_difference_check",
    "finite_difference_check_loss",
    "host",
    "module_vjp",
    "numerical_gradient",
    "numerical_gradient_rows",
    "parameter_slots",
    "torch_forward",
    "torch_loss_forward",
    "torch_module_reference",
    "torch_reference",
]


# -- small utilities ---------------------------------------------------------------------
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
        raise AssertionError(message)


def parameter_slots(module: nnx.Module, prefix: str = "") -> Iterator[tuple[str, Any, str]]:
    """``(dotted name, owning module, local name)`` for every parameter, recursively."""
    for name in module._parameters:
        yield prefix + name, module, name
    for i, child in enumerate(module.children()):
        yield from parameter_slots(child, f"{prefix}{i}.")


def _subset(size: int, max_elements: int | None, rng: np.random.Generator) -> np.ndarray:
    """All flat indices, or a sorted random subset of ``max_elements`` of them."""
    if max_elements is None or size <= max_elements:
        return np.arange(size)
    return np.sort(rng.choice(size, size=max_elements, replace=False))


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
    ``b`` of the input, true of every nnx layer and loss), perturbing element ``(b, j)``
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


def _compare(
    analytic: np.ndarray, numeric: np.ndarray, rtol: float, atol: float, what: str
) -> None:
    scale = max(1.0, float(np.max(np.abs(numeric), initial=0.0)))
    np.testing.assert_allclose(
        analytic, numeric, rtol=rtol, atol=atol * scale, err_msg=f"finite differences: {what}"
    )


def _float64_module(module: nnx.Module) -> None:
    for name, p in module.named_parameters():
        _check(
            backends.dtype_name(p) == "float64",
            f"finite_difference_check needs a float64 module; {name} is "
            f"{backends.dtype_name(p)} (use the float64 fixture before building it)",
        )


def finite_difference_check(
    module: nnx.Module,
    x: Any,
    *,
    weights: np.ndarray | None = None,
    h: float = 1e-6,
    rtol: float = 1e-5,
    atol: float = 1e-7,
    max_input_elements: int | None = 400,
    max_param_elements: int | None = 48,
    seed: int = 0,
) -> None:
    """Check both backward methods of ``module`` against central differences.

    With :math:`L = \\sum \\text{module}(x) \\odot R` (``R`` = ``weights``, random
    normal by default): ``backward_delta(x, R)`` against the differences along every
    input element (or ``max_input_elements`` random ones), in one batched forward call;
    the gradient accumulated by one ``backward_update_gradient(x, R)`` after
    ``zero_grad`` against the differences along every parameter element (or
    ``max_param_elements`` random ones per parameter), perturbed by assigning new arrays
    to ``_parameters``. ``x``: host data or an array, converted to float64 on the
    current backend; the module must be float64. Parameters are restored afterwards.
    """
    _float64_module(module)
    rng = np.random.default_rng(seed)
    x_host = np.asarray(backends.to_numpy(x), dtype=np.float64)
    xb = nnx.asarray(x_host, dtype="float64")
    out = module.forward(xb)
    R = rng.standard_normal(tuple(out.shape)) if weights is None else np.asarray(weights)
    delta = nnx.asarray(R, dtype="float64")
    module.zero_grad()
    module.backward_update_gradient(xb, delta)
    dx = host(module.backward_delta(xb, delta))
    _check(dx.shape == x_host.shape, f"backward_delta shape {dx.shape} != input {x_host.shape}")

    def rows_forward(stacked: np.ndarray, rows: np.ndarray) -> np.ndarray:
        return host(module.forward(nnx.asarray(stacked, dtype="float64")))

    idx = _subset(x_host.size, max_input_elements, rng)
    numeric = numerical_gradient_rows(rows_forward, x_host, R, idx, h)
    _compare(dx.reshape(-1)[idx], numeric, rtol, atol, f"{module!r} dL/dinput")

    grads = {name: host(g) for name, g in module.named_gradients()}
    for dotted, owner, name in parameter_slots(module):
        original = owner._parameters[name]
        p_host = host(original)

        def loss_at(
            p: np.ndarray, owner: Any = owner, name: str = name, like: Any = original
        ) -> float:
            owner._parameters[name] = backends.from_numpy(p.copy(), like)
            return float(np.sum(host(module.forward(xb)) * R))

        try:
            pidx = _subset(p_host.size, max_param_elements, rng)
            numeric = numerical_gradient(loss_at, p_host, pidx, h)
        finally:
            owner._parameters[name] = original
        _compare(grads[dotted].reshape(-1)[pidx], numeric, rtol, atol, f"{module!r} dL/d{dotted}")


def finite_difference_check_loss(
    loss: nnx.Loss,
    y: Any,
    yhat: Any,
    *,
    h: float = 1e-6,
    rtol: float = 1e-5,
    atol: float = 1e-7,
    seed: int = 0,
) -> None:
    """Check ``loss.backward`` against central differences, row by row.

    With random per-sample weights :math:`w`, the derivative of :math:`\\sum_i w_i
    \\ell_i(y_i, \\hat y_i)` along every element of ``yhat`` must equal
    ``w[:, None] * backward(y, yhat)``: this also proves that row ``i`` of ``backward``
    is the derivative of sample ``i``'s loss only. ``yhat`` is converted to float64;
    ``y`` keeps integer label dtypes, float targets become float64.
    """
    rng = np.random.default_rng(seed)
    y_host = np.asarray(backends.to_numpy(y))
    if y_host.dtype.kind == "f":
        y_host = y_host.astype(np.float64)
    yhat_host = np.asarray(backends.to_numpy(yhat), dtype=np.float64)
    w = rng.uniform(0.5, 2.0, yhat_host.shape[0])
    yb = nnx.asarray(y_host, dtype="float64" if y_host.dtype.kind == "f" else None)
    analytic = host(loss.backward(yb, nnx.asarray(yhat_host, dtype="float64")))
    _check(
        analytic.shape == yhat_host.shape,
        f"{loss!r}.backward shape {analytic.shape} != yhat {yhat_host.shape}",
    )
    analytic = analytic * w.reshape((-1,) + (1,) * (yhat_host.ndim - 1))

    def rows_loss(stacked: np.ndarray, rows: np.ndarray) -> np.ndarray:
        y_rows = y_host[rows]
        yr = nnx.asarray(y_rows, dtype="float64" if y_rows.dtype.kind == "f" else None)
        return host(loss.forward(yr, nnx.asarray(stacked, dtype="float64")))

    numeric = numerical_gradient_rows(rows_loss, yhat_host, w, None, h)
    _compare(analytic.reshape(-1), numeric, rtol, atol, f"{loss!r} dL/dyhat")


# -- nnx side ----------------------------------------------------------------------------
def module_vjp(
    module: nnx.Module, x: Any, weights: np.ndarray
) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """nnx's ``(out, dL/dx, {dotted name: dL/dparam})`` for :math:`L = \\sum out \\odot R`.

    ``x`` (host data) goes to the current backend in the dtype of the module's
    parameters (the default dtype for parameter-free modules). Runs ``forward``,
    ``zero_grad``, ``backward_update_gradient`` and ``backward_delta`` and raises
    ``AssertionError`` if any of them modified ``x`` or ``delta``, or returned an array
    of another backend, dtype or shape.
    """
    params = module.parameters()
    dtype = backends.dtype_name(params[0]) if params else nnx.get_default_dtype()
    xb = nnx.asarray(np.asarray(backends.to_numpy(x)), dtype=dtype)
    x_before = host(xb)
    out = module.forward(xb)
    delta = nnx.asarray(np.asarray(weights), dtype=dtype)
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


# -- PyTorch side ------------------------------------------------------------------------
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


def torch_forward(module: nnx.Module, x: Any, params: Mapping[str, Any], prefix: str = "") -> Any:
    """The computation of an nnx module written with PyTorch, channels-last like nnx.

    ``params`` maps dotted parameter names (as in ``module.named_parameters()``) to
    torch tensors. Conv1D and the pools permute to PyTorch's channels-first layout and
    back; Conv1D's ``(k, c_in, c_out)`` weight becomes ``(c_out, c_in, k)``, Conv2D's
    ``(k_h, k_w, c_in, c_out)`` weight ``(c_out, c_in, k_h, k_w)``; padding is
    ``F.pad`` with the module's own resolved zeros (``module.pads``).
    """
    import torch
    import torch.nn.functional as F

    def p(name: str) -> Any:
        return params[prefix + name]

    if isinstance(module, nnx.Sequential):
        for i, child in enumerate(module):
            x = torch_forward(child, x, params, f"{prefix}{i}.")
        return x
    if isinstance(module, nnx.Linear):
        out = x @ p("weight")
        return out + p("bias") if module.bias else out
    if isinstance(module, nnx.Conv1D):
        ((lo, hi),) = module.pads
        out = F.conv1d(
            F.pad(x.permute(0, 2, 1), (lo, hi)),
            p("weight").permute(2, 1, 0),
            p("bias") if module.bias else None,
            stride=module.stride,
        )
        return out.permute(0, 2, 1)
    if isinstance(module, nnx.Conv2D):
        (top, bottom), (left, right) = module.pads
        out = F.conv2d(
            F.pad(x.permute(0, 3, 1, 2), (left, right, top, bottom)),
            p("weight").permute(3, 2, 0, 1).contiguous(),  # slow_conv2d wants contiguous
            p("bias") if module.bias else None,
            stride=module.stride,
        )
        return out.permute(0, 2, 3, 1)
    if isinstance(module, nnx.MaxPool1D):
        return F.max_pool1d(x.permute(0, 2, 1), module.k_size, module.stride).permute(0, 2, 1)
    if isinstance(module, nnx.AvgPool1D):
        return F.avg_pool1d(x.permute(0, 2, 1), module.k_size, module.stride).permute(0, 2, 1)
    if isinstance(module, (nnx.MaxPool2D, nnx.AvgPool2D)):
        pool = F.max_pool2d if isinstance(module, nnx.MaxPool2D) else F.avg_pool2d
        return pool(x.permute(0, 3, 1, 2), module.k_size, module.stride).permute(0, 2, 3, 1)
    if isinstance(module, nnx.Flatten):
        return x.reshape(x.shape[0], -1)
    simple: dict[type, Callable[[Any], Any]] = {
        nnx.ReLU: torch.relu,
        nnx.StableSigmoid: torch.sigmoid,
        nnx.Sigmoid: torch.sigmoid,
        nnx.TanH: torch.tanh,
        nnx.Softplus: F.softplus,
        nnx.Softmax: lambda t: torch.softmax(t, dim=-1),
        nnx.LogSoftmax: lambda t: torch.log_softmax(t, dim=-1),
    }
    if isinstance(module, nnx.LeakyReLU):
        return F.leaky_relu(x, module.alpha)
    for kind, fn in simple.items():
        if isinstance(module, kind):
            return fn(x)
    raise NotImplementedError(f"no torch reference for {module!r}")


def torch_module_reference(
    module: nnx.Module, x: Any, weights: np.ndarray
) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """PyTorch's ``(out, dL/dx, {dotted name: dL/dparam})``, same layout as :func:`module_vjp`.

    Uses the module's current parameter values; :math:`L = \\sum out \\odot R`.
    """
    state = module.state_dict()

    def fn(x: Any, **params: Any) -> Any:
        return torch_forward(module, x, {k.replace("__", "."): v for k, v in params.items()})

    inputs = {"x": x, **{k.replace(".", "__"): v for k, v in state.items()}}
    out, grads = torch_reference(fn, inputs, weights)
    dx = grads.pop("x")
    return out, dx, {k.replace("__", "."): v for k, v in grads.items()}


def torch_loss_forward(loss: nnx.Loss, y: Any, yhat: Any) -> Any:
    """Per-sample losses of an nnx loss computed with PyTorch's own functions.

    Integer ``y`` are class labels; floating ``y`` are targets shaped like ``yhat``
    (one-hot or soft for the class losses).
    """
    import torch
    import torch.nn.functional as F

    def per_sample(t: Any) -> Any:
        return t.reshape(t.shape[0], -1).sum(dim=1)

    labels = not torch.is_floating_point(y)
    if isinstance(loss, nnx.MSELoss):
        return per_sample(F.mse_loss(yhat, y, reduction="none"))
    if isinstance(loss, nnx.BCELoss):
        return per_sample(F.binary_cross_entropy(yhat, y, reduction="none"))
    if isinstance(loss, nnx.NLLLoss):
        return F.nll_loss(yhat, y, reduction="none") if labels else -(y * yhat).sum(dim=1)
    if isinstance(loss, nnx.CrossEntropyLoss):  # CELogSoftmax too (a subclass)
        return F.cross_entropy(yhat, y, reduction="none")
    raise NotImplementedError(f"no torch reference for {loss!r}")
