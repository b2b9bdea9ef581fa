"""What :class:`nnx.Optim` does differently with a communicator: one job, in one place.

- once per network, every rank checks that the others built the same network (and run
  the loop with the same arguments), then takes rank 0's parameters;
- every global batch is cut into contiguous shards, one per rank;
- after the backward pass, one packed allreduce sums the gradients together with the
  batch's loss sum and an error count, so that every rank sees the global loss (the
  non-finite check) and every rank raises the same error when one rank's shard failed
  a check (labels out of range, a wrong shape);
- evaluation sums (loss, correct predictions) are reduced the same way.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .. import backends
from ._base import Communicator

Array = Any

#: Exceptions of a step that every rank re-raises identically (after the reduction).
AGREED = (ValueError, TypeError)


class DataParallel:
    """The communicator-side helpers of a data-parallel :class:`nnx.Optim`."""

    def __init__(self, comm: Communicator) -> None:
        if not isinstance(comm, Communicator):
            raise TypeError(
                f"Optim: comm must be a communicator from nnx.distributed.init(), got "
                f"{type(comm).__name__}"
            )
        self.comm = comm
        self._synced: Any = None
        #: the loss sum and error count of the last step, a view of the packed sums
        self._stats: Any = None
        #: the exception raised on every rank by the last reduction (not a failure)
        self.agreed: BaseException | None = None

    #: Errors of a rank's share of a step that :meth:`reduce_step` re-raises on every rank.
    agreed_errors = AGREED

    @property
    def root(self) -> bool:
        """Whether this rank shows progress and writes files (rank 0)."""
        return self.comm.rank == 0

    # -- set-up -------------------------------------------------------------------------
    def sync(self, owner: str, network: Any, loop: str | None = None) -> None:
        """Check that every rank has the same network (and, at the start of a loop, the
        same ``loop`` arguments), then give every rank rank 0's parameters, once per
        network object. Without ``loop`` (:meth:`Optim.step`) nothing is exchanged once
        the network has been synchronised: a step stays one collective."""
        from . import signature

        comm = self.comm
        if comm.size == 1 or (loop is None and self._synced is network):
            return
        text = signature(network) + ("\n" + loop if loop else "")
        comm.check_same(owner, "the network, its dtype or the loop's arguments", text)
        if self._synced is network:
            return
        state = network.state_dict()
        names = list(state)
        values = comm.broadcast([state[k] for k in names], root=0)
        if comm.rank != 0:
            network.load_state_dict(dict(zip(names, values, strict=True)))
        self._synced = network

    def common_seed(self, seed: int | None) -> int | None:
        """``seed``, or with ``seed=None`` one drawn by rank 0 (from
        :func:`nnx.backends.get_rng`) and given to every rank: every rank must draw the
        same shuffles and the same split."""
        if seed is not None or self.comm.size == 1:
            return seed
        mine = int(backends.get_rng().integers(2**62))
        return int(self.comm.allgather_bytes(str(mine).encode())[0])

    # -- batches ------------------------------------------------------------------------
    def shard(self, start: int, stop: int) -> tuple[int, int]:
        """This rank's contiguous part of the global batch ``[start, stop)``."""
        lo, hi = self.comm.shard(stop - start)
        return start + lo, start + hi

    def part(self, data: Any) -> Any:
        """This rank's contiguous part of a data set (:class:`nnx.training.data.Data`)."""
        lo, hi = self.comm.shard(data.n)
        return type(data)(data.X[lo:hi, ...], data.y[lo:hi, ...], hi - lo, data.on_device)

    # -- the step (:class:`nnx.training.step.DataParallelStep`) ------------------------
    def reduce_step(self, network: Any, total: float, error: BaseException | None) -> float:
        """Sum the gradients, the loss sums and the error counts over the ranks (one
        packed allreduce); returns the global loss sum. Raises on every rank the error
        of the lowest rank whose share failed, if any."""
        named = [(name, g) for name, _, g in network.parameters_and_gradients()]
        like = named[0][1] if named else None
        flag = 1.0 if error is not None else 0.0
        extra = self._stats
        if _same_kind(extra, like) and backends.is_mutable(extra):
            extra[0], extra[1] = total, flag  # last step's view, packed where it lies
        else:
            stats = np.array([total, flag])
            extra = (
                backends.from_numpy(stats.astype(backends.dtype_name(like)), like)
                if like is not None
                else stats
            )
        # The sums are views of one kept buffer, bound as the gradients (no copy back);
        # the next backward pass writes the large ones straight into it (no packing)
        out = self.comm.allreduce_sum([g for _, g in named] + [extra], inplace=False, reuse=True)
        for (name, g), r in zip(named, out, strict=False):
            if r is not g:
                network.set_gradient(name, r, reuse=True)
        self._stats = out[-1]
        global_total, errors = (float(v) for v in backends.to_numpy(out[-1]))
        if errors:
            self.raise_agreed(error)
        return global_total

    def raise_agreed(self, error: BaseException | None) -> None:
        """Raise, on every rank, the error of the lowest rank that had one."""
        mine = b"" if error is None else f"{type(error).__name__}\n{error}".encode()
        for rank, text in enumerate(self.comm.allgather_bytes(mine)):
            if text:
                kind, _, message = text.decode(errors="replace").partition("\n")
                cls = TypeError if kind == "TypeError" else ValueError
                if self.comm.size > 1:
                    message = f"{message} (on rank {rank} of {self.comm.size})"
                exc = error if error is not None and rank == self.comm.rank else None
                self.agreed = cls(message) if exc is None or self.comm.size > 1 else exc
                raise self.agreed from None

    # -- sums ---------------------------------------------------------------------------
    def reduce(
        self, loss_sum: float, correct: int, uncounted: int, error: BaseException | None = None
    ) -> list[float]:
        """An epoch's or an evaluation's sums, over the ranks
        (:data:`nnx.training.loop.Reduce`); the ``error`` of the lowest rank whose pass
        failed (a check of the loss) is raised on every rank."""
        flag = 0.0 if error is None else 1.0
        *sums, errors = self.comm.sum_floats([loss_sum, correct, uncounted, flag])
        if errors:
            self.raise_agreed(error)
        return sums

    def sum(self, *values: float) -> list[float]:
        """Sum Python numbers over the ranks."""
        return self.comm.sum_floats(values)

    def failed(self, exc: BaseException) -> None:
        """A loop stops with ``exc`` on this rank: tell the others, unless every rank
        raises it (the reduced checks; a non-finite loss is decided on the global sum)."""
        if exc is not self.agreed and not isinstance(exc, FloatingPointError):
            self.comm.fail(exc)


def _same_kind(a: Any, b: Any) -> bool:
    """Whether ``a`` and ``b`` are arrays of one library and one dtype."""
    if a is None or b is None or type(a) is not type(b):
        return False
    return backends.dtype_name(a) == backends.dtype_name(b)
