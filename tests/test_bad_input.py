"""Bad input across the public API: one table, every row run on each backend.

Each row builds a call that must fail and states three regular expressions that the
message must match: the module or function it names, what it expected and what it
received. The test also checks that the exception is exactly ``ValueError`` or
``TypeError`` (no ``AssertionError``, no NumPy ``AxisError`` from deep inside), that
the caller's arrays, host data and modules (parameters and gradients) are unchanged,
and that the global state (backend, default dtype) is what it was. No check relies on
``assert`` inside nnx: ``python -O -m pytest tests/test_bad_input.py`` passes too.

Empty batches are *not* bad input: as in PyTorch, every layer and loss accepts a batch
of 0 samples and returns an empty result of the right shape (see
:func:`test_empty_batch_is_valid`); only the training loops, which have nothing to
train on, refuse an empty data set.
"""

from __future__ import annotations

import copy
import importlib.util
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import nnx
from nnx import backends


class Ctx:
    """What a row needs: the backend under test and a foreign backend."""

    def __init__(self, backend: str) -> None:
        self.backend = backend
        self.other = _foreign_backend(backend)

    def A(self, x: Any, dtype: Any = None) -> Any:
        """Host data on the backend under test."""
        return nnx.asarray(np.asarray(x), dtype=dtype)

    def foreign(self, x: Any, dtype: Any = None) -> Any:
        """The same data as an array of another backend."""
        if self.other is None:
            pytest.skip("no second backend installed")
        with nnx.use_backend(self.other):
            return nnx.asarray(np.asarray(x), dtype=dtype)


def _foreign_backend(backend: str) -> str | None:
    choices = ("torch", "array_api_strict") if backend == "numpy" else ("numpy",)
    for name in choices:
        if importlib.util.find_spec(backends.BACKENDS[name].module_name) is not None:
            return name
    return None


@dataclass(frozen=True)
class Case:
    id: str
    exc: type[Exception]
    owner: str
    expected: str
    received: str
    build: Callable[[Ctx], tuple[Callable[[], Any], list[Any]]]


CASES: list[Case] = []


def case(exc: type[Exception], owner: str, expected: str, received: str):
    """Register a row. ``{backend}`` / ``{other}`` in the patterns are filled in."""

    def register(build: Callable[[Ctx], tuple[Callable[[], Any], list[Any]]]):
        CASES.append(Case(build.__name__, exc, owner, expected, received, build))
        return build

    return register


def ones(*shape: int, dtype: Any = np.float64) -> np.ndarray:
    return np.arange(1, int(np.prod(shape)) + 1, dtype=dtype).reshape(shape) / 7


# -- Linear ------------------------------------------------------------------------------
LIN = r"Linear\(4, 3"


@case(ValueError, LIN, r"shape \(batch, 4\)", r"got shape \(2, 4, 1\)")
def linear_3d_input(c):
    net, X = nnx.Linear(4, 3), c.A(ones(2, 4, 1))
    return lambda: net(X), [net, X]


@case(ValueError, LIN, r"shape \(batch, 4\)", r"got shape \(4,\)")
def linear_1d_input(c):
    net, X = nnx.Linear(4, 3), c.A(ones(4))
    return lambda: net(X), [net, X]


@case(ValueError, LIN, r"shape \(batch, 4\)", r"got shape \(2, 5\)")
def linear_wrong_width(c):
    net, X = nnx.Linear(4, 3), c.A(ones(2, 5))
    return lambda: net(X), [net, X]


@case(TypeError, LIN, r"dtype float32", r"got int64")
def linear_int_input(c):
    net, X = nnx.Linear(4, 3), c.A(np.arange(8, dtype=np.int64).reshape(2, 4))
    return lambda: net(X), [net, X]


@case(TypeError, LIN, r"dtype float32", r"got bool")
def linear_bool_input(c):
    net, X = nnx.Linear(4, 3), c.A(np.ones((2, 4), dtype=bool))
    return lambda: net(X), [net, X]


@case(TypeError, LIN, r"to be an array", r"got list")
def linear_list_input(c):
    net, X = nnx.Linear(4, 3), [[1.0, 2.0, 3.0, 4.0]]
    return lambda: net(X), [net, X]


@case(TypeError, LIN, r"backend '{backend}'", r"is a {other} array")
def linear_foreign_backend_input(c):
    net, X = nnx.Linear(4, 3), c.foreign(ones(2, 4))
    return lambda: net(X), [net, X]


@case(ValueError, LIN, r"delta of shape \(2, 3\)", r"got shape \(2, 4\)")
def linear_delta_wrong_width(c):
    net, X, d = nnx.Linear(4, 3), c.A(ones(2, 4)), c.A(ones(2, 4))
    return lambda: net.backward_delta(X, d), [net, X, d]


@case(ValueError, LIN, r"delta of shape \(2, 3\)", r"got shape \(3, 3\)")
def linear_delta_wrong_batch(c):
    net, X, d = nnx.Linear(4, 3), c.A(ones(2, 4)), c.A(ones(3, 3))
    return lambda: net.backward_update_gradient(X, d), [net, X, d]


@case(ValueError, r"Linear\(0, 3\)", r"positive int", r"got 0")
def linear_zero_size(c):
    return lambda: nnx.Linear(0, 3), []


@case(TypeError, r"Linear\(4\.0, 3\)", r"must be an int", r"got float 4\.0")
def linear_float_size(c):
    return lambda: nnx.Linear(4.0, 3), []


@case(ValueError, LIN, r"expected one of \[.*'he_normal'", r"unknown init_type 'glorot'")
def linear_unknown_init(c):
    return lambda: nnx.Linear(4, 3, init_type="glorot"), []


