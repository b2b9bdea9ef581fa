r"""Losses. ``forward(y, yhat)`` returns one loss per sample, shape ``(batch,)``;
``backward(y, yhat)`` returns :math:`\partial L / \partial \hat y` for
:math:`L = \sum_i \ell_i`, the shape of ``yhat``.

Targets ``y`` have the shape of ``yhat`` (one-hot or real targets; cast to ``yhat``'s
dtype), or, for a ``(batch, K)`` prediction, may be integer class labels of shape
``(batch,)``.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from . import backends
from .activation import log_softmax
from .module import Array, Loss, check_array, constant_row, count_true, is_floating, namespace

__all__ = [
    "BCELoss",
    "CELogSoftmax",
    "CrossEntropyLoss",
    "MSELoss",
    "NLLLoss",
    "one_hot_like",
]


def one_hot_like(labels: Array, yhat: Array) -> Array:
    """One-hot ``(batch, K)`` matrix of ``labels`` in ``yhat``'s dtype and device."""
    xp = namespace(yhat)
    return xp.astype(_hits(labels, yhat.shape[-1]), yhat.dtype)


def _hits(labels: Array, num_classes: int) -> Array:
    """Boolean one-hot ``(batch, num_classes)``: ``hits[i, k] = labels[i] == k``."""
    return labels[:, None] == constant_row("arange", labels, num_classes)


class _TargetLoss(Loss):
    """Input checks and target normalisation shared by the losses."""

    #: required ``yhat.ndim`` (``None``: any ``ndim >= 1``)
    yhat_ndim: int | None = None
    #: a softmax over the classes inside the loss: one class is refused (the loss is 0)
    softmax_inside: bool = False
    #: ``(y, yhat)`` of the last ``forward`` and what it computed, for ``backward``
    _cache_key: tuple[Array, Array] | None = None
    _cache: Any = None
    _transient = ("_cache_key", "_cache", "_targets_key", "_targets_value")

    #: ``(y, yhat)`` last validated by :meth:`_targets`, and the targets it returned
    _targets_key: tuple[Array, Array] | None = None
    _targets_value: Any = None

    def _targets(self, y: Array, yhat: Array) -> Array:
        """Validate ``(y, yhat)``; return ``y`` as a float array of ``yhat``'s shape.

        ``backward`` on the very arrays ``forward`` just checked (a training step)
        reuses the result instead of checking (and reading labels) again.
        """
        key = self._targets_key
        if key is not None and key[0] is y and key[1] is yhat:
            return self._targets_value
        target = self._checked_targets(y, yhat)
        self._targets_key, self._targets_value = (y, yhat), target
        return target

    def _bad_labels(self, y: Array, num_classes: int) -> None:
        """Raise the label error; nothing computed from these targets is reused."""
        self._targets_key = self._targets_value = None
        self._cache_key = self._cache = None
        check_labels(type(self).__name__, y, num_classes)

    def _checked_targets(self, y: Array, yhat: Array) -> Array:
        name = type(self).__name__
        ndim = self.yhat_ndim
        yhat_shape = yhat.shape if backends.backend_of(yhat) is not None else None
        if not (
            yhat_shape is not None
            and is_floating(yhat)
            and (len(yhat_shape) == ndim if ndim else len(yhat_shape) >= 1)
        ):
            check_array(name, yhat, self._yhat_shape(yhat), "yhat")
            yhat_shape = yhat.shape
        if ndim == 2 and yhat_shape[1] == 0:
            raise ValueError(
                f"{name}: expected yhat with at least 1 class, got shape {tuple(yhat_shape)}"
            )
        if ndim == 2 and yhat_shape[1] == 1 and self.softmax_inside:
            # PyTorch computes this (a loss of 0), so nnx does too, but says why it is 0
            warnings.warn(
                f"{name}: yhat has 1 class (shape (batch, 1)): a softmax over one class "
                f"is 1, so the loss and its gradient are 0 whatever the network does; for "
                f"one probability per sample use BCELoss after a Sigmoid",
                UserWarning,
                stacklevel=4,
            )
        if type(y) is not type(yhat) and isinstance(y, type(yhat)):
            y = backends.base_array(y)  # targets in an np.memmap ...
        if type(y) is not type(yhat):
            if not backends.is_array(y):
                raise TypeError(f"{name}: expected y to be an array, got {type(y).__name__}")
            raise TypeError(
                f"{name}: y is a {backends.backend_name(y)} array but yhat is a "
                f"{backends.backend_name(yhat)} array; put both on one backend"
            )
        y_shape, xp = y.shape, namespace(yhat)
        if y_shape == yhat_shape:
            # floating targets of another dtype are cast, like a module's input
            return y if y.dtype == yhat.dtype else xp.astype(y, yhat.dtype)
        if len(y_shape) == 1 and len(yhat_shape) == 2 and y_shape[0] == yhat_shape[0]:
            if is_floating(y) or y.dtype == xp.bool:
                hint = (
                    f"; for one value per sample pass y of shape {tuple(yhat_shape)} "
                    f"(y.reshape(-1, 1))"
                    if yhat_shape[1] == 1
                    else ""
                )
                raise TypeError(
                    f"{name}: 1-D targets must be integer class labels, got dtype "
                    f"{backends.dtype_name(y)}{hint}"
                )
            hits = _hits(y, yhat_shape[1])
            # every label lies in [0, K) exactly when every one-hot row holds a 1: one
            # count instead of a min and a max (check_labels then builds the message)
            self.require_count(
                count_true(xp, hits), y_shape[0], lambda: self._bad_labels(y, yhat_shape[1])
            )
            return xp.astype(hits, yhat.dtype)
        raise ValueError(
            f"{name}: expected y of shape {tuple(yhat_shape)} (like yhat) or integer labels "
            f"of shape ({yhat_shape[0]},), got shape {tuple(y_shape)}"
        )

    def _yhat_shape(self, yhat: Any) -> tuple[Any, ...]:
        """The shape ``yhat`` must have, for the messages of :func:`check_array`."""
        if self.yhat_ndim == 2:
            return ("batch", "K")
        return ("batch",) + (None,) * max(len(getattr(yhat, "shape", ())) - 1, 0)


