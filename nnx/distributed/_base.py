"""The communicator interface, the packing of many arrays into one buffer per dtype, and
the single-process communicator."""

from __future__ import annotations

import math
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
        #: packed buffers kept by ``allreduce_sum(..., reuse=True)`` with their views,
        #: per library, dtype, device and layout
        self._kept: dict[tuple[Any, ...], _Kept] = {}

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
        """Whether the engine works on ``flat`` where it lives (else host memory is
        used through its NumPy view, and device memory is staged through a host NumPy
        buffer)."""
        return False

    def shared_buffers(self, n: int, dtype: str) -> list[np.ndarray] | None:
        """Two zeroed host buffers of ``n`` items that every rank can read, for
        :meth:`sum_into`, or ``None`` (the default: the engine sums in place). Called
        by every rank at once, for the kept buffers of ``allreduce_sum(..., reuse=True)``;
        every rank must give the same answer."""
        return None

    def sum_into(self, src: np.ndarray, dst: np.ndarray) -> None:
        """Write into ``dst`` the sum over the ranks of their ``src`` (two buffers from
        :meth:`shared_buffers`; every rank calls it at once, with its own pair). Only
        until it returns may other ranks read this rank's ``src`` and write its
        ``dst``: afterwards both are this rank's to write."""
        raise NotImplementedError

    def fail(self, exc: BaseException) -> None:
        """Tell the other ranks that this one failed with ``exc``: they raise
        :class:`DistributedError` with its message instead of waiting."""

    # -- the public collectives -----------------------------------------------------------
    def allreduce_sum(
        self, arrays: Sequence[Array], inplace: bool = True, reuse: bool = False
    ) -> list[Array]:
        """Sum each array over the ranks, in place.

        The arrays are packed into one flat buffer per (library, dtype), so a list of
        gradients of one dtype costs one collective operation. Writeable arrays are
        updated in place and returned; for read-only ones (JAX) the result is a new array
        in the returned list, at the same position. With ``inplace=False`` no input is
        written: the sums are returned as views of the packed buffers, which saves
        copying them back (what a data-parallel step does with its gradients); in a job
        of one process they are the arrays themselves.

        With ``reuse=True`` the communicator keeps the packed buffers (one per library,
        dtype and device; mutable libraries only) and packs the next ``reuse=True`` call
        with the same shapes into them again, returning (``inplace=False``) views of
        them: the same view objects every time, or, where the engine sums one buffer
        into another (MPI with every rank on one machine: two buffers in shared memory,
        :meth:`shared_buffers`), two sets of views in turn. The views returned by one
        call stay valid until the next call but one. An input that *is* a view of the
        buffer being packed, at its own position, is not copied at all: a data-parallel
        step binds the views as its gradients, and the backward pass writes the largest
        ones straight into the buffer (:meth:`nnx.Module.accumulate_product`), so the
        packing copy disappears (PyTorch DDP's ``gradient_as_bucket_view``).

        >>> import nnx, numpy as np
        >>> comm = nnx.distributed.init("single")
        >>> comm.allreduce_sum([np.ones(3), np.zeros((2, 2))])[0]
        array([1., 1., 1.])
        """
        for arg, value in (("inplace", inplace), ("reuse", reuse)):
            if not isinstance(value, bool):
                raise TypeError(f"{self!r}.allreduce_sum: {arg} must be a bool, got {value!r}")
        return self._collective(arrays, self.allreduce_buffer, inplace, reuse)

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
    def _collective(
        self, arrays: Sequence[Array], op: Any, inplace: bool = True, reuse: bool = False
    ) -> list[Array]:
        if self.size == 1:
            return list(arrays)
        return self._packed(arrays, op, inplace, reuse)

    def _packed(
        self, arrays: Sequence[Array], op: Any, inplace: bool = True, reuse: bool = False
    ) -> list[Array]:
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
            results = self._run_packed(group, op, inplace, reuse)
            for i, result in zip(idx, results, strict=True):
                out[i] = result
        return out

    def _run_packed(
        self, group: list[Array], op: Any, inplace: bool = True, reuse: bool = False
    ) -> list[Array]:
        """Pack ``group`` (one library, one dtype) into one buffer, run ``op`` on it,
        and write the result back (``inplace``) or return views of it."""
        first = group[0]
        xp: Any = np if isinstance(first, np.ndarray) else backends.namespace_of(first)
        shapes = [tuple(a.shape) for a in group]
        kept = self._keep(first, shapes) if reuse else None
        if kept is not None:
            flat, views = kept.flat[kept.turn], kept.views[kept.turn]
            _fill(xp, flat, group, views)
            if kept.hosts:  # summed by the engine into the other buffer of the pair
                self.sum_into(kept.hosts[kept.turn], kept.hosts[1 - kept.turn])
                kept.turn = 1 - kept.turn
                return _unpacked(group, kept.views[kept.turn], inplace)
        elif xp is np:
            flat = np.concatenate([np.ravel(a) for a in group])
        else:
            flat = xp.concat([xp.reshape(a, (-1,)) for a in group], axis=0)
        if xp is np or self._takes_device(flat):
            summed = op(flat)
        elif (host := backends.host_view(flat)) is not None:
            op(host)  # host memory (PyTorch on the CPU): summed where it lies
            summed = flat
        else:  # host staging: one device-to-host and one host-to-device copy
            summed = backends.from_numpy(op(np.array(backends.to_numpy(flat), copy=True)), first)
        if kept is None:
            return _unpacked(group, _views(xp, summed, shapes), inplace)
        if summed is not flat:  # the sums go back into the kept buffer: the same views
            flat[...] = summed
        return _unpacked(group, views, inplace)

    def _keep(self, like: Array, shapes: list[tuple[int, ...]]) -> _Kept | None:
        """The kept packing buffer(s) for arrays of ``shapes`` like ``like``, with their
        views (one per shape), or ``None`` for an immutable library (then a fresh buffer
        is packed). One buffer (or pair) per layout, the last few layouts kept (two
        networks trained in turn keep theirs)."""
        if not backends.is_mutable(like):
            return None
        dtype = backends.dtype_name(like)
        key = (type(like), dtype, str(getattr(like, "device", None)), tuple(shapes))
        kept = self._kept.pop(key, None)
        if kept is None:
            kept = self._new_kept(like, dtype, shapes)
        self._kept[key] = kept  # the most recent last
        while len(self._kept) > _KEPT_LAYOUTS:
            del self._kept[next(iter(self._kept))]
        return kept

    def _new_kept(self, like: Array, dtype: str, shapes: list[tuple[int, ...]]) -> _Kept:
        """The buffer(s) of a new layout: the engine's shared pair where it has one and
        ``like``'s library can use host memory in place, else one buffer made on
        ``like``'s device the way nnx puts any array there."""
        n = sum(math.prod(s) for s in shapes)
        xp = backends.namespace_of(like)
        hosts = None
        if backends.from_host_memory(np.zeros(0, dtype=dtype), like) is not None:
            hosts = self.shared_buffers(n, dtype)
        if hosts is not None:
            flat = [backends.from_host_memory(h, like) for h in hosts]
        else:
            flat = [backends.from_numpy(np.zeros(n, dtype=dtype), like)]
        return _Kept(flat, [_views(xp, f, shapes) for f in flat], hosts)


