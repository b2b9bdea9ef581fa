"""Backend selector and every library-specific line of nnx.

Layer code never imports NumPy, CuPy or PyTorch: it asks this package for the array
namespace of its inputs (:func:`namespace_of`), for sliding windows
(:func:`sliding_window`), and for host <-> backend moves (:func:`asarray`,
:func:`to_numpy`). The selected backend, its device and the default float dtype live
here.

>>> import nnx
>>> nnx.get_backend()
'numpy'
>>> with nnx.use_backend("array_api_strict"):
...     nnx.get_backend()
'array_api_strict'
>>> nnx.get_backend()
'numpy'
"""

from __future__ import annotations

import contextlib
import contextvars
import os
from collections.abc import Iterator
from typing import Any, NamedTuple

import numpy as np

from ._base import Backend
from ._cupy import CupyBackend
from ._generic import gather_windows, gather_windows_2d
from ._graph import CapturedGraph
from ._host_memory import allocator_tuned, tune_allocator
from ._jax import JaxBackend
from ._numpy import NumpyBackend
from ._numpy import quiet_float_errors as quiet_float_errors  # for Optim (not public API)
from ._strict import StrictBackend
from ._strided import strided_windows, strided_windows_2d
from ._torch import TorchBackend

__all__ = [
    "BACKENDS",
    "Backend",
    "CapturedGraph",
    "add_at",
    "allocator_tuned",
    "asarray",
    "backend_of",
    "gather_windows",
    "gather_windows_2d",
    "get_backend",
    "get_default_dtype",
    "get_device",
    "get_rng",
    "isolated",
    "manual_seed",
    "namespace_of",
    "set_backend",
    "set_default_dtype",
    "host_view",
    "from_host_memory",
    "matmul_into",
    "set_at",
    "sliding_window",
    "sliding_window_2d",
    "strided_windows",
    "strided_windows_2d",
    "synchronize",
    "to_numpy",
    "tune_allocator",
    "uniform",
    "use_backend",
]

tune_allocator()  # once per process, before the first training step allocates

BACKENDS: dict[str, Backend] = {
    b.name: b
    for b in (NumpyBackend(), CupyBackend(), TorchBackend(), StrictBackend(), JaxBackend())
}
_BY_MODULE = {m: b for b in BACKENDS.values() for m in (b.module_name, *b.array_modules)}
FLOAT_DTYPES = ("float32", "float64")


class _Selection(NamedTuple):
    """What new parameters and data go to: backend, device, default float dtype."""

    backend: Backend
    device: Any
    dtype: str


# The process default, changed by set_backend / set_default_dtype / NNX_BACKEND.
_default = _Selection(BACKENDS["numpy"], None, "float32")
# A thread's or task's own selection (use_backend, nnx.load(dtype=...)); None: the default.
_selection: contextvars.ContextVar[_Selection | None] = contextvars.ContextVar(
    "nnx_selection", default=None
)
# nnx's generator: None means NumPy's global state (until manual_seed); _UNSET: this
# context never chose, the process default applies
_UNSET: Any = object()
_default_rng: np.random.Generator | None = None
_rng: contextvars.ContextVar[Any] = contextvars.ContextVar("nnx_rng", default=_UNSET)


def _current() -> _Selection:
    sel = _selection.get()
    return _default if sel is None else sel


def _select(**changes: Any) -> None:
    """Change the selection of the innermost ``use_backend`` block of this context, or
    the process default outside any block."""
    global _default
    sel = _selection.get()
    if sel is not None:
        _selection.set(sel._replace(**changes))
    else:
        _default = _default._replace(**changes)


def _get(name: str, owner: str = "nnx.set_backend") -> Backend:
    if not isinstance(name, str) or name not in BACKENDS:
        raise ValueError(f"{owner}: unknown backend {name!r}; choose one of {sorted(BACKENDS)}")
    backend = BACKENDS[name]
    try:
        return backend.load().prepare()
    except ImportError as exc:
        raise ImportError(
            f"backend {name!r} needs the {backend.module_name!r} package, which could not "
            f"be imported ({exc}). Install it with: {backend.install_hint}"
        ) from exc


def lookup(name: str, owner: str = "nnx.set_backend") -> Backend:
    """The :class:`Backend` called ``name``, loaded; the errors of :func:`set_backend`
    (naming ``owner``) for an unknown or unavailable one."""
    return _get(name, owner)