def check_labels(owner: str, labels: Array, num_classes: int) -> None:
    """Raise ``ValueError`` unless every label lies in ``[0, num_classes)``."""
    if labels.shape[0] == 0:
        return
    xp = namespace(labels)
    lo, hi = int(xp.min(labels)), int(xp.max(labels))
    if lo < 0 or hi >= num_classes:
        raise ValueError(
            f"{owner}: labels must lie in [0, {num_classes}) for {num_classes} classes, "
            f"got values in [{lo}, {hi}]"
        )


def _check_probabilities(y: Array, yhat: Array) -> None:
    """Raise ``ValueError`` naming the first prediction or target outside ``[0, 1]``."""
    for what, a in (("predictions yhat", yhat), ("targets y", y)):
        host = backends.to_numpy(a)
        bad = (host < 0) | (host > 1)
        if bad.any():
            i = tuple(int(j) for j in np.argwhere(bad)[0])
            raise ValueError(
                f"BCELoss: {what} must lie in [0, 1] (probabilities; apply Sigmoid to "
                f"the outputs), got {host[i]!r} at index {i} (values in "
                f"[{host.min()}, {host.max()}])"
            )


def _per_sample(xp: Any, values: Array) -> Array:
    """Sum over every axis but the first: ``(batch, ...) -> (batch,)``."""
    if len(values.shape) == 1:
        return values
    return xp.sum(values, axis=tuple(range(1, len(values.shape))))


