"""Forward and both backward methods of every module against PyTorch and finite differences.

Every test runs on each backend (``backend`` fixture). With :math:`L = \\sum out \\odot R`
for a random ``R``: forward, ``backward_delta`` (dL/dinput) and the gradient accumulated by
``backward_update_gradient`` (dL/dparams) are compared with PyTorch autograd in float64
(and in float32 with float32 tolerances), and with central finite differences in float64.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
from helpers import (
    assert_close,
    finite_difference_check,
    host,
    torch_module_reference,
)

import nnx
from nnx import backends
from nnx.testing import GradientCheckError, compare_with_reference

pytest.importorskip("torch")

# -- inputs ------------------------------------------------------------------------------


def away_from_kinks(x: np.ndarray, gap: float = 0.05) -> np.ndarray:
    """Move values within ``gap`` of 0 to +-gap (ReLU and LeakyReLU are not smooth at 0)."""
    return np.where(np.abs(x) < gap, np.where(x < 0, -gap, gap), x)


def distinct_values(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Values at least 0.1 apart (no ties, so a max-pool's argmax is stable under +-h)."""
    n = int(np.prod(shape))
    return (rng.permutation(n) * 0.1 - 0.05 * n).reshape(shape) + rng.uniform(0, 0.01, shape)


ACTIVATIONS: list[tuple[str, Callable[[], nnx.Module]]] = [
    ("ReLU", nnx.ReLU),
    ("LeakyReLU", nnx.LeakyReLU),
    ("LeakyReLU0.3", lambda: nnx.LeakyReLU(alpha=0.3)),
    ("Sigmoid", nnx.Sigmoid),
    ("StableSigmoid", nnx.StableSigmoid),
    ("TanH", nnx.TanH),
    ("Softplus", nnx.Softplus),
    ("Softmax", nnx.Softmax),
    ("LogSoftmax", nnx.LogSoftmax),
]
ACT_IDS = [name for name, _ in ACTIVATIONS]
ACT_MAKERS = [make for _, make in ACTIVATIONS]
SHAPES = [(4, 6), (2, 3, 5)]

# (k_size, stride, length, chan_in, chan_out, bias): k 1-5, stride 1-4 (also > k),
# length == k, (length - k) not a multiple of the stride, 1-3 channels.
CONV_GEOMETRIES = [
    (1, 1, 5, 1, 1, False),
    (1, 2, 7, 2, 3, True),
    (1, 4, 10, 2, 2, False),
    (2, 1, 6, 1, 2, True),
    (2, 2, 9, 3, 2, False),
    (2, 3, 10, 2, 2, True),
    (3, 1, 8, 1, 4, False),
    (3, 2, 10, 2, 3, True),
    (3, 3, 11, 3, 1, False),
    (3, 4, 13, 2, 2, True),
    (4, 1, 7, 2, 2, False),
    (4, 3, 12, 1, 3, True),
    (4, 4, 4, 2, 2, True),
    (5, 1, 9, 3, 2, True),
    (5, 2, 12, 1, 1, False),
    (5, 3, 5, 1, 2, False),
    (5, 4, 16, 2, 3, True),
]
CONV_IDS = [f"k{k}s{s}L{n}c{c}d{d}{'b' if b else ''}" for k, s, n, c, d, b in CONV_GEOMETRIES]

# (k_size, stride, length, chan)
POOL_GEOMETRIES = [
    (1, 1, 5, 2),
    (1, 3, 8, 1),
    (2, 1, 7, 3),
    (2, 2, 9, 2),
    (2, 3, 10, 1),
    (3, 1, 8, 2),
    (3, 2, 10, 3),
    (3, 3, 3, 1),
    (3, 4, 14, 2),
    (4, 2, 11, 2),
    (4, 4, 13, 3),
    (5, 1, 9, 1),
    (5, 3, 12, 2),
    (5, 4, 17, 2),
]
POOL_IDS = [f"k{k}s{s}L{n}c{c}" for k, s, n, c in POOL_GEOMETRIES]
POOLS = {"max": nnx.MaxPool1D, "avg": nnx.AvgPool1D}

F64 = {"rtol": 1e-10, "atol": 1e-10}
F32 = {"rtol": 2e-4, "atol": 2e-5}


def check_against_torch(module: nnx.Module, x: np.ndarray, rng: np.random.Generator) -> None:
    """Forward, dL/dx and dL/dparams of ``module`` (current backend) equal PyTorch's."""
    out_shape = tuple(module.forward(nnx.asarray(x, dtype=_dtype(module))).shape)
    R = rng.standard_normal(out_shape)
    tol = F64 if _dtype(module) == "float64" else F32
    compare_with_reference(module, x, weights=R, **tol)


def _dtype(module: nnx.Module) -> str:
    params = module.parameters()
    return backends.dtype_name(params[0]) if params else nnx.get_default_dtype()