@case(
    ValueError,
    r"\.load_state_dict",
    r"'weight' expects shape \(4, 3\)",
    r"got \(3, 4\)",
)
def linear_load_state_dict_shape(c):
    net = nnx.Linear(4, 3)
    state = {"weight": ones(3, 4), "bias": ones(1, 3)}
    return lambda: net.load_state_dict(state), [net, state]


# -- Conv1D and pools ----------------------------------------------------------------------
CONV = r"Conv1D\(3, 2, 5, stride=2"


@case(ValueError, CONV, r"shape \(batch, length, 2\)", r"got shape \(2, 10, 3\)")
def conv_wrong_channels(c):
    net, X = nnx.Conv1D(3, 2, 5, stride=2), c.A(ones(2, 10, 3))
    return lambda: net(X), [net, X]


@case(ValueError, CONV, r"shape \(batch, length, 2\)", r"got shape \(2, 10\)")
def conv_2d_input(c):
    net, X = nnx.Conv1D(3, 2, 5, stride=2), c.A(ones(2, 10))
    return lambda: net(X), [net, X]


@case(ValueError, CONV, r"shorter than k_size 3", r"length 2\b")
def conv_k_size_longer_than_input(c):
    net, X = nnx.Conv1D(3, 2, 5, stride=2), c.A(ones(4, 2, 2))
    return lambda: net(X), [net, X]


@case(TypeError, CONV, r"dtype float32", r"got int32")
def conv_int_input(c):
    net, X = nnx.Conv1D(3, 2, 5, stride=2), c.A(np.ones((2, 10, 2), dtype=np.int32))
    return lambda: net(X), [net, X]


@case(TypeError, CONV, r"backend '{backend}'", r"is a {other} array")
def conv_foreign_backend_input(c):
    net, X = nnx.Conv1D(3, 2, 5, stride=2), c.foreign(ones(2, 10, 2))
    return lambda: net(X), [net, X]


@case(ValueError, CONV, r"delta of shape \(2, 4, 5\)", r"got shape \(2, 5, 5\)")
def conv_delta_wrong_length(c):
    net, X, d = nnx.Conv1D(3, 2, 5, stride=2), c.A(ones(2, 10, 2)), c.A(ones(2, 5, 5))
    return lambda: net.backward_update_gradient(X, d), [net, X, d]


@case(ValueError, r"Conv1D\(0, 1, 4", r"positive int", r"k_size .*got 0")
def conv_zero_k_size(c):
    return lambda: nnx.Conv1D(0, 1, 4), []


@case(ValueError, r"Conv1D\(3, 1, 4, stride=-1\)", r"positive int", r"stride .*got -1")
def conv_negative_stride(c):
    return lambda: nnx.Conv1D(3, 1, 4, stride=-1), []


@case(TypeError, r"Conv1D\(True, 1, 4", r"must be an int", r"got bool True")
def conv_bool_k_size(c):
    return lambda: nnx.Conv1D(True, 1, 4), []


@case(ValueError, r"Conv1D\(3, 0, 4", r"chan_in must be a positive int", r"got 0")
def conv_zero_channels(c):
    return lambda: nnx.Conv1D(3, 0, 4), []


@case(ValueError, r"Conv1D\(3, 1, 4", r"expected one of \[.*'xavier_uniform'", r"'kaiming'")
def conv_unknown_init(c):
    return lambda: nnx.Conv1D(3, 1, 4, init_type="kaiming"), []


@case(ValueError, r"MaxPool1D\(", r"shorter than k_size 3", r"length 2\b")
def maxpool_k_size_longer_than_input(c):
    net, X = nnx.MaxPool1D(3, 1), c.A(ones(2, 2, 4))
    return lambda: net(X), [net, X]


@case(ValueError, r"MaxPool1D\(", r"shape \(batch, length, \?\)", r"got shape \(2, 6\)")
def maxpool_2d_input(c):
    net, X = nnx.MaxPool1D(2, 2), c.A(ones(2, 6))
    return lambda: net(X), [net, X]


@case(ValueError, r"MaxPool1D\(2, 0\)", r"stride must be a positive int", r"got 0")
def maxpool_zero_stride(c):
    return lambda: nnx.MaxPool1D(2, 0), []


@case(TypeError, r"MaxPool1D\(", r"floating-point input", r"got dtype int64")
def maxpool_int_input(c):
    net, X = nnx.MaxPool1D(2, 2), c.A(np.ones((2, 6, 1), dtype=np.int64))
    return lambda: net(X), [net, X]


@case(ValueError, r"AvgPool1D\(-2, 1\)", r"k_size must be a positive int", r"got -2")
def avgpool_negative_k_size(c):
    return lambda: nnx.AvgPool1D(-2, 1), []


@case(TypeError, r"AvgPool1D\(", r"floating-point input", r"got dtype bool")
def avgpool_bool_input(c):
    net, X = nnx.AvgPool1D(2, 2), c.A(np.ones((2, 6, 1), dtype=bool))
    return lambda: net(X), [net, X]


@case(TypeError, r"AvgPool1D\(", r"delta is a {other} array", r"input is a {backend}|{backend}")
def avgpool_foreign_backend_delta(c):
    net, X, d = nnx.AvgPool1D(2, 2), c.A(ones(2, 6, 1)), c.foreign(ones(2, 3, 1))
    return lambda: net.backward_delta(X, d), [net, X, d]


@case(ValueError, r"Flatten\(", r"shape \(batch, features\)", r"got shape \(6,\)")
def flatten_1d_input(c):
    net, X = nnx.Flatten(), c.A(ones(6))
    return lambda: net(X), [net, X]


