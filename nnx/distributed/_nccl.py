"""The NCCL engine (CuPy): gradients of CuPy networks summed GPU to GPU, one GPU per rank.

MPI stays underneath for what NCCL does not do: handing out NCCL's unique id, control
messages (the architecture check, failure notices), host arrays and the barrier.
"""

from __future__ import annotations

import pickle
import time
from typing import Any

from .. import backends
from ._base import Array, Communicator, DistributedError
from ._mpi import MPICommunicator


class CupyNccl:
    """The NCCL calls through ``cupy.cuda.nccl``, on the current CuPy stream."""

    def __init__(self, size: int, uid: Any, rank: int) -> None:
        import cupy
        from cupy.cuda import nccl

        self._cupy, self._nccl = cupy, nccl
        self.comm = nccl.NcclCommunicator(size, uid, rank)
        self.dtypes = {
            "float16": nccl.NCCL_FLOAT16,
            "float32": nccl.NCCL_FLOAT32,
            "float64": nccl.NCCL_FLOAT64,
            "int32": nccl.NCCL_INT32,
            "int64": nccl.NCCL_INT64,
        }

    @staticmethod
    def unique_id() -> Any:
        from cupy.cuda import nccl

        return nccl.get_unique_id()

    def is_device_array(self, x: Any) -> bool:
        return isinstance(x, self._cupy.ndarray)

    def _dtype(self, buf: Any) -> Any:
        name = backends.dtype_name(buf)
        if name not in self.dtypes:
            raise TypeError(f"NCCLCommunicator: no NCCL type for dtype {name}")
        return self.dtypes[name]

    def allreduce(self, buf: Any) -> Any:
        stream = self._cupy.cuda.get_current_stream()
        ptr = buf.data.ptr
        self.comm.allReduce(ptr, ptr, buf.size, self._dtype(buf), self._nccl.NCCL_SUM, stream.ptr)
        return stream

    def broadcast(self, buf: Any, root: int) -> Any:
        stream = self._cupy.cuda.get_current_stream()
        ptr = buf.data.ptr
        self.comm.broadcast(ptr, ptr, buf.size, self._dtype(buf), root, stream.ptr)
        return stream

    def abort(self) -> None:
        self.comm.abort()


class NCCLCommunicator(Communicator):
    """Ranks that each drive one NVIDIA GPU, summing CuPy arrays with NCCL.

    Rank ``r`` uses GPU ``local_rank % device_count`` (its rank on its node), selected
    as nnx's CuPy device. CuPy arrays are packed on the GPU and reduced there; host
    (NumPy) arrays and control messages go through the underlying
    :class:`MPICommunicator`. Waiting is bounded as there: the stream is polled until
    :attr:`timeout`, then NCCL's communicator is aborted and
    :class:`DistributedError` raised. NCCL needs one GPU per rank: two ranks on one
    GPU fail at set-up ("Duplicate GPU detected").

    Parameters
    ----------
    mpi : MPICommunicator
        The job's MPI communicator.
    ops : object, optional
        The NCCL calls (default :class:`CupyNccl` on the GPU of this rank); tests pass
        a stand-in to check the packing and the waiting without a GPU.
    """

    engine = "nccl"

    def __init__(self, mpi: MPICommunicator, ops: Any = None) -> None:
        super().__init__(mpi.rank, mpi.size, mpi.timeout)
        self.mpi = mpi
        self.local_rank = mpi.local_rank
        if ops is None:
            import cupy

            self.device = self.local_rank % cupy.cuda.runtime.getDeviceCount()
            cupy.cuda.Device(self.device).use()
            if backends.get_backend() == "cupy":
                backends.set_backend("cupy", self.device)
            uid = CupyNccl.unique_id() if self.rank == 0 else None
            uid = pickle.loads(mpi.allgather_bytes(pickle.dumps(uid))[0])
            ops = CupyNccl(self.size, uid, self.rank)
        self.ops = ops

    # the timeout is the MPI communicator's, so that init(timeout=...) sets both
    @property
    def timeout(self) -> float:
        return self.mpi.timeout

    @timeout.setter
    def timeout(self, value: float) -> None:
        if hasattr(self, "mpi"):
            self.mpi.timeout = float(value)

    def _takes_device(self, flat: Array) -> bool:
        return self.ops.is_device_array(flat)

    def _wait_stream(self, stream: Any, what: str) -> None:
        """Poll ``stream`` until done, within the timeout, watching for notices."""
        deadline = time.monotonic() + self.timeout
        pause = 0.0
        while not stream.done:
            self.mpi.check_usable()  # a notice seen by the MPI watchdog
            if time.monotonic() > deadline:
                reason = (
                    f"nnx.distributed: rank {self.rank} of {self.size} waited "
                    f"{self.timeout:g} s in NCCL {what}; another rank failed, died or hangs"
                )
                self.mpi.mark_timed_out(reason)
                self.ops.abort()
                raise DistributedError(reason)
            pause = min(1e-3, pause * 2 or 1e-5)
            time.sleep(pause)

    def allreduce_buffer(self, buf: Array) -> Array:
        if not self.ops.is_device_array(buf):
            return self.mpi.allreduce_buffer(buf)
        self.mpi.check_usable()
        if self.size > 1:
            self._nccl_allreduce(buf)
        return buf

    def _nccl_allreduce(self, buf: Array) -> Array:
        """NCCL's in-place allreduce of a device buffer, waited for."""
        self._wait_stream(self.ops.allreduce(buf), "allreduce")
        return buf

    def nccl_allreduce_sum(self, arrays: list[Array]) -> list[Array]:
        """:meth:`allreduce_sum` of device arrays through NCCL, packed, even in a job of
        one rank (where :meth:`allreduce_sum` returns at once): what
        ``benchmarks/gpu_nccl_check.py`` drives on one GPU."""
        return self._packed(arrays, self._nccl_allreduce)

    def broadcast_buffer(self, buf: Array, root: int) -> Array:
        if not self.ops.is_device_array(buf):
            return self.mpi.broadcast_buffer(buf, root)
        self.mpi.check_usable()
        if self.size > 1:
            self._wait_stream(self.ops.broadcast(buf, root), "broadcast")
        return buf

    def allgather_bytes(self, data: bytes) -> list[bytes]:
        return self.mpi.allgather_bytes(data)

    def barrier(self) -> None:
        self.mpi.barrier()

    def fail(self, exc: BaseException) -> None:
        self.mpi.fail(exc)
