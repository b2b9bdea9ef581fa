"""NumPy backend: the default, CPU only."""

from __future__ import annotations

import functools
import types
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np

from ._base import Backend
from ._strided import strided_windows, strided_windows_2d


class NumpyBackend(Backend):
    name = "numpy"
    module_name = "numpy"
    install_hint = "pip install numpy"
    free_reads = True

    def _load(self) -> None:
        import array_api_compat.numpy as xp

        self.array_type = np.ndarray
        self.xp = fast_namespace(xp)

    def from_numpy(self, a: np.ndarray, device: Any = None) -> np.ndarray:
        return np.array(a, copy=True)

    def to_numpy(self, x: Any) -> np.ndarray:
        return np.asarray(x)

    def base_array(self, x: Any) -> np.ndarray:
        return np.asarray(x)  # np.memmap, np.matrix ...: a plain ndarray view

    def host_view(self, x: Any) -> np.ndarray | None:
        return x if type(x) is np.ndarray and x.flags.writeable else None

    def from_host_memory(self, a: np.ndarray, device: Any = None) -> np.ndarray:
        return a

    def matmul_into(self, a: Any, b: Any, out: Any) -> bool:
        # BLAS writes into out only if it is C-contiguous, of the inputs' dtype, and
        # apart from them; np.dot(out=) raises (or copies) otherwise
        if not (
            type(a) is type(b) is type(out) is np.ndarray
            and a.ndim == b.ndim == 2
            and a.dtype == b.dtype == out.dtype
            and out.shape == (a.shape[0], b.shape[1])
            and out.flags.c_contiguous
            and out.flags.writeable
            and not np.may_share_memory(out, a)
            and not np.may_share_memory(out, b)
        ):
            return False
        np.dot(a, b, out=out)
        return True

    def windows(self, x: np.ndarray, k_size: int, stride: int) -> np.ndarray:
        return strided_windows(_read_only_view, x, k_size, stride)

    def windows_2d(
        self, x: np.ndarray, k_size: tuple[int, int], stride: tuple[int, int]
    ) -> np.ndarray:
        return strided_windows_2d(_read_only_view, x, k_size, stride)

    def uniform(self, shape: tuple[int, ...], like: Any, rng: np.random.Generator) -> Any:
        dtype = like.dtype if like.dtype in (np.float32, np.float64) else np.float64
        if isinstance(rng, np.random.Generator):
            return rng.random(shape, dtype=dtype)
        return np.asarray(rng.random(shape)).astype(dtype)  # NumPy's global state


F = TypeVar("F", bound=Callable[..., Any])


def quiet_float_errors(func: F) -> F:
    """``func`` with NumPy's overflow / invalid / divide-by-zero warnings off.

    For code that checks its results itself (a training step reports a non-finite
    loss as ``FloatingPointError``). NumPy >= 2's ``errstate`` used as a decorator
    sets the state per call in a context variable (thread-safe), cheaper than a
    ``with np.errstate(...)`` block; NumPy 1's would reuse one object for every call,
    so there each call gets its own block.
    """
    quiet = {"over": "ignore", "invalid": "ignore", "divide": "ignore"}
    if np.lib.NumpyVersion(np.__version__) >= "2.0.0":
        return np.errstate(**quiet)(func)

    @functools.wraps(func)
    def quieted(*args: Any, **kwargs: Any) -> Any:
        with np.errstate(**quiet):
            return func(*args, **kwargs)

    return quieted  # type: ignore[return-value]


#: Longest last axis that ``max(x, axis=-1)`` reduces through ``argmax`` (see below).
MAX_ROW_BY_ARGMAX = 512