@case(ValueError, r"Conv1D\(3, 2, 5, stride=1", r"shorter than k_size 3", r"length 1 padded to 2")
def conv_kernel_longer_than_padded_input(c):
    net, X = nnx.Conv1D(3, 2, 5, padding=(1, 0)), c.A(ones(2, 1, 2))
    return lambda: net(X), [net, X]


@case(ValueError, r"Conv1D\(3, 1, 4, stride=2\)", r"'same' needs stride 1", r"stride=2")
def conv_same_padding_with_stride(c):
    return lambda: nnx.Conv1D(3, 1, 4, stride=2, padding="same"), []


@case(ValueError, r"Conv1D\(3, 1, 4", r"non-negative int", r"got -1")
def conv_negative_padding(c):
    return lambda: nnx.Conv1D(3, 1, 4, padding=-1), []


@case(ValueError, r"Conv1D\(3, 1, 4", r"int, a pair, 'same' or 'valid'", r"got 'full'")
def conv_unknown_padding(c):
    return lambda: nnx.Conv1D(3, 1, 4, padding="full"), []


# -- Conv2D and 2-D pools --------------------------------------------------------------------
CONV2 = r"Conv2D\(3, 2, 4, stride=1"


@case(ValueError, CONV2, r"shape \(batch, height, width, 2\)", r"got shape \(2, 6, 6, 3\)")
def conv2d_wrong_channels(c):
    net, X = nnx.Conv2D(3, 2, 4), c.A(ones(2, 6, 6, 3))
    return lambda: net(X), [net, X]


@case(ValueError, CONV2, r"shape \(batch, height, width, 2\)", r"got shape \(2, 6, 2\)")
def conv2d_rank3_input(c):
    net, X = nnx.Conv2D(3, 2, 4), c.A(ones(2, 6, 2))
    return lambda: net(X), [net, X]


@case(ValueError, CONV2, r"kernel 3x3 is larger than", r"input 2x5 \(2x7 padded\)")
def conv2d_kernel_larger_than_padded_input(c):
    net, X = nnx.Conv2D(3, 2, 4, padding=(0, 1)), c.A(ones(2, 2, 5, 2))
    return lambda: net(X), [net, X]


@case(ValueError, CONV2, r"kernel 3x3 is larger than", r"input 6x2 \(input shape")
def conv2d_kernel_wider_than_input(c):
    net, X = nnx.Conv2D(3, 2, 4), c.A(ones(2, 6, 2, 2))
    return lambda: net(X), [net, X]


@case(TypeError, CONV2, r"backend '{backend}'", r"is a {other} array")
def conv2d_foreign_backend_input(c):
    net, X = nnx.Conv2D(3, 2, 4), c.foreign(ones(2, 6, 6, 2))
    return lambda: net(X), [net, X]


@case(TypeError, CONV2, r"dtype float32", r"got int64")
def conv2d_int_input(c):
    net, X = nnx.Conv2D(3, 2, 4), c.A(np.ones((2, 6, 6, 2), dtype=np.int64))
    return lambda: net(X), [net, X]


@case(ValueError, CONV2, r"delta of shape \(2, 4, 4, 4\)", r"got shape \(2, 4, 5, 4\)")
def conv2d_delta_wrong_shape(c):
    net, X, d = nnx.Conv2D(3, 2, 4), c.A(ones(2, 6, 6, 2)), c.A(ones(2, 4, 5, 4))
    return lambda: net.backward_delta(X, d), [net, X, d]


@case(ValueError, r"Conv2D\(\(3, 0\), 1, 4", r"k_size must be a positive int", r"got 0")
def conv2d_zero_kernel_width(c):
    return lambda: nnx.Conv2D((3, 0), 1, 4), []


@case(ValueError, r"Conv2D\(\(3, 3, 3\), 1, 4", r"k_size must be an int or 2 ints", r"3, 3, 3")
def conv2d_three_kernel_sizes(c):
    return lambda: nnx.Conv2D((3, 3, 3), 1, 4), []


@case(ValueError, r"Conv2D\(3, 1, 4, stride=\(1, 2\)\)", r"'same' needs stride 1", r"\(1, 2\)")
def conv2d_same_padding_with_stride(c):
    return lambda: nnx.Conv2D(3, 1, 4, stride=(1, 2), padding="same"), []


@case(ValueError, r"Conv2D\(3, 1, 4", r"padding pair needs 2 ints", r"got \(1, 2, 3\)")
def conv2d_padding_triple(c):
    return lambda: nnx.Conv2D(3, 1, 4, padding=(1, 2, 3)), []


@case(ValueError, r"MaxPool2D\(", r"kernel 3x3 is larger than", r"input 2x4")
def maxpool2d_window_larger_than_input(c):
    net, X = nnx.MaxPool2D(3), c.A(ones(2, 2, 4, 1))
    return lambda: net(X), [net, X]


@case(ValueError, r"MaxPool2D\(", r"shape \(batch, height, width, \?\)", r"got shape \(2, 6, 1\)")
def maxpool2d_rank3_input(c):
    net, X = nnx.MaxPool2D(2), c.A(ones(2, 6, 1))
    return lambda: net(X), [net, X]


@case(ValueError, r"AvgPool2D\(2, 0\)", r"stride must be a positive int", r"got 0")
def avgpool2d_zero_stride(c):
    return lambda: nnx.AvgPool2D(2, 0), []


