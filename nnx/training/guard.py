"""Non-finite parameters after an update: which step made them, and the parameters
of before it.

The step (:mod:`nnx.training.step`) checks the loss of every batch on its one device
read. A parameter that an update turned into NaN or infinity (a learning rate of
``1e39`` in float32) shows up as a non-finite loss at the next step, or not at all
before the epoch ends: the parameters are therefore checked (one read) when a loss is
not finite and at the end of every epoch. When they are not finite, the epoch is
replayed from its start (parameters, optimiser state and nnx's generator as they were;
the same batches in the same order) with a check after every update, which finds the
step exactly on a deterministic backend and leaves the parameters of before it. No
per-step cost: the snapshot is taken once per epoch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from .. import backends
from ..module import Array, Module, namespace
from .checkpoint import rng_state, set_rng_state

__all__ = ["EpochStart", "non_finite_parameter", "replay"]


def non_finite_parameter(network: Module) -> str | None:
    """Name of the first parameter holding a NaN or an infinity (``None``: all finite).

    One read: the per-parameter flags are stacked on the device."""
    named = list(network.named_parameters())
    if not named:
        return None
    xp = namespace(named[0][1])
    ok = backends.to_numpy(xp.stack([xp.all(xp.isfinite(p)) for _, p in named]))
    if ok.all():
        return None
    return named[int(np.argmin(ok))][0]


class EpochStart:
    """Parameters, optimiser state and nnx's generator at the start of an epoch
    (host copies), to replay the epoch."""

    def __init__(self, network: Module, optimizer: Any) -> None:
        self.network, self.optimizer = network, optimizer
        self.parameters = network.state_dict()
        has_state = callable(getattr(optimizer, "state_dict", None))
        self.optimizer_state = optimizer.state_dict() if has_state else None
        self.rng = rng_state(backends.get_rng())

    def restore(self) -> None:
        self.network.load_state_dict(self.parameters)
        if self.optimizer_state is not None:
            self.optimizer.load_state_dict(self.optimizer_state)
        set_rng_state(backends.get_rng(), self.rng)


def replay(
    owner: str,
    epoch: int,
    start: EpochStart,
    step: Callable[[Array, Array], Any],
    batches: Iterable[tuple[Array, Array]],
    count: int,
) -> None:
    """Replay the epoch's ``batches`` from ``start``, checking after every update;
    raise ``FloatingPointError`` naming the first step that left a non-finite
    parameter, with the parameters of before it (or of the epoch's start, if the
    replay does not reproduce the failure, as on a non-deterministic device)."""
    network = start.network
    start.restore()
    for b, (bx, by) in enumerate(batches, 1):
        before = network.state_dict()
        try:
            step(bx, by)
        except FloatingPointError:
            break
        bad = non_finite_parameter(network)
        if bad is not None:
            network.load_state_dict(before)
            raise FloatingPointError(
                f"{owner}: non-finite parameter {bad!r} after the update at epoch {epoch}, "
                f"batch {b} of {count} (lower the learning rate); the parameters are those "
                f"before that step"
            )
    start.restore()
    raise FloatingPointError(
        f"{owner}: non-finite parameters during epoch {epoch} (the replay of the epoch "
        f"did not reproduce them, so the batch is unknown); the parameters are those of "
        f"the start of epoch {epoch}"
    )
