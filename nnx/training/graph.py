r"""A training step replayed as CUDA graphs (opt-in: ``Optim(..., cuda_graph=True)``).

On a GPU a small model's step is bound by launch overhead: each of its dozens of small
kernels costs more on the host than on the device. :class:`GraphedStep` records the
step once per batch shape and replays it with one launch per part:

1. the first batch of a shape runs as an ordinary step (:class:`~nnx.training.step.Step`)
   on static input buffers, in the backend's graph mode, so that every kernel, cache and
   optimiser state the capture needs exists;
2. two graphs are recorded (nothing runs): *forward, loss, backward* (writing the
   per-sample losses, the output, the gradients and the one buffer the step reads),
   and *update*;
3. each later batch of that shape is copied into the static buffers, the first graph is
   replayed, the loss sum and the loss's deferred check counts are read (the step's one
   synchronisation), and the update graph is replayed only when the loss is finite and
   the checks pass, so the parameters keep their values otherwise, as in the eager step.

If recording fails (an operation the library cannot capture), a ``RuntimeWarning`` says
why and steps of that shape run eagerly.

What a replay computes is fixed at capture: shapes, buffers and Python scalars (the step
size). Update rules whose scalars change every step (Adam's bias correction) cannot be
recorded and are refused. The per-sample losses and the output a replay returns are the
graph's buffers, overwritten by the next replay.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, NamedTuple

from .. import backends
from ..module import Array, DeferredCheck, Module, namespace


class _Recorded(NamedTuple):
    watched: tuple[int, ...]  # ids of the arrays the graphs read and write in place
    X: Array  # static input buffers, filled before each replay
    y: Array
    forward_backward: backends.CapturedGraph
    update: backends.CapturedGraph
    losses: Array
    yhat: Array
    read: Array  # [loss sum, *deferred check counts]
    checks: list[DeferredCheck]


#: marks a batch shape whose recording failed: its steps run eagerly
_EAGER: Any = object()


class GraphedStep:
    """A :class:`~nnx.training.step.Step` (the eager step: its network, loss and
    update) replayed as CUDA graphs; called, evaluated and inspected as that step."""

    def __init__(self, step: Any) -> None:
        self.step = step
        self._recorded: dict[tuple[Any, ...], Any] = {}  # _Recorded, or _EAGER
        self._pool: Any = None  # one memory pool for all of this step's graphs

    @property
    def network(self) -> Module:
        return self.step.network

    @property
    def optimizer(self) -> Any:
        return self.step.optimizer

    def evaluate(self, X: Array, y: Array) -> tuple[Array, Array]:
        """An evaluation batch, eagerly (:meth:`~nnx.training.step.Step.evaluate`)."""
        return self.step.evaluate(X, y)

    def __call__(self, X: Array, y: Array) -> tuple[Array, Array, float]:
        """``(losses, yhat, sum of losses)``, as :class:`~nnx.training.step.Step`."""
        key = (tuple(X.shape), str(X.dtype), tuple(y.shape), str(y.dtype))
        rec = self._recorded.get(key)
        if rec is not None and rec is not _EAGER and rec.watched != self._watched():
            self._recorded.clear()  # parameters or optimiser state were replaced
            rec = None
        if rec is None:
            return self._record(key, X, y)
        if rec is _EAGER:
            return self.step(X, y)
        rec.X[...] = X
        rec.y[...] = y
        rec.forward_backward.replay()
        read = backends.to_numpy(rec.read)
        for check, count in zip(rec.checks, read[1:], strict=True):
            if count != check.expected:
                check.fail()  # reads the labels now in the static buffer: this batch's
        total = float(read[0])
        if not math.isfinite(total):
            raise FloatingPointError(
                f"non-finite loss (sum over the batch = {total}); the parameters were not updated"
            )
        rec.update.replay()
        return rec.losses, rec.yhat, total

    def _watched(self) -> tuple[int, ...]:
        # the arrays a recording writes in place (parameters, optimiser state): when any
        # is rebound (a rollback, load_state_dict, a move), the recordings are stale
        return tuple(id(a) for a in self.step.state())

    def __getstate__(self) -> dict[str, Any]:
        # CUDA graphs neither pickle nor copy: a copy records its own at its first step
        return {**self.__dict__, "_recorded": {}, "_pool": None}

    def _record(self, key: tuple[Any, ...], X: Array, y: Array) -> tuple[Array, Array, float]:
        backend = backends.backend_of(X)
        device = None if backend is None else backend.device_of(X)
        if backend is None or not backend.graphs_supported(device):
            name = backends.backend_name(X)
            raise ValueError(
                f"Optim(cuda_graph=True): CUDA graphs need the 'cupy' backend or 'torch' on a "
                f"CUDA device; the network's arrays are {name} on device {device!r}"
            )
        if self._pool is None:
            self._pool = backend.new_graph_pool()
        xp = namespace(X)
        net, loss = self.step.network, self.step.loss
        with backend.graph_mode(self._pool):
            Xs, ys = xp.asarray(X, copy=True), xp.asarray(y, copy=True)
            result = self.step(Xs, ys)  # a real step, eager

        @backends.quiet_float_errors  # a non-finite loss is reported after the read
        def forward_backward() -> tuple[Array, Array, Array, list[DeferredCheck]]:
            with net.fresh_gradients():
                yhat = net.forward(Xs)
                with loss.deferred_checks() as pending:
                    losses = loss.forward(ys, yhat)
                total = xp.sum(losses)
                counts = [xp.astype(xp.asarray(c.count), total.dtype) for c in pending]
                read = xp.stack([total, *counts])
                net.backward(Xs, loss.backward(ys, yhat), input_grad=False)
            return losses, yhat, read, list(pending)

        try:
            fb = backend.capture(forward_backward, device, self._pool)
            up = backend.capture(self.step.update, device, self._pool)
        except Exception as exc:  # noqa: BLE001 - the step itself worked: go on eagerly
            warnings.warn(
                f"Optim(cuda_graph=True): recording the step for batch shape {key[0]} "
                f"failed ({type(exc).__name__}: {exc}); steps of that shape run eagerly",
                RuntimeWarning,
                stacklevel=4,
            )
            self._recorded[key] = _EAGER
            return result
        losses, yhat, read, checks = fb.outputs
        self._recorded[key] = _Recorded(self._watched(), Xs, ys, fb, up, losses, yhat, read, checks)
        return result
