r"""One training step, and the evaluation passes, on data already on the network's backend.

A step is: forward, loss, **one read from the device** (the loss sum, with the counts
of the loss's deferred checks, see :class:`nnx.Loss`), the finiteness check, backward
(gradients of :math:`L = \sum_i \ell_i`, written fresh: see
:meth:`nnx.Module.fresh_gradients`), and the update.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from .. import backends
from ..module import Array, Loss, Module, is_floating, namespace

#: ``reduce(loss_sum, correct, uncounted)`` -> the same three summed over the ranks of a
#: data-parallel job (see :mod:`nnx.distributed`)
Reduce = Callable[[float, int, int], list[float]]


@backends.quiet_float_errors  # a non-finite loss is reported as FloatingPointError
def forward_loss(net: Module, loss: Loss, X: Array, y: Array) -> tuple[Array, Array, float]:
    """Output, per-sample losses and their sum, read back as a Python float.

    The sum is the one value a step brings back from the device. Where a read waits
    for the device, the loss's checks that need a read are deferred
    (:meth:`nnx.Loss.deferred_checks`) and their counts travel in the same transfer;
    a count that differs raises the loss's own error.
    """
    yhat = net.forward(X)
    if backends.free_reads(yhat):
        losses = loss.forward(y, yhat)
        return yhat, losses, float(namespace(losses).sum(losses))
    with loss.deferred_checks() as pending:
        losses = loss.forward(y, yhat)
    xp = namespace(losses)
    total = xp.sum(losses)
    if not pending:
        return yhat, losses, float(total)
    counts = [xp.astype(xp.asarray(c.count), total.dtype) for c in pending]
    read = backends.to_numpy(xp.stack([total, *counts]))
    for check, count in zip(pending, read[1:], strict=True):
        if count != check.expected:
            check.fail()
    return yhat, losses, float(read[0])


def train_step(
    net: Module, loss: Loss, update: Callable[[], None], X: Array, y: Array
) -> tuple[Array, Array, float]:
    """Forward, loss, finiteness check, backward, ``update()``.

    Returns ``(losses, yhat, sum of losses)``; raises ``FloatingPointError`` before
    touching the parameters when the loss is not finite (the gradients are then zero).
    """
    with net.fresh_gradients():  # zero_grad() in effect, without writing zeros first
        yhat, losses, total = forward_loss(net, loss, X, y)
        if not math.isfinite(total):
            raise FloatingPointError(
                f"non-finite loss (sum over the batch = {total}); the parameters were not updated"
            )
        net.backward(X, loss.backward(y, yhat), input_grad=False)
    update()
    return losses, yhat, total


def correct(yhat: Array, y: Array) -> Array | None:
    """Number of rows where ``argmax(yhat)`` equals the label, as a 0-d integer array on
    the network's device (``None``: not a classification). Callers add these up on the
    device and read the sum once, not once per batch (a GPU synchronisation)."""
    if len(yhat.shape) != 2 or yhat.shape[1] < 2:
        return None
    xp = namespace(yhat)
    pred = xp.argmax(yhat, axis=-1)
    if len(y.shape) == 2:
        if tuple(y.shape) != tuple(yhat.shape):
            return None
        target = xp.argmax(y, axis=-1)
    elif len(y.shape) == 1 and not is_floating(y):
        target = xp.astype(y, pred.dtype)
    else:
        return None
    return xp.sum(xp.astype(pred == target, xp.int64))


class Tally:
    """Running sums of an epoch or an evaluation pass, kept on the device until read."""

    def __init__(self) -> None:
        self.loss: Any = 0.0
        self.correct: Any = 0
        self.counted = True

    def add(self, loss_sum: Any, yhat: Array | None, y: Array) -> None:
        """Add a batch; ``yhat`` ``None``: a rank's empty share of a batch."""
        self.loss = self.loss + loss_sum
        if yhat is None:
            return
        c = correct(yhat, y)
        if c is None:
            self.counted = False
        elif self.counted:
            self.correct = self.correct + c

    def means(self, n: int, reduce: Reduce | None = None) -> tuple[float, float]:
        """Mean per-sample loss and accuracy (NaN when not a classification) of ``n``
        samples; with ``reduce``, the sums of every rank's tally."""
        total, right, counted = float(self.loss), int(self.correct), self.counted
        if reduce is not None:
            total, right, uncounted = reduce(total, right, 0 if counted else 1)
            counted = uncounted == 0
        return total / n, (right / n if counted else math.nan)


def evaluate(
    net: Module, loss: Loss, batches: Any, n: int, reduce: Reduce | None = None
) -> tuple[float, float]:
    """Mean per-sample loss and accuracy over ``batches`` of ``n`` samples (no update);
    one read. With ``reduce``, ``batches`` are this rank's share."""
    tally = Tally()
    for bx, by in batches:
        yhat = net.forward(bx)
        losses = loss.forward(by, yhat)
        tally.add(namespace(losses).sum(losses), yhat, by)
    return tally.means(n, reduce)