@case(ValueError, r"AvgPool2D\(", r"delta of shape \(2, 3, 3, 1\)", r"got shape \(2, 3, 2, 1\)")
def avgpool2d_delta_wrong_shape(c):
    net, X, d = nnx.AvgPool2D(2), c.A(ones(2, 6, 7, 1)), c.A(ones(2, 3, 2, 1))
    return lambda: net.backward_delta(X, d), [net, X, d]


@case(ValueError, r"Flatten\(", r"delta of shape \(2, 6\)", r"got shape \(2, 5\)")
def flatten_delta_wrong_width(c):
    net, X, d = nnx.Flatten(), c.A(ones(2, 3, 2)), c.A(ones(2, 5))
    return lambda: net.backward_delta(X, d), [net, X, d]


# -- activations ---------------------------------------------------------------------------
@case(TypeError, r"Softmax\(", r"floating-point input", r"got dtype int32")
def softmax_int_input(c):
    net, X = nnx.Softmax(), c.A(np.ones((2, 3), dtype=np.int32))
    return lambda: net(X), [net, X]


@case(ValueError, r"ReLU\(", r"shape \(\?\)", r"got shape \(\)")
def relu_0d_input(c):
    net, X = nnx.ReLU(), c.A(np.float64(1.5))
    return lambda: net(X), [net, X]


@case(ValueError, r"TanH\(", r"delta of shape \(2, 3\)", r"got shape \(3, 2\)")
def tanh_delta_wrong_shape(c):
    net, X, d = nnx.TanH(), c.A(ones(2, 3)), c.A(ones(3, 2))
    return lambda: net.backward_delta(X, d), [net, X, d]


@case(ValueError, r"Softmax\(", r"at least 1 entry on the last axis", r"got shape \(2, 0\)")
def softmax_zero_classes(c):
    net, X = nnx.Softmax(), c.A(np.zeros((2, 0)))
    return lambda: net(X), [net, X]


@case(ValueError, r"LogSoftmax\(", r"at least 1 entry on the last axis", r"got shape \(0, 0\)")
def logsoftmax_backward_zero_classes(c):
    net, X = nnx.LogSoftmax(), c.A(np.zeros((0, 0)))
    return lambda: net.backward_delta(X, X), [net, X]


@case(ValueError, r"CELogSoftmax", r"at least 1 class", r"got shape \(2, 0\)")
def ce_zero_classes(c):
    y, yhat = c.A(np.zeros((2, 0))), c.A(np.zeros((2, 0)))
    return lambda: nnx.CELogSoftmax()(y, yhat), [y, yhat]


@case(TypeError, r"LeakyReLU", r"alpha must be a real number", r"got str '0\.1'")
def leakyrelu_string_alpha(c):
    return lambda: nnx.LeakyReLU("0.1"), []


# -- losses --------------------------------------------------------------------------------
@case(ValueError, r"CELogSoftmax", r"\[0, 3\) for 3 classes", r"got values in \[0, 3\]")
def ce_label_too_large(c):
    y, yhat = c.A(np.array([0, 3, 1])), c.A(ones(3, 3))
    return lambda: nnx.CELogSoftmax()(y, yhat), [y, yhat]


@case(ValueError, r"CrossEntropyLoss", r"\[0, 4\) for 4 classes", r"got values in \[-1, 2\]")
def nll_label_negative(c):
    y, yhat = c.A(np.array([2, -1])), c.A(ones(2, 4))
    return lambda: nnx.CrossEntropyLoss().backward(y, yhat), [y, yhat]


@case(ValueError, r"CELogSoftmax", r"labels of shape \(2,\)", r"got shape \(2, 1\)")
def ce_labels_column(c):
    y, yhat = c.A(np.array([[0], [1]])), c.A(ones(2, 3))
    return lambda: nnx.CELogSoftmax()(y, yhat), [y, yhat]


@case(ValueError, r"CELogSoftmax", r"shape \(2, 3\) \(like yhat\)", r"got shape \(2, 4\)")
def ce_one_hot_wrong_class_count(c):
    y, yhat = c.A(np.eye(4)[[0, 2]]), c.A(ones(2, 3))
    return lambda: nnx.CELogSoftmax().backward(y, yhat), [y, yhat]


@case(ValueError, r"CELogSoftmax", r"labels of shape \(2,\)", r"got shape \(3,\)")
def ce_labels_wrong_batch(c):
    y, yhat = c.A(np.array([0, 1, 2])), c.A(ones(2, 3))
    return lambda: nnx.CELogSoftmax()(y, yhat), [y, yhat]


@case(TypeError, r"CELogSoftmax", r"integer class labels", r"got dtype float32")
def ce_float_labels(c):
    y, yhat = c.A(np.array([0.0, 1.0])), c.A(ones(2, 3))
    return lambda: nnx.CELogSoftmax()(y, yhat), [y, yhat]


@case(ValueError, r"CrossEntropyLoss", r"yhat of shape \(batch, K\)", r"got shape \(3,\)")
def nll_1d_yhat(c):
    y, yhat = c.A(np.array([0, 1, 2])), c.A(ones(3))
    return lambda: nnx.CrossEntropyLoss()(y, yhat), [y, yhat]


@case(ValueError, r"MSELoss", r"y of shape \(2, 4\)", r"got shape \(2, 3\)")
def mse_shape_mismatch(c):
    y, yhat = c.A(ones(2, 3)), c.A(ones(2, 4))
    return lambda: nnx.MSELoss()(y, yhat), [y, yhat]


@case(TypeError, r"BCELoss", r"yhat is a {backend} array", r"y is a {other} array")
def bce_foreign_backend_target(c):
    y, yhat = c.foreign(ones(2, 3) / 2), c.A(ones(2, 3) / 2)
    return lambda: nnx.BCELoss()(y, yhat), [y, yhat]


