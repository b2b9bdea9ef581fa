"""The epoch loop (the trainer): epochs of batches pulled from a batch iterator
(:class:`nnx.training.data.Batches`) through an updater (:class:`nnx.training.step.Step`),
the evaluation passes, the history, the observers, Ctrl-C rollback, and the tracing of
non-finite parameters (:mod:`nnx.training.guard`).

The :class:`~nnx.Optim` facade builds the iterator and the updater and hands them to a
:class:`Trainer`, as Chainer's trainer is handed an updater built on an iterator; the
loop calls nothing of the facade.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

from ..module import Array, count_true, is_floating, mode, namespace
from .guard import EpochStart, non_finite_parameter, replay
from .progress import Progress
from .signals import sigterm_as_interrupt

__all__ = ["Observer", "Reduce", "Tally", "Trainer", "correct", "evaluate"]

#: Called after every epoch with ``(epoch, record, parameters)``; ``True`` stops.
Observer = Callable[[int, dict[str, float], Any], Any]
#: ``reduce(loss_sum, correct, uncounted, error)`` -> the first three summed over the ranks
#: of a data-parallel job (:meth:`nnx.distributed.DataParallel.reduce`), which raises on
#: every rank the ``error`` (a ValueError or TypeError) of the lowest rank that had one
Reduce = Callable[[float, int, int, BaseException | None], list[float]]

#: Errors of an evaluation pass that every rank raises alike (the loss's checks)
AGREED = (ValueError, TypeError)


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
        target = y if y.dtype == pred.dtype else xp.astype(y, pred.dtype)
    else:
        return None
    return count_true(xp, pred == target)


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

    def means(
        self, n: int, reduce: Reduce | None = None, error: BaseException | None = None
    ) -> tuple[float, float]:
        """Mean per-sample loss and accuracy (NaN when not a classification) of ``n``
        samples; with ``reduce``, the sums of every rank's tally, and ``error`` (this
        rank's pass failed, its sums are void) raised on every rank."""
        total, right, counted = float(self.loss), int(self.correct), self.counted
        if reduce is not None:
            total, right, uncounted = reduce(total, right, 0 if counted else 1, error)
            counted = uncounted == 0
        return total / n, (right / n if counted else math.nan)


def evaluate(step: Any, batches: Any, reduce: Reduce | None = None) -> tuple[float, float]:
    """Mean per-sample loss and accuracy of one pass over ``batches`` (no update), in
    evaluation mode; one read. With ``reduce``, ``batches`` are this rank's part."""
    tally, error = Tally(), None
    with mode(step.network, False):
        try:
            for bx, by in batches.epoch():
                yhat, total = step.evaluate(bx, by)
                tally.add(total, yhat, by)
        except AGREED as exc:
            if reduce is None:
                raise
            error = exc  # raised on every rank by the reduction: no rank waits alone
    return tally.means(batches.n, reduce, error)


