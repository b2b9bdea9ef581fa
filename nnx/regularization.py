r"""Regularisation layers whose behaviour depends on the mode: :class:`Dropout` and
:class:`BatchNorm`.

Both act differently in training mode (``module.training``, the default) and in
evaluation mode (:meth:`nnx.Module.eval`); :class:`~nnx.Optim`'s loops switch the mode
themselves (train while training, eval while evaluating, scoring and predicting).
"""

from __future__ import annotations

import math
import numbers
from typing import Any

from . import backends, init
from .module import Array, Module, check_positive_int, namespace

__all__ = ["BatchNorm", "Dropout"]


class Dropout(Module):
    r"""Inverted dropout: zero each input with probability :math:`p` while training and
    scale the survivors by :math:`1/(1-p)`, so that evaluation needs no rescaling.

    .. math::
        \text{forward (training):}\quad Z = X \odot M, \qquad
        M_i = \frac{\mathbb{1}[U_i \ge p]}{1 - p},\ U_i \sim \mathcal{U}[0, 1)
        \qquad \text{(evaluation:}\ Z = X)

    (:math:`p = 1`: :math:`M = 0`, every element dropped, as in PyTorch.)

    .. math::
        \text{backward\_delta:}\quad \frac{\partial L}{\partial X} = \delta \odot M
        \qquad \text{(evaluation: } \delta)

    with :math:`M` the mask drawn by the last ``forward`` (a new one per call). The
    uniform draws come from nnx's random source (:func:`nnx.manual_seed` makes them
    reproducible), made on the input's device (PyTorch and CuPy draw with their own
    generators, seeded from nnx's). No parameters.

    Parameters
    ----------
    p : float, default 0.5
        Probability of dropping an element, in :math:`[0, 1]`.

    Shapes
    ------
    any ``(batch, ...)`` -> the same shape.

    Examples
    --------
    >>> import nnx, numpy as np
    >>> nnx.manual_seed(0)
    >>> drop = nnx.Dropout(0.5)
    >>> out = nnx.to_numpy(drop(nnx.asarray(np.ones((2, 4)))))
    >>> sorted(set(out.ravel().tolist()))
    [0.0, 2.0]
    >>> nnx.to_numpy(drop.eval()(nnx.asarray(np.ones((1, 3)))))
    array([[1., 1., 1.]], dtype=float32)
    """

    def __init__(self, p: float = 0.5) -> None:
        super().__init__()
        if isinstance(p, bool) or not isinstance(p, numbers.Real):
            raise TypeError(f"Dropout: p must be a float in [0, 1), got {type(p).__name__} {p!r}")
        if not 0.0 <= float(p) <= 1.0:
            raise ValueError(f"Dropout: p must lie in [0, 1], got {p!r}")
        self.p = float(p)
        self._mask: Array = None

    def get_config(self) -> dict[str, Any]:
        return {"p": self.p}

    def forward(self, X: Array) -> Array:
        self._check_any(X)
        if not self.training or self.p == 0.0:
            self._mask = None
            return X
        xp = namespace(X)
        keep = backends.uniform(tuple(X.shape), X) >= self.p
        scale = 1.0 / (1.0 - self.p) if self.p < 1.0 else 0.0  # p = 1: nothing kept
        self._mask = xp.astype(keep, X.dtype) * scale
        return X * self._mask

    def backward_delta(self, input: Array, delta: Array) -> Array:
        self._check_any(input)
        delta = self._check_input(delta, tuple(input.shape), "delta", like=input)
        if not self.training or self.p == 0.0:
            return delta
        mask = self._mask
        if mask is None or tuple(mask.shape) != tuple(input.shape):
            raise ValueError(
                f"{self.name}.backward_delta: no dropout mask for an input of shape "
                f"{tuple(input.shape)} (the last forward in training mode saw "
                f"{None if mask is None else tuple(mask.shape)}); call forward first"
            )
        return delta * mask

    def _check_any(self, X: Array) -> None:
        rank = len(getattr(X, "shape", ()))
        self._check_input(X, ("batch",) + ("?",) * max(rank - 1, 0))


