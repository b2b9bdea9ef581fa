"""Shared test helpers: nnx's own checkers (:mod:`nnx.testing`, public) under the names
the tests use, plus PyTorch references of the losses.

No bare ``assert``: the helpers raise ``AssertionError`` themselves (or use
``numpy.testing``), so they keep checking under ``python -O``.

``finite_difference_check(module, x)``
    :func:`nnx.testing.check_gradients` of a module.
``finite_difference_check_loss(loss, y, yhat)``
    :func:`nnx.testing.check_gradients` of a loss.
``torch_reference``, ``torch_module_reference``, ``module_vjp``, ``torch_forward``
    from :mod:`nnx.testing`.
``torch_loss_forward(loss, y, yhat)``
    per-sample losses computed with PyTorch's own functions.
"""

from __future__ import annotations

from typing import Any

import nnx
from nnx.testing import (
    assert_close,
    check_gradients,
    host,
    module_vjp,
    numerical_gradient,
    numerical_gradient_rows,
    torch_forward,
    torch_module_reference,
    torch_reference,
)

__all__ = [
    "assert_close",
    "finite_difference_check",
    "finite_difference_check_loss",
    "host",
    "module_vjp",
    "numerical_gradient",
    "numerical_gradient_rows",
    "torch_forward",
    "torch_loss_forward",
    "torch_module_reference",
    "torch_reference",
]

#: :func:`nnx.testing.check_gradients` of a module
finite_difference_check = check_gradients


def finite_difference_check_loss(loss: nnx.Loss, y: Any, yhat: Any, **kwargs: Any) -> None:
    """:func:`nnx.testing.check_gradients` of a loss: ``backward`` against central
    differences, row by row."""
    check_gradients(loss, yhat, target=y, **kwargs)


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


def record_tqdm_bars(monkeypatch: Any) -> list:
    """Make every tqdm bar the training loops create append itself to the returned list."""
    import pytest

    tqdm = pytest.importorskip("tqdm")
    created: list = []

    class RecordingTqdm(tqdm.tqdm):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            created.append(self)

    monkeypatch.setattr(tqdm, "tqdm", RecordingTqdm)
    return created
