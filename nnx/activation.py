r"""Activation functions.

All are element-wise except :class:`Softmax` and :class:`LogSoftmax`, which act on the
last axis. None has parameters, so ``backward_update_gradient`` is a no-op; their
``backward_delta`` is the exact vector-Jacobian product
:math:`\delta^{h-1} = J^\top \delta^h`.
"""

from __future__ import annotations

import numbers
from typing import Any

from .backends import backend_of, fused
from .module import Array, Module, is_floating, namespace


class Activation(Module):
    """Base of the activations: shape-preserving, no parameters.

    Subclasses implement ``_forward(xp, X)`` and ``_backward(xp, X, out, delta)``, where
    ``out`` is the forward output (remembered from the last ``forward`` on the same
    ``X``, or recomputed).

    As in PyTorch, do not modify a module's output in place between its ``forward``
    and ``backward_delta``: Sigmoid, TanH, Softmax and LogSoftmax reuse that output.
    """

    def forward(self, X: Array) -> Array:
        # any shape of at least one axis: checked inline, the message only on failure
        if not (backend_of(X) is not None and len(X.shape) and is_floating(X)):
            self._check_input(X, (None,) * _ndim(X), "input")
        out = self._forward(namespace(X), X)
        self._cache_key, self._cache = X, out
        return out

    def backward_delta(self, input: Array, delta: Array) -> Array:
        cached = self._cache_key is input  # then forward already checked it
        if not cached:
            self._check_input(input, (None,) * _ndim(input), "input")
        if not (
            type(delta) is type(input) and delta.dtype == input.dtype and delta.shape == input.shape
        ):
            delta = self._check_input(delta, tuple(input.shape), "delta", like=input)
        xp = namespace(input)
        out = self._cache if cached else self._forward(xp, input)
        return self._backward(xp, input, out, delta)

    def backward_update_gradient(self, input: Array, delta: Array) -> None:
        """No parameters: nothing to accumulate."""

    def _forward(self, xp: Any, X: Array) -> Array:  # pragma: no cover - abstract
        raise NotImplementedError

    def _backward(self, xp: Any, X: Array, out: Array, delta: Array) -> Array:  # pragma: no cover
        raise NotImplementedError


def _ndim(X: Any) -> int:
    shape = getattr(X, "shape", None)
    return max(len(shape), 1) if shape is not None else 1


class ReLU(Activation):
    r"""Rectified linear unit.

    .. math::
        \text{forward:}\quad z = \max(0, x) \qquad
        \text{backward\_delta:}\quad \frac{\partial L}{\partial x} =
        \delta \odot \mathbb{1}[x > 0]

    Shape: any ``(batch, ...)``, output the same. The derivative at 0 is taken as 0,
    as in PyTorch.

    >>> import nnx, numpy as np
    >>> nnx.ReLU()(nnx.asarray([[-1.0, 2.0]]))
    array([[0., 2.]], dtype=float32)
    """

    def _forward(self, xp: Any, X: Array) -> Array:
        return xp.maximum(X, 0.0)

    def _backward(self, xp: Any, X: Array, out: Array, delta: Array) -> Array:
        return fused.relu_backward(X, delta, xp)  # delta * 1[X > 0]


class LeakyReLU(Activation):
    r"""Leaky ReLU with slope :math:`\alpha` for negative inputs.

    .. math::
        z = \begin{cases} x & x \ge 0 \\ \alpha x & x < 0 \end{cases} \qquad
        \frac{\partial L}{\partial x} = \begin{cases} \delta & x > 0 \\
        \alpha\,\delta & x \le 0 \end{cases}

    Parameters
    ----------
    alpha : float, default 0.01
        Slope for :math:`x < 0`.

    Shape: any ``(batch, ...)``; the output has the input's shape.

    Examples
    --------
    >>> import nnx
    >>> nnx.LeakyReLU(0.1)(nnx.asarray([[-1.0, 2.0]]))
    array([[-0.1,  2. ]], dtype=float32)
    """

    def __init__(self, alpha: float = 0.01) -> None:
        super().__init__()
        if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real):
            raise TypeError(
                f"LeakyReLU: alpha must be a real number, got {type(alpha).__name__} {alpha!r}"
            )
        self.alpha = float(alpha)

    def get_config(self) -> dict[str, Any]:
        return {"alpha": self.alpha}

    def _forward(self, xp: Any, X: Array) -> Array:
        return xp.where(X >= 0, X, self.alpha * X)

    def _backward(self, xp: Any, X: Array, out: Array, delta: Array) -> Array:
        return xp.where(X > 0, delta, self.alpha * delta)


class Sigmoid(Activation):
    r"""Logistic sigmoid, direct formula.

    .. math::
        z = \sigma(x) = \frac{1}{1 + e^{-x}} \qquad
        \frac{\partial L}{\partial x} = \delta \odot z \odot (1 - z)

    For very negative ``x``, :math:`e^{-x}` overflows to ``inf`` and ``z`` correctly
    becomes 0; :class:`StableSigmoid` avoids the overflow altogether.

    Shape: any ``(batch, ...)``; the output has the input's shape.

    >>> import nnx
    >>> nnx.Sigmoid()(nnx.asarray([[0.0]]))
    array([[0.5]], dtype=float32)
    """

    def _forward(self, xp: Any, X: Array) -> Array:
        return 1.0 / (1.0 + xp.exp(-X))

    def _backward(self, xp: Any, X: Array, out: Array, delta: Array) -> Array:
        return delta * out * (1.0 - out)


