r"""Data-parallel training over several processes: communicators on MPI or NCCL.

nnx does not implement a protocol of its own: it scales out on MPI through
`mpi4py <https://mpi4py.readthedocs.io>`_ (CPU arrays, and GPU arrays staged through the
host unless the MPI library is CUDA-aware), and on NCCL through CuPy when every rank
drives its own GPU. The model is ChainerMN's: a communicator object, the parameters
broadcast from rank 0 once, then one packed allreduce of all gradients per step.

Because an nnx loss is the *sum* of the per-sample losses, the gradient of a global
batch :math:`B` split into contiguous shards :math:`B_0, \dots, B_{N-1}` is the sum of
the shards' gradients,

.. math::
    \nabla_w \sum_{i \in B} \ell_i = \sum_{r=0}^{N-1} \nabla_w \sum_{i \in B_r} \ell_i,

so :class:`nnx.Optim` with ``comm=`` trains exactly the one-process parameters, up to
float rounding.

>>> import nnx
>>> comm = nnx.distributed.init()      # outside mpiexec: a single-process communicator
>>> comm.rank, comm.size
(0, 1)
>>> comm.shard(10)                     # this rank's contiguous part of 10 samples
(0, 10)

Run the same script on several processes with ``mpiexec -n 4 python script.py``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from .. import backends
from ._base import Communicator, DistributedError, SingleProcess
from ._data_parallel import AGREED as AGREED  # used by nnx.Optim
from ._data_parallel import DataParallel as DataParallel

__all__ = [
    "Communicator",
    "CupyNccl",
    "DistributedError",
    "MPICommunicator",
    "NCCLCommunicator",
    "SingleProcess",
    "default_timeout",
    "in_launcher",
    "launcher_rank",
    "init",
    "nccl_unavailable",
    "notify_failure",
]

#: Environment variables by which MPI launchers (MPICH/Hydra, Open MPI, Intel MPI,
#: MVAPICH, PMIx) and SLURM's ``srun`` announce the size of the job (``srun``'s own
#: step variable: ``SLURM_NTASKS`` is also set in a batch script, outside ``srun``).
LAUNCHER_SIZE_VARIABLES = (
    "PMI_SIZE",
    "OMPI_COMM_WORLD_SIZE",
    "MV2_COMM_WORLD_SIZE",
    "PMIX_SIZE",
    "SLURM_STEP_NUM_TASKS",
)

#: ... and the rank of this process in it.
LAUNCHER_RANK_VARIABLES = (
    "PMI_RANK",
    "OMPI_COMM_WORLD_RANK",
    "MV2_COMM_WORLD_RANK",
    "PMIX_RANK",
    "SLURM_PROCID",
)

MPI_HINT = (
    "pip install mpi4py mpich   (or: pip install 'nnx-backprop[mpi]'; with a system MPI "
    "such as Open MPI, pip install mpi4py alone builds against it)"
)

_COMMUNICATORS: dict[str, Communicator] = {}


def default_timeout() -> float:
    """Seconds a rank waits for the others in a collective before it gives up (60, or
    the environment variable ``NNX_DISTRIBUTED_TIMEOUT``)."""
    raw = os.environ.get("NNX_DISTRIBUTED_TIMEOUT", "").strip()
    if not raw:
        return 60.0
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(
            f"NNX_DISTRIBUTED_TIMEOUT must be a number of seconds, got {raw!r}"
        ) from None
    if not value > 0:
        raise ValueError(f"NNX_DISTRIBUTED_TIMEOUT must be positive, got {raw!r}")
    return value


def in_launcher() -> bool:
    """Whether this process was started by an MPI launcher (``mpiexec``, ``srun``) as
    one of several processes. Decided from the environment, without importing MPI."""
    for name in LAUNCHER_SIZE_VARIABLES:
        raw = os.environ.get(name, "").strip()
        if raw.isdigit() and int(raw) > 1:
            return True
    return False


def launcher_rank() -> int:
    """This process's rank as its launcher announced it (0 outside a launcher, or when
    no known variable says), decided from the environment without importing MPI: what
    a program may check before :func:`init`, to print its help or usage errors once."""
    if not in_launcher():
        return 0
    for name in LAUNCHER_RANK_VARIABLES:
        raw = os.environ.get(name, "").strip()
        if raw.isdigit():
            return int(raw)
    return 0


def _import_mpi(owner: str) -> Any:
    try:
        from mpi4py import MPI
    except ImportError as exc:
        raise ImportError(
            f"{owner}: the MPI engine needs the package 'mpi4py' ({exc}). Install it with: "
            f"{MPI_HINT}"
        ) from None
    return MPI


def init(engine: str = "auto", timeout: float | None = None) -> Communicator:
    """A communicator for this process: the same script runs on 1 or N processes.

    Parameters
    ----------
    engine : {"auto", "mpi", "nccl", "single"}
        ``"auto"``: a :class:`SingleProcess` communicator unless the process was started
        by an MPI launcher as one of several (:func:`in_launcher`); then NCCL when the
        current backend is ``"cupy"`` and CuPy's NCCL is usable, MPI otherwise.
        ``"mpi"`` (:class:`MPICommunicator`) and ``"nccl"`` (:class:`NCCLCommunicator`)
        force an engine; ``"single"`` forces one process.
    timeout : float, optional
        Seconds a rank waits for the others in one collective operation before it raises
        :class:`DistributedError` (default :func:`default_timeout`, 60 s). A rank that
        fails with an exception inside :class:`nnx.Optim`, or dies of an uncaught
        exception, tells the others, which stop at once with its message.

    Returns
    -------
    Communicator
        With ``rank``, ``size``, ``allreduce_sum``, ``broadcast``, ``barrier``. Calling
        ``init`` again with the same engine returns the same communicator.

    Raises
    ------
    ImportError
        ``mpi4py`` is needed (under a launcher, or ``engine="mpi"``) and missing; the
        message says how to install it.
    RuntimeError
        ``engine="nccl"`` without a usable GPU or NCCL library.

    Examples
    --------
    >>> import nnx
    >>> nnx.distributed.init("single").size
    1
    """
    if engine not in ("auto", "mpi", "nccl", "single"):
        raise ValueError(
            f"nnx.distributed.init: engine must be 'auto', 'mpi', 'nccl' or 'single', "
            f"got {engine!r}"
        )
    t = default_timeout() if timeout is None else _check_timeout(timeout)
    if engine == "auto":
        if not in_launcher():
            engine = "single"
        elif backends.get_backend() == "cupy" and nccl_unavailable() is None:
            engine = "nccl"
        else:
            engine = "mpi"
    comm = _COMMUNICATORS.get(engine)
    if comm is None:
        if engine == "single":
            comm = SingleProcess(timeout=t)
        elif engine == "mpi":
            from ._mpi import MPICommunicator

            comm = MPICommunicator(_import_mpi("nnx.distributed.init").COMM_WORLD, timeout=t)
            _check_launcher_agrees(comm.size)
        else:
            reason = nccl_unavailable()
            if reason is not None:
                raise RuntimeError(f"nnx.distributed.init: engine 'nccl' unavailable: {reason}")
            from ._mpi import MPICommunicator
            from ._nccl import NCCLCommunicator

            mpi = _COMMUNICATORS.get("mpi") or MPICommunicator(
                _import_mpi("nnx.distributed.init").COMM_WORLD, timeout=t
            )
            _COMMUNICATORS["mpi"] = mpi
            comm = NCCLCommunicator(mpi)
        _COMMUNICATORS[engine] = comm
    comm.timeout = t
    return comm


def _check_launcher_agrees(size: int) -> None:
    """Refuse a job whose launcher started several processes that MPI sees as one each
    (mpi4py built for another MPI than the ``mpiexec`` used): each would train alone and
    write the same files."""
    announced = max(
        (int(v) for v in (os.environ.get(n, "").strip() for n in LAUNCHER_SIZE_VARIABLES)
         if v.isdigit()),
        default=1,
    )  # fmt: skip
    if size == 1 and announced > 1:
        raise RuntimeError(
            f"nnx.distributed.init: the launcher started {announced} processes, but MPI "
            f"sees each as a job of 1: mpi4py is built for another MPI than this mpiexec. "
            f"Start the job with the mpiexec of mpi4py's MPI (python -m mpi4py "
            f"--mpi-library tells which), or install mpi4py for this one"
        )


def _check_timeout(timeout: Any) -> float:
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
        raise ValueError(
            f"nnx.distributed.init: timeout must be a positive number of seconds, got {timeout!r}"
        )
    return float(timeout)


def nccl_unavailable() -> str | None:
    """Why the ``"nccl"`` engine cannot run here (CuPy, a GPU or the NCCL library is
    missing), or ``None`` when it can."""
    try:
        import cupy
    except ImportError:
        return "CuPy is not installed (pip install cupy-cuda12x)"
    if not cupy.is_available():
        return "CuPy finds no usable NVIDIA GPU"
    try:
        from cupy.cuda import nccl
    except ImportError as exc:  # pragma: no cover - depends on the CuPy build
        return f"cupy.cuda.nccl cannot be imported ({exc})"
    if not getattr(nccl, "available", False):
        return 'the NCCL library is not loadable (pip install "nvidia-nccl-cu12>=2.18")'
    return None


def notify_failure(exc: BaseException) -> str:
    """Tell the other ranks of every communicator made by :func:`init` that this process
    fails with ``exc`` (they stop at once instead of timing out). Returns ``"rank r of
    N: "`` to prefix this rank's error message with, or ``""`` in a single process."""
    label = ""
    for comm in _COMMUNICATORS.values():
        if comm.size > 1:
            comm.fail(exc)
            label = f"rank {comm.rank} of {comm.size}: "
    return label


def signature(network: Any) -> str:
    """Text that two ranks' networks share when they have the same architecture and
    dtype: the network's description and every parameter's name, shape and dtype."""
    lines = [repr(network)]
    for name, p in network.named_parameters():
        lines.append(f"{name} {tuple(int(s) for s in p.shape)} {backends.dtype_name(p)}")
    return "\n".join(lines)


def host_scalars(values: Sequence[float]) -> np.ndarray:
    """A float64 NumPy vector of ``values``, ready for :meth:`Communicator.allreduce_sum`."""
    return np.asarray(values, dtype=np.float64)


def __getattr__(name: str) -> Any:
    # the engine classes import nothing heavy, but keep mpi4py out of `import nnx`
    if name == "MPICommunicator":
        from ._mpi import MPICommunicator

        return MPICommunicator
    if name == "NCCLCommunicator":
        from ._nccl import NCCLCommunicator

        return NCCLCommunicator
    if name == "CupyNccl":
        from ._nccl import CupyNccl

        return CupyNccl
    raise AttributeError(f"module 'nnx.distributed' has no attribute {name!r}")