class _Kept:
    """The packed buffers kept for one layout: ``flat[i]`` with its views ``views[i]``.
    With ``hosts`` (the engine's shared pair, as NumPy arrays), the two buffers are used
    in turn: ``turn`` is the one to pack next."""

    __slots__ = ("flat", "views", "hosts", "turn")

    def __init__(self, flat: list[Array], views: list[list[Array]], hosts: Any) -> None:
        self.flat, self.views, self.hosts, self.turn = flat, views, hosts, 0


#: How many packing layouts a communicator keeps buffers for.
_KEPT_LAYOUTS = 4


def _unpacked(group: list[Array], pieces: list[Array], inplace: bool) -> list[Array]:
    """The pieces of the summed buffer (``inplace=False``), or the inputs with the
    pieces written into them where they are writeable (the pieces where not)."""
    if not inplace:
        return list(pieces)
    results = []
    for a, piece in zip(group, pieces, strict=True):
        if _writeable(a):
            a[...] = piece
            results.append(a)
        else:
            results.append(piece)
    return results


def _views(xp: Any, flat: Array, shapes: list[tuple[int, ...]]) -> list[Array]:
    """Views of consecutive pieces of the 1-D ``flat``, one per shape."""
    views, offset = [], 0
    for shape in shapes:
        n = math.prod(shape)
        views.append(xp.reshape(flat[offset : offset + n], shape))
        offset += n
    return views


def _fill(xp: Any, flat: Array, group: list[Array], views: list[Array]) -> None:
    """Copy ``group`` into the kept buffer ``flat`` whose pieces are ``views``. An input
    that is already its own piece (a gradient the backward pass wrote in place) is not
    copied; one that is another piece is copied out first, before it is overwritten."""
    sources = [
        None
        if a is views[i]
        else xp.asarray(xp.reshape(a, (-1,)), copy=True)
        if any(a is v for v in views)
        else xp.reshape(a, (-1,))
        for i, a in enumerate(group)
    ]
    offset = 0
    for src, v in zip(sources, views, strict=True):
        n = math.prod(v.shape)
        if src is not None:
            flat[offset : offset + n] = src
        offset += n


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