def set_backend(name: str, device: Any = None) -> None:
    """Select the array library (and device) that new parameters and data go to.

    ``name`` is one of ``"numpy"``, ``"cupy"``, ``"torch"``, ``"array_api_strict"``,
    ``"jax"``.
    ``device`` is library-specific: ``"cuda:1"``/``1`` for CuPy, any ``torch.device``
    string for PyTorch, ``None`` (or ``"cpu"``) for the CPU libraries.

    Outside any :func:`use_backend` block this sets the process default, seen by
    every thread and task that is not inside such a block; inside a block it changes
    that block's selection only (in this thread or task), until the block ends.

    Raises ``ValueError`` for an unknown name or device, ``ImportError`` when the
    library is not installed and ``RuntimeError`` when CuPy finds no GPU.
    """
    backend = _get(name)
    _select(backend=backend, device=backend.normalize_device(device))


def get_backend() -> str:
    """Name of the current backend (of this thread or task)."""
    return _current().backend.name


def get_device() -> Any:
    """Device of the current backend (``None`` means the library's default)."""
    return _current().device


def current() -> Backend:
    """The current :class:`Backend` object."""
    return _current().backend


@contextlib.contextmanager
def _selected(sel: _Selection, rng: np.random.Generator | None = None) -> Iterator[None]:
    token = _selection.set(sel)
    rng_token = _rng.set(rng) if rng is not None else None
    try:
        yield
    finally:
        _restore(_selection, token, sel)
        if rng_token is not None:
            _restore(_rng, rng_token, rng)


def _restore(var: contextvars.ContextVar[Any], token: contextvars.Token[Any], mine: Any) -> None:
    try:
        var.reset(token)
    except ValueError:  # resumed in another context (a generator moved between threads)
        if var.get() is mine:
            old = token.old_value
            unset = _UNSET if var is _rng else None  # each variable's own default
            var.set(old if old is not contextvars.Token.MISSING else unset)


@contextlib.contextmanager
def use_backend(name: str, device: Any = None) -> Iterator[None]:
    """Context manager: select a backend for the ``with`` block, then restore.

    The selection is context-local (:mod:`contextvars`): it applies to the thread or
    asyncio task that runs the block, never to another one, and the block restores
    exactly the selection it found. (A generator shares its caller's context, as
    every ``contextvars`` user does: a generator paused inside the block leaves the
    selection in force for its caller until it resumes and leaves the block.)
    """
    backend = _get(name)
    sel = _current()._replace(backend=backend, device=backend.normalize_device(device))
    with _selected(sel):
        yield


@contextlib.contextmanager
def isolated(
    backend: str | None = None,
    device: Any = None,
    dtype: Any = None,
    rng: np.random.Generator | None = None,
) -> Iterator[None]:
    """Context manager: this context alone on ``backend``/``device``/``dtype``/``rng``
    (``None``: unchanged) for the block; what other threads and tasks see never changes."""
    sel = _current()
    if backend is not None or device is not None:
        b = _get(backend if backend is not None else sel.backend.name)
        sel = sel._replace(backend=b, device=b.normalize_device(device))
    if dtype is not None:
        sel = sel._replace(dtype=_check_dtype(dtype, "nnx.load"))
    with _selected(sel, rng):
        yield


def _check_dtype(dtype: Any, owner: str) -> str:
    name = _dtype_name(dtype)
    if name not in FLOAT_DTYPES:
        raise ValueError(f"{owner}: dtype must be one of {FLOAT_DTYPES}, got {dtype!r}")
    return name


def set_default_dtype(dtype: Any) -> None:
    """Set the float dtype of new parameters and of :func:`asarray` (float32/float64).

    Like :func:`set_backend`: the process default outside any :func:`use_backend`
    block, that block's dtype (in this thread or task) inside one.
    """
    _select(dtype=_check_dtype(dtype, "nnx.set_default_dtype"))


def get_default_dtype() -> str:
    """The default float dtype, ``"float32"`` or ``"float64"``."""
    return _current().dtype


#: ``(type(dtype), dtype) -> name``: keyed by the type too, so that one library's dtype
#: is never compared with another's (array-api-strict warns when asked)
_DTYPE_NAMES: dict[tuple[type, Any], str] = {}


