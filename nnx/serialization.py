r"""Save and load networks: one ``.npz`` file, architecture and parameters, no pickle.

File format ``nnx-model`` version 1: a NumPy ``.npz`` (zip) archive holding

- ``__nnx__``: a ``uint8`` array, the UTF-8 bytes of a JSON header::

      {"format": "nnx-model", "version": 1, "nnx_version": "0.1.0",
       "architecture": {"class": "Sequential", "config": {}, "children": [
           {"class": "Linear", "config": {"input_size": 4, ...}, "children": []}, ...]},
       "parameters": {"0.weight": {"shape": [4, 8], "dtype": "float32"}, ...},
       "metadata": {...}}

- ``param/<dotted name>`` (``param/0.weight``...): one numeric array per parameter.

It is written with ``allow_pickle=False`` and read with ``allow_pickle=False``:
object arrays are refused both ways, so a crafted file cannot run code when loaded.
Classes are rebuilt only from a registry of known module classes (every nnx layer, and
any class passed to :func:`register`), never by importing a name found in the file.
The file is written to a temporary file in the same folder and moved into place with
``os.replace``: a crash never leaves a half-written model under the target name.

>>> import nnx, tempfile, os
>>> net = nnx.Sequential(nnx.Linear(4, 8), nnx.ReLU(), nnx.Linear(8, 3))
>>> path = os.path.join(tempfile.mkdtemp(), "net.npz")
>>> nnx.save(net, path)
>>> nnx.load(path)
Sequential(
  (0): Linear(4, 8, bias=True)
  (1): ReLU()
  (2): Linear(8, 3, bias=True)
)
"""

from __future__ import annotations

import contextlib
import json
import os
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from . import backends
from .atomic import atomic_open
from .module import Module

__all__ = ["FORMAT", "VERSION", "ModelFileError", "load", "read_header", "register", "save"]

FORMAT = "nnx-model"
VERSION = 1
_HEADER = "__nnx__"
_PARAM = "param/"

_REGISTRY: dict[str, type[Module]] = {}


class ModelFileError(ValueError):
    """A file that is not a readable nnx model (truncated, other format, wrong version,
    pickled content, or parameters that do not fit the architecture)."""


def register(cls: type[Module]) -> type[Module]:
    """Allow :func:`load` to rebuild a custom module class (usable as a decorator).

    The class must rebuild itself from ``cls(**module.get_config())``; containers
    must also accept their children as positional arguments (as ``Sequential`` does).
    """
    if not (isinstance(cls, type) and issubclass(cls, Module)):
        raise TypeError(f"nnx.serialization.register: expected a Module subclass, got {cls!r}")
    _REGISTRY[cls.__name__] = cls
    return cls


def _registry() -> dict[str, type[Module]]:
    import nnx

    known = {
        name: obj
        for name, obj in vars(nnx).items()
        if isinstance(obj, type) and issubclass(obj, Module)
    }
    known.update(_REGISTRY)
    return known


def _architecture(module: Module) -> dict[str, Any]:
    cls = type(module)
    if _registry().get(cls.__name__) is not cls:
        raise TypeError(
            f"nnx.save: module class {cls.__module__}.{cls.__qualname__} is unknown to "
            f"nnx.load; register it with nnx.serialization.register"
        )
    config = module.get_config()
    try:
        json.dumps(config)
    except TypeError as exc:
        raise TypeError(
            f"nnx.save: the config of {cls.__name__} is not JSON-serialisable ({exc})"
        ) from None
    return {
        "class": cls.__name__,
        "config": config,
        "children": [_architecture(c) for c in module.children()],
    }


def save(
    network: Module, path: str | os.PathLike[str], metadata: dict[str, Any] | None = None
) -> None:
    """Write ``network`` (architecture + parameters) to ``path``, atomically.

    Parameters are stored as NumPy arrays in their current dtype, whatever the
    backend. ``metadata`` (JSON-serialisable: data set, accuracy...) is stored in the
    header and returned by :func:`read_header`. The path is used as given (no suffix
    is added); ``.npz`` is the conventional one.
    """
    if not isinstance(network, Module):
        raise TypeError(f"nnx.save: expected a nnx Module, got {type(network).__name__}")
    arrays = network.state_dict()
    header = {
        "format": FORMAT,
        "version": VERSION,
        "nnx_version": _nnx_version(),
        "architecture": _architecture(network),
        "parameters": {
            k: {"shape": list(v.shape), "dtype": str(v.dtype)} for k, v in arrays.items()
        },
        "metadata": metadata or {},
    }
    try:
        text = json.dumps(header, allow_nan=True)
    except TypeError as exc:
        raise TypeError(f"nnx.save: metadata is not JSON-serialisable ({exc})") from None
    payload = {_HEADER: np.frombuffer(text.encode("utf-8"), dtype=np.uint8)}
    for k, v in arrays.items():
        if v.dtype.kind not in "fiub":
            raise TypeError(f"nnx.save: parameter {k!r} has non-numeric dtype {v.dtype}")
        payload[_PARAM + k] = v
    with atomic_open(path, "wb", fsync=True) as f:
        np.savez(f, allow_pickle=False, **payload)


