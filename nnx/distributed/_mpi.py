"""The MPI engine (mpi4py): non-blocking collectives waited for with a deadline, and a
side channel on which a failing rank tells the others to stop."""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import threading
import time
import weakref
from typing import Any

import numpy as np

from .. import backends
from ._base import Array, Communicator, DistributedError

#: Tag of the failure notices on the control communicator.
_NOTICE_TAG = 77
#: Largest failure notice, in bytes (longer messages are cut).
_NOTICE_BYTES = 4096
#: Seconds between two looks of the watchdog thread.
_PERIOD = 0.05
#: How many pairs of shared-memory windows a communicator makes (one per layout of
#: gradients); they live until the job ends, so later layouts use MPI_Allreduce.
SHARED_LAYOUTS = 4
#: Seconds a rank stuck in a collective waits after a failure notice before aborting
#: the job, so that the failing rank can print its traceback first.
_GRACE = 2.0

_LIVE: weakref.WeakSet[MPICommunicator] = weakref.WeakSet()


def _shared_room() -> int | None:
    """Free bytes where MPI maps shared memory on Linux (``/dev/shm``), or ``None``
    where that cannot be told."""
    try:
        return shutil.disk_usage("/dev/shm").free
    except OSError:
        return None


_HOOKED = False


class MPICommunicator(Communicator):
    """Ranks of an MPI job (``mpiexec -n N``, ``srun``), through ``mpi4py``.

    Every collective is non-blocking (``Iallreduce``, ``Ibcast``, ...) and waited for
    with MPI's own ``Wait``, while a watchdog thread listens for failure notices and
    watches the clock. A rank that fails calls :meth:`fail` (``nnx.Optim`` does, and so
    does an uncaught exception on any rank once the communicator exists). When a notice
    arrives, or a wait lasts longer than :attr:`timeout` seconds (a rank died silently or
    hangs), the watchdog prints the reason and, if this rank is stuck in a collective
    operation that can no longer complete, ends the whole job with ``MPI_Abort`` (after
    a two-second grace that lets the failing rank print its traceback); a rank that is
    not waiting raises :class:`DistributedError` at its next collective instead.

    Arrays on a GPU are copied to a host buffer for MPI (one copy each way, packed)
    unless ``cuda_aware=True`` (or ``NNX_MPI_CUDA_AWARE=1``) says that the MPI library
    takes device memory.

    When every rank runs on one machine, the kept buffers of a data-parallel step
    (``allreduce_sum(..., reuse=True)`` on host memory) are two MPI shared-memory
    windows (``MPI_Win_allocate_shared``), and their sum takes two barriers instead of
    an ``MPI_Allreduce``: each rank adds up its slice of everyone's buffer and writes it
    into everyone's other buffer (:meth:`sum_into`). Every rank then holds the same sums
    in the same order of addition. ``shared_memory=False`` (or
    ``NNX_MPI_SHARED_MEMORY=0``) keeps ``MPI_Allreduce``, as do layouts of gradients
    beyond the first :data:`SHARED_LAYOUTS` (the windows live until the job ends).

    Parameters
    ----------
    comm : mpi4py.MPI.Comm
        The processes to use (usually ``MPI.COMM_WORLD``); it is duplicated, so nnx's
        messages never match the caller's.
    timeout : float, default 60
        Seconds to wait in one collective.
    cuda_aware : bool, optional
        Whether MPI reads and writes GPU memory directly.
    shared_memory : bool, optional
        Whether to sum the kept buffers in shared memory when every rank is on one
        machine (default: yes, unless ``NNX_MPI_SHARED_MEMORY=0``).
    """

    engine = "mpi"

    def __init__(
        self,
        comm: Any,
        timeout: float = 60.0,
        cuda_aware: bool | None = None,
        shared_memory: bool | None = None,
    ) -> None:
        from mpi4py import MPI

        self._MPI = MPI
        super().__init__(comm.Get_rank(), comm.Get_size(), timeout)
        if cuda_aware is None:
            cuda_aware = os.environ.get("NNX_MPI_CUDA_AWARE", "").strip() == "1"
        self.cuda_aware = bool(cuda_aware)
        #: why this communicator cannot be used any more (``None``: it can)
        self._broken: str | None = None
        self._timed_out = False
        self._notice_out: list[Any] = []
        self._notice_req: Any = None
        self._waiting_in = "set-up"
        #: start of the wait in progress (``time.monotonic()``), ``None`` when not waiting
        self._since: float | None = None
        self._abort_at: float | None = None
        self._watchdog: threading.Thread | None = None
        self._closing = False
        self._comm = self._dup(comm)
        self._ctrl = self._dup(comm)
        self.local_rank = self._local_rank(comm)
        if shared_memory is None:
            shared_memory = os.environ.get("NNX_MPI_SHARED_MEMORY", "").strip() != "0"
        #: the ranks as one machine's processes, when all of them are (shared memory)
        self._node: Any = None
        #: every rank's part of each shared buffer, by ``id`` of this rank's part
        self._peers: dict[int, list[np.ndarray]] = {}
        self._windows: list[Any] = []
        if shared_memory and self.size > 1:
            node = self._blocking(
                lambda: self._comm.Split_type(MPI.COMM_TYPE_SHARED, key=self.rank),
                "the creation of the communicator",
            )
            if node.Get_size() == self.size:
                self._node = node
            else:
                node.Free()
        if self.size > 1:
            self._notice_buf = bytearray(_NOTICE_BYTES)
            self._notice_req = self._ctrl.Irecv(
                [self._notice_buf, MPI.BYTE], source=MPI.ANY_SOURCE, tag=_NOTICE_TAG
            )
            if MPI.Query_thread() == MPI.THREAD_MULTIPLE:
                self._watchdog = threading.Thread(
                    target=MPICommunicator._watch_loop,
                    args=(weakref.ref(self),),
                    name="nnx-mpi-watchdog",
                )
                self._watchdog.daemon = True
                self._watchdog.start()
            MPICommunicator._close_at_exit(self)

    def _dup(self, comm: Any) -> Any:
        new, req = comm.Idup()
        self._wait(req, "the creation of the communicator")
        return new

    def _local_rank(self, comm: Any) -> int:
        """Rank among the processes of this node (which GPU to use)."""
        for name in ("MPI_LOCALRANKID", "OMPI_COMM_WORLD_LOCAL_RANK", "SLURM_LOCALID"):
            raw = os.environ.get(name, "").strip()
            if raw.isdigit():
                return int(raw)
        return 0 if self.size == 1 else self.rank

    # -- waiting ------------------------------------------------------------------------
    def check_usable(self) -> None:
        """Raise :class:`DistributedError` if this communicator cannot be used any more
        (a failure notice arrived, or a wait timed out)."""
        if self._broken is not None:
            raise DistributedError(self._broken)

    def _take_notice(self) -> bool:
        """Whether a failure notice has arrived (then :attr:`_broken` says which)."""
        req = self._notice_req
        if req is None or self._broken is not None:
            return self._broken is not None
        status = self._MPI.Status()
        if not req.Test(status):
            return False
        self._notice_req = None
        n = status.Get_count(self._MPI.BYTE)
        text = bytes(self._notice_buf[:n]).decode(errors="replace")
        self._broken = (
            f"nnx.distributed: rank {status.Get_source()} of {self.size} failed with "
            f"{text}; rank {self.rank} stops too"
        )
        return True

    def _time_out(self) -> None:
        self.mark_timed_out(
            f"nnx.distributed: rank {self.rank} of {self.size} waited {self.timeout:g} s "
            f"in {self._waiting_in} for the other ranks; one of them failed, died or hangs "
            f"(see its output). Settable: nnx.distributed.init(timeout=...) or "
            f"NNX_DISTRIBUTED_TIMEOUT"
        )

    def mark_timed_out(self, reason: str) -> None:
        """Record that a wait (this engine's, or one layered on it such as NCCL's) timed
        out: every later operation raises :class:`DistributedError` with ``reason``, and
        the job is aborted at exit (another rank may still be waiting)."""
        self._timed_out = True
        self._broken = reason

    def _wait(self, req: Any, what: str) -> None:
        """Wait for ``req``; see the class description for failures and the timeout.

        The wait itself is MPI's ``Wait``: testing the notice receive in the same loop
        (``Waitany``, or ``Test`` calls between polls) makes MPICH poll its network
        module too, and an allreduce of 1.6 MB between two processes of one machine
        became 5 times slower (measured: benchmarks/scaling.py).
        """
        if self._watchdog is None:
            self.check_usable()
            self._waiting_in = what
            self._poll(req)
        else:
            self._blocking(req.Wait, what)

    def _blocking(self, call: Any, what: str) -> Any:
        """``call()`` (a wait, or a blocking collective MPI has no non-blocking form
        of), watched by the watchdog's clock."""
        self.check_usable()
        self._waiting_in = what
        self._since = time.monotonic()
        try:
            return call()
        finally:
            self._since = None

    def _poll(self, req: Any) -> None:
        """Wait by polling: before the watchdog exists, or without thread support."""
        deadline = time.monotonic() + self.timeout
        pause = 0.0
        while not req.Test():
            if self._take_notice():
                raise DistributedError(self._broken)
            pause = min(1e-3, pause * 2 or 1e-6)
            time.sleep(pause)
            if time.monotonic() > deadline:
                self._time_out()
                raise DistributedError(self._broken)

    def _watch_once(self) -> None:
        """One look of the watchdog thread: notices, the clock, the abort."""
        self._take_notice()
        since = self._since
        if since is None:
            return
        now = time.monotonic()
        if self._broken is None and now - since > self.timeout:
            self._time_out()
        if self._broken is None:
            return
        if self._abort_at is None:  # stuck in an operation that cannot complete
            print(f"{self._broken}; aborting the job", file=sys.stderr, flush=True)
            self._abort_at = now + (0.0 if self._timed_out else _GRACE)
        elif now >= self._abort_at and self._since is not None:
            sys.stdout.flush()
            self._MPI.COMM_WORLD.Abort(1)

    # -- the engine operations ----------------------------------------------------------
    def _takes_device(self, flat: Array) -> bool:
        return self.cuda_aware and not isinstance(flat, np.ndarray)

    def _buffer(self, flat: Array) -> Any:
        if not isinstance(flat, np.ndarray):
            backends.synchronize(flat)  # MPI reads device memory outside the stream
        return flat

    def allreduce_buffer(self, buf: Array) -> Array:
        self.check_usable()
        if self.size > 1:
            req = self._comm.Iallreduce(self._MPI.IN_PLACE, self._buffer(buf), op=self._MPI.SUM)
            self._wait(req, "allreduce_sum")
        return buf

    def broadcast_buffer(self, buf: Array, root: int) -> Array:
        self.check_usable()
        if self.size > 1:
            self._wait(self._comm.Ibcast(self._buffer(buf), root=root), "broadcast")
        return buf

    def allgather_bytes(self, data: bytes) -> list[bytes]:
        self.check_usable()
        if self.size == 1:
            return [bytes(data)]
        counts = np.zeros(self.size, dtype=np.int64)
        req = self._comm.Iallgather(np.array([len(data)], dtype=np.int64), counts)
        self._wait(req, "allgather")
        displs = np.concatenate([[0], np.cumsum(counts)[:-1]])
        recv = np.zeros(int(counts.sum()), dtype=np.uint8)
        send = np.frombuffer(bytes(data), dtype=np.uint8)
        req = self._comm.Iallgatherv(send, [recv, (counts, displs), self._MPI.BYTE])
        self._wait(req, "allgather")
        return [
            recv[d : d + c].tobytes() for d, c in zip(displs.tolist(), counts.tolist(), strict=True)
        ]

    def barrier(self) -> None:
        self.check_usable()
        if self.size > 1:
            self._wait(self._comm.Ibarrier(), "barrier")

    # -- shared memory ------------------------------------------------------------------
    def shared_buffers(self, n: int, dtype: str) -> list[np.ndarray] | None:
        # windows cannot be freed while a network may still hold views of them
        if self._node is None or len(self._windows) >= 2 * SHARED_LAYOUTS:
            return None
        MPI = self._MPI
        itemsize = np.dtype(dtype).itemsize
        nbytes = max(1, n) * itemsize
        # every rank must take the same path: all of them have room, or none uses it
        room = _shared_room()
        mine = b"1" if room is None or room > 2.5 * nbytes * self.size else b"0"
        if any(answer != b"1" for answer in self.allgather_bytes(mine)):
            return None
        info = MPI.Info.Create()
        info.Set("alloc_shared_noncontig", "true")  # each part on its own pages
        hosts = []
        for _ in range(2):
            win = self._blocking(
                lambda: MPI.Win.Allocate_shared(nbytes, itemsize, info, comm=self._node),
                "allreduce_sum (allocating shared memory)",
            )
            win.Lock_all(MPI.MODE_NOCHECK)  # MPI_Win_sync needs a passive-target epoch
            self._windows.append(win)
            peers = [
                np.frombuffer(win.Shared_query(r)[0], dtype=dtype, count=n)
                for r in range(self.size)
            ]
            peers[self.rank][...] = 0
            self._peers[id(peers[self.rank])] = peers
            hosts.append(peers[self.rank])
        info.Free()
        self._shared_barrier("allreduce_sum")  # every part zeroed before anyone reads
        return hosts

    def sum_into(self, src: np.ndarray, dst: np.ndarray) -> None:
        self.check_usable()
        ins, outs = self._peers[id(src)], self._peers[id(dst)]
        r, n = self.rank, self.size
        lo, hi = src.shape[0] * r // n, src.shape[0] * (r + 1) // n
        self._shared_barrier("allreduce_sum")  # every rank's src is written
        # this rank's slice, summed in rank order, written into every rank's dst: the
        # same sums everywhere, and no rank reads another's dst afterwards
        part = dst[lo:hi]
        np.add(ins[0][lo:hi], ins[1][lo:hi], out=part)
        for k in range(2, n):
            np.add(part, ins[k][lo:hi], out=part)
        for k in range(n):
            if k != r:
                outs[k][lo:hi] = part
        self._shared_barrier("allreduce_sum")  # every slice arrived

    def _shared_barrier(self, what: str) -> None:
        """A barrier that also orders the shared-memory accesses (``MPI_Win_sync``)."""
        for win in self._windows:
            win.Sync()
        self._wait(self._comm.Ibarrier(), what)
        for win in self._windows:
            win.Sync()

    # -- failure ------------------------------------------------------------------------
    def fail(self, exc: BaseException) -> None:
        """Tell every other rank that this rank failed with ``exc`` (once)."""
        if self.size == 1 or self._broken is not None:
            return
        text = f"{type(exc).__name__}: {exc}".encode(errors="replace")[: _NOTICE_BYTES - 1]
        self._broken = f"nnx.distributed: this rank ({self.rank}) failed with {text.decode()}"
        payload = bytearray(text)
        self._notice_out.append(payload)  # alive until the sends complete
        reqs = [
            self._ctrl.Isend([payload, self._MPI.BYTE], dest=r, tag=_NOTICE_TAG)
            for r in range(self.size)
            if r != self.rank
        ]
        deadline = time.monotonic() + min(self.timeout, 5.0)
        while not self._MPI.Request.Testall(reqs) and time.monotonic() < deadline:
            time.sleep(1e-3)

    def _close(self) -> None:
        """At exit: stop the watchdog, withdraw the pending notice receive, and abort the
        job after a timeout (another rank may still be waiting)."""
        self._closing = True
        if self._watchdog is not None:
            self._watchdog.join(timeout=2 * _PERIOD + 1.0)
        req, self._notice_req = self._notice_req, None
        if req is not None:
            try:
                req.Cancel()
                req.Wait()
            except self._MPI.Exception:  # pragma: no cover - already finalized
                pass
        if self._timed_out:
            sys.stdout.flush()
            sys.stderr.flush()
            self._MPI.COMM_WORLD.Abort(1)

    # -- the watchdog thread and the exit hooks (they hold no strong reference) ---------
    @staticmethod
    def _watch_loop(ref: weakref.ref[MPICommunicator]) -> None:
        while True:
            time.sleep(_PERIOD)
            comm = ref()
            if comm is None or comm._closing:
                return
            comm._watch_once()
            del comm

    @staticmethod
    def _close_at_exit(comm: MPICommunicator) -> None:
        """Close ``comm`` at exit, and notify the other ranks of an uncaught exception."""
        global _HOOKED
        _LIVE.add(comm)
        if _HOOKED:
            return
        _HOOKED = True
        previous = sys.excepthook

        def hook(kind: type[BaseException], value: BaseException, tb: Any) -> None:
            previous(kind, value, tb)
            for c in list(_LIVE):
                c.fail(value)

        sys.excepthook = hook
        atexit.register(MPICommunicator._close_all)

    @staticmethod
    def _close_all() -> None:
        for c in list(_LIVE):
            c._close()