class MSELoss(_TargetLoss):
    r"""Squared error summed over features.

    .. math::
        \ell_i = \sum_j (y_{ij} - \hat y_{ij})^2 \qquad
        \frac{\partial L}{\partial \hat y_{ij}} = -2\,(y_{ij} - \hat y_{ij})

    >>> import nnx
    >>> nnx.MSELoss()(nnx.asarray([[1.0, 0.0]]), nnx.asarray([[0.5, 0.5]]))
    array([0.5], dtype=float32)
    """

    def forward(self, y: Array, yhat: Array) -> Array:
        y = self._targets(y, yhat)
        diff = y - yhat
        return _per_sample(namespace(yhat), diff * diff)

    def backward(self, y: Array, yhat: Array) -> Array:
        y = self._targets(y, yhat)
        return -2.0 * (y - yhat)


class BCELoss(_TargetLoss):
    r"""Binary cross-entropy of probabilities, summed over features.

    .. math::
        \ell_i = -\sum_j \big[y_{ij} \log \hat y_{ij} + (1 - y_{ij}) \log(1 - \hat y_{ij})\big]

    Each log is clamped at :math:`-100` (as in PyTorch), so :math:`\hat y \in \{0, 1\}`
    gives finite losses. The gradient is

    .. math::
        \frac{\partial L}{\partial \hat y_{ij}} =
        \frac{\hat y_{ij} - y_{ij}}{\max\big(\hat y_{ij}(1 - \hat y_{ij}),\ 10^{-12}\big)}.

    >>> import nnx
    >>> nnx.BCELoss()(nnx.asarray([[1.0, 0.0]]), nnx.asarray([[1.0, 0.0]]))
    array([0.], dtype=float32)
    """

    def _checked_targets(self, y: Array, yhat: Array) -> Array:
        target = super()._checked_targets(y, yhat)
        xp = namespace(yhat)
        outside = (yhat < 0.0) | (yhat > 1.0) | (target < 0.0) | (target > 1.0)
        self.require_count(count_true(xp, outside), 0, lambda: self._outside(target, yhat))
        return target

    def _outside(self, y: Array, yhat: Array) -> None:
        """Raise the range error; nothing computed from these arrays is reused."""
        self._targets_key = self._targets_value = None
        self._cache_key = self._cache = None
        _check_probabilities(y, yhat)

    def forward(self, y: Array, yhat: Array) -> Array:
        y = self._targets(y, yhat)
        xp = namespace(yhat)
        # log of max(p, 1e-44) (< e^-100): no log(0) and no divide-by-zero warning
        log_p = xp.maximum(xp.log(xp.maximum(yhat, 1e-44)), -100.0)
        log_q = xp.maximum(xp.log(xp.maximum(1.0 - yhat, 1e-44)), -100.0)
        # 0 - s rather than -s: a perfect prediction gives +0.0, not -0.0
        return 0.0 - _per_sample(xp, y * log_p + (1.0 - y) * log_q)

    def backward(self, y: Array, yhat: Array) -> Array:
        y = self._targets(y, yhat)
        xp = namespace(yhat)
        return (yhat - y) / xp.maximum(yhat * (1.0 - yhat), 1e-12)


class NLLLoss(_TargetLoss):
    r"""Negative log-likelihood of log-probabilities (PyTorch's ``nn.NLLLoss``): use it
    after :class:`~nnx.LogSoftmax`.

    .. math::
        \ell_i = -\sum_k y_{ik}\, \hat y_{ik} \qquad
        \frac{\partial L}{\partial \hat y_{ik}} = -y_{ik}

    With integer labels, :math:`\ell_i = -\hat y_{i, y_i}`. The loss is linear in
    :math:`\hat y`, so it has no lower bound on raw scores: give it log-probabilities
    only (:class:`CrossEntropyLoss` takes raw scores).

    >>> import nnx, numpy as np
    >>> logp = nnx.asarray(np.log([[0.25, 0.75]]))
    >>> nnx.NLLLoss()(nnx.asarray(np.array([1])), logp)
    array([0.2876821], dtype=float32)
    """

    yhat_ndim = 2

    def forward(self, y: Array, yhat: Array) -> Array:
        y = self._targets(y, yhat)
        return -namespace(yhat).sum(y * yhat, axis=-1)

    def backward(self, y: Array, yhat: Array) -> Array:
        return -self._targets(y, yhat)


