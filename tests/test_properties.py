"""Property-based tests (hypothesis) over random geometries, on every backend.

For Conv1D, MaxPool1D, AvgPool1D, Linear and random Sequential chains of them:

- the output shape follows the contract's formula, ``(batch, (length - k_size) // stride
  + 1, chan)`` for the windowed layers, and the values equal a plain NumPy reference
  written window by window (float32, the default dtype);
- in float64, ``backward_delta`` and the gradient accumulated by
  ``backward_update_gradient`` match central finite differences of
  :math:`L = \\sum \\text{out} \\odot R` (``helpers.finite_difference_check``).

Hypothesis runs derandomized (a fixed sequence of examples, no example database), so
CI cannot flake; ``*_EXAMPLES`` below are the number of examples per property and
backend.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import pytest
from helpers import finite_difference_check, host
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import nnx
from nnx import backends

SHAPE_EXAMPLES = 100  # per property and backend, float32 forward checks
GRAD_EXAMPLES = 50  # per property and backend, float64 finite differences
CHAIN_EXAMPLES = 60  # Sequential chains (shapes and finite differences)


#: JAX (eager) compiles each operation anew for every new shape, and hypothesis draws a
#: new shape per example: a JAX-only run (its nox session) draws a fifth of the examples.
_EXAMPLE_DIVISOR = 5 if os.environ.get("NNX_TEST_BACKENDS", "").strip() == "jax" else 1


def _settings(examples: int):
    return settings(
        max_examples=max(examples // _EXAMPLE_DIVISOR, 5),
        deadline=None,
        derandomize=True,
        database=None,
        # the backend fixture only selects a backend: safe to share between examples
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )


# -- strategies ----------------------------------------------------------------------------
@st.composite
def window_geometry(draw: Any, max_extra: int = 12, max_chan: int = 3, max_batch: int = 3):
    """k_size 1-5, stride 1-4, length k_size..k_size + max_extra (any remainder)."""
    k = draw(st.integers(1, 5))
    return {
        "batch": draw(st.integers(1, max_batch)),
        "k": k,
        "stride": draw(st.integers(1, 4)),
        "length": draw(st.integers(k, k + max_extra)),
        "chan_in": draw(st.integers(1, max_chan)),
        "chan_out": draw(st.integers(1, max_chan)),
        "bias": draw(st.booleans()),
        "init": draw(st.sampled_from(nnx.init.INIT_TYPES)),
        "seed": draw(st.integers(0, 2**16)),
    }


@st.composite
def linear_geometry(draw: Any):
    return {
        "batch": draw(st.integers(1, 5)),
        "n_in": draw(st.integers(1, 8)),
        "n_out": draw(st.integers(1, 8)),
        "bias": draw(st.booleans()),
        "init": draw(st.sampled_from(nnx.init.INIT_TYPES)),
        "seed": draw(st.integers(0, 2**16)),
    }


SMOOTH = ("TanH", "Softplus", "StableSigmoid", "Softmax", "LogSoftmax")


@st.composite
def chain_spec(draw: Any):
    """A random valid chain: 1-3 windowed layers / smooth activations, Flatten, Linear.

    Returns ``(batch, length, chan, layers, expected shapes after every layer)``.
    """
    batch = draw(st.integers(1, 3))
    length = draw(st.integers(4, 16))
    chan = draw(st.integers(1, 2))
    layers: list[tuple] = []
    shapes: list[tuple[int, ...]] = []
    cur_len, cur_chan = length, chan
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(("Conv1D", "MaxPool1D", "AvgPool1D", "act")))
        if kind == "act":
            layers.append(("act", draw(st.sampled_from(SMOOTH))))
        else:
            k = draw(st.integers(1, min(4, cur_len)))
            s = draw(st.integers(1, 3))
            if kind == "Conv1D":
                c_out = draw(st.integers(1, 3))
                layers.append((kind, k, cur_chan, c_out, s, draw(st.booleans())))
                cur_chan = c_out
            else:
                layers.append((kind, k, s))
            cur_len = (cur_len - k) // s + 1
        shapes.append((batch, cur_len, cur_chan))
    n_out = draw(st.integers(1, 4))
    layers.append(("Flatten",))
    shapes.append((batch, cur_len * cur_chan))
    layers.append(("Linear", cur_len * cur_chan, n_out, draw(st.booleans())))
    shapes.append((batch, n_out))
    if draw(st.booleans()):
        layers.append(("act", draw(st.sampled_from(SMOOTH))))
        shapes.append((batch, n_out))
    return batch, length, chan, layers, shapes, draw(st.integers(0, 2**16))


def build(layer: tuple) -> nnx.Module:
    kind, *args = layer
    if kind == "act":
        return getattr(nnx, args[0])()
    if kind == "Conv1D":
        k, c_in, c_out, s, bias = args
        return nnx.Conv1D(k, c_in, c_out, stride=s, bias=bias)
    if kind == "Linear":
        n_in, n_out, bias = args
        return nnx.Linear(n_in, n_out, bias=bias)
    return getattr(nnx, kind)(*args)


# -- NumPy references, window by window ----------------------------------------------------
def out_length(length: int, k: int, s: int) -> int:
    return (length - k) // s + 1


def conv_reference(x: np.ndarray, W: np.ndarray, b: np.ndarray | None, s: int) -> np.ndarray:
    k = W.shape[0]
    windows = [x[:, o * s : o * s + k, :] for o in range(out_length(x.shape[1], k, s))]
    out = np.stack([np.einsum("bkc,kcd->bd", w, W) for w in windows], axis=1)
    return out if b is None else out + b


def pool_reference(x: np.ndarray, k: int, s: int, kind: str) -> np.ndarray:
    reduce = np.max if kind == "MaxPool1D" else np.mean
    n = out_length(x.shape[1], k, s)
    return np.stack([reduce(x[:, o * s : o * s + k, :], axis=1) for o in range(n)], axis=1)


def distinct(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Values at least 0.1 apart: a max-pool's argmax cannot move under +-h."""
    n = int(np.prod(shape))
    return ((rng.permutation(n) - n / 2) * 0.1 + rng.uniform(0, 0.01, n)).reshape(shape)


