"""The communicator interface, the packing of many arrays into one buffer per dtype, and
the single-process communicator."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .. import backends

Array = Any


class DistributedError(RuntimeError):
    """Another rank failed, died or stopped answering; this rank cannot go on."""

    __module__ = "nnx.distributed"


class Communicator:
    """A group of processes (ranks) that train one network together.

    Every rank calls the collective methods in the same order with arrays of the same
    shapes and dtypes. Engines implement the flat-buffer operations; packing, sharding
    and the consistency checks are shared.

    Attributes
    ----------
    rank : int
        This process's number, ``0 .. size - 1``; rank 0 writes files and shows bars.
    size : int
        Number of processes.
    timeout : float
        Seconds a rank waits for the others in one collective before raising
        :class:`DistributedError`.
    """

    #: Name of the engine (``"single"``, ``"mpi"``, ``"nccl"``).
    engine = "?"

    def __init__(self, rank: int, size: int, timeout: float = 60.0) -> None:
        self.rank = int(rank)
        self.size = int(size)
        self.timeout = float(timeout)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(rank={self.rank}, size={self.size})"

    # -- what an engine implements ------------------------------------------------------
    def allreduce_buffer(self, buf: Array) -> Array:
        """Sum the 1-D contiguous ``buf`` over the ranks, in place; return it (the
        engine operation under :meth:`allreduce_sum`, which packs the arrays)."""
        raise NotImplementedError

    def broadcast_buffer(self, buf: Array, root: int) -> Array:
        """Overwrite the 1-D contiguous ``buf`` with rank ``root``'s, in place; return it
        (the engine operation under :meth:`broadcast`)."""
        raise NotImplementedError

    def allgather_bytes(self, data: bytes) -> list[bytes]:
        """Every rank's ``data``, in rank order (small control messages)."""
        raise NotImplementedError

    def barrier(self) -> None:
        """Return once every rank has called ``barrier``."""
        raise NotImplementedError

    def _takes_device(self, flat: Array) -> bool:
        """Whether the engine works on ``flat`` where it lives (else it is staged
        through a host NumPy buffer)."""
        return False

    def fail(self, exc: BaseException) -> None:
        """Tell the other ranks that this one failed with ``exc``: they raise
        :class:`DistributedError` with its message instead of waiting."""

    # -- the public collectives -----------------------------------------------------------
    def allreduce_sum(self, arrays: Sequence[Array], inplace: bool = True) -> list[Array]:
        """Sum each array over the ranks, in place.

        The arrays are packed into one flat buffer per (library, dtype), so a list of
        gradients of one dtype costs one collective operation. Writeable arrays are
        updated in place and returned; for read-only ones (JAX) the result is a new array
        in the returned list, at the same position. With ``inplace=False`` no input is
        written: the sums are returned as views of the packed buffers, which saves
        copying them back (what a data-parallel step does with its gradients); in a job
        of one process they are the arrays themselves.

        >>> import nnx, numpy as np
        >>> comm = nnx.distributed.init("single")
        >>> comm.allreduce_sum([np.ones(3), np.zeros((2, 2))])[0]
        array([1., 1., 1.])
        """
        if not isinstance(inplace, bool):
            raise TypeError(f"{self!r}.allreduce_sum: inplace must be a bool, got {inplace!r}")
        return self._collective(arrays, self.allreduce_buffer, inplace)

    def broadcast(self, arrays: Sequence[Array], root: int = 0) -> list[Array]:
        """Give every rank the values of rank ``root``'s arrays (in place, packed as in
        :meth:`allreduce_sum`)."""
        if not 0 <= int(root) < self.size:
            raise ValueError(f"{self!r}.broadcast: root must be in [0, {self.size}), got {root}")
        return self._collective(arrays, lambda buf: self.broadcast_buffer(buf, int(root)))

    def sum_floats(self, values: Sequence[float]) -> list[float]:
        """Sum a few Python numbers over the ranks (one float64 collective)."""
        buf = np.asarray(values, dtype=np.float64)
        if self.size > 1:
            buf = self.allreduce_buffer(buf)
        return [float(v) for v in buf]

    def shard(self, n: int) -> tuple[int, int]:
        """``(start, stop)`` of this rank's contiguous share of ``n`` items: sizes differ
        by at most one, and the shares of ranks ``0 .. size - 1`` follow each other."""
        return n * self.rank // self.size, n * (self.rank + 1) // self.size

    def check_same(self, owner: str, what: str, text: str) -> None:
        """Raise ``ValueError`` on every rank unless every rank passed the same ``text``.

        The message names the first rank that differs from rank 0 and the first line
        where they differ.
        """
        if self.size == 1:
            return
        texts = [t.decode() for t in self.allgather_bytes(text.encode())]
        bad = [r for r, t in enumerate(texts) if t != texts[0]]
        if not bad:
            return
        mine, theirs = texts[bad[0]].splitlines(), texts[0].splitlines()
        i = next(
            (i for i, (a, b) in enumerate(zip(mine, theirs)) if a != b),  # noqa: B905
            min(len(mine), len(theirs)),
        )
        got = mine[i] if i < len(mine) else "(nothing)"
        ref = theirs[i] if i < len(theirs) else "(nothing)"
        raise ValueError(
            f"{owner}: the ranks disagree on {what}: rank {bad[0]} has {got!r} where rank 0 "
            f"has {ref!r} (ranks differing from rank 0: {bad}); every rank must run the same "
            f"script on the same data, network and dtype"
        )

    # -- packing ------------------------------------------------------------------------
    def _collective(self, arrays: Sequence[Array], op: Any, inplace: bool = True) -> list[Array]:
        if self.size == 1:
            return list(arrays)
        return self._packed(arrays, op, inplace)

    def _packed(self, arrays: Sequence[Array], op: Any, inplace: bool = True) -> list[Array]:
        """``op`` on one flat buffer per (library, dtype) of ``arrays``, written back
        (``inplace``) or returned as views of that buffer."""
        arrays = list(arrays)
        out = list(arrays)
        if not arrays:
            return out
        groups: dict[tuple[type, str], list[int]] = {}
        for i, a in enumerate(arrays):
            if not backends.is_array(a):
                raise TypeError(
                    f"{type(self).__name__}: expected arrays, got {type(a).__name__} at "
                    f"position {i}"
                )
            groups.setdefault((type(a), backends.dtype_name(a)), []).append(i)
        for idx in groups.values():
            group = [arrays[i] for i in idx]
            for i, result in zip(idx, self._run_packed(group, op, inplace), strict=True):
                out[i] = result
        return out

    def _run_packed(self, group: list[Array], op: Any, inplace: bool = True) -> list[Array]:
        """Pack ``group`` (one library, one dtype) into one buffer, run ``op`` on it,
        and write the result back (``inplace``) or return views of it."""
        first = group[0]
        if isinstance(first, np.ndarray):
            flat = np.concatenate([np.ravel(a) for a in group])
            flat = op(flat)
            xp: Any = np
        else:
            xp = backends.namespace_of(first)
            flat = xp.concat([xp.reshape(a, (-1,)) for a in group], axis=0)
            if self._takes_device(flat):
                flat = op(flat)
            else:  # host staging: one device-to-host and one host-to-device copy
                host = np.array(backends.to_numpy(flat), copy=True)
                flat = backends.from_numpy(op(host), first)
        results = []
        offset = 0
        for a in group:
            n = int(np.prod(a.shape))
            piece = xp.reshape(flat[offset : offset + n], tuple(a.shape))
            offset += n
            if inplace and _writeable(a):
                a[...] = piece
                results.append(a)
            else:
                results.append(piece)
        return results


def _writeable(a: Array) -> bool:
    if isinstance(a, np.ndarray):
        return bool(a.flags.writeable)
    import array_api_compat

    return bool(array_api_compat.is_writeable_array(a))


class SingleProcess(Communicator):
    """The communicator of a job of one process: every collective returns at once.

    ``nnx.distributed.init()`` returns it outside ``mpiexec``, so that a distributed
    script runs unchanged on one process.

    >>> import nnx, numpy as np
    >>> comm = nnx.distributed.SingleProcess()
    >>> comm.allreduce_sum([np.ones(2)])[0], comm.sum_floats([1.5])
    (array([1., 1.]), [1.5])
    """

    engine = "single"

    def __init__(self, timeout: float = 60.0) -> None:
        super().__init__(0, 1, timeout)

    def allreduce_buffer(self, buf: Array) -> Array:
        return buf

    def broadcast_buffer(self, buf: Array, root: int) -> Array:
        return buf

    def allgather_bytes(self, data: bytes) -> list[bytes]:
        return [bytes(data)]

    def barrier(self) -> None:
        return None
