"""The interface every backend implements."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import numpy as np

from ._graph import CapturedGraph


class Backend:
    """Everything nnx needs to know about one array library.

    Subclasses import their library lazily in :meth:`load`, so that nothing is imported
    until the backend is selected (or an array of that library is seen).
    """

    name: str = ""
    module_name: str = ""
    #: Top-level modules whose array types belong to this library (``module_name``
    #: unless the arrays live elsewhere, as JAX's in ``jaxlib``).
    array_modules: tuple[str, ...] = ()
    install_hint: str = ""
    #: Whether arrays can be written in place (``p -= d``, ``g[...] = 0``); JAX's cannot.
    mutable_arrays: bool = True
    #: Whether reading a value back to Python costs nothing to wait for (host memory,
    #: eager): checks may then read at once instead of joining the step's one read.
    free_reads: bool = False

    def __init__(self) -> None:
        self.xp: Any = None
        self.array_type: Any = None

    # -- life cycle -----------------------------------------------------------------
    def load(self) -> Backend:
        """Import the library (once) and check it is usable; return ``self``."""
        if self.xp is None:
            self._load()
        return self

    def _load(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def prepare(self) -> Backend:
        """Called when data is to be put on this library (``set_backend``,
        ``use_backend``, ``Module.to`` ...), not when one of its arrays is merely
        recognised: library-wide settings nnx needs are made here. Returns ``self``."""
        return self

    # -- arrays ---------------------------------------------------------------------
    def is_array(self, x: Any) -> bool:
        return self.array_type is not None and isinstance(x, self.array_type)

    def dtype(self, name: str) -> Any:
        return getattr(self.xp, name)

    def normalize_device(self, device: Any) -> Any:
        """Check ``device`` for this library and return the canonical form."""
        if device not in (None, "cpu"):
            raise ValueError(f"backend {self.name!r} runs on the CPU only; got device={device!r}")
        return None

    def device_of(self, x: Any) -> Any:
        return None

    def from_numpy(self, a: np.ndarray, device: Any = None) -> Any:
        """Copy a NumPy array (already of the wanted dtype) to this backend."""
        raise NotImplementedError

    def to_numpy(self, x: Any) -> np.ndarray:
        raise NotImplementedError

    def windows(self, x: Any, k_size: int, stride: int) -> Any:
        """``(batch, out_length, channels, k_size)`` sliding windows of ``x``."""
        raise NotImplementedError

    def add_at(self, x: Any, index: Any, value: Any) -> Any:
        """``x[index] += value``; returns the result (``x`` itself, written in place,
        where arrays are mutable)."""
        x[index] += value
        return x

    def set_at(self, x: Any, index: Any, value: Any) -> Any:
        """``x[index] = value``; returns the result (``x`` itself where mutable)."""
        x[index] = value
        return x

    def base_array(self, x: Any) -> Any:
        """``x``, an instance of a subclass of this library's array type, as the type
        itself, sharing memory (default: ``x`` as it is)."""
        return x

    def host_view(self, x: Any) -> np.ndarray | None:
        """A writeable NumPy array sharing ``x``'s memory (so that a host library such
        as MPI can work on ``x`` in place), or ``None`` where there is none (device
        memory, immutable arrays)."""
        return None

    def from_host_memory(self, a: np.ndarray, device: Any = None) -> Any:
        """An array of this library on ``device`` that shares the memory of the NumPy
        array ``a`` (no copy; e.g. memory that several processes map), or ``None``
        where the library cannot (device memory, immutable arrays)."""
        return None

    def matmul_into(self, a: Any, b: Any, out: Any) -> bool:
        """Write the 2-D product ``a @ b`` into ``out`` if this library can do it without
        a temporary; return whether it did (``False``: nothing was written)."""
        return False

    def synchronize(self, x: Any) -> None:
        """Wait until the work queued on ``x``'s device is done (before another library,
        such as MPI, reads its memory). Host libraries have nothing to wait for."""

    def graphs_supported(self, device: Any) -> bool:
        """Whether :meth:`capture` works for arrays on ``device``."""
        return False

    def graph_mode(self, pool: Any) -> contextlib.AbstractContextManager[None]:
        """Context for code a CUDA graph records, and for its eager rehearsal."""
        return contextlib.nullcontext()

    def new_graph_pool(self) -> Any:
        """Memory reserved for one graph's buffers (``None`` where not needed)."""
        return None

    def capture(self, fn: Callable[[], Any], device: Any, pool: Any = None) -> CapturedGraph:
        """Record the kernels one call of ``fn`` enqueues on ``device`` as a CUDA graph.

        ``fn`` runs once, captured, not executed: its results are only valid after a
        replay. Call it eagerly first (so that caches and lazily created state exist).
        """
        raise ValueError(
            f"backend {self.name!r} has no CUDA graphs; they need the 'cupy' backend or "
            f"'torch' on a CUDA device"
        )

    def windows_2d(self, x: Any, k_size: tuple[int, int], stride: tuple[int, int]) -> Any:
        """``(batch, out_h, out_w, channels, k_h, k_w)`` sliding windows of ``x``.

        The default gathers with standard functions; libraries with strided views
        override it.
        """
        from ._generic import gather_windows_2d

        return gather_windows_2d(self.xp, x, k_size, stride)

    def uniform(self, shape: tuple[int, ...], like: Any, rng: np.random.Generator) -> Any:
        """Uniform :math:`[0, 1)` draws of ``shape`` in ``like``'s dtype and device.

        The default draws on the host from nnx's generator ``rng`` (a
        ``numpy.random.Generator``, or the ``numpy.random`` module before
        :func:`~nnx.manual_seed`) and copies the values over; libraries with their own
        generators draw on the device, seeded from ``rng`` (:func:`seed_from`).
        """
        host = np.asarray(rng.random(shape)).astype(_dtype_of(like))
        return self.from_numpy(host, self.device_of(like))

    def fused_kernel(self, name: str) -> Any:
        """The library's one-launch kernel for :mod:`nnx.backends.fused`'s ``name``, or
        ``None`` (the standard operations are used)."""
        return None

    def flushes_subnormals(self, dtype: str) -> bool:
        """Whether this library computes in ``dtype`` with subnormal numbers flushed to
        zero (inputs and results below the smallest normal number read as 0)."""
        return False

    def __repr__(self) -> str:
        return f"<nnx backend {self.name!r}>"


def _dtype_of(x: Any) -> str:
    return str(x.dtype).rsplit(".", 1)[-1]


def seed_from(rng: Any) -> int:
    """A 63-bit seed drawn from ``rng``: a ``numpy.random.Generator`` or the
    ``numpy.random`` module / a ``RandomState`` (NumPy's global state)."""
    if hasattr(rng, "integers"):
        return int(rng.integers(2**63))
    return int(rng.randint(0, 2**63, dtype=np.int64))