def _dtype_name(dtype: Any) -> str:
    if isinstance(dtype, str):
        return dtype
    if isinstance(dtype, type):  # a scalar type such as numpy.float64
        return dtype.__name__
    key = (type(dtype), dtype)
    try:  # dtype objects are few: name each once (a training step asks many times)
        return _DTYPE_NAMES[key]
    except (KeyError, TypeError):
        pass
    if isinstance(dtype, np.dtype):  # ">f8" (big-endian) is float64 too
        name = dtype.newbyteorder("=").name
    else:  # numpy: 'float32', torch: 'torch.float32', strict: 'array_api_strict.float32'
        name = str(dtype).rsplit(".", 1)[-1]
    with contextlib.suppress(TypeError):  # an unhashable dtype: named every time
        _DTYPE_NAMES[key] = name
    return name


def canonical_dtype(dtype: Any) -> str:
    """The name (``"float32"``...) of a dtype given as a string, a scalar type or any
    library's dtype object."""
    return _dtype_name(dtype)


def dtype_name(x: Any) -> str:
    """Name (``"float32"``, ``"int64"``...) of an array's dtype, on any backend."""
    return _dtype_name(x.dtype)


def manual_seed(seed: int | None) -> None:
    """Seed nnx's own random generator (initial weights, and any later random draw).

    Until this is called, nnx draws from NumPy's global random state, so
    ``np.random.seed(42)`` at the top of a notebook makes its networks reproducible, as
    in the original library. After ``manual_seed(n)`` nnx uses its own generator
    (``numpy.random.default_rng(n)``), which nothing else touches: the same ``n`` gives
    the same weights on every backend, whatever else the program draws.
    ``manual_seed(None)`` goes back to NumPy's global state.

    The choice is context-local (:mod:`contextvars`): it applies to the calling thread
    (or asyncio task), and becomes the default of threads that never chose, so that
    seeding in one thread never shifts the draws of another thread that seeded itself.

    >>> import nnx, numpy as np
    >>> np.random.seed(42); a = nnx.Linear(3, 2).state_dict()["weight"]
    >>> np.random.seed(42); b = nnx.Linear(3, 2).state_dict()["weight"]
    >>> bool((a == b).all())
    True
    """
    global _default_rng
    if seed is None:
        _default_rng = None
        _rng.set(None)
        return
    if isinstance(seed, bool) or not hasattr(seed, "__index__"):
        raise TypeError(
            f"nnx.manual_seed: seed must be a non-negative int or None, got "
            f"{type(seed).__name__} {seed!r}"
        )
    if int(seed) < 0:
        raise ValueError(f"nnx.manual_seed: seed must be a non-negative int, got {seed!r}")
    rng = np.random.default_rng(seed)
    _default_rng = rng
    _rng.set(rng)


def get_rng() -> Any:
    """What nnx draws random numbers from, in this thread or task: its own
    ``numpy.random.Generator`` after :func:`manual_seed`, else the ``numpy.random``
    module (NumPy's global state).

    Both offer ``standard_normal``, ``random``, ``normal``, ``uniform`` and
    ``permutation`` with the same signatures.
    """
    rng = _rng.get()
    if rng is _UNSET:
        rng = _default_rng
    return np.random if rng is None else rng


@contextlib.contextmanager
def scoped_rng(generator: np.random.Generator) -> Iterator[None]:
    """Draw from ``generator`` inside the block (this thread or task only), then
    restore the generator this context had."""
    token = _rng.set(generator)
    try:
        yield
    finally:
        _restore(_rng, token, generator)


# -- arrays ---------------------------------------------------------------------------
_TYPE_CACHE: dict[type, Backend | None] = {}


def backend_of(x: Any) -> Backend | None:
    """The :class:`Backend` an array belongs to, or ``None`` when it is no known array."""
    t = type(x)
    try:
        return _TYPE_CACHE[t]
    except KeyError:
        pass
    backend = _BY_MODULE.get(t.__module__.split(".", 1)[0])
    if backend is not None:
        backend.load()
        if not backend.is_array(x):
            backend = None
    _TYPE_CACHE[t] = backend
    return backend


def is_array(x: Any) -> bool:
    """Whether ``x`` is an array nnx can work with (any known backend or namespace)."""
    if backend_of(x) is not None:
        return True
    try:
        namespace_of(x)
    except TypeError:
        return False
    return True


_NS_CACHE: dict[type, Any] = {}


def namespace_of(x: Any) -> Any:
    """The Array API namespace of ``x`` (array-api-compat's wrapper where needed)."""
    try:
        return _NS_CACHE[type(x)]
    except KeyError:
        pass
    backend = backend_of(x)
    if backend is not None:
        xp = backend.xp
    else:
        import array_api_compat

        xp = array_api_compat.array_namespace(x)
    _NS_CACHE[type(x)] = xp
    return xp