@case(TypeError, r"BCELoss", r"floating-point yhat", r"got dtype int64")
def bce_int_prediction(c):
    y, yhat = c.A(ones(2, 3)), c.A(np.zeros((2, 3), dtype=np.int64))
    return lambda: nnx.BCELoss()(y, yhat), [y, yhat]


@case(TypeError, r"MSELoss", r"y to be an array", r"got list")
def mse_list_target(c):
    y, yhat = [[1.0, 2.0, 3.0]], c.A(ones(1, 3))
    return lambda: nnx.MSELoss()(y, yhat), [y, yhat]


# -- containers, training set-up, backends -------------------------------------------------
@case(TypeError, r"Sequential", r"nnx Module", r"got str 'relu'")
def sequential_string_member(c):
    lin = nnx.Linear(2, 2)
    return lambda: nnx.Sequential(lin, "relu"), [lin]


@case(TypeError, r"Sequential", r"nnx Module", r"got type .*ReLU")
def sequential_class_not_instance(c):
    return lambda: nnx.Sequential(nnx.ReLU), []


@case(TypeError, r"Sequential", r"nnx Module", r"got function <function .*relu")
def sequential_add_function(c):
    def relu(x):
        return x

    net = nnx.Sequential(nnx.Linear(2, 2))
    return lambda: net.add(relu), [net]


@case(ValueError, r"Linear\(5, 2", r"shape \(batch, 5\)", r"got shape \(2, 3\)")
def sequential_widths_do_not_chain(c):
    net, X = nnx.Sequential(nnx.Linear(4, 3), nnx.ReLU(), nnx.Linear(5, 2)), c.A(ones(2, 4))
    return lambda: net(X), [net, X]


@case(TypeError, r"Optim", r"network must be a nnx Module", r"got list")
def optim_network_not_module(c):
    layers = [nnx.Linear(2, 2)]
    return lambda: nnx.Optim(layers, nnx.MSELoss()), [layers[0]]


@case(TypeError, r"Optim", r"loss must be a nnx Loss", r"got ReLU")
def optim_loss_is_module(c):
    net = nnx.Sequential(nnx.Linear(2, 2))
    return lambda: nnx.Optim(net, nnx.ReLU()), [net]


@case(ValueError, r"nnx\.set_backend", r"one of \['array_api_strict', 'cupy', 'jax'", r"'mxnet'")
def set_backend_unknown(c):
    return lambda: nnx.set_backend("mxnet"), []


@case(ValueError, r"nnx\.set_backend", r"one of \[", r"'Numpy'")
def use_backend_unknown(c):
    def call():
        with nnx.use_backend("Numpy"):
            pass

    return call, []


@case(ValueError, r"Linear\.to", r"one of \[", r"'tensorflow'")
def module_to_unknown_backend(c):
    net = nnx.Linear(2, 2)
    return lambda: net.to(backend="tensorflow"), [net]


@case(ValueError, r"Linear\.to", r"float32 or float64", r"got 'int32'")
def module_to_int_dtype(c):
    net = nnx.Linear(2, 2)
    return lambda: net.to(dtype="int32"), [net]


@case(ValueError, r"nnx\.set_default_dtype", r"\('float32', 'float64'\)", r"got 'float16'")
def set_default_dtype_float16(c):
    return lambda: nnx.set_default_dtype("float16"), []


@case(ValueError, r"nnx\.set_default_dtype", r"\('float32', 'float64'\)", r"got 'int64'")
def set_default_dtype_int(c):
    return lambda: nnx.set_default_dtype("int64"), []


@case(ValueError, r"backend 'numpy'", r"CPU only", r"device='cuda:0'")
def set_backend_numpy_on_gpu(c):
    return lambda: nnx.set_backend("numpy", device="cuda:0"), []


@case(ValueError, r"nnx\.manual_seed", r"non-negative int", r"got -1")
def manual_seed_negative(c):
    return lambda: nnx.manual_seed(-1), []


@case(TypeError, r"nnx\.asarray", r"numeric data", r"got list of dtype object")
def asarray_objects(c):
    data = [object(), 1.0]
    return lambda: nnx.asarray(data), [data]


# -- training loops, optimisers, data helpers, files --------------------------------------
def _training(c, n: int = 20, width: int = 4, classes: int = 3):
    """A small classifier, its Optim, and host data (the loops accept NumPy arrays)."""
    net = nnx.Sequential(nnx.Linear(width, classes))
    opt = nnx.Optim(net, nnx.CELogSoftmax(), eps=0.1)
    X = np.random.default_rng(0).standard_normal((n, width))
    y = np.arange(n) % classes
    return net, opt, X, y


@case(ValueError, r"Optim\.SGD\b", r"batch_size must be a positive int", r"got 0")
def sgd_batch_size_zero(c):
    net, opt, X, y = _training(c)
    return lambda: opt.SGD(X, y, 0, 2, progress=False), [net, X, y]


@case(ValueError, r"Optim\.SGD\b", r"batch_size must be a positive int", r"got -3")
def sgd_batch_size_negative(c):
    net, opt, X, y = _training(c)
    return lambda: opt.SGD(X, y, -3, 2, progress=False), [net, X, y]


@case(TypeError, r"Optim\.SGD\b", r"batch_size must be an int", r"got float 2\.5")
def sgd_batch_size_float(c):
    net, opt, X, y = _training(c)
    return lambda: opt.SGD(X, y, 2.5, 2, progress=False), [net, X, y]


