r"""One training step on a batch already on the network's backend: the updater.

A step is: forward, loss, **one read from the device** (the loss sum, with the counts
of the loss's deferred checks, see :class:`nnx.Loss`), the finiteness check, backward
(gradients of :math:`L = \sum_i \ell_i`, written fresh: see
:meth:`nnx.Module.fresh_gradients`), and the update. :class:`Step` is that step for one
process, :class:`DataParallelStep` sums the gradients over the ranks of a communicator
before the check and the update; :class:`~nnx.training.graph.GraphedStep` replays a
:class:`Step` as CUDA graphs. The epoch loop (:mod:`nnx.training.loop`) calls whichever
the :class:`~nnx.Optim` facade built, batch after batch; this module calls nothing of
the training side above it.
"""

from __future__ import annotations

import math
from typing import Any

from .. import backends
from ..module import Array, Loss, Module, namespace

__all__ = ["DataParallelStep", "Step", "forward_loss"]


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


def _non_finite(total: float) -> FloatingPointError:
    return FloatingPointError(
        f"non-finite loss (sum over the batch = {total}); the parameters were not updated"
    )


class Step:
    """Forward, loss, one read, backward and update of ``network`` on a batch.

    The update is ``optimizer.step(network)``, or the plain
    :math:`w \\leftarrow w - \\epsilon \\nabla_w L` (``network.update_parameters(eps)``)
    without an optimiser. ``loss``, ``eps`` and ``optimizer`` may be changed between
    steps (a learning-rate schedule in a callback); :class:`nnx.Optim`'s attributes of
    the same names are these.

    >>> import nnx, numpy as np
    >>> net = nnx.Sequential(nnx.Linear(2, 2))
    >>> step = Step(net, nnx.CELogSoftmax(), eps=0.1)
    >>> losses, yhat, total = step(nnx.asarray([[1.0, 0.0]]), nnx.asarray(np.array([1])))
    >>> losses.shape, yhat.shape
    ((1,), (1, 2))
    """

    def __init__(self, network: Module, loss: Loss, eps: float = 1e-3, optimizer: Any = None):
        self.network, self.loss, self.eps, self.optimizer = network, loss, eps, optimizer

    def __call__(self, X: Array, y: Array) -> tuple[Array, Array, float]:
        """``(losses, yhat, sum of losses)``; raises ``FloatingPointError`` before
        touching the parameters when the loss is not finite (the gradients are then
        zero)."""
        net, loss = self.network, self.loss
        with net.fresh_gradients():  # zero_grad() in effect, without writing zeros first
            yhat, losses, total = forward_loss(net, loss, X, y)
            if not math.isfinite(total):
                raise _non_finite(total)
            net.backward(X, loss.backward(y, yhat), input_grad=False)
        self.update()
        return losses, yhat, total

    def update(self) -> None:
        """Apply the gradients: ``optimizer.step(network)`` or the plain update."""
        if self.optimizer is not None:
            self.optimizer.step(self.network)
        else:
            self.network.update_parameters(self.eps)

    def evaluate(self, X: Array, y: Array) -> tuple[Array, Array]:
        """``(yhat, sum of the per-sample losses)`` without an update; the sum stays on
        the device (an evaluation pass reads its sums once, at the end)."""
        yhat = self.network.forward(X)
        losses = self.loss.forward(y, yhat)
        return yhat, namespace(losses).sum(losses)

    def state(self) -> list[Array]:
        """What a step updates in place: parameters, buffers (BatchNorm's running
        statistics) and optimiser state (what a recorded CUDA graph watches)."""
        arrays = [p for _, p, _ in self.network.parameters_and_gradients()]
        arrays += [b for _, b in self.network.named_buffers()]
        if self.optimizer is not None:
            arrays += [a for st in self.optimizer.state.values() for a in st.values()]
        return arrays


class DataParallelStep(Step):
    """:class:`Step` on this rank's share of a global batch, with the gradients, loss
    sums and error counts summed over the ranks (one packed allreduce,
    :meth:`nnx.distributed.DataParallel.reduce_step`) before the finiteness check and
    the update: every rank applies the same update and raises the same errors.

    Returns this share's ``(losses, yhat, loss sum)`` (``None`` outputs for an empty
    share of a short batch).
    """

    def __init__(self, network: Module, loss: Loss, eps: float, optimizer: Any, dp: Any) -> None:
        super().__init__(network, loss, eps, optimizer)
        self.dp = dp

    def __call__(self, X: Array, y: Array) -> tuple[Any, Any, float]:
        net, loss = self.network, self.loss
        yhat: Any = None
        losses: Any = None
        total, error = 0.0, None
        with net.fresh_gradients():
            if X.shape[0]:  # a rank's share of a short batch may be empty
                try:
                    yhat, losses, total = forward_loss(net, loss, X, y)
                except self.dp.agreed_errors as exc:
                    error = exc  # raised on every rank after the reduction
                if error is None and math.isfinite(total):
                    net.backward(X, loss.backward(y, yhat), input_grad=False)
        global_total = self.dp.reduce_step(net, total, error)
        if not math.isfinite(global_total):
            raise _non_finite(global_total)
        self.update()
        return losses, yhat, total
