"""The interface every backend implements."""

from __future__ import annotations

from typing import Any

import numpy as np


class Backend:
    """Everything nnx needs to know about one array library.

    Subclasses import their library lazily in :meth:`load`, so that nothing is imported
    until the backend is selected (or an array of that library is seen).
    """

    name: str = ""
    module_name: str = ""
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

    def flushes_subnormals(self, dtype: str) -> bool:
        """Whether this library computes in ``dtype`` with subnormal numbers flushed to
        zero (inputs and results below the smallest normal number read as 0)."""
        return False

    def __repr__(self) -> str:
        return f"<nnx backend {self.name!r}>"