def is_mutable(x: Any) -> bool:
    """Whether ``x`` can be updated in place (``False`` for JAX arrays)."""
    backend = backend_of(x)
    if backend is not None:
        return backend.mutable_arrays
    import array_api_compat

    return bool(array_api_compat.is_writeable_array(x))


def free_reads(x: Any) -> bool:
    """Whether reading ``x``'s values back to Python needs no wait (NumPy: host memory,
    computed eagerly), so that a check may read at once rather than be deferred."""
    backend = backend_of(x)
    return backend is not None and backend.free_reads


def backend_name(x: Any) -> str:
    """Readable name of the library an array comes from (for error messages)."""
    backend = backend_of(x)
    if backend is not None:
        return backend.name
    return type(x).__module__.split(".", 1)[0] + "." + type(x).__name__


def asarray(x: Any, dtype: Any = None) -> Any:
    """Put host data (NumPy arrays, lists, scalars) on the current backend and device.

    Integer and boolean data keep their dtype; floating data takes the default float
    dtype unless ``dtype`` is given. Arrays of another backend are moved (through
    NumPy). The input is never modified.
    """
    sel = _current()
    backend = sel.backend
    if backend.is_array(x) and dtype is None and dtype_name(x).startswith(("int", "uint", "bool")):
        return x  # already there, in the dtype it keeps
    host = to_numpy(x) if (backend_of(x) is not None or _has_dlpack(x)) else np.asarray(x)
    if host.dtype.kind not in "biuf":
        raise TypeError(
            f"nnx.asarray: expected numeric data (bool, int or float), got "
            f"{type(x).__name__} of dtype {host.dtype}"
        )
    if dtype is not None:
        host = host.astype(_dtype_name(dtype), copy=False)
    elif host.dtype.kind == "f":
        host = host.astype(sel.dtype, copy=False)
    return backend.from_numpy(host, sel.device)


def _has_dlpack(x: Any) -> bool:
    return hasattr(x, "__dlpack__") and not isinstance(x, np.ndarray)


def to_numpy(x: Any) -> np.ndarray:
    """Bring an array of any backend (or host data) back to a NumPy array."""
    backend = backend_of(x)
    if backend is not None:
        return backend.to_numpy(x)
    if _has_dlpack(x):
        return np.from_dlpack(x)
    return np.asarray(x)


def from_numpy(a: np.ndarray, like: Any) -> Any:
    """Copy a NumPy array to the backend and device of the array ``like``."""
    backend = backend_of(like)
    if backend is None:
        xp = namespace_of(like)
        return xp.asarray(a)
    return backend.from_numpy(a, backend.device_of(like))


def add_at(x: Any, index: Any, value: Any) -> Any:
    """``x[index] += value`` on any backend; use the result (a new array on JAX, ``x``
    itself, updated in place, elsewhere). For arrays the caller created."""
    backend = backend_of(x)
    if backend is None:
        x[index] += value
        return x
    return backend.add_at(x, index, value)


def host_view(x: Any) -> np.ndarray | None:
    """A writeable NumPy array sharing ``x``'s memory (NumPy arrays, PyTorch CPU
    tensors), or ``None`` (device memory, immutable or unknown arrays): a host library
    such as MPI may then work on ``x`` in place, without copies."""
    backend = backend_of(x)
    return None if backend is None else backend.host_view(x)


def base_array(x: Any) -> Any:
    """``x`` as its library's own array type where it is an instance of a subclass
    (``np.memmap``, ``np.matrix``, ``torch.nn.Parameter``), sharing its memory; ``x``
    itself otherwise. Layers take such input as the plain array it holds."""
    backend = backend_of(x)
    if backend is None or type(x) is backend.array_type:
        return x
    return backend.base_array(x)


def from_host_memory(a: np.ndarray, like: Any) -> Any:
    """An array of ``like``'s library and device sharing the NumPy array ``a``'s memory
    (NumPy: ``a`` itself; PyTorch: a CPU tensor over it), or ``None`` where there is
    none (device memory, immutable arrays): the inverse of :func:`host_view`."""
    backend = backend_of(like)
    return None if backend is None else backend.from_host_memory(a, backend.device_of(like))