class CrossEntropyLoss(_TargetLoss):
    r"""Cross-entropy of raw scores (logits), log-softmax inside: PyTorch's
    ``nn.CrossEntropyLoss`` per sample.

    .. math::
        \ell_i = -\hat y_{i, y_i} + \log \sum_k e^{\hat y_{ik}}
        \quad\Big(\text{one-hot or soft targets: } -\sum_k y_{ik} \big(\hat y_{ik} -
        \log \textstyle\sum_j e^{\hat y_{ij}}\big)\Big)

    .. math::
        \frac{\partial L}{\partial \hat y_{ik}} = \text{softmax}(\hat y_i)_k
        \sum_j y_{ij} - y_{ik}

    (:math:`\text{softmax}(\hat y_i) - y_i` for one-hot targets). Finite for logits of
    magnitude :math:`10^4` in float32.

    Log-softmax is idempotent (:math:`\log\text{softmax}(\log\text{softmax}(z)) =
    \log\text{softmax}(z)`), so after a :class:`~nnx.LogSoftmax` layer this loss gives
    the negative log-likelihood of its log-probabilities, values and gradients alike
    (what :class:`NLLLoss` computes). After a ``Linear``, ``Sigmoid`` or ``Softmax`` it
    is the cross-entropy of the softmax of those outputs: bounded below by 0, so it
    trains. With one class (``yhat`` of shape ``(batch, 1)``) the softmax is 1 and the
    loss and its gradient are 0 whatever the input, as in PyTorch; a ``UserWarning`` says
    so and points to :class:`BCELoss` for one probability per sample.

    The original library's ``CrossEntropyLoss`` computed :math:`1 - \sum_k y_k \hat y_k`
    with the "gradient" :math:`\hat y - y`; these are not a function and its derivative
    (the derivative of :math:`1 - y \cdot \hat y` is :math:`-y`), so nnx does not
    reproduce them (see :doc:`/migration`).

    >>> import nnx, numpy as np
    >>> nnx.CrossEntropyLoss()(nnx.asarray(np.array([1])), nnx.asarray([[1e4, -1e4]]))
    array([20000.], dtype=float32)
    """

    yhat_ndim = 2
    softmax_inside = True

    def forward(self, y: Array, yhat: Array) -> Array:
        target = self._targets(y, yhat)
        xp = namespace(yhat)
        logp = log_softmax(xp, yhat)
        # backward(y, yhat) on these very arrays (a training step) reuses this work
        self._cache_key, self._cache = (y, yhat), (target, logp)
        return -xp.vecdot(target, logp)  # one call for sum(target * logp, axis=-1)

    def backward(self, y: Array, yhat: Array) -> Array:
        key = self._cache_key
        if key is not None and key[0] is y and key[1] is yhat:
            target, logp = self._cache
        else:
            target = self._targets(y, yhat)
            logp = log_softmax(namespace(yhat), yhat)
        xp = namespace(yhat)
        probs = xp.exp(logp)
        if len(y.shape) == 1:  # integer labels: one-hot rows sum to 1
            return probs - target
        return probs * xp.sum(target, axis=-1, keepdims=True) - target


class CELogSoftmax(CrossEntropyLoss):
    r"""The original library's name for :class:`CrossEntropyLoss`: the same computation
    (cross-entropy of raw scores, a fused, stable log-softmax inside).

    .. math::
        \ell_i = -\hat y_{i, y_i} + \log \sum_k e^{\hat y_{ik}} \qquad
        \frac{\partial L}{\partial \hat y_{ik}} = \text{softmax}(\hat y_i)_k
        \sum_j y_{ij} - y_{ik}

    >>> import nnx, numpy as np
    >>> nnx.CELogSoftmax()(nnx.asarray(np.array([0])), nnx.asarray([[0.0, 0.0]]))
    array([0.6931472], dtype=float32)
    """