@case(ValueError, r"Optim\.SGD\b", r"epochs must be a positive int", r"got -1")
def sgd_epochs_negative(c):
    net, opt, X, y = _training(c)
    return lambda: opt.SGD(X, y, 4, -1, progress=False), [net, X, y]


@case(ValueError, r"Optim\.SGD\b", r"no samples", r"shape \(0, 4\)")
def sgd_no_data(c):
    net, opt, X, y = _training(c)
    X0, y0 = c.A(X[:0]), c.A(y[:0])
    return lambda: opt.SGD(X0, y0, 4, 2, progress=False), [net, X0, y0]


@case(ValueError, r"Optim\.SGD_eval", r"both must be at least 1", r"out of 0\b")
def sgd_eval_no_data(c):
    net, opt, X, y = _training(c)
    return lambda: opt.SGD_eval(X[:0], y[:0], 4, 2, 0.2, progress=False), [net, X, y]


@case(ValueError, r"Optim\.SGD\b", r"same number of samples", r"X \(20, 4\) and y \(10,\)")
def sgd_x_y_length_mismatch(c):
    net, opt, X, y = _training(c)
    return lambda: opt.SGD(X, y[:10], 4, 2, progress=False), [net, X, y]


@case(ValueError, r"Optim\.SGD\b", r"non-finite", r"sample 7 of 20")
def sgd_non_finite_data(c):
    net, opt, X, y = _training(c)
    X[7, 1] = np.inf
    return lambda: opt.SGD(X, y, 4, 2, progress=False), [net, X, y]


@case(ValueError, r"CELogSoftmax", r"\[0, 3\) for 3 classes", r"got values in \[1, 3\]")
def sgd_labels_out_of_range(c):
    net, opt, X, y = _training(c)
    y = y + 1
    return lambda: opt.SGD(X, y, 4, 2, progress=False), [net, X, y]


@case(ValueError, r"CELogSoftmax", r"shape \(4, 3\) \(like yhat\)", r"got shape \(4, 5\)")
def sgd_one_hot_wrong_class_count(c):
    net, opt, X, y = _training(c)
    Y = np.eye(5)[y]
    return lambda: opt.SGD(X, Y, 4, 2, shuffle=False, progress=False), [net, X, Y]


@case(ValueError, r"Optim\.SGD_eval", r"float test_size must lie in \(0, 1\)", r"got 0\.0")
def sgd_eval_test_size_zero(c):
    net, opt, X, y = _training(c)
    return lambda: opt.SGD_eval(X, y, 4, 2, 0.0, progress=False), [net, X, y]


@case(ValueError, r"Optim\.SGD_eval", r"float test_size must lie in \(0, 1\)", r"got 1\.0")
def sgd_eval_test_size_one(c):
    net, opt, X, y = _training(c)
    return lambda: opt.SGD_eval(X, y, 4, 2, 1.0, progress=False), [net, X, y]


@case(ValueError, r"Optim\.SGD_eval", r"float test_size must lie in \(0, 1\)", r"got 1\.5")
def sgd_eval_test_size_above_one(c):
    net, opt, X, y = _training(c)
    return lambda: opt.SGD_eval(X, y, 4, 2, 1.5, progress=False), [net, X, y]


@case(ValueError, r"Optim\.SGD_eval", r"float test_size must lie in \(0, 1\)", r"got -0\.2")
def sgd_eval_test_size_negative(c):
    net, opt, X, y = _training(c)
    return lambda: opt.SGD_eval(X, y, 4, 2, -0.2, progress=False), [net, X, y]


@case(TypeError, r"Optim\.SGD_eval", r"test_size must be a float or an int", r"got '0\.2'")
def sgd_eval_test_size_string(c):
    net, opt, X, y = _training(c)
    return lambda: opt.SGD_eval(X, y, 4, 2, "0.2", progress=False), [net, X, y]


@case(ValueError, r"Optim\.SGD_eval", r"patience must be a positive int", r"got -1")
def sgd_eval_patience_negative(c):
    net, opt, X, y = _training(c)
    return lambda: opt.SGD_eval(X, y, 4, 2, 0.2, patience=-1, progress=False), [net, X, y]


@case(ValueError, r"Optim\b", r"eps must be a non-negative number", r"got -0\.1")
def optim_negative_eps(c):
    net = nnx.Sequential(nnx.Linear(4, 3))
    return lambda: nnx.Optim(net, nnx.MSELoss(), eps=-0.1), [net]


@case(TypeError, r"Optim\b", r"eps must be a non-negative number", r"got str '0\.1'")
def optim_string_eps(c):
    net = nnx.Sequential(nnx.Linear(4, 3))
    return lambda: nnx.Optim(net, nnx.MSELoss(), eps="0.1"), [net]


@case(TypeError, r"Optim\b", r"optimizer must have a step\(network\) method", r"got str")
def optim_optimizer_is_a_string(c):
    net = nnx.Sequential(nnx.Linear(4, 3))
    return lambda: nnx.Optim(net, nnx.MSELoss(), optimizer="adam"), [net]


@case(ValueError, r"\bSGD\b", r"lr must be >= 0", r"got -1")
def optimizer_negative_lr(c):
    return lambda: nnx.optimizers.SGD(-1), []


@case(ValueError, r"Momentum", r"momentum must be .*\[0\.0, 1\.0\)", r"got 1\.5")
def momentum_out_of_range(c):
    return lambda: nnx.optimizers.Momentum(0.1, momentum=1.5), []


@case(ValueError, r"nnx\.optimizers\.get", r"one of \['adam'", r"'rmsprop'")
def optimizers_get_unknown(c):
    return lambda: nnx.optimizers.get("rmsprop"), []