def _nnx_version() -> str:
    import nnx

    return str(getattr(nnx, "__version__", "unknown"))


def _open(path: Path) -> Any:
    if not path.exists():
        raise FileNotFoundError(f"nnx.load: no such file: {str(path)!r}")
    try:
        archive = np.load(path, allow_pickle=False)
    except (zipfile.BadZipFile, EOFError, OSError, ValueError, NotImplementedError) as exc:
        raise ModelFileError(
            f"nnx.load: {str(path)!r} is not an nnx model file (not a readable .npz "
            f"archive, or truncated): {exc}"
        ) from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise ModelFileError(
            f"nnx.load: {str(path)!r} is a single .npy array, not an nnx model file"
        )
    return archive


def _read(archive: Any, key: str, path: Path) -> np.ndarray:
    try:
        return archive[key]
    except ValueError as exc:
        if "pickle" in str(exc).lower():  # object arrays need pickle, which is refused
            raise ModelFileError(
                f"nnx.load: {str(path)!r} entry {key!r} holds pickled (object) data, which "
                f"nnx refuses to load: {exc}"
            ) from None
        raise ModelFileError(
            f"nnx.load: {str(path)!r} is damaged (entry {key!r} has a malformed header): {exc}"
        ) from None
    except (zipfile.BadZipFile, EOFError, OSError, KeyError, NotImplementedError) as exc:
        # NotImplementedError: zipfile's answer to a corrupted version/compression field
        raise ModelFileError(
            f"nnx.load: {str(path)!r} is damaged or truncated (entry {key!r}): {exc}"
        ) from None