def matmul_into(a: Any, b: Any, out: Any) -> bool:
    """Write the 2-D product ``a @ b`` into ``out`` where ``out``'s library can (NumPy,
    PyTorch: same dtype, contiguous ``out`` apart from the inputs); return whether it
    did. Callers compute ``a @ b`` the usual way when it returns ``False``."""
    backend = backend_of(out)
    return backend is not None and backend.matmul_into(a, b, out)


def set_at(x: Any, index: Any, value: Any) -> Any:
    """``x[index] = value`` on any backend; use the result (see :func:`add_at`)."""
    backend = backend_of(x)
    if backend is None:
        x[index] = value
        return x
    return backend.set_at(x, index, value)


def synchronize(x: Any) -> None:
    """Wait for the device work queued on ``x`` (GPU backends); a no-op on the host."""
    backend = backend_of(x)
    if backend is not None:
        backend.synchronize(x)


def sliding_window(x: Any, k_size: int, stride: int) -> Any:
    """``(batch, out_length, channels, k_size)`` windows of a ``(batch, length, channels)`` array.

    ``out[b, o, c, k] = x[b, o * stride + k, c]``. NumPy and CuPy return a strided view
    (no copy; NumPy's is read-only, as ``sliding_window_view``'s), PyTorch
    ``Tensor.unfold`` (no copy), any other namespace a gather. Sizes that give no window
    raise the same ``ValueError`` on every library.
    """
    _check_windows("sliding_window", x, (k_size,), (stride,))
    backend = backend_of(x)
    if backend is None:
        return gather_windows(namespace_of(x), x, k_size, stride)
    return backend.windows(x, k_size, stride)


def sliding_window_2d(x: Any, k_size: tuple[int, int], stride: tuple[int, int]) -> Any:
    """``(batch, out_h, out_w, channels, k_h, k_w)`` windows of a ``(batch, h, w, channels)`` array.

    ``out[b, p, q, c, i, j] = x[b, p * stride[0] + i, q * stride[1] + j, c]`` with
    ``out_h = (h - k_h) // stride[0] + 1`` (likewise ``out_w``). NumPy and CuPy return a
    strided view (no copy), PyTorch two ``Tensor.unfold`` (no copy), any other namespace
    one gather. Sizes that give no window raise the same ``ValueError`` everywhere.
    """
    _check_windows("sliding_window_2d", x, tuple(k_size), tuple(stride))
    backend = backend_of(x)
    if backend is None:
        return gather_windows_2d(namespace_of(x), x, k_size, stride)
    return backend.windows_2d(x, k_size, stride)


def _check_windows(owner: str, x: Any, k_size: tuple[Any, ...], stride: tuple[Any, ...]) -> None:
    """``x`` of shape ``(batch, *spatial, channels)`` and positive sizes that give at
    least one window on every spatial axis, else one ``ValueError`` whatever the library."""
    spatial = tuple(x.shape[1:-1])
    ok = len(spatial) == len(k_size) == len(stride) and all(
        isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in (*k_size, *stride)
    )
    if not ok or any(k > n for k, n in zip(k_size, spatial, strict=True)):
        raise ValueError(
            f"nnx.backends.{owner}: expected an input of {len(k_size) + 2} axes "
            f"(batch, {'length' if len(k_size) == 1 else 'height, width'}, channels) no "
            f"shorter than the window, and positive integer sizes; got shape "
            f"{tuple(x.shape)}, k_size {k_size if len(k_size) > 1 else k_size[0]!r}, "
            f"stride {stride if len(stride) > 1 else stride[0]!r}"
        )


def uniform(shape: tuple[int, ...], like: Any) -> Any:
    """Uniform :math:`[0, 1)` draws of ``shape`` on ``like``'s backend, dtype and device.

    Reproducible from :func:`manual_seed`: NumPy and the host-only libraries draw from
    nnx's generator itself, PyTorch and CuPy on the device from a generator seeded by it.
    """
    backend = backend_of(like)
    if backend is None:
        host = get_rng().random(shape).astype(dtype_name(like))
        return namespace_of(like).asarray(host)
    return backend.uniform(tuple(shape), like, get_rng())


def _startup_backend() -> None:
    name = os.environ.get("NNX_BACKEND", "").strip() or "numpy"
    global _default
    _default = _default._replace(backend=BACKENDS["numpy"].load())
    if name != "numpy":
        try:
            set_backend(name)
        except (ValueError, ImportError, RuntimeError) as exc:
            # say where the name came from: the user may not know the variable is set
            raise type(exc)(f"environment variable NNX_BACKEND={name!r}: {exc}") from exc


_startup_backend()
