"""The MPI engine (mpi4py): non-blocking collectives waited for with a deadline, and a
side channel on which a failing rank tells the others to stop."""

from __future__ import annotations

import atexit
import os
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

_LIVE: weakref.WeakSet[MPICommunicator] = weakref.WeakSet()
_HOOKED = False


class MPICommunicator(Communicator):
    """Ranks of an MPI job (``mpiexec -n N``, ``srun``), through ``mpi4py``.

    Every collective is non-blocking (``Iallreduce``, ``Ibcast``, ...) and waited for
    with a deadline of :attr:`timeout` seconds, while listening for failure notices:
    a rank that fails calls :meth:`fail` (``nnx.Optim`` does, and so does an uncaught
    exception on any rank once the communicator exists), and every other rank raises
    :class:`DistributedError` with its message at its next (or current) collective. A
    rank that times out (another rank hung or died silently) ends the whole job with
    ``MPI_Abort`` when its Python exits, so no rank is left waiting.

    Arrays on a GPU are copied to a host buffer for MPI (one copy each way, packed)
    unless ``cuda_aware=True`` (or ``NNX_MPI_CUDA_AWARE=1``) says that the MPI library
    takes device memory.

    Parameters
    ----------
    comm : mpi4py.MPI.Comm
        The processes to use (usually ``MPI.COMM_WORLD``); it is duplicated, so nnx's
        messages never match the caller's.
    timeout : float, default 60
        Seconds to wait in one collective.
    cuda_aware : bool, optional
        Whether MPI reads and writes GPU memory directly.
    """

    engine = "mpi"

    def __init__(self, comm: Any, timeout: float = 60.0, cuda_aware: bool | None = None) -> None:
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
        self._alarm: _Alarm | None = None
        self._comm = self._dup(comm)
        self._ctrl = self._dup(comm)
        self.local_rank = self._local_rank(comm)
        if self.size > 1:
            self._notice_buf = bytearray(_NOTICE_BYTES)
            self._notice_req = self._ctrl.Irecv(
                [self._notice_buf, MPI.BYTE], source=MPI.ANY_SOURCE, tag=_NOTICE_TAG
            )
            if MPI.Query_thread() == MPI.THREAD_MULTIPLE:
                self._alarm = _Alarm(self._ctrl, self.rank)
            _watch(self)

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
    def _usable(self) -> None:
        if self._broken is not None:
            raise DistributedError(self._broken)

    def _check_notices(self) -> None:
        req = self._notice_req
        if req is None:
            return
        status = self._MPI.Status()
        if req.Test(status):
            self._notice_arrived(status)

    def _notice_arrived(self, status: Any) -> None:
        """Raise the error a notice carries (a peer failed, or this rank's alarm rang)."""
        self._notice_req = None
        source = status.Get_source()
        n = status.Get_count(self._MPI.BYTE)
        if source == self.rank and n == 0:
            self._timed_out = True
            self._broken = (
                f"nnx.distributed: rank {self.rank} of {self.size} waited {self.timeout:g} s "
                f"in {self._waiting_in} for the other ranks; one of them failed, died or hangs "
                f"(see its output). The job is aborted when this process exits (settable: "
                f"nnx.distributed.init(timeout=...) or NNX_DISTRIBUTED_TIMEOUT)"
            )
        else:
            text = bytes(self._notice_buf[:n]).decode(errors="replace")
            self._broken = (
                f"nnx.distributed: rank {source} of {self.size} failed with {text}; "
                f"rank {self.rank} stops too"
            )
        raise DistributedError(self._broken)

    def _wait(self, req: Any, what: str) -> None:
        """Wait for ``req`` at most :attr:`timeout` seconds, watching for notices.

        MPI's own blocking wait, on the collective and the notice receive together (a
        Python polling loop doubles the time of an allreduce on a busy machine); a
        timer thread posts an empty notice to this rank when the deadline passes.
        """
        if req.Test():
            return
        self._waiting_in = what
        notice = self._notice_req
        if notice is None or self._alarm is None:
            self._poll(req)
            return
        self._alarm.arm(self.timeout)
        status = self._MPI.Status()
        try:
            index = self._MPI.Request.Waitany([req, notice], status)
        finally:
            fired = self._alarm.disarm()
        if index == 1:
            self._notice_arrived(status)
        if fired:  # the deadline passed just as the operation completed
            notice.Wait(status)
            self._notice_arrived(status)

    def _poll(self, req: Any) -> None:
        """Wait by polling (no thread support in this MPI, or no notice channel)."""
        deadline = time.monotonic() + self.timeout
        pause = 0.0
        while not req.Test():
            self._check_notices()
            pause = min(1e-3, pause * 2 or 1e-6)
            time.sleep(pause)
            if time.monotonic() > deadline:
                self._timed_out = True
                self._broken = (
                    f"nnx.distributed: rank {self.rank} of {self.size} waited "
                    f"{self.timeout:g} s in {self._waiting_in} for the other ranks; one of "
                    f"them failed, died or hangs (see its output). The job is aborted when "
                    f"this process exits"
                )
                raise DistributedError(self._broken)

    # -- the engine operations ----------------------------------------------------------
    def _takes_device(self, flat: Array) -> bool:
        return self.cuda_aware and not isinstance(flat, np.ndarray)

    def _buffer(self, flat: Array) -> Any:
        if not isinstance(flat, np.ndarray):
            backends.synchronize(flat)  # MPI reads device memory outside the stream
        return flat

    def _allreduce_flat(self, buf: Array) -> Array:
        self._usable()
        if self.size > 1:
            req = self._comm.Iallreduce(self._MPI.IN_PLACE, self._buffer(buf), op=self._MPI.SUM)
            self._wait(req, "allreduce_sum")
        return buf

    def _broadcast_flat(self, buf: Array, root: int) -> Array:
        self._usable()
        if self.size > 1:
            self._wait(self._comm.Ibcast(self._buffer(buf), root=root), "broadcast")
        return buf

    def allgather_bytes(self, data: bytes) -> list[bytes]:
        self._usable()
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
        self._usable()
        if self.size > 1:
            self._wait(self._comm.Ibarrier(), "barrier")

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
        """At exit: withdraw the pending notice receive; abort the job after a timeout."""
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


class _Alarm:
    """A timer thread that, at the deadline, sends an empty notice to its own rank,
    which wakes the ``Waitany`` of :meth:`MPICommunicator._wait`."""

    def __init__(self, ctrl: Any, rank: int) -> None:
        self._ctrl, self._rank = ctrl, rank
        self._cond = threading.Condition()
        self._deadline: float | None = None
        self._fired = False
        self._payload = bytearray()
        threading.Thread(target=self._run, name="nnx-distributed-alarm", daemon=True).start()

    def arm(self, seconds: float) -> None:
        with self._cond:
            self._deadline = time.monotonic() + seconds
            self._fired = False
            self._cond.notify()

    def disarm(self) -> bool:
        """Stop the timer; whether it rang."""
        with self._cond:
            self._deadline = None
            return self._fired

    def _run(self) -> None:
        from mpi4py import MPI

        with self._cond:
            while True:
                if self._deadline is None:
                    self._cond.wait()
                    continue
                left = self._deadline - time.monotonic()
                if left > 0:
                    self._cond.wait(left)
                    continue
                self._deadline = None
                self._fired = True
                self._ctrl.Isend([self._payload, MPI.BYTE], dest=self._rank, tag=_NOTICE_TAG)


def _watch(comm: MPICommunicator) -> None:
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
    atexit.register(_close_all)


def _close_all() -> None:
    for c in list(_LIVE):
        c._close()