def _header(archive: Any, path: Path) -> dict[str, Any]:
    if _HEADER not in archive.files:
        raise ModelFileError(
            f"nnx.load: {str(path)!r} is a .npz archive but not an nnx model file (no "
            f"{_HEADER!r} entry; it holds {sorted(archive.files)[:5]})"
        )
    raw = _read(archive, _HEADER, path)
    if raw.dtype != np.uint8 or raw.ndim != 1:
        raise ModelFileError(f"nnx.load: {str(path)!r} has a malformed header entry")
    try:
        header = json.loads(raw.tobytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelFileError(f"nnx.load: {str(path)!r} has an unreadable header: {exc}") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        got = header.get("format") if isinstance(header, dict) else type(header).__name__
        raise ModelFileError(f"nnx.load: {str(path)!r} has format {got!r}, expected {FORMAT!r}")
    version = header.get("version")
    if not isinstance(version, int) or version < 1 or version > VERSION:
        raise ModelFileError(
            f"nnx.load: {str(path)!r} is {FORMAT} version {version!r}; this nnx "
            f"({_nnx_version()}) reads versions 1 to {VERSION}. Upgrade nnx to load it."
        )
    for key in ("architecture", "parameters"):
        if not isinstance(header.get(key), dict):
            raise ModelFileError(f"nnx.load: {str(path)!r} header lacks {key!r}")
    return header


def read_header(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The JSON header of a model file (format, version, architecture, metadata)."""
    path = Path(path)
    with _open(path) as archive:
        return _header(archive, path)


def _build(spec: Any, path: Path, shapes: dict[str, tuple[int, ...]], prefix: str = "") -> Module:
    where = "architecture" + ("." + prefix.rstrip(".") if prefix else "")
    if not isinstance(spec, dict) or not isinstance(spec.get("class"), str):
        raise ModelFileError(f"nnx.load: {str(path)!r}: malformed {where}")
    registry = _registry()
    name = spec["class"]
    cls = registry.get(name)
    if cls is None:
        raise ModelFileError(
            f"nnx.load: {str(path)!r} uses module class {name!r}, unknown here; "
            f"register it with nnx.serialization.register before loading"
        )
    config = spec.get("config", {})
    children = spec.get("children", [])
    if not isinstance(config, dict) or not isinstance(children, list):
        raise ModelFileError(f"nnx.load: {str(path)!r}: malformed {where} for {name}")
    kids = [_build(c, path, shapes, f"{prefix}{i}.") for i, c in enumerate(children)]
    _check_shapes_before_allocating(cls, config, shapes, prefix, path)
    try:
        return cls(*kids, **config)
    except (TypeError, ValueError, MemoryError) as exc:  # MemoryError: absurd sizes
        raise ModelFileError(
            f"nnx.load: {str(path)!r}: cannot rebuild {name}(**{config!r}): {exc}"
        ) from None


def _check_shapes_before_allocating(
    cls: type[Module],
    config: dict[str, Any],
    shapes: dict[str, tuple[int, ...]],
    prefix: str,
    path: Path,
) -> None:
    """Compare the shapes a module would allocate with the stored arrays, first.

    A crafted header declaring ``Linear(40000, 40000)`` next to tiny arrays is refused
    here, before gigabytes are allocated. Classes without ``parameter_shapes`` (user
    classes passed to :func:`register`) are checked after construction instead.
    """
    declare = getattr(cls, "parameter_shapes", None)
    if declare is None:
        return
    try:
        expected = declare(**config)
    except (TypeError, ValueError) as exc:
        raise ModelFileError(
            f"nnx.load: {str(path)!r}: cannot rebuild {cls.__name__}(**{config!r}): {exc}"
        ) from None
    for name, shape in expected.items():
        stored = shapes.get(prefix + name)
        if stored != tuple(shape):
            raise ModelFileError(
                f"nnx.load: {str(path)!r}: the parameters do not fit the architecture: "
                f"{cls.__name__}(**{config!r}) expects parameter "
                f"{prefix + name!r} of shape {tuple(shape)}, the file stores "
                f"{'nothing' if stored is None else stored}"
            )


def load(
    path: str | os.PathLike[str],
    backend: str | None = None,
    dtype: Any = None,
    device: Any = None,
) -> Module:
    """Rebuild the network saved at ``path`` on a backend and dtype.

    By default the current backend, device and default float dtype
    (:func:`nnx.set_backend`, :func:`nnx.set_default_dtype`), whatever the saved
    network used; ``backend``, ``dtype`` and ``device`` override them. Building the
    modules does not consume nnx's random generator (:func:`nnx.manual_seed`).

    Raises ``FileNotFoundError``, or :class:`ModelFileError` (a ``ValueError``) for a
    truncated file, another format, a newer version, pickled content, or parameters
    whose names or shapes do not fit the architecture.
    """
    path = Path(path)
    with _open(path) as archive:
        header = _header(archive, path)
        declared = header["parameters"]
        names = [f[len(_PARAM) :] for f in archive.files if f.startswith(_PARAM)]
        if sorted(names) != sorted(declared):
            raise ModelFileError(
                f"nnx.load: {str(path)!r}: parameter entries {sorted(names)} do not match "
                f"the header's {sorted(declared)}"
            )
        state = {n: _read(archive, _PARAM + n, path) for n in names}
    for n, a in state.items():
        if a.dtype.kind not in "fiu":
            raise ModelFileError(f"nnx.load: {str(path)!r}: parameter {n!r} has dtype {a.dtype}")
    # init draws from a throw-away generator: loading never shifts the user's seed
    with backends.scoped_rng(np.random.default_rng(0)):
        ctx = (
            backends.use_backend(backend, device)
            if backend is not None or device is not None
            else contextlib.nullcontext()
        )
        saved_dtype = backends.get_default_dtype()
        with ctx:
            if dtype is not None:
                backends.set_default_dtype(dtype)
            try:
                shapes = {n: tuple(a.shape) for n, a in state.items()}
                network = _build(header["architecture"], path, shapes)
            finally:
                backends.set_default_dtype(saved_dtype)
    try:
        network.load_state_dict(state, strict=True)
    except (KeyError, ValueError) as exc:
        msg = exc.args[0] if exc.args else exc
        raise ModelFileError(
            f"nnx.load: {str(path)!r}: the parameters do not fit the architecture: {msg}"
        ) from None
    return network