def max_pool_margin(z: np.ndarray, k: int, s: int) -> float:
    """Smallest gap between the largest and second largest value of any window."""
    if k == 1:
        return np.inf
    n = out_length(z.shape[1], k, s)
    w = np.stack([z[:, o * s : o * s + k, :] for o in range(n)], axis=1)  # (B, O, K, C)
    top = np.sort(w, axis=2)
    return float(np.min(top[:, :, -1, :] - top[:, :, -2, :]))


def _close(actual: Any, desired: np.ndarray, rtol: float = 2e-5, atol: float = 2e-5) -> None:
    a = host(actual)
    assert a.shape == desired.shape, (a.shape, desired.shape)
    np.testing.assert_allclose(a, desired, rtol=rtol, atol=atol)


# -- shapes and values (float32) -----------------------------------------------------------
@_settings(SHAPE_EXAMPLES)
@given(g=window_geometry(max_extra=40, max_chan=4, max_batch=4))
def test_conv1d_shape_follows_formula(backend, g):
    nnx.manual_seed(g["seed"])
    conv = nnx.Conv1D(g["k"], g["chan_in"], g["chan_out"], g["stride"], g["bias"], g["init"])
    assert tuple(conv._parameters["weight"].shape) == (g["k"], g["chan_in"], g["chan_out"])
    if g["bias"]:
        assert tuple(conv._parameters["bias"].shape) == (g["chan_out"],)
    x = np.random.default_rng(g["seed"]).standard_normal((g["batch"], g["length"], g["chan_in"]))
    out = conv(nnx.asarray(x))
    expected = (g["batch"], out_length(g["length"], g["k"], g["stride"]), g["chan_out"])
    assert tuple(out.shape) == expected
    assert backends.backend_of(out).name == backend
    assert backends.dtype_name(out) == "float32"
    W = host(conv._parameters["weight"]).astype(np.float64)
    b = host(conv._parameters["bias"]).astype(np.float64) if g["bias"] else None
    x32 = x.astype(np.float32).astype(np.float64)
    _close(out, conv_reference(x32, W, b, g["stride"]), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kind", ["MaxPool1D", "AvgPool1D"])
@_settings(SHAPE_EXAMPLES)
@given(g=window_geometry(max_extra=40, max_chan=4, max_batch=4))
def test_pool_shape_follows_formula(backend, kind, g):
    pool = getattr(nnx, kind)(g["k"], g["stride"])
    x = np.random.default_rng(g["seed"]).standard_normal((g["batch"], g["length"], g["chan_in"]))
    x = x.astype(np.float32)
    out = pool(nnx.asarray(x))
    expected = (g["batch"], out_length(g["length"], g["k"], g["stride"]), g["chan_in"])
    assert tuple(out.shape) == expected
    assert backends.dtype_name(out) == "float32"
    _close(out, pool_reference(x.astype(np.float64), g["k"], g["stride"], kind), 1e-6, 1e-6)


@_settings(SHAPE_EXAMPLES)
@given(g=linear_geometry())
def test_linear_shape_follows_formula(backend, g):
    nnx.manual_seed(g["seed"])
    lin = nnx.Linear(g["n_in"], g["n_out"], bias=g["bias"], init_type=g["init"])
    assert tuple(lin._parameters["weight"].shape) == (g["n_in"], g["n_out"])
    if g["bias"]:
        assert tuple(lin._parameters["bias"].shape) == (1, g["n_out"])
    x = np.random.default_rng(g["seed"]).standard_normal((g["batch"], g["n_in"]))
    out = lin(nnx.asarray(x))
    assert tuple(out.shape) == (g["batch"], g["n_out"])
    ref = x.astype(np.float32).astype(np.float64) @ host(lin._parameters["weight"])
    if g["bias"]:
        ref = ref + host(lin._parameters["bias"])
    _close(out, ref, rtol=1e-4, atol=1e-4)


# -- gradients (float64, central differences) ----------------------------------------------
@_settings(GRAD_EXAMPLES)
@given(g=window_geometry())
def test_conv1d_gradients_match_finite_differences(backend, float64, g):
    nnx.manual_seed(g["seed"])
    init = g["init"] if g["init"] not in ("zeros", "ones") else "normal"
    conv = nnx.Conv1D(g["k"], g["chan_in"], g["chan_out"], g["stride"], g["bias"], init)
    if g["bias"]:  # he/xavier biases start at zero: make them count
        conv._parameters["bias"] = nnx.asarray(np.linspace(-1, 1, g["chan_out"]))
    x = np.random.default_rng(g["seed"]).standard_normal((g["batch"], g["length"], g["chan_in"]))
    finite_difference_check(conv, x, seed=g["seed"])


@pytest.mark.parametrize("kind", ["MaxPool1D", "AvgPool1D"])
@_settings(GRAD_EXAMPLES)
@given(g=window_geometry())
def test_pool_gradients_match_finite_differences(backend, float64, kind, g):
    pool = getattr(nnx, kind)(g["k"], g["stride"])
    x = distinct(np.random.default_rng(g["seed"]), (g["batch"], g["length"], g["chan_in"]))
    finite_difference_check(pool, x, seed=g["seed"])


@_settings(GRAD_EXAMPLES)
@given(g=linear_geometry())
def test_linear_gradients_match_finite_differences(backend, float64, g):
    nnx.manual_seed(g["seed"])
    lin = nnx.Linear(g["n_in"], g["n_out"], bias=g["bias"], init_type=g["init"])
    x = np.random.default_rng(g["seed"]).standard_normal((g["batch"], g["n_in"]))
    finite_difference_check(lin, x, seed=g["seed"])


@_settings(CHAIN_EXAMPLES)
@given(spec=chain_spec())
def test_sequential_chain_shapes_and_gradients(backend, float64, spec):
    batch, length, chan, layers, shapes, seed = spec
    nnx.manual_seed(seed)
    net = nnx.Sequential(*[build(layer) for layer in layers])
    x = distinct(np.random.default_rng(seed), (batch, length, chan)) / (batch * length * chan)

    z = nnx.asarray(x)
    for module, shape in zip(net, shapes, strict=True):
        if isinstance(module, nnx.MaxPool1D):  # finite differences need no near-ties
            assume(max_pool_margin(host(z), module.k_size, module.stride) > 1e-4)
        z = module(z)
        assert tuple(z.shape) == shape, (module, tuple(z.shape), shape)
    out = net(nnx.asarray(x))
    np.testing.assert_array_equal(host(out), host(z))  # the chain is the composition

    finite_difference_check(net, x, seed=seed)

    # Sequential.backward = backward_update_gradient + backward_delta in one pass
    xb = nnx.asarray(x)
    R = nnx.asarray(np.random.default_rng(seed + 1).standard_normal(shapes[-1]))
    net.zero_grad()
    net.backward_update_gradient(xb, R)
    grads = {k: host(v) for k, v in net.named_gradients()}
    dx = host(net.backward_delta(xb, R))
    net.zero_grad()
    dx2 = host(net.backward(xb, R))
    np.testing.assert_allclose(dx2, dx, rtol=1e-12, atol=1e-12)
    for k, v in net.named_gradients():
        np.testing.assert_allclose(host(v), grads[k], rtol=1e-12, atol=1e-12, err_msg=k)