class Trainer:
    """Epochs of ``train`` batches through ``step``, each followed by a pass over
    ``test`` (if any).

    Parameters
    ----------
    owner : str
        Names the loop in messages (``"Optim.SGD"``).
    step : callable
        The updater: ``step(X, y) -> (losses, yhat, loss sum)``, with ``network``,
        ``optimizer`` and ``evaluate`` (:class:`~nnx.training.step.Step`).
    train, test : nnx.training.data.Batches
        The training batches (a new order every epoch) and the evaluation batches.
    dp : nnx.distributed.DataParallel, optional
        Data-parallel training: epoch means are summed over the ranks, an error on
        this rank is told to the others, and Ctrl-C propagates (the ranks may be at
        different batches: there is no common state to roll back to).
    """

    def __init__(self, owner: str, step: Any, train: Any, test: Any = None, dp: Any = None) -> None:
        self.owner, self.step, self.train, self.test, self.dp = owner, step, train, test, dp
        self.reduce: Reduce | None = None if dp is None else dp.reduce

    def run(
        self,
        epochs: int,
        history: dict[str, list[float]],
        bars: Progress,
        observers: Iterable[Observer] = (),
        first: int = 1,
    ) -> KeyboardInterrupt | None:
        """Epochs ``first..epochs``, each record appended to ``history``; after each,
        every observer sees the record and the parameters, and any of them may stop
        the loop.

        Ctrl-C (``KeyboardInterrupt``), or SIGTERM
        (:class:`~nnx.training.signals.Terminated`, a ``KeyboardInterrupt``), puts back
        the parameters of the last finished epoch and is returned (``None``: not
        interrupted; on several ranks it propagates); the bars are closed in every case.
        """
        if self.dp is None:
            return self._epochs(epochs, history, bars, observers, first, rollback=True)
        try:
            return self._epochs(
                epochs, history, bars, observers, first, rollback=self.dp.comm.size == 1
            )
        except BaseException as exc:
            self.dp.failed(exc)
            raise

    def _epochs(
        self,
        epochs: int,
        history: dict[str, list[float]],
        bars: Progress,
        observers: Iterable[Observer],
        first: int,
        rollback: bool,
    ) -> KeyboardInterrupt | None:
        network = self.step.network
        observers = list(observers)
        last = network.state_dict()
        try:
            with sigterm_as_interrupt():
                for epoch in range(first, epochs + 1):
                    record = self.epoch(epoch, bars)
                    last = network.state_dict()
                    for k, v in record.items():
                        history[k].append(v)
                    bars.end_epoch(**_postfix(record))
                    stop = False
                    for observe in observers:
                        stop = bool(observe(epoch, record, last)) or stop
                    if stop:
                        break
        except KeyboardInterrupt as exc:
            if not rollback:
                raise
            network.load_state_dict(last)
            return exc
        finally:
            bars.close()
        return None

    def epoch(self, epoch: int, bars: Progress) -> dict[str, float]:
        """Train one epoch, then evaluate on ``test``; returns the epoch's record."""
        loss_train, score_train = self.train_epoch(epoch, bars)
        if self.test is None:
            return {"epoch": epoch, "loss_train": loss_train, "score_train": score_train}
        loss_test, score_test = evaluate(self.step, self.test, self.reduce)
        return {
            "epoch": epoch,
            "loss_train": loss_train,
            "loss_test": loss_test,
            "score_train": score_train,
            "score_test": score_test,
        }

    def train_epoch(self, epoch: int, bars: Progress) -> tuple[float, float]:
        """One epoch in training mode; returns (mean per-sample loss, running accuracy).

        A non-finite loss raises ``FloatingPointError`` naming the epoch and the batch.
        Non-finite parameters (checked when a loss is not finite and after the epoch)
        are traced to their step by replaying the epoch (:mod:`nnx.training.guard`)."""
        step, network = self.step, self.step.network
        batches = self.train.epoch()
        start = EpochStart(network, step.optimizer)
        with mode(network, True):
            try:
                result = self._train_pass(epoch, batches, bars)
            except FloatingPointError:
                if non_finite_parameter(network) is not None:
                    replay(self.owner, epoch, start, step, batches, self.train.count)
                raise
            if non_finite_parameter(network) is not None:
                replay(self.owner, epoch, start, step, batches, self.train.count)
        return result

    def _train_pass(self, epoch: int, batches: Any, bars: Progress) -> tuple[float, float]:
        count, step = self.train.count, self.step
        bars.start_epoch(epoch, count)
        tally = Tally()
        for b, (bx, by) in enumerate(batches, 1):
            try:
                _, yhat, total = step(bx, by)
            except FloatingPointError as exc:
                raise FloatingPointError(
                    f"{self.owner}: non-finite loss at epoch {epoch}, batch {b} of {count}: {exc}"
                ) from None
            tally.add(total, yhat, by)
            bars.batch_bar.update(1)
        return tally.means(self.train.n, self.reduce)


def _postfix(record: dict[str, float]) -> dict[str, float]:
    """What the epochs bar shows, under the names of the command line: the held-out split
    of ``SGD_eval`` (its ``*_test`` columns) is the validation split, ``val_*``."""
    shown = {"loss": record["loss_train"]}
    if math.isfinite(record.get("score_train", math.nan)):
        shown["acc"] = record["score_train"]
    if "loss_test" in record:
        shown["val_loss"] = record["loss_test"]
        if math.isfinite(record.get("score_test", math.nan)):
            shown["val_acc"] = record["score_test"]
    return shown
