"""The epoch loop: epochs of batches, the history, observers, and Ctrl-C rollback."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

from ..module import Array, Module
from .progress import Progress
from .signals import sigterm_as_interrupt
from .step import Reduce, Tally

#: Called after every epoch with ``(epoch, record, parameters)``; ``True`` stops.
Observer = Callable[[int, dict[str, float], Any], Any]


def train_epoch(
    owner: str,
    epoch: int,
    step: Callable[[Array, Array], tuple[Array, Array, float]],
    batches: Iterable[tuple[Array, Array]],
    n: int,
    batch_size: int,
    bars: Progress,
    reduce: Reduce | None = None,
) -> tuple[float, float]:
    """Run ``step`` on every batch; returns (mean per-sample loss, running accuracy).

    A non-finite loss raises ``FloatingPointError`` naming the epoch and the batch.
    With ``reduce`` (data-parallel), the sums of every rank's shares."""
    count = -(-n // batch_size)
    bars.start_epoch(epoch, count)
    tally = Tally()
    for b, (bx, by) in enumerate(batches, 1):
        try:
            _, yhat, total = step(bx, by)
        except FloatingPointError as exc:
            raise FloatingPointError(
                f"{owner}: non-finite loss at epoch {epoch}, batch {b} of {count}: {exc}"
            ) from None
        tally.add(total, yhat, by)
        bars.batch_bar.update(1)
    return tally.means(n, reduce)


def run_epochs(
    network: Module,
    epochs: int,
    run_epoch: Callable[[int], dict[str, float]],
    history: dict[str, list[float]],
    bars: Progress,
    observers: Iterable[Observer] = (),
    first: int = 1,
    rollback: bool = True,
) -> KeyboardInterrupt | None:
    """Epochs ``first..epochs`` of ``run_epoch`` (which returns the epoch's record),
    appended to ``history``; after each, every observer sees the record and the
    parameters, and any of them may stop the loop.

    Ctrl-C (``KeyboardInterrupt``), or SIGTERM (:class:`~nnx.training.signals.Terminated`,
    a ``KeyboardInterrupt``), puts back the parameters of the last finished epoch and
    is returned (``None``: not interrupted; with ``rollback=False``, as on several
    ranks, it propagates); the bars are closed in every case.
    """
    observers = list(observers)
    last = network.state_dict()
    try:
        with sigterm_as_interrupt():
            for epoch in range(first, epochs + 1):
                record = run_epoch(epoch)
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