@case(ValueError, r"nnx\.datasets\.one_hot", r"\[0, 3\)", r"got values in \[0, 5\]")
def one_hot_label_out_of_range(c):
    labels = np.array([0, 5, 1])
    return lambda: nnx.datasets.one_hot(labels, 3), [labels]


@case(TypeError, r"nnx\.save", r"nnx Module", r"got dict")
def save_a_state_dict(c):
    state = nnx.Linear(2, 2).state_dict()
    return lambda: nnx.save(state, "never-written.npz"), [state]


# -- the table test ------------------------------------------------------------------------
def _snapshot(obj: Any) -> Any:
    """A deep, backend-independent copy of what ``obj`` holds, to compare afterwards."""
    if isinstance(obj, nnx.Module):
        return (
            {k: backends.to_numpy(v).copy() for k, v in obj.named_parameters()},
            {k: backends.to_numpy(v).copy() for k, v in obj.named_gradients()},
        )
    if isinstance(obj, dict):
        return {k: _snapshot(v) for k, v in obj.items()}
    if backends.backend_of(obj) is not None:
        return (
            backends.backend_of(obj).name,
            backends.dtype_name(obj),
            backends.to_numpy(obj).copy(),
        )
    return copy.deepcopy(obj)


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, np.ndarray):
        return (
            isinstance(b, np.ndarray)
            and a.dtype == b.dtype
            and a.shape == b.shape
            and np.array_equal(a, b, equal_nan=a.dtype.kind == "f")
        )
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (tuple, list)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if type(a) is object:
        return True  # an opaque object: identity is checked through the container
    return a == b


def test_table_is_large_enough():
    assert len(CASES) >= 30
    assert len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("row", CASES, ids=[c.id for c in CASES])
def test_bad_input(backend, row: Case):
    ctx = Ctx(backend)
    call, watched = row.build(ctx)
    before = [_snapshot(w) for w in watched]
    state = (nnx.get_backend(), nnx.get_default_dtype())

    with pytest.raises((ValueError, TypeError)) as info:
        call()

    err = info.value
    assert type(err) is row.exc, f"expected exactly {row.exc.__name__}, got {type(err)!r}: {err}"
    message = str(err)
    for what in ("owner", "expected", "received"):
        pattern = getattr(row, what).format(backend=backend, other=ctx.other)
        assert re.search(pattern, message), f"{what} {pattern!r} not in message {message!r}"
    assert (nnx.get_backend(), nnx.get_default_dtype()) == state
    after = [_snapshot(w) for w in watched]
    for i, (b, a) in enumerate(zip(before, after, strict=True)):
        assert _same(b, a), f"argument {i} of {row.id} was modified"


