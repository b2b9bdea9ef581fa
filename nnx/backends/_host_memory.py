"""Host memory: keep the C allocator from handing freed buffers back to the kernel.

A training step allocates and frees the same large temporaries (window copies, layer
outputs, gradients) every step. With glibc's defaults, blocks over the dynamic mmap
threshold are ``mmap``-ed and ``munmap``-ed every time, and free memory at the top of
the heap is trimmed back to the kernel, so every step pays fresh page faults for all of
them: on a virtual machine that can double a CPU step and makes two processes slow each
other down (docs/benchmarks.rst has the measured figures). Fixing the mmap threshold at
its maximum and raising the trim threshold lets glibc reuse those blocks, as PyTorch's
and CuPy's caching allocators do on their devices. The cost is that up to
:data:`TRIM_THRESHOLD` bytes of freed memory per arena stay with the process.

Applied once when nnx is imported, on Linux with glibc only; ``NNX_MALLOC_TUNING=0`` in
the environment leaves the allocator alone.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform

#: Blocks up to this size come from the heap instead of ``mmap`` (glibc's maximum).
MMAP_THRESHOLD = 32 << 20
#: Free memory at the top of the heap kept before trimming it back to the kernel.
TRIM_THRESHOLD = 256 << 20

_M_TRIM_THRESHOLD = -1  # glibc's mallopt parameter numbers (malloc.h)
_M_MMAP_THRESHOLD = -3

_tuned = False


def tune_allocator() -> bool:
    """Set glibc's mmap and trim thresholds for a training loop; True when applied.

    Does nothing (False) on other platforms or C libraries, or when the environment
    variable ``NNX_MALLOC_TUNING`` is ``0``.
    """
    global _tuned
    if _tuned:
        return True
    if os.environ.get("NNX_MALLOC_TUNING", "1").strip() == "0":
        return False
    if platform.system() != "Linux" or not _glibc():
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    _tuned = bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
        mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    )
    return _tuned


def _glibc() -> bool:
    try:
        return os.confstr("CS_GNU_LIBC_VERSION").startswith("glibc")
    except (ValueError, OSError, AttributeError):
        return False


def allocator_tuned() -> bool:
    """Whether :func:`tune_allocator` has changed this process's allocator."""
    return _tuned
