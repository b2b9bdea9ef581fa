"""Observers the epoch loop asks after every epoch: early stopping (after Keras's
``EarlyStopping``) and a user's callback."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

__all__ = ["CallEachEpoch", "EarlyStopping"]


class EarlyStopping:
    """Keep the best epoch; stop when the monitored value stops improving.

    ``monitor="score"`` maximises ``score_test`` (falling back on the test loss when
    the record has no finite accuracy); ``"loss"`` minimises ``loss_test``. Training
    stops after ``patience`` epochs without improvement (``None``: never stop, but
    still remember the best epoch).

    >>> stop = EarlyStopping(monitor="loss", patience=2)
    >>> [stop.on_epoch_end(e, {"loss_test": v, "score_test": float("nan")}, state=e)
    ...  for e, v in enumerate([3.0, 2.0, 2.5, 2.1], 1)]
    [False, False, False, True]
    >>> stop.best_epoch, stop.best_state
    (2, 2)
    """

    def __init__(self, monitor: str = "score", patience: int | None = 10) -> None:
        if monitor not in ("score", "loss"):
            raise ValueError(f"EarlyStopping: monitor must be 'score' or 'loss', got {monitor!r}")
        self.monitor, self.patience = monitor, patience
        self.best_value: float | None = None
        self.best_epoch: int | None = None
        self.best_state: Any = None
        self.wait = 0

    def on_epoch_end(self, epoch: int, record: dict[str, float], state: Any) -> bool:
        """Note epoch ``epoch`` (``state``: its parameters); ``True`` means stop."""
        score = record["score_test"]
        value = score if self.monitor == "score" and math.isfinite(score) else -record["loss_test"]
        if self.best_value is None or (math.isfinite(value) and value > self.best_value):
            self.best_value, self.best_epoch, self.best_state, self.wait = value, epoch, state, 0
            return False
        self.wait += 1
        return self.stopped

    @property
    def stopped(self) -> bool:
        """Whether the patience has run out (a checkpoint resumed at that epoch trains no
        further)."""
        return self.patience is not None and self.wait >= self.patience


class CallEachEpoch:
    """Calls ``callback`` with a copy of every epoch's record (``SGD_eval(callback=...)``);
    never stops the loop.

    >>> seen = []
    >>> CallEachEpoch(seen.append).on_epoch_end(1, {"loss_train": 0.5}, state=None)
    False
    >>> seen
    [{'loss_train': 0.5}]
    """

    def __init__(self, callback: Callable[[dict[str, float]], Any]) -> None:
        self.callback = callback

    def on_epoch_end(self, epoch: int, record: dict[str, float], state: Any) -> bool:
        self.callback(dict(record))
        return False