class BatchNorm(Module):
    r"""Batch normalisation over every axis but the last (the features or channels).

    The same class serves ``(batch, features)`` (PyTorch's ``BatchNorm1d`` on 2-D
    input), ``(batch, length, chan)`` (``BatchNorm1d`` on channels-first 3-D input) and
    ``(batch, height, width, chan)`` (``BatchNorm2d``). With :math:`n` the number of
    values per feature (all axes but the last) and sums over them:

    .. math::
        \text{forward (training):}\quad \mu = \frac{1}{n} \sum X, \quad
        \sigma^2 = \frac{1}{n} \sum (X - \mu)^2, \quad
        \hat X = \frac{X - \mu}{\sqrt{\sigma^2 + \epsilon}}, \quad
        Z = \gamma \odot \hat X + \beta

    and the running statistics, as PyTorch keeps them (unbiased variance):

    .. math::
        \bar\mu \leftarrow (1 - m)\, \bar\mu + m\, \mu, \qquad
        \bar\sigma^2 \leftarrow (1 - m)\, \bar\sigma^2 + m\, \frac{n}{n - 1} \sigma^2

    In evaluation mode :math:`\hat X = (X - \bar\mu) / \sqrt{\bar\sigma^2 + \epsilon}`
    and nothing is updated.

    .. math::
        \text{backward\_update\_gradient:}\quad
        \nabla_\gamma L \mathrel{+}= \sum \delta \odot \hat X, \qquad
        \nabla_\beta L \mathrel{+}= \sum \delta

    .. math::
        \text{backward\_delta (training):}\quad \frac{\partial L}{\partial X} =
        \frac{\gamma}{\sqrt{\sigma^2 + \epsilon}} \Big( \delta - \frac{1}{n} \sum \delta
        - \hat X \odot \frac{1}{n} \sum \delta \odot \hat X \Big)

    (evaluation: :math:`\partial L / \partial X = \gamma\, \delta / \sqrt{\bar\sigma^2 +
    \epsilon}`: the statistics are constants).

    Parameters
    ----------
    num_features : int
        Size of the last axis.
    eps : float, default 1e-5
        :math:`\epsilon`, added to the variance.
    momentum : float, default 0.1
        :math:`m` of the running statistics, in :math:`[0, 1]`.
    affine : bool, default True
        Learn :math:`\gamma` (``weight``, ones) and :math:`\beta` (``bias``, zeros), both
        ``(num_features,)``; without, :math:`Z = \hat X`.

    Shapes
    ------
    ``(batch, ..., num_features)`` -> the same shape. Buffers ``running_mean`` (zeros)
    and ``running_var`` (ones), ``(num_features,)``: saved by
    :meth:`~nnx.Module.state_dict` and :func:`nnx.save`, never changed by an optimiser.

    Examples
    --------
    >>> import nnx, numpy as np
    >>> bn = nnx.BatchNorm(2)
    >>> out = bn(nnx.asarray([[1.0, 10.0], [3.0, 30.0]]))
    >>> np.round(nnx.to_numpy(out), 3)
    array([[-1., -1.],
           [ 1.,  1.]], dtype=float32)
    >>> nnx.to_numpy(bn._buffers["running_mean"])
    array([0.2, 2. ], dtype=float32)
    """

    _fresh_gradients = True  # every gradient write goes through accumulate_gradient

    def __init__(
        self, num_features: int, eps: float = 1e-5, momentum: float = 0.1, affine: bool = True
    ) -> None:
        super().__init__()
        owner = f"BatchNorm({num_features!r})"
        check_positive_int(owner, "num_features", num_features)
        for arg, value in (("eps", eps), ("momentum", momentum)):
            if isinstance(value, bool) or not isinstance(value, numbers.Real):
                raise TypeError(f"{owner}: {arg} must be a float, got {type(value).__name__}")
        if not (eps > 0 and math.isfinite(eps)):
            raise ValueError(f"{owner}: eps must be a positive float, got {eps!r}")
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"{owner}: momentum must lie in [0, 1], got {momentum!r}")
        self.num_features, self.eps = int(num_features), float(eps)
        self.momentum, self.affine = float(momentum), bool(affine)
        shape, n = (self.num_features,), self.num_features
        if self.affine:
            self._register("weight", init.parameter(shape, "ones", n, n))
            self._register("bias", init.parameter(shape, "zeros", n, n))
        self._register_buffer("running_mean", init.parameter(shape, "zeros", n, n))
        self._register_buffer("running_var", init.parameter(shape, "ones", n, n))

    @staticmethod
    def parameter_shapes(
        num_features: int, affine: bool = True, **_: Any
    ) -> dict[str, tuple[int, ...]]:
        """Shapes of the parameters and buffers for these arguments (nothing allocated)."""
        n = int(num_features)
        shapes = {"running_mean": (n,), "running_var": (n,)}
        if affine:
            shapes.update(weight=(n,), bias=(n,))
        return shapes

    def get_config(self) -> dict[str, Any]:
        return {
            "num_features": self.num_features,
            "eps": self.eps,
            "momentum": self.momentum,
            "affine": self.affine,
        }

    def extra_repr(self) -> str:
        return (
            f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, affine={self.affine}"
        )

    @property
    def row_independent(self) -> bool:
        return not self.training  # the batch statistics tie the samples together

    def _check_x(self, X: Array) -> Array:
        """``X`` checked, in the parameters' dtype (another float dtype is cast)."""
        rank = len(getattr(X, "shape", ()))
        shape = ("batch",) + ("?",) * max(rank - 2, 0) + (self.num_features,)
        return self._check_input(X, shape, like=self._buffers["running_mean"])

    def _normalize(self, X: Array, training: bool) -> tuple[Array, Array, Array, Array]:
        """``(X_hat, 1/sqrt(var + eps), batch mean, batch variance)``: no side effect.

        In evaluation mode the statistics are the running ones."""
        xp = namespace(X)
        axes = tuple(range(len(X.shape) - 1))
        if training:
            n = _count(X)
            if n <= 1:
                raise ValueError(
                    f"{self.name}: training mode needs more than 1 value per feature to "
                    f"compute a variance, got input of shape {tuple(X.shape)}; use eval() "
                    f"or a larger batch"
                )
            mean = xp.mean(X, axis=axes)
            centred = X - mean
            var = xp.mean(centred * centred, axis=axes)
        else:
            mean, var = self._buffers["running_mean"], self._buffers["running_var"]
            centred = X - mean
        inv_std = 1.0 / xp.sqrt(var + self.eps)
        return centred * inv_std, inv_std, mean, var

    def forward(self, X: Array) -> Array:
        given, X = X, self._check_x(X)
        x_hat, inv_std, mean, var = self._normalize(X, self.training)
        if self.training:
            n, m = _count(X), self.momentum
            running = self._buffers
            self._update_buffer("running_mean", (1.0 - m) * running["running_mean"] + m * mean)
            self._update_buffer(
                "running_var", (1.0 - m) * running["running_var"] + (m * n / (n - 1)) * var
            )
        self._cache_key, self._cache = given, (self.training, x_hat, inv_std)
        if not self.affine:
            return x_hat
        return x_hat * self._parameters["weight"] + self._parameters["bias"]

    def _cached(self, input: Array, delta: Array) -> tuple[Array, Array, Array]:
        """``(X_hat, 1/sqrt(var + eps), delta)`` of ``input`` in the current mode (the
        last forward's when it saw this input in this mode, else recomputed), with
        ``delta`` checked and in the parameters' dtype."""
        if input is self._cache_key and self._cache[0] is self.training:
            x_hat, inv_std = self._cache[1:]
        else:
            x_hat, inv_std, _, _ = self._normalize(self._check_x(input), self.training)
        delta = self._check_input(delta, tuple(input.shape), "delta", like=x_hat)
        return x_hat, inv_std, delta

    def backward_update_gradient(self, input: Array, delta: Array) -> None:
        if not self.affine:
            self._cached(input, delta)  # the checks
            return
        x_hat, _, delta = self._cached(input, delta)
        xp = namespace(delta)
        axes = tuple(range(len(delta.shape) - 1))
        self.accumulate_gradient("weight", xp.sum(delta * x_hat, axis=axes))
        self.accumulate_gradient("bias", xp.sum(delta, axis=axes))

    def backward_delta(self, input: Array, delta: Array) -> Array:
        x_hat, inv_std, delta = self._cached(input, delta)
        scale = inv_std * self._parameters["weight"] if self.affine else inv_std
        if not self.training:
            return delta * scale
        xp = namespace(delta)
        axes = tuple(range(len(delta.shape) - 1))
        mean_delta = xp.mean(delta, axis=axes)
        mean_dx = xp.mean(delta * x_hat, axis=axes)
        return scale * (delta - mean_delta - x_hat * mean_dx)


def _count(X: Array) -> int:
    n = 1
    for d in X.shape[:-1]:
        n *= d
    return n