def activation_input(name: str, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    x = rng.standard_normal(shape) * 2.0
    return away_from_kinks(x) if "ReLU" in name else x


# -- activations -------------------------------------------------------------------------
@pytest.mark.parametrize("shape", SHAPES, ids=["2d", "3d"])
@pytest.mark.parametrize("make", ACT_MAKERS, ids=ACT_IDS)
def test_activation_vs_torch(backend, float64, rng, make, shape):
    module = make()
    check_against_torch(module, activation_input(type(module).__name__, shape, rng), rng)


@pytest.mark.parametrize("make", ACT_MAKERS, ids=ACT_IDS)
def test_activation_vs_torch_float32(backend, rng, make):
    module = make()
    check_against_torch(module, activation_input(type(module).__name__, (5, 7), rng), rng)


@pytest.mark.parametrize("shape", SHAPES, ids=["2d", "3d"])
@pytest.mark.parametrize("make", ACT_MAKERS, ids=ACT_IDS)
def test_activation_finite_differences(backend, float64, rng, make, shape):
    module = make()
    finite_difference_check(module, activation_input(type(module).__name__, shape, rng))


def test_relu_family_derivative_at_zero(backend, float64):
    """At exactly 0, ReLU passes no gradient and LeakyReLU passes alpha (as PyTorch)."""
    x = nnx.asarray([[-1.0, 0.0, 2.0]])
    delta = nnx.asarray([[1.0, 1.0, 1.0]])
    assert_close(nnx.ReLU().backward_delta(x, delta), [[0.0, 0.0, 1.0]])
    assert_close(nnx.LeakyReLU(0.25).backward_delta(x, delta), [[0.25, 0.25, 1.0]])
    assert_close(nnx.LeakyReLU(0.25)(x), [[-0.25, 0.0, 2.0]])


def test_activation_backward_without_forward(backend, float64, rng):
    """backward_delta on an input never seen by forward (no stale cache)."""
    for make in ACT_MAKERS:
        module = make()
        x1 = nnx.asarray(rng.standard_normal((3, 4)))
        x2 = nnx.asarray(rng.standard_normal((3, 4)))
        delta = nnx.asarray(rng.standard_normal((3, 4)))
        module.forward(x1)
        fresh = make()
        assert_close(module.backward_delta(x2, delta), fresh.backward_delta(x2, delta), 1e-12)


# -- Linear ------------------------------------------------------------------------------
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("sizes", [(1, 1), (4, 3), (7, 5)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_linear_vs_torch(backend, float64, rng, bias, sizes):
    module = nnx.Linear(*sizes, bias=bias, init_type="normal")
    check_against_torch(module, rng.standard_normal((6, sizes[0])), rng)


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
def test_linear_vs_torch_float32(backend, rng, bias):
    module = nnx.Linear(7, 5, bias=bias, init_type="normal")
    check_against_torch(module, rng.standard_normal((6, 7)), rng)


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
def test_linear_finite_differences(backend, float64, rng, bias):
    module = nnx.Linear(5, 4, bias=bias, init_type="normal")
    finite_difference_check(module, rng.standard_normal((3, 5)))


def test_linear_parameter_shapes(backend):
    layer = nnx.Linear(4, 3)
    assert tuple(layer._parameters["weight"].shape) == (4, 3)
    assert tuple(layer._parameters["bias"].shape) == (1, 3)
    assert set(nnx.Linear(4, 3, bias=False)._parameters) == {"weight"}
    for name, p in layer._parameters.items():
        assert tuple(layer._gradient[name].shape) == tuple(p.shape)
        assert np.all(host(layer._gradient[name]) == 0)


# -- Conv1D ------------------------------------------------------------------------------
def conv_and_input(geometry: tuple, rng: np.random.Generator) -> tuple[nnx.Conv1D, np.ndarray]:
    k, s, length, c_in, c_out, bias = geometry
    module = nnx.Conv1D(k, c_in, c_out, stride=s, bias=bias, init_type="normal")
    return module, rng.standard_normal((3, length, c_in))


@pytest.mark.parametrize("geometry", CONV_GEOMETRIES, ids=CONV_IDS)
def test_conv1d_vs_torch(backend, float64, rng, geometry):
    module, x = conv_and_input(geometry, rng)
    k, s, length, _, c_out, _ = geometry
    assert tuple(module(nnx.asarray(x)).shape) == (3, (length - k) // s + 1, c_out)
    check_against_torch(module, x, rng)


@pytest.mark.parametrize("geometry", CONV_GEOMETRIES[::4], ids=CONV_IDS[::4])
def test_conv1d_vs_torch_float32(backend, rng, geometry):
    module, x = conv_and_input(geometry, rng)
    check_against_torch(module, x, rng)


@pytest.mark.parametrize("geometry", CONV_GEOMETRIES, ids=CONV_IDS)
def test_conv1d_finite_differences(backend, float64, rng, geometry):
    module, x = conv_and_input(geometry, rng)
    finite_difference_check(module, x)


def test_conv1d_formula(backend, float64, rng):
    """out[b, o, d] = sum_k sum_c X[b, o*s + k, c] W[k, c, d] + bias[d], by explicit loops."""
    module = nnx.Conv1D(3, 2, 2, stride=2, bias=True, init_type="normal")
    x = rng.standard_normal((2, 8, 2))
    W, b = host(module._parameters["weight"]), host(module._parameters["bias"])
    expected = np.zeros((2, 3, 2))
    for bi in range(2):
        for o in range(3):
            for d in range(2):
                expected[bi, o, d] = b[d] + sum(
                    x[bi, o * 2 + k, c] * W[k, c, d] for k in range(3) for c in range(2)
                )
    assert_close(module(nnx.asarray(x)), expected, rtol=1e-12, atol=1e-12)


# Conv1D padding: (k_size, stride, padding, length, chan_in, chan_out, bias)
CONV1D_PADDED = [
    (3, 1, 1, 6, 2, 2, True),
    (3, 1, "same", 7, 1, 3, False),
    (4, 1, "same", 6, 2, 2, True),  # even kernel: the extra zero goes after
    (5, 2, 2, 9, 3, 2, False),
    (2, 3, (0, 2), 8, 1, 2, True),
    (4, 2, (2, 1), 3, 2, 1, False),  # length < k, but not once padded
    (1, 1, "valid", 5, 2, 2, True),
]
CONV1D_PADDED_IDS = [
    f"k{k}s{s}p{str(p).replace(' ', '')}L{n}c{c}d{d}{'b' if b else ''}"
    for k, s, p, n, c, d, b in CONV1D_PADDED
]


@pytest.mark.parametrize("geometry", CONV1D_PADDED, ids=CONV1D_PADDED_IDS)
def test_conv1d_padding_vs_torch_and_finite_differences(backend, float64, rng, geometry):
    k, s, pad, length, c_in, c_out, bias = geometry
    module = nnx.Conv1D(k, c_in, c_out, stride=s, bias=bias, init_type="normal", padding=pad)
    x = rng.standard_normal((3, length, c_in))
    lo, hi = (pad, pad) if isinstance(pad, int) else (pad if isinstance(pad, tuple) else (0, 0))
    if pad == "same":
        lo, hi = (k - 1) // 2, k - 1 - (k - 1) // 2
    assert tuple(module(nnx.asarray(x)).shape) == (3, (length + lo + hi - k) // s + 1, c_out)
    check_against_torch(module, x, rng)
    finite_difference_check(module, x)


@pytest.mark.filterwarnings("ignore:Using padding=.same.")
def test_conv1d_same_padding_matches_torch_same(backend, float64, rng):
    """padding="same" is PyTorch's padding="same" (odd and even kernels)."""
    import torch
    import torch.nn.functional as F

    for k in (1, 2, 3, 4, 5):
        module = nnx.Conv1D(k, 2, 3, padding="same", init_type="normal")
        x = rng.standard_normal((2, 9, 2))
        W = torch.from_numpy(host(module._parameters["weight"])).permute(2, 1, 0)
        ref = F.conv1d(torch.from_numpy(x).permute(0, 2, 1), W, padding="same")
        assert_close(module(nnx.asarray(x)), ref.permute(0, 2, 1).numpy(), 1e-12, 1e-12)


# -- Conv2D ------------------------------------------------------------------------------
# (k_size, stride, padding, height, width, chan_in, chan_out, bias): kernels 1-5 per axis,
# strides 1-3 per axis, padding 0-2, pairs and "same", sizes not multiples of the stride,
# a kernel as large as the (padded) image, 1-4 channels, bias on and off.
CONV2D_GEOMETRIES = [
    (1, 1, 0, 4, 5, 1, 1, False),
    (2, 1, 0, 5, 4, 2, 3, True),
    (2, 2, 0, 7, 6, 1, 2, False),
    (3, 1, 1, 5, 5, 3, 2, True),
    (3, 2, 0, 8, 9, 2, 4, False),
    (3, 1, "same", 6, 7, 2, 2, True),
    (4, 1, "same", 5, 6, 1, 2, False),
    ((2, 3), (1, 2), 0, 6, 9, 2, 2, True),
    ((3, 1), (2, 1), (1, 0), 7, 4, 1, 3, False),
    ((1, 4), (3, 2), (0, 2), 8, 5, 2, 1, True),
    (3, 3, 2, 7, 8, 4, 2, False),
    ((5, 2), (2, 3), 1, 9, 10, 1, 2, True),
    (5, 1, 2, 5, 5, 2, 2, False),
    (5, 2, 0, 5, 7, 1, 1, True),
    ((4, 5), (1, 1), "valid", 4, 5, 3, 2, True),
    (2, 3, 1, 6, 7, 2, 3, False),
]
CONV2D_IDS = [
    "k{}s{}p{}_{}x{}c{}d{}{}".format(
        *(str(v).replace(" ", "") for v in (k, s, p)), h, w, c, d, "b" if b else ""
    )
    for k, s, p, h, w, c, d, b in CONV2D_GEOMETRIES
]


def _pair(v: object) -> tuple[int, int]:
    return tuple(v) if isinstance(v, tuple) else (v, v)  # type: ignore[return-value]


def conv2d_and_input(geometry: tuple, rng: np.random.Generator) -> tuple[nnx.Conv2D, np.ndarray]:
    k, s, pad, h, w, c_in, c_out, bias = geometry
    module = nnx.Conv2D(k, c_in, c_out, stride=s, padding=pad, bias=bias, init_type="normal")
    return module, rng.standard_normal((2, h, w, c_in))


def conv2d_out_shape(geometry: tuple) -> tuple[int, int]:
    k, s, pad, h, w, _, _, _ = geometry
    (kh, kw), (sh, sw) = _pair(k), _pair(s)
    if pad == "same":
        return h, w
    ph, pw = (0, 0) if pad == "valid" else _pair(pad)
    return (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1


@pytest.mark.parametrize("geometry", CONV2D_GEOMETRIES, ids=CONV2D_IDS)
def test_conv2d_vs_torch(backend, float64, rng, geometry):
    module, x = conv2d_and_input(geometry, rng)
    oh, ow = conv2d_out_shape(geometry)
    assert tuple(module(nnx.asarray(x)).shape) == (2, oh, ow, geometry[6])
    check_against_torch(module, x, rng)


@pytest.mark.parametrize("geometry", CONV2D_GEOMETRIES[::4], ids=CONV2D_IDS[::4])
def test_conv2d_vs_torch_float32(backend, rng, geometry):
    module, x = conv2d_and_input(geometry, rng)
    check_against_torch(module, x, rng)


@pytest.mark.parametrize("geometry", CONV2D_GEOMETRIES, ids=CONV2D_IDS)
def test_conv2d_finite_differences(backend, float64, rng, geometry):
    module, x = conv2d_and_input(geometry, rng)
    finite_difference_check(module, x)


@pytest.mark.filterwarnings("ignore:Using padding=.same.")
def test_conv2d_same_padding_matches_torch_same(backend, float64, rng):
    """padding="same" is PyTorch's padding="same", also for even and rectangular kernels."""
    import torch
    import torch.nn.functional as F

    for k in (1, 2, 3, 4, (2, 5), (3, 4)):
        module = nnx.Conv2D(k, 2, 3, padding="same", bias=True, init_type="normal")
        x = rng.standard_normal((2, 7, 6, 2))
        W = torch.from_numpy(host(module._parameters["weight"])).permute(3, 2, 0, 1)
        b = torch.from_numpy(host(module._parameters["bias"]))
        ref = F.conv2d(torch.from_numpy(x).permute(0, 3, 1, 2), W, b, padding="same")
        assert_close(module(nnx.asarray(x)), ref.permute(0, 2, 3, 1).numpy(), 1e-12, 1e-12)


def test_conv2d_formula(backend, float64, rng):
    """out[b,p,q,d] = sum_ijc X[b, p s_h + i, q s_w + j, c] W[i,j,c,d] + bias[d], by loops."""
    module = nnx.Conv2D((2, 3), 2, 2, stride=(2, 1), bias=True, init_type="normal")
    x = rng.standard_normal((2, 6, 5, 2))
    W, b = host(module._parameters["weight"]), host(module._parameters["bias"])
    expected = np.zeros((2, 3, 3, 2))
    for bi, p, q, d in np.ndindex(*expected.shape):
        expected[bi, p, q, d] = b[d] + sum(
            x[bi, 2 * p + i, q + j, c] * W[i, j, c, d]
            for i in range(2)
            for j in range(3)
            for c in range(2)
        )
    assert_close(module(nnx.asarray(x)), expected, rtol=1e-12, atol=1e-12)


def test_conv2d_fans_and_shapes(backend):
    """PyTorch's fans: fan_in = k_h k_w C, fan_out = k_h k_w D (xavier_normal's std)."""
    nnx.manual_seed(3)
    module = nnx.Conv2D((5, 4), 16, 32)
    W = host(module._parameters["weight"])
    assert W.shape == (5, 4, 16, 32)
    expected = np.sqrt(2.0 / (20 * 16 + 20 * 32))
    assert abs(W.std() / expected - 1) < 0.05
    assert set(module._parameters) == {"weight"}
    assert tuple(nnx.Conv2D(3, 2, 7, bias=True)._parameters["bias"].shape) == (7,)


# -- pools -------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", sorted(POOLS))
@pytest.mark.parametrize("geometry", POOL_GEOMETRIES, ids=POOL_IDS)
def test_pool_vs_torch(backend, float64, rng, kind, geometry):
    k, s, length, chan = geometry
    module = POOLS[kind](k, s)
    x = distinct_values(rng, (3, length, chan))
    assert tuple(module(nnx.asarray(x)).shape) == (3, (length - k) // s + 1, chan)
    check_against_torch(module, x, rng)


@pytest.mark.parametrize("kind", sorted(POOLS))
@pytest.mark.parametrize("geometry", POOL_GEOMETRIES, ids=POOL_IDS)
def test_pool_finite_differences(backend, float64, rng, kind, geometry):
    k, s, length, chan = geometry
    finite_difference_check(POOLS[kind](k, s), distinct_values(rng, (3, length, chan)))


@pytest.mark.parametrize("kind", sorted(POOLS))
def test_pool_vs_torch_float32(backend, rng, kind):
    check_against_torch(POOLS[kind](3, 2), distinct_values(rng, (4, 11, 3)), rng)


def test_maxpool_ties_go_to_first_maximum(backend, float64):
    # windows (k=3, s=1) of [1, 3, 3, 2, 3]: maxima at positions 1, 1, 2
    x = nnx.asarray(np.array([1.0, 3.0, 3.0, 2.0, 3.0]).reshape(1, 5, 1))
    pool = nnx.MaxPool1D(3, 1)
    assert_close(pool(x)[0, :, 0], [3.0, 3.0, 3.0])
    dx = pool.backward_delta(x, nnx.asarray(np.ones((1, 3, 1))))
    assert_close(dx[0, :, 0], [0.0, 2.0, 1.0, 0.0, 0.0])


def test_maxpool_ties_match_torch(backend, float64, rng):
    """Many ties (values from {0, 1, 2}), overlapping and gapped windows."""
    for k, s in [(2, 1), (3, 1), (3, 2), (4, 3), (2, 3)]:
        x = rng.integers(0, 3, (3, 13, 2)).astype(np.float64)
        check_against_torch(nnx.MaxPool1D(k, s), x, rng)


def test_maxpool_all_equal_window(backend, float64):
    x = nnx.asarray(np.full((2, 4, 3), 7.0))
    dx = nnx.MaxPool1D(4, 1).backward_delta(x, nnx.asarray(np.ones((2, 1, 3))))
    expected = np.zeros((2, 4, 3))
    expected[:, 0, :] = 1.0
    assert_close(dx, expected)


# (k_size, stride, height, width, chan): stride None = k_size; overlapping and gapped
# windows, sizes not multiples of the stride, rectangular windows.
POOL2D_GEOMETRIES = [
    (1, None, 3, 4, 2),
    (2, None, 6, 6, 1),
    (2, None, 7, 5, 2),
    (2, 1, 5, 4, 3),
    (3, None, 7, 9, 1),
    (3, 2, 7, 8, 2),
    (3, 1, 5, 5, 1),
    ((2, 3), None, 6, 9, 2),
    ((2, 3), (1, 2), 5, 8, 1),
    ((3, 1), (2, 3), 8, 7, 2),
    (4, 3, 10, 9, 1),
    (5, 2, 9, 8, 2),
    (2, 3, 8, 7, 3),
]
POOL2D_IDS = [
    "k{}s{}_{}x{}c{}".format(str(k).replace(" ", ""), str(s).replace(" ", ""), h, w, c)
    for k, s, h, w, c in POOL2D_GEOMETRIES
]
POOLS2D = {"max": nnx.MaxPool2D, "avg": nnx.AvgPool2D}


@pytest.mark.parametrize("kind", sorted(POOLS2D))
@pytest.mark.parametrize("geometry", POOL2D_GEOMETRIES, ids=POOL2D_IDS)
def test_pool2d_vs_torch(backend, float64, rng, kind, geometry):
    k, s, h, w, chan = geometry
    module = POOLS2D[kind](k, s)
    (kh, kw), (sh, sw) = _pair(k), _pair(k if s is None else s)
    x = distinct_values(rng, (3, h, w, chan))
    assert tuple(module(nnx.asarray(x)).shape) == (3, (h - kh) // sh + 1, (w - kw) // sw + 1, chan)
    check_against_torch(module, x, rng)


@pytest.mark.parametrize("kind", sorted(POOLS2D))
@pytest.mark.parametrize("geometry", POOL2D_GEOMETRIES, ids=POOL2D_IDS)
def test_pool2d_finite_differences(backend, float64, rng, kind, geometry):
    k, s, h, w, chan = geometry
    finite_difference_check(POOLS2D[kind](k, s), distinct_values(rng, (2, h, w, chan)))


@pytest.mark.parametrize("kind", sorted(POOLS2D))
def test_pool2d_vs_torch_float32(backend, rng, kind):
    check_against_torch(POOLS2D[kind](3, 2), distinct_values(rng, (4, 9, 8, 3)), rng)


def test_maxpool2d_ties_match_torch(backend, float64, rng):
    """Ties (values from {0, 1, 2}) go to the first maximum in row-major order."""
    for k, s in [(2, None), (2, 1), (3, 1), (3, 2), ((2, 3), (1, 2)), (2, 3)]:
        x = rng.integers(0, 3, (3, 8, 9, 2)).astype(np.float64)
        check_against_torch(nnx.MaxPool2D(k, s), x, rng)


def test_maxpool2d_all_equal_window(backend, float64):
    x = nnx.asarray(np.full((2, 3, 3, 2), 7.0))
    dx = nnx.MaxPool2D(3).backward_delta(x, nnx.asarray(np.ones((2, 1, 1, 2))))
    expected = np.zeros((2, 3, 3, 2))
    expected[:, 0, 0, :] = 1.0
    assert_close(dx, expected)


# -- Flatten -----------------------------------------------------------------------------
def test_flatten_vs_torch(backend, float64, rng):
    check_against_torch(nnx.Flatten(), rng.standard_normal((3, 5, 4)), rng)


def test_flatten_finite_differences(backend, float64, rng):
    finite_difference_check(nnx.Flatten(), rng.standard_normal((2, 4, 3)))


@pytest.mark.parametrize("shape", [(3, 4), (2, 4, 3), (2, 3, 4, 2), (2, 2, 1, 3, 2)])
def test_flatten_row_major(backend, shape):
    """Every axis after the batch, any rank, in C order (as torch.flatten(x, 1))."""
    x = np.arange(float(np.prod(shape))).reshape(shape)
    out = nnx.Flatten()(nnx.asarray(x))
    assert_close(out, x.reshape(shape[0], -1))
    back = nnx.Flatten().backward_delta(nnx.asarray(x), out)
    assert_close(back, x)


def test_flatten_images_vs_torch(backend, float64, rng):
    check_against_torch(nnx.Flatten(), rng.standard_normal((3, 4, 5, 2)), rng)


# -- parameter-free modules --------------------------------------------------------------
PARAM_FREE = [
    *ACT_MAKERS,
    lambda: nnx.MaxPool1D(2, 2),
    lambda: nnx.AvgPool1D(3, 1),
    nnx.Flatten,
]
PARAM_FREE_2D = [lambda: nnx.MaxPool2D(2), lambda: nnx.AvgPool2D(3, 1), nnx.Flatten]


@pytest.mark.parametrize("make", PARAM_FREE)
def test_parameter_free_modules(backend, rng, make):
    module = make()
    x = nnx.asarray(rng.standard_normal((2, 6, 3)))
    out = module(x)
    module.backward_update_gradient(x, out)  # a no-op, but it must accept the call
    module.zero_grad()
    module.update_parameters(0.1)
    assert module._parameters == {} and module._gradient == {}
    assert list(module.named_parameters()) == []


@pytest.mark.parametrize("make", PARAM_FREE_2D)
def test_parameter_free_modules_2d(backend, rng, make):
    module = make()
    x = nnx.asarray(rng.standard_normal((2, 6, 5, 3)))
    out = module(x)
    module.backward_update_gradient(x, out)
    module.zero_grad()
    module.update_parameters(0.1)
    assert module._parameters == {} and list(module.named_parameters()) == []


# -- gradient bookkeeping ----------------------------------------------------------------
PARAM_MODULES = {
    "linear": (lambda: nnx.Linear(4, 3, init_type="normal"), (5, 4)),
    "linear_nobias": (lambda: nnx.Linear(4, 3, bias=False), (5, 4)),
    "conv": (lambda: nnx.Conv1D(3, 2, 4, stride=2, bias=True, init_type="normal"), (3, 9, 2)),
    "conv_nobias": (lambda: nnx.Conv1D(2, 3, 2, stride=1), (3, 6, 3)),
    "conv_padded": (lambda: nnx.Conv1D(3, 2, 2, bias=True, padding=1), (2, 5, 2)),
    "conv2d": (
        lambda: nnx.Conv2D(3, 2, 3, stride=2, padding=1, bias=True, init_type="normal"),
        (2, 6, 5, 2),
    ),
    "conv2d_nobias": (lambda: nnx.Conv2D((2, 3), 3, 2), (3, 5, 6, 3)),
}


def _one_backward(module: nnx.Module, x, delta) -> dict[str, np.ndarray]:
    module.backward_update_gradient(x, delta)
    return {k: host(g) for k, g in module._gradient.items()}


@pytest.mark.parametrize("name", sorted(PARAM_MODULES))
def test_gradients_accumulate_until_zero_grad(backend, float64, rng, name):
    make, shape = PARAM_MODULES[name]
    module = make()
    x = nnx.asarray(rng.standard_normal(shape))
    delta = nnx.asarray(rng.standard_normal(tuple(module(x).shape)))
    x2 = nnx.asarray(rng.standard_normal(shape))
    once = _one_backward(module, x, delta)
    assert any(np.any(g != 0) for g in once.values())
    twice = _one_backward(module, x, delta)
    for key in once:
        np.testing.assert_allclose(twice[key], 2 * once[key], rtol=1e-12, atol=1e-12)
    # a different input adds its own contribution
    fresh = make()
    fresh.load_state_dict(module.state_dict())
    other = _one_backward(fresh, x2, delta)
    thrice = _one_backward(module, x2, delta)
    for key in once:
        np.testing.assert_allclose(thrice[key], 2 * once[key] + other[key], rtol=1e-12)
    gradient_buffers = dict(module._gradient)
    module.zero_grad()
    for key, g in module._gradient.items():
        assert np.all(host(g) == 0)
        if backends.is_mutable(g):  # zeroed in place (JAX: a new array, it cannot be)
            assert g is gradient_buffers[key]
    again = _one_backward(module, x, delta)
    for key in once:
        np.testing.assert_allclose(again[key], once[key], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", sorted(PARAM_MODULES))
def test_update_parameters(backend, float64, rng, name):
    make, shape = PARAM_MODULES[name]
    module = make()
    x = nnx.asarray(rng.standard_normal(shape))
    delta = nnx.asarray(rng.standard_normal(tuple(module(x).shape)))
    module.backward_update_gradient(x, delta)
    before = {k: host(p) for k, p in module._parameters.items()}
    grads = {k: host(g) for k, g in module._gradient.items()}
    module.update_parameters(0.25)
    for k, p in module._parameters.items():
        np.testing.assert_allclose(host(p), before[k] - 0.25 * grads[k], rtol=1e-12, atol=1e-15)
    # the default step is 1e-3; gradients are not reset by an update
    module.update_parameters()
    for k, p in module._parameters.items():
        np.testing.assert_allclose(host(p), before[k] - 0.251 * grads[k], rtol=1e-12, atol=1e-14)
        np.testing.assert_array_equal(host(module._gradient[k]), grads[k])
    # the forward pass uses the updated values
    if name.startswith("linear"):
        W = host(module._parameters["weight"])
        b = host(module._parameters["bias"]) if "bias" in module._parameters else 0.0
        assert_close(module(x), host(x) @ W + b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", sorted(PARAM_MODULES))
def test_assigned_parameter_takes_effect(backend, float64, rng, name):
    make, shape = PARAM_MODULES[name]
    module, reference = make(), make()
    x = nnx.asarray(rng.standard_normal(shape))
    first = host(module(x))
    new_values = {k: rng.standard_normal(tuple(p.shape)) for k, p in module._parameters.items()}
    for k, value in new_values.items():
        module._parameters[k] = nnx.asarray(value)
        reference._parameters[k] = nnx.asarray(value)
    out = host(module(x))  # x is the same object as in the cached forward above
    assert not np.allclose(out, first)
    assert_close(out, torch_module_reference(reference, host(x), np.ones(out.shape))[0], 1e-10)
    # backward uses the assigned values too
    delta = nnx.asarray(rng.standard_normal(out.shape))
    _, t_dx, t_grads = torch_module_reference(reference, host(x), host(delta))
    module.zero_grad()
    module.backward_update_gradient(x, delta)
    assert_close(module.backward_delta(x, delta), t_dx, 1e-10, 1e-12)
    for k, g in module._gradient.items():
        assert_close(g, t_grads[k], 1e-10, 1e-12)
    # update_parameters never modifies the caller's array in place
    assigned = {k: p for k, p in module._parameters.items()}
    module.update_parameters(0.5)
    for k, value in new_values.items():
        np.testing.assert_array_equal(host(assigned[k]), value)
        assert_close(module._parameters[k], value - 0.5 * host(module._gradient[k]), 1e-12)


@pytest.mark.parametrize(
    "make, shape",
    [PARAM_MODULES["conv"], PARAM_MODULES["linear"], (lambda: nnx.MaxPool1D(3, 2), (2, 9, 2))]
    + [PARAM_MODULES["conv2d"], PARAM_MODULES["conv_padded"]]
    + [(lambda: nnx.MaxPool2D(3, 2), (2, 7, 8, 2)), (lambda: nnx.AvgPool2D(2), (2, 6, 6, 2))]
    + [(m, (3, 5)) for m in ACT_MAKERS],
)
def test_no_input_modified(backend, rng, make, shape):
    """forward, both backward methods and update_parameters leave every argument intact."""
    module = make()
    x = nnx.asarray(rng.standard_normal(shape))
    x_copy = host(x)
    out = module(x)
    out_copy = host(out)
    delta = nnx.asarray(rng.standard_normal(tuple(out.shape)))
    delta_copy = host(delta)
    module.backward_update_gradient(x, delta)
    module.backward_delta(x, delta)
    module.update_parameters(0.1)
    np.testing.assert_array_equal(host(x), x_copy)
    np.testing.assert_array_equal(host(delta), delta_copy)
    np.testing.assert_array_equal(host(out), out_copy)


# -- the checkers themselves can fail ----------------------------------------------------
class _WrongTanH(nnx.TanH):
    def _backward(self, xp, X, out, delta):  # type: ignore[override]
        return delta * (1.0 - out)  # should be 1 - out**2


class _WrongBiasLinear(nnx.Linear):
    def backward_update_gradient(self, input, delta) -> None:  # type: ignore[override]
        super().backward_update_gradient(input, delta)
        self._gradient["bias"] *= 1.001  # 0.1 % off


def test_failure_names_the_parameter_and_the_worst_entry(backend, float64, rng):
    """A user's module with a wrong gradient fails check_gradients with a message naming
    the module, the parameter and the worst entry with both values."""
    layer = _WrongBiasLinear(4, 3, init_type="normal")
    x = rng.standard_normal((5, 4))
    R = np.ones((5, 3))
    R[:, 2] = 100.0  # the bias gradient's largest entry (hence its largest error) is [0, 2]
    with pytest.raises(GradientCheckError) as info:
        nnx.testing.check_gradients(layer, x, weights=R)
    msg = str(info.value)
    assert msg.startswith("_WrongBiasLinear(4, 3, bias=True): dL/dbias differs from central")
    assert "in 3 of 3 checked entries; worst at index (0, 2): analytic 500.5, numeric 500" in msg


class _WrongBatchNorm(nnx.BatchNorm):
    """Training-mode backward that forgets the batch statistics' own dependence on x."""

    def backward_delta(self, input, delta):  # type: ignore[override]
        self.eval()
        try:
            return super().backward_delta(input, delta)
        finally:
            self.train()


def test_batch_coupled_modules_are_checked_on_whole_batches(backend, float64, rng):
    """BatchNorm in training mode passes (samples interact: whole-batch differences), a
    wrong one fails, the running statistics are left as they were, and a random forward
    (Dropout in training mode) is refused with the reason."""
    x = rng.standard_normal((6, 3))
    bn = nnx.BatchNorm(3)
    assert bn.row_independent is False and bn.eval().row_independent is True
    bn.train()
    net = nnx.Sequential(nnx.Linear(3, 3), bn)
    assert net.row_independent is False
    before = {k: v.copy() for k, v in bn.state_dict().items()}
    nnx.testing.check_gradients(net, x)
    for k, v in bn.state_dict().items():
        np.testing.assert_array_equal(v, before[k], err_msg=k)
    with pytest.raises(GradientCheckError, match=r"BatchNorm\(3.*dL/dinput differs"):
        nnx.testing.check_gradients(_WrongBatchNorm(3), x)
    with pytest.raises(GradientCheckError, match="two forward calls on the same input differ"):
        nnx.testing.check_gradients(nnx.Dropout(0.5), x)


def test_checkers_catch_wrong_gradients(backend, float64, rng):
    x = rng.standard_normal((3, 4))
    with pytest.raises(AssertionError, match="dL/dinput"):
        finite_difference_check(_WrongTanH(), x)
    with pytest.raises(AssertionError, match="dL/dbias"):
        finite_difference_check(_WrongBiasLinear(4, 2, init_type="normal"), x)
    with pytest.raises(GradientCheckError, match=r"TanH\(\): dL/dinput differs from the reference"):
        check_against_torch(_WrongTanH(), x, rng)
    with pytest.raises(AssertionError, match="float64"):
        nnx.set_default_dtype("float32")
        finite_difference_check(nnx.Linear(4, 2), x)


@pytest.mark.parametrize(
    "make",
    [
        lambda: nnx.Conv1D(3, 4, 2, stride=2, bias=True, init_type="normal"),
        lambda: nnx.MaxPool1D(3, 2),
        lambda: nnx.AvgPool1D(2, 3),
        nnx.Flatten,
        nnx.Softmax,
    ],
    ids=["conv", "maxpool", "avgpool", "flatten", "softmax"],
)
def test_non_contiguous_inputs(backend, float64, rng, make):
    """A permuted (channels-first data viewed channels-last) input gives the same results."""
    module = make()
    x_cf = rng.standard_normal((3, 4, 11))  # (batch, chan, length)
    xp = backends.BACKENDS[backend].xp
    x_view = xp.permute_dims(nnx.asarray(x_cf), (0, 2, 1))  # (batch, length, chan), strided
    x_plain = nnx.asarray(np.ascontiguousarray(x_cf.transpose(0, 2, 1)))
    out = module(x_view)
    assert_close(out, module(x_plain), 1e-13, 1e-14)
    delta = nnx.asarray(rng.standard_normal(tuple(out.shape)))
    module.zero_grad()
    module.backward_update_gradient(x_view, delta)
    grads = {k: host(g) for k, g in module._gradient.items()}
    module.zero_grad()
    module.backward_update_gradient(x_plain, delta)
    for k, g in module._gradient.items():
        assert_close(g, grads[k], 1e-13, 1e-14)
    assert_close(module.backward_delta(x_view, delta), module.backward_delta(x_plain, delta), 1e-13)


@pytest.mark.parametrize(
    "make",
    [
        lambda: nnx.Conv2D(3, 4, 2, stride=(1, 2), padding=1, bias=True, init_type="normal"),
        lambda: nnx.Conv2D(2, 4, 3, stride=2, init_type="normal"),
        lambda: nnx.MaxPool2D(2),
        lambda: nnx.MaxPool2D(3, 1),
        lambda: nnx.AvgPool2D(2, 3),
        nnx.Flatten,
    ],
    ids=["conv", "conv_s2", "maxpool", "maxpool_s1", "avgpool", "flatten"],
)
def test_non_contiguous_images(backend, float64, rng, make):
    """A channels-first (NCHW) array viewed channels-last gives the same results."""
    module = make()
    x_cf = rng.standard_normal((2, 4, 7, 8))
    xp = backends.BACKENDS[backend].xp
    x_view = xp.permute_dims(nnx.asarray(x_cf), (0, 2, 3, 1))
    x_plain = nnx.asarray(np.ascontiguousarray(x_cf.transpose(0, 2, 3, 1)))
    out = module(x_view)
    assert_close(out, module(x_plain), 1e-13, 1e-14)
    delta = nnx.asarray(rng.standard_normal(tuple(out.shape)))
    module.zero_grad()
    module.backward_update_gradient(x_view, delta)
    grads = {k: host(g) for k, g in module._gradient.items()}
    module.zero_grad()
    module.backward_update_gradient(x_plain, delta)
    for k, g in module._gradient.items():
        assert_close(g, grads[k], 1e-13, 1e-14)
    assert_close(module.backward_delta(x_view, delta), module.backward_delta(x_plain, delta), 1e-13)


def test_ones_row_sums_over_the_batch(backend, float64, rng):
    """1ᵀ δ through the cached ones row (Linear's bias gradient): any batch size."""
    from nnx.module import _ROWS, namespace, ones_row

    for n in [*range(1, 70), 3]:  # more sizes than the cache keeps, then one again
        d = nnx.asarray(rng.standard_normal((n, 3)))
        row = ones_row(d)
        assert tuple(row.shape) == (1, n)
        assert type(row) is type(d) and row.dtype == d.dtype
        assert_close(namespace(d).matmul(row, d), host(d).sum(axis=0, keepdims=True), 1e-13)
        assert len(_ROWS) <= 64


# -- the shared tables: every case registered with nnx.testing.register_case ---------------
CASES = nnx.testing.cases()
CASE_IDS = [c.name for c in CASES]


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_registered_case_finite_differences(backend, float64, rng, case):
    nnx.testing.check_gradients(case.make(), case.input(rng))


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_registered_case_vs_torch(backend, float64, rng, case):
    module = case.make()
    if not nnx.testing.has_reference(module):
        pytest.skip(f"no torch reference for {case.name} (nnx.testing.register_reference)")
    compare_with_reference(module, case.input(rng))


def test_every_public_layer_has_a_case():
    """A new layer joins the tables by registering a case (see docs/extending.rst)."""
    covered = {type(case.make()) for case in CASES}
    public = {
        obj
        for obj in (getattr(nnx, name) for name in nnx.__all__)
        if isinstance(obj, type) and issubclass(obj, nnx.Module) and obj is not nnx.Module
    }
    missing = sorted(cls.__name__ for cls in public - covered)
    assert not missing, f"no nnx.testing.register_case for {missing} (nnx/testing.py)"