def fast_namespace(base: Any) -> types.ModuleType:
    """array-api-compat's NumPy namespace with cheaper reductions and ``astype``.

    Each replacement below was measured to pay on the small arrays of a training step
    (figures in ``benchmarks/results`` and ``docs/benchmarks.rst``), and gives the
    same results as the function it replaces:

    - ``sum`` / ``max`` / ``min`` of a plain floating ``ndarray`` (no ``dtype=``) call
      the ufunc's ``reduce`` directly, skipping NumPy's Python wrapper
      (``_wrapreduction``), which costs more than the reduction itself here;
    - ``max`` over the last axis of a C-contiguous float array with short rows (at most
      :data:`MAX_ROW_BY_ARGMAX`, e.g. the classes of a softmax) reads each row at its
      ``argmax``: ``maximum.reduce`` runs a slow loop per short row;
    - ``count_nonzero`` of a whole ``ndarray`` calls ``numpy.count_nonzero``;
    - ``argmax`` of an ``ndarray`` along one axis is ``ndarray.argmax`` (the training
      accuracy of every batch takes two), and ``take`` along one axis is
      ``ndarray.take`` (every shuffled batch takes its rows twice);
    - ``matmul`` of two 2-D ``ndarray`` of one float dtype is ``ndarray.dot``, the same
      BLAS call without the ufunc machinery.

    Every other name is array-api-compat's own object.
    """
    ns = types.ModuleType(base.__name__, base.__doc__)
    for name in dir(base):
        if not name.startswith("__"):
            setattr(ns, name, getattr(base, name))
    ndarray = np.ndarray
    add, maximum, minimum = np.add.reduce, np.maximum.reduce, np.minimum.reduce
    base_sum, base_max, base_min, base_astype = base.sum, base.max, base.min, base.astype
    base_arange, np_arange = base.arange, np.arange
    base_count_nonzero, np_count_nonzero = getattr(base, "count_nonzero", None), np.count_nonzero
    base_matmul = base.matmul
    base_argmax, base_take = base.argmax, base.take

    def sum(x: Any, /, *, axis: Any = None, dtype: Any = None, keepdims: bool = False) -> Any:  # noqa: A001
        if dtype is None and type(x) is ndarray and x.dtype.kind == "f":
            return add(x, axis=axis, keepdims=keepdims)
        return base_sum(x, axis=axis, dtype=dtype, keepdims=keepdims)

    def max(x: Any, /, *, axis: Any = None, keepdims: bool = False) -> Any:  # noqa: A001
        if type(x) is ndarray and x.dtype.kind == "f" and x.size:
            ndim = x.ndim
            if (
                ndim >= 2
                and (axis == -1 or axis == ndim - 1)
                and x.shape[-1] <= MAX_ROW_BY_ARGMAX
                and x.flags.c_contiguous
            ):
                return max_of_rows(x, keepdims)
            return maximum(x, axis=axis, keepdims=keepdims)
        return base_max(x, axis=axis, keepdims=keepdims)

    row_starts: dict[tuple[int, ...], np.ndarray] = {}

    def max_of_rows(x: np.ndarray, keepdims: bool) -> np.ndarray:
        """``max(x, axis=-1)``: the value at the first ``argmax`` of each row.

        ``argmax`` counts NaN as the maximum, so a NaN propagates as in ``max``; of
        ``-0.0`` and ``+0.0`` the first is returned (the standard leaves that open).
        """
        first = x.argmax(axis=-1)
        starts = row_starts.get(x.shape)  # flat index of each row's first element
        if starts is None:
            if len(row_starts) >= 64:
                row_starts.clear()
            starts = np_arange(0, x.size, x.shape[-1]).reshape(first.shape)
            row_starts[x.shape] = starts
        out = x.reshape(-1)[first + starts]
        return out[..., None] if keepdims else out

    def min(x: Any, /, *, axis: Any = None, keepdims: bool = False) -> Any:  # noqa: A001
        if type(x) is ndarray and x.dtype.kind == "f" and x.size:
            return minimum(x, axis=axis, keepdims=keepdims)
        return base_min(x, axis=axis, keepdims=keepdims)

    def astype(x: Any, dtype: Any, /, *, copy: bool = True, device: Any = None) -> Any:
        if device is None and type(x) is ndarray:
            return x.astype(dtype, copy=copy)
        return base_astype(x, dtype, copy=copy, device=device)

    def arange(
        start: Any, /, stop: Any = None, step: Any = 1, *, dtype: Any = None, device: Any = None
    ) -> Any:
        if device is None and dtype is None and type(start) is int and stop is None:
            return np_arange(start)  # arange(n): NumPy's default int, as the compat one
        return base_arange(start, stop, step, dtype=dtype, device=device)

    def count_nonzero(x: Any, /, *, axis: Any = None, keepdims: bool = False) -> Any:
        if axis is None and not keepdims and type(x) is ndarray:
            return np.asarray(np_count_nonzero(x))  # a 0-D array, as the compat one
        return base_count_nonzero(x, axis=axis, keepdims=keepdims)

    def matmul(x1: Any, x2: Any, /) -> Any:
        if (
            type(x1) is ndarray
            and type(x2) is ndarray
            and x1.ndim == 2 == x2.ndim
            and x1.dtype is x2.dtype
            and x1.dtype.kind == "f"
        ):
            return x1.dot(x2)
        return base_matmul(x1, x2)

    def argmax(x: Any, /, *, axis: Any = None, keepdims: bool = False) -> Any:
        if type(x) is ndarray and axis is not None and not keepdims and x.ndim:
            return x.argmax(axis=axis)
        return base_argmax(x, axis=axis, keepdims=keepdims)

    def take(x: Any, indices: Any, /, *, axis: Any = None) -> Any:
        if type(x) is ndarray and type(indices) is ndarray and axis is not None:
            return x.take(indices, axis=axis)
        return base_take(x, indices, axis=axis)

    fast = [sum, max, min, astype, arange, matmul, argmax, take]
    if base_count_nonzero is not None:  # standard 2024.12: older array-api-compat lacks it
        fast.append(count_nonzero)
    for f in fast:
        f.__doc__ = getattr(base, f.__name__).__doc__
        setattr(ns, f.__name__, f)
    return ns


def _read_only_view(x: np.ndarray, shape: tuple[int, ...], strides: tuple[int, ...]) -> np.ndarray:
    """``as_strided`` that cannot be written through: windows overlap, and a write into
    one would land in the caller's input (``sliding_window_view`` is read-only too)."""
    return np.lib.stride_tricks.as_strided(x, shape=shape, strides=strides, writeable=False)