# -- random shapes: accepted exactly when valid, refused by nnx otherwise --------------------
def _windowed(s: tuple[int, ...], k: int, st: int, chan: int | None, out_chan: int | None):
    if len(s) != 3 or s[1] < k or (chan is not None and s[2] != chan):
        return None
    return (s[0], (s[1] - k) // st + 1, s[2] if out_chan is None else out_chan)


def _windowed_2d(s: tuple[int, ...], k: tuple, st: tuple, chan: int | None, out_chan: int | None):
    if len(s) != 4 or s[1] < k[0] or s[2] < k[1] or (chan is not None and s[3] != chan):
        return None
    out = (s[1] - k[0]) // st[0] + 1, (s[2] - k[1]) // st[1] + 1
    return (s[0], *out, s[3] if out_chan is None else out_chan)


SHAPE_RULES = {
    # name: (module factory, owner regex, expected output shape or None when invalid)
    "Linear": (
        lambda: nnx.Linear(4, 3),
        r"Linear\(4, 3",
        lambda s: (s[0], 3) if len(s) == 2 and s[1] == 4 else None,
    ),
    "Conv1D": (
        lambda: nnx.Conv1D(3, 2, 5, stride=2),
        r"Conv1D\(3, 2, 5",
        lambda s: _windowed(s, 3, 2, 2, 5),
    ),
    "MaxPool1D": (
        lambda: nnx.MaxPool1D(3, 2),
        r"MaxPool1D\(",
        lambda s: _windowed(s, 3, 2, None, None),
    ),
    "AvgPool1D": (
        lambda: nnx.AvgPool1D(2, 3),
        r"AvgPool1D\(",
        lambda s: _windowed(s, 2, 3, None, None),
    ),
    "Flatten": (
        nnx.Flatten,
        r"Flatten\(",
        lambda s: (s[0], int(np.prod(s[1:]))) if len(s) >= 2 else None,
    ),
    "Conv2D": (
        lambda: nnx.Conv2D((2, 3), 2, 5, stride=(1, 2)),
        r"Conv2D\(",
        lambda s: _windowed_2d(s, (2, 3), (1, 2), 2, 5),
    ),
    "MaxPool2D": (
        lambda: nnx.MaxPool2D(2),
        r"MaxPool2D\(",
        lambda s: _windowed_2d(s, (2, 2), (2, 2), None, None),
    ),
    "Softmax": (nnx.Softmax, r"Softmax\(", lambda s: s if len(s) >= 1 and s[-1] >= 1 else None),
    "ReLU": (nnx.ReLU, r"ReLU\(", lambda s: s if len(s) >= 1 else None),
}
SHAPES = st.lists(st.integers(0, 6), min_size=0, max_size=4).map(tuple)
SHAPE_EXAMPLES = 100


@pytest.mark.parametrize("name", list(SHAPE_RULES))
@settings(
    max_examples=SHAPE_EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(shape=SHAPES, delta_shape=SHAPES)
def test_random_shapes(backend, name, shape, delta_shape):
    """Any input shape: the formula's output when valid, else a ValueError from nnx
    naming the module and the received shape; the same for ``delta`` in backward."""
    make, owner, rule = SHAPE_RULES[name]
    module = make()
    X = nnx.asarray(np.ones(shape))
    expected = rule(shape)
    if expected is None:
        with pytest.raises(ValueError) as info:
            module(X)
        message = str(info.value)
        assert re.search(owner, message) and str(shape) in message, message
        return
    assert tuple(module(X).shape) == expected
    delta = nnx.asarray(np.ones(delta_shape))
    if delta_shape == expected:
        assert tuple(module.backward_delta(X, delta).shape) == shape
        return
    for method in (module.backward_delta, module.backward_update_gradient):
        if method == module.backward_update_gradient and not module._parameters:
            continue  # a no-op for modules without parameters
        with pytest.raises(ValueError) as info:
            method(X, delta)
        message = str(info.value)
        assert re.search(owner, message) and str(delta_shape) in message, message


# -- empty batches: valid for layers and losses ----------------------------------------------
EMPTY_BATCH_MODULES = [
    ("Linear", lambda: nnx.Linear(4, 3), (0, 4), (0, 3)),
    ("Conv1D", lambda: nnx.Conv1D(3, 2, 5, stride=2, bias=True), (0, 9, 2), (0, 4, 5)),
    ("MaxPool1D", lambda: nnx.MaxPool1D(2, 1), (0, 5, 2), (0, 4, 2)),
    ("AvgPool1D", lambda: nnx.AvgPool1D(3, 2), (0, 7, 2), (0, 3, 2)),
    ("Flatten", lambda: nnx.Flatten(), (0, 5, 2), (0, 10)),
    ("Flatten4D", lambda: nnx.Flatten(), (0, 3, 5, 2), (0, 30)),
    ("Conv1Dpadded", lambda: nnx.Conv1D(3, 2, 5, padding=1, bias=True), (0, 4, 2), (0, 4, 5)),
    ("Conv2D", lambda: nnx.Conv2D(3, 2, 5, stride=2, padding=1), (0, 6, 5, 2), (0, 3, 3, 5)),
    ("MaxPool2D", lambda: nnx.MaxPool2D(2), (0, 5, 4, 2), (0, 2, 2, 2)),
    ("AvgPool2D", lambda: nnx.AvgPool2D(3, 1), (0, 5, 4, 2), (0, 3, 2, 2)),
    ("Softmax", lambda: nnx.Softmax(), (0, 3), (0, 3)),
    ("LogSoftmax", lambda: nnx.LogSoftmax(), (0, 3), (0, 3)),
    ("ReLU", lambda: nnx.ReLU(), (0, 3), (0, 3)),
]


@pytest.mark.parametrize(
    "make, in_shape, out_shape",
    [m[1:] for m in EMPTY_BATCH_MODULES],
    ids=[m[0] for m in EMPTY_BATCH_MODULES],
)
def test_empty_batch_is_valid(backend, make, in_shape, out_shape):
    """Like PyTorch: a batch of 0 samples gives an empty output and zero gradients."""
    module = make()
    X = nnx.asarray(np.zeros(in_shape))
    out = module(X)
    assert tuple(out.shape) == out_shape
    assert backends.backend_of(out).name == backend
    delta = nnx.asarray(np.zeros(out_shape))
    module.backward_update_gradient(X, delta)
    dX = module.backward_delta(X, delta)
    assert tuple(dX.shape) == in_shape
    for name, g in module.named_gradients():
        assert not np.any(backends.to_numpy(g)), name


@pytest.mark.parametrize(
    "loss",
    [nnx.MSELoss(), nnx.BCELoss(), nnx.NLLLoss(), nnx.CrossEntropyLoss(), nnx.CELogSoftmax()],
    ids=repr,
)
def test_empty_batch_losses(backend, loss):
    yhat = nnx.asarray(np.full((0, 3), 0.5))
    for y in (nnx.asarray(np.zeros((0, 3))), nnx.asarray(np.zeros(0, dtype=np.int64))):
        if isinstance(loss, (nnx.MSELoss, nnx.BCELoss)) and len(y.shape) == 1:
            continue
        assert tuple(loss.forward(y, yhat).shape) == (0,)
        assert tuple(loss.backward(y, yhat).shape) == (0, 3)


@pytest.mark.parametrize(
    "make, shape",
    [
        (lambda: nnx.MaxPool1D(1, 1), (2, 5, 3)),
        (lambda: nnx.MaxPool1D(1, 2), (2, 5, 3)),
        (lambda: nnx.AvgPool1D(1, 1), (2, 5, 3)),
        (lambda: nnx.MaxPool2D(1), (2, 3, 3, 2)),
        (lambda: nnx.AvgPool2D(1), (2, 3, 3, 2)),
    ],
    ids=["MaxPool1D-1", "MaxPool1D-1-stride2", "AvgPool1D-1", "MaxPool2D-1", "AvgPool2D-1"],
)
def test_pool_outputs_are_not_the_callers_input(backend, make, shape):
    """A one-element window picks values out of the input; the output is still a new
    array, as PyTorch's pools give: writing into it leaves the input alone."""
    X = nnx.asarray(np.arange(np.prod(shape), dtype=np.float64).reshape(shape))
    before = nnx.to_numpy(X).copy()
    out = make()(X)
    if not backends.is_mutable(out):
        pytest.skip("this library's arrays cannot be written in place")
    out[...] = -1.0
    np.testing.assert_array_equal(nnx.to_numpy(X), before)