def stable_sigmoid(xp: Any, X: Array) -> Array:
    """:math:`\\sigma(x)` without overflow: uses :math:`e^{-|x|} \\in (0, 1]`."""
    e = xp.exp(-xp.abs(X))
    return xp.where(X >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


#: The name an earlier version of the original library gave :class:`Sigmoid` (its
#: ``scripts/usps.py`` imports it): the same class.
Sigmoide = Sigmoid


class StableSigmoid(Sigmoid):
    r"""Numerically stable sigmoid.

    With :math:`e = \exp(-|x|) \in (0, 1]` (never overflows):

    .. math::
        z = \begin{cases} \dfrac{1}{1 + e} & x \ge 0 \\[4pt] \dfrac{e}{1 + e} & x < 0
        \end{cases} \qquad \frac{\partial L}{\partial x} = \delta \odot z \odot (1 - z)

    Finite for float32 inputs of magnitude :math:`10^4`.

    Shape: any ``(batch, ...)``; the output has the input's shape.

    >>> import nnx
    >>> nnx.StableSigmoid()(nnx.asarray([[-1e4, 0.0, 1e4]]))
    array([[0. , 0.5, 1. ]], dtype=float32)
    """

    def _forward(self, xp: Any, X: Array) -> Array:
        return stable_sigmoid(xp, X)


class TanH(Activation):
    r"""Hyperbolic tangent.

    .. math::
        z = \tanh(x) = \frac{e^{2x} - 1}{e^{2x} + 1} \qquad
        \frac{\partial L}{\partial x} = \delta \odot (1 - z^2)

    Shape: any ``(batch, ...)``; the output has the input's shape.

    >>> import nnx
    >>> nnx.TanH()(nnx.asarray([[0.0]]))
    array([[0.]], dtype=float32)
    """

    def _forward(self, xp: Any, X: Array) -> Array:
        return xp.tanh(X)

    def _backward(self, xp: Any, X: Array, out: Array, delta: Array) -> Array:
        return fused.tanh_backward(out, delta)  # delta * (1 - out**2)


class Softplus(Activation):
    r"""Softplus, a smooth ReLU.

    Computed as :math:`\max(x, 0) + \log(1 + e^{-|x|})`, exact and overflow-free:

    .. math::
        z = \log(1 + e^{x}) \qquad \frac{\partial L}{\partial x} = \delta \odot \sigma(x)

    Shape: any ``(batch, ...)``; the output has the input's shape.

    >>> import nnx
    >>> nnx.Softplus()(nnx.asarray([[0.0, 1e4]]))
    array([[6.931472e-01, 1.000000e+04]], dtype=float32)
    """

    def _forward(self, xp: Any, X: Array) -> Array:
        return xp.maximum(X, 0.0) + xp.log1p(xp.exp(-xp.abs(X)))

    def _backward(self, xp: Any, X: Array, out: Array, delta: Array) -> Array:
        return delta * stable_sigmoid(xp, X)


class Softmax(Activation):
    r"""Softmax over the last axis.

    .. math::
        z_i = \frac{e^{x_i - m}}{\sum_j e^{x_j - m}},\ m = \max_j x_j \qquad
        \frac{\partial z_i}{\partial x_j} = z_i(\mathbb{1}[i=j] - z_j)

    so the vector-Jacobian product is

    .. math::
        \frac{\partial L}{\partial x} = z \odot \Big(\delta - \sum_j \delta_j z_j\Big).

    Shape: ``(batch, K)`` (or any ``(..., K)``), output the same.

    >>> import nnx
    >>> nnx.Softmax()(nnx.asarray([[1.0, 1.0]]))
    array([[0.5, 0.5]], dtype=float32)
    """

    def _forward(self, xp: Any, X: Array) -> Array:
        _check_classes(self, X)
        e = xp.exp(X - xp.max(X, axis=-1, keepdims=True))
        return e / xp.sum(e, axis=-1, keepdims=True)

    def _backward(self, xp: Any, X: Array, out: Array, delta: Array) -> Array:
        return out * (delta - xp.sum(delta * out, axis=-1, keepdims=True))


def _check_classes(module: Module, X: Array) -> None:
    """Softmax over an empty last axis is meaningless: say so (not a backend error)."""
    if X.shape[-1] == 0:
        raise ValueError(
            f"{module.name}: expected at least 1 entry on the last axis (the classes), "
            f"got shape {tuple(X.shape)}"
        )


def log_softmax(xp: Any, X: Array) -> Array:
    """:math:`x - m - \\log\\sum_j e^{x_j - m}` over the last axis."""
    shifted = X - xp.max(X, axis=-1, keepdims=True)
    return shifted - xp.log(xp.sum(xp.exp(shifted), axis=-1, keepdims=True))


class LogSoftmax(Activation):
    r"""Log of the softmax over the last axis, computed stably.

    .. math::
        z_i = x_i - m - \log \sum_j e^{x_j - m},\ m = \max_j x_j \qquad
        \frac{\partial L}{\partial x} = \delta - e^{z} \sum_j \delta_j

    (since :math:`\partial z_i / \partial x_j = \mathbb{1}[i=j] - \text{softmax}(x)_j`).
    Use with :class:`~nnx.NLLLoss` (or :class:`~nnx.CrossEntropyLoss`, which takes raw
    scores and gives the same result after a LogSoftmax).

    Shape: ``(batch, K)`` (or any ``(..., K)``); the output has the input's shape.

    >>> import nnx
    >>> nnx.LogSoftmax()(nnx.asarray([[0.0, 0.0]]))
    array([[-0.6931472, -0.6931472]], dtype=float32)
    """

    def _forward(self, xp: Any, X: Array) -> Array:
        _check_classes(self, X)
        return log_softmax(xp, X)

    def _backward(self, xp: Any, X: Array, out: Array, delta: Array) -> Array:
        return delta - xp.exp(out) * xp.sum(delta, axis=-1, keepdims=True)
