r"""Save and load networks: one ``.npz`` file, architecture and parameters, no pickle.

File format ``nnx-model`` version 1: a NumPy ``.npz`` (zip) archive holding

- ``__nnx__``: a ``uint8`` array, the UTF-8 bytes of a JSON header::

      {"format": "nnx-model", "version": 1, "nnx_version": "0.1.0",
       "architecture": {"class": "Sequential", "config": {}, "children": [
           {"class": "Linear", "config": {"input_size": 4, ...}, "children": []}, ...]},
       "parameters": {"0.weight": {"shape": [4, 8], "dtype": "float32"}, ...},
       "metadata": {...}}

- ``param/<dotted name>`` (``param/0.weight``...): one numeric array per parameter;
- ``extra/<name>`` (checkpoints only, declared under ``"extra"`` in the header):
  optimiser state and best-epoch parameters, see :mod:`nnx.training.checkpoint`.

It is written with ``allow_pickle=False`` and read without NumPy's unpickler at all:
object arrays are refused, so a crafted file cannot run code when loaded. Classes are
rebuilt only from a registry of known module classes (every nnx layer, and any class
passed to :func:`register`), never by importing a name found in the file.

**Reading is bounded by what the header declares.** Only regular files are opened
(a FIFO or a device is refused, never waited on). Before anything is decompressed the
loader checks the zip directory (no duplicated entry, no entry that expands more than
:data:`MAX_RATIO` times, a header entry of at most :data:`MAX_HEADER_BYTES`), parses
the header (nesting depth at most :data:`MAX_DEPTH` modules, at most
:data:`MAX_MODULES` modules, finite numbers in every config), checks every declared
shape and dtype, the total parameter bytes against ``max_bytes`` (default
:data:`MAX_BYTES`) and against the stored ``.npy`` headers; then each array is read
into memory of exactly its declared size. A hostile file is refused with
:class:`ModelFileError` in milliseconds, whatever it declares.

**Writing** goes through :func:`nnx.atomic.atomic_open`: a temporary file next to the
target (``.nnx-<tag>-<pid>-<random>.tmp``, short enough for any legal file name) moved
into place with ``os.replace``, so a crash never leaves a half-written model under the
target name, and temporary files left by killed writers of the same target are removed
by the next save. Like ``np.savez`` and ``open()``, a symbolic link is written through
to its target, an existing file keeps its permission bits, and a new file gets the
umask's mode; a file with several hard links is rewritten in place (all links see the
new model; that case is not atomic).

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

import json
import math
import os
import stat
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import numpy as np

from . import backends
from .atomic import atomic_open
from .module import Module

__all__ = [
    "FORMAT",
    "MAX_BYTES",
    "MAX_DEPTH",
    "MAX_HEADER_BYTES",
    "MAX_MODULES",
    "MAX_RATIO",
    "VERSION",
    "ModelFileError",
    "load",
    "load_archive",
    "read_header",
    "register",
    "save",
    "save_archive",
]

FORMAT = "nnx-model"
VERSION = 1
_HEADER = "__nnx__"
_PARAM = "param/"
_EXTRA = "extra/"

#: Largest total of parameter (and checkpoint) bytes :func:`load` accepts by default;
#: ``nnx.load(path, max_bytes=...)`` overrides it for one call.
MAX_BYTES = 1 << 36
#: Largest JSON header, in bytes (a real one takes a few kB per hundred modules).
MAX_HEADER_BYTES = 2 << 20
#: Deepest nesting of containers in an architecture.
MAX_DEPTH = 64
#: Most modules (containers included) in an architecture.
MAX_MODULES = 10_000
#: Largest expansion of one compressed zip entry (``nnx.save`` stores uncompressed).
MAX_RATIO = 50
_EXCESS = 16 << 20  # zeros compress far beyond MAX_RATIO: a small allowance for them
_NPY_HEADER = 10_000  # NumPy's own default bound on a .npy header
_DTYPES = frozenset(("bool", "float16", "float32", "float64"))
_DTYPES |= {f"{k}int{b}" for k in ("", "u") for b in (8, 16, 32, 64)}
_CHUNK = 1 << 20

_REGISTRY: dict[str, type[Module]] = {}


class ModelFileError(ValueError):
    """A file that is not a readable nnx model (truncated, other format, wrong version,
    pickled content, parameters that do not fit the architecture, or declared sizes
    beyond the loader's limits)."""


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


def _architecture(module: Module, owner: str = "nnx.save") -> dict[str, Any]:
    cls = type(module)
    if _registry().get(cls.__name__) is not cls:
        raise TypeError(
            f"{owner}: module class {cls.__module__}.{cls.__qualname__} is unknown to "
            f"nnx.load; register it with nnx.serialization.register"
        )
    config = module.get_config()
    try:
        json.dumps(config)
    except TypeError as exc:
        raise TypeError(
            f"{owner}: the config of {cls.__name__} is not JSON-serialisable ({exc})"
        ) from None
    return {
        "class": cls.__name__,
        "config": config,
        "children": [_architecture(c, owner) for c in module.children()],
    }


def check_savable(network: Module, owner: str = "nnx.save") -> None:
    """Raise the ``TypeError`` :func:`save` would raise for ``network`` (a module class
    :func:`load` could not rebuild, a config that is not JSON), without writing: what a
    training loop with checkpoints checks before its first epoch."""
    if not isinstance(network, Module):
        raise TypeError(f"{owner}: expected a nnx Module, got {type(network).__name__}")
    _architecture(network, owner)


def save(
    network: Module, path: str | os.PathLike[str], metadata: dict[str, Any] | None = None
) -> None:
    """Write ``network`` (architecture + parameters) to ``path``, atomically.

    Parameters are stored as NumPy arrays in their current dtype, whatever the
    backend. ``metadata`` (JSON-serialisable: data set, accuracy...) is stored in the
    header and returned by :func:`read_header`. The path is used as given (no suffix
    is added); ``.npz`` is the conventional one. A symbolic link is written through
    to its target; an existing file keeps its mode, a new one gets the umask's.
    """
    save_archive(network, path, metadata, {}, owner="nnx.save")


def save_archive(
    network: Module,
    path: str | os.PathLike[str],
    metadata: dict[str, Any] | None,
    extra: dict[str, np.ndarray],
    owner: str,
) -> None:
    """:func:`save` with additional ``extra/<name>`` arrays and the errors named after
    ``owner`` (what :mod:`nnx.training.checkpoint` writes)."""
    if not isinstance(network, Module):
        raise TypeError(f"{owner}: expected a nnx Module, got {type(network).__name__}")
    arrays = network.state_dict()
    header: dict[str, Any] = {
        "format": FORMAT,
        "version": VERSION,
        "nnx_version": _nnx_version(),
        "architecture": _architecture(network, owner),
        "parameters": _declare(arrays),
        "metadata": metadata or {},
    }
    if extra:
        header["extra"] = _declare(extra)
    try:
        text = json.dumps(header, allow_nan=True)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{owner}: metadata is not JSON-serialisable ({exc})") from None
    payload = {_HEADER: np.frombuffer(text.encode("utf-8"), dtype=np.uint8)}
    for prefix, group in ((_PARAM, arrays), (_EXTRA, extra)):
        for k, v in group.items():
            if v.dtype.kind not in "fiub":
                raise TypeError(f"{owner}: array {k!r} has non-numeric dtype {v.dtype}")
            payload[prefix + k] = v
    with atomic_open(path, "wb", fsync=True) as f:
        np.savez(f, allow_pickle=False, **payload)


def _declare(arrays: dict[str, np.ndarray]) -> dict[str, dict[str, Any]]:
    return {k: {"shape": list(v.shape), "dtype": str(v.dtype)} for k, v in arrays.items()}


def _nnx_version() -> str:
    import nnx

    return str(getattr(nnx, "__version__", "unknown"))


# -- reading files ------------------------------------------------------------------
def _fail(owner: str, path: Path, msg: str) -> ModelFileError:
    return ModelFileError(f"{owner}: {str(path)!r} {msg}")


def _open_regular(path: Path, owner: str) -> IO[bytes]:
    """Open ``path`` for reading if it is a regular file (a FIFO is never waited on)."""
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise FileNotFoundError(f"{owner}: no such file: {str(path)!r}") from None
    except IsADirectoryError:
        raise _fail(owner, path, "is a directory, not an nnx model file") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise _fail(owner, path, "is not a regular file (FIFO, device or socket)")
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


class _Archive:
    """A zip archive of ``.npy`` entries, checked before anything is decompressed."""

    def __init__(self, path: Path, owner: str) -> None:
        self.path, self.owner = path, owner
        self.file = _open_regular(path, owner)
        try:
            self.zip = self._zip()
            self.entries = self._entries()
        except BaseException:
            self.file.close()
            raise

    def fail(self, msg: str) -> ModelFileError:
        return _fail(self.owner, self.path, msg)

    def close(self) -> None:
        self.zip.close()
        self.file.close()

    def __enter__(self) -> _Archive:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _zip(self) -> zipfile.ZipFile:
        magic = self.file.read(6)
        self.file.seek(0)
        if magic.startswith(b"\x93NUMPY"):
            raise self.fail("is a single .npy array, not an nnx model file")
        try:
            return zipfile.ZipFile(self.file)
        except (zipfile.BadZipFile, EOFError, OSError, ValueError, NotImplementedError) as exc:
            raise self.fail(
                f"is not an nnx model file (not a readable .npz archive, or truncated): {exc}"
            ) from None

    def _entries(self) -> dict[str, zipfile.ZipInfo]:
        entries: dict[str, zipfile.ZipInfo] = {}
        size = os.fstat(self.file.fileno()).st_size
        infos = self.zip.infolist()
        if sum(info.compress_size for info in infos) > size:
            raise self.fail("is damaged or truncated (its entries are larger than the file)")
        excess = _EXCESS  # what compressed entries may expand beyond MAX_RATIO, in all
        for info in infos:
            key = info.filename[:-4] if info.filename.endswith(".npy") else info.filename
            if key in entries:
                raise self.fail(f"is damaged or crafted: entry {key!r} appears twice")
            if info.compress_type == zipfile.ZIP_STORED:
                if info.compress_size != info.file_size:
                    raise self.fail(f"is damaged (entry {key!r} has inconsistent sizes)")
            elif key != _HEADER:  # the header has its own bound, MAX_HEADER_BYTES
                excess -= max(0, info.file_size - MAX_RATIO * info.compress_size)
                if excess < 0:
                    raise self.fail(
                        f"is refused: entry {key!r} would expand from {info.compress_size} "
                        f"to {info.file_size} bytes (more than {MAX_RATIO} times; "
                        f"nnx.save never compresses)"
                    )
            entries[key] = info
        return entries

    def stream(self, key: str) -> IO[bytes]:
        try:
            return self.zip.open(self.entries[key])
        except (zipfile.BadZipFile, EOFError, OSError, ValueError, NotImplementedError) as exc:
            raise self.fail(f"is damaged or truncated (entry {key!r}): {exc}") from None

    def npy_header(self, key: str, f: IO[bytes]) -> tuple[tuple[int, ...], bool, np.dtype]:
        """Shape, Fortran order and dtype from an entry's ``.npy`` header (bounded)."""
        fmt = np.lib.format
        try:
            version = fmt.read_magic(f)
            if version == (1, 0):
                shape, fortran, dtype = fmt.read_array_header_1_0(f, max_header_size=_NPY_HEADER)
            elif version == (2, 0):
                shape, fortran, dtype = fmt.read_array_header_2_0(f, max_header_size=_NPY_HEADER)
            else:
                raise ValueError(f".npy format version {version} is not supported")
        except (ValueError, EOFError, OSError, zipfile.BadZipFile, SyntaxError) as exc:
            raise self.fail(f"is damaged (entry {key!r} has a malformed header): {exc}") from None
        if dtype.hasobject:
            raise self.fail(f"entry {key!r} holds pickled (object) data, which nnx refuses to load")
        return tuple(int(s) for s in shape), bool(fortran), dtype

    def read(self, key: str, shape: tuple[int, ...], dtype: str) -> np.ndarray:
        """The array of entry ``key``, checked against the declared shape and dtype."""
        info = self.entries.get(key)
        if info is None:
            raise self.fail(f"is damaged or truncated (no entry {key!r})")
        try:
            with self.stream(key) as f:
                stored_shape, fortran, stored = self.npy_header(key, f)
                want = np.dtype(dtype)
                if stored_shape != shape or stored.newbyteorder("=") != want.newbyteorder("="):
                    raise self.fail(
                        f"does not fit its header: {key!r} is declared with dtype {dtype} and "
                        f"shape {shape}, the file stores dtype {stored} and shape {stored_shape}"
                    )
                count = math.prod(shape)
                if info.file_size != f.tell() + count * want.itemsize:
                    raise self.fail(f"is damaged (entry {key!r} has the wrong size)")
                flat = np.empty(count, dtype=stored)
                view = memoryview(flat.view(np.uint8))
                done = 0
                while done < len(view):
                    got = f.readinto(view[done : done + _CHUNK])
                    if not got:
                        raise self.fail(f"is damaged or truncated (entry {key!r})")
                    done += got
        except ModelFileError:
            raise
        except (zipfile.BadZipFile, EOFError, OSError, ValueError, NotImplementedError) as exc:
            raise self.fail(f"is damaged or truncated (entry {key!r}): {exc}") from None
        out = flat.reshape(shape[::-1]).T if fortran else flat.reshape(shape)
        return np.ascontiguousarray(out, dtype=want.newbyteorder("="))

    def header(self) -> dict[str, Any]:
        info = self.entries.get(_HEADER)
        if info is None:
            names = sorted(self.entries)[:5]
            raise self.fail(
                f"is a .npz archive but not an nnx model file (no {_HEADER!r} entry; it "
                f"holds {names})"
            )
        if info.file_size > MAX_HEADER_BYTES + 256:
            raise self.fail(
                f"is refused: its header entry declares {info.file_size} bytes (the limit "
                f"is nnx.serialization.MAX_HEADER_BYTES = {MAX_HEADER_BYTES})"
            )
        with self.stream(_HEADER) as f:
            shape, _, dtype = self.npy_header(_HEADER, f)
        if dtype != np.uint8 or len(shape) != 1:
            raise self.fail("has a malformed header entry")
        raw = self.read(_HEADER, shape, "uint8")
        if raw.tobytes().count(b'"class"') > MAX_MODULES:  # before building 10^5 dicts
            raise self.fail(
                f"is refused: more than {MAX_MODULES} modules (nnx.serialization.MAX_MODULES)"
            )
        try:
            header = json.loads(raw.tobytes().decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise self.fail(f"has an unreadable header: {exc}") from None
        except RecursionError:
            raise self.fail("has a header nested too deeply") from None
        return _check_header(header, self.fail)


def _check_header(header: Any, fail: Callable[[str], ModelFileError]) -> dict[str, Any]:
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        got = header.get("format") if isinstance(header, dict) else type(header).__name__
        raise fail(f"has format {got!r}, expected {FORMAT!r}")
    version = header.get("version")
    if not isinstance(version, int) or version < 1 or version > VERSION:
        raise fail(
            f"is {FORMAT} version {version!r}; this nnx ({_nnx_version()}) reads versions "
            f"1 to {VERSION}. Upgrade nnx to load it."
        )
    for key in ("architecture", "parameters"):
        if not isinstance(header.get(key), dict):
            raise fail(f"header lacks {key!r}")
    if not isinstance(header.get("extra", {}), dict):
        raise fail("header has a malformed 'extra' entry")
    return header


def _declared(
    header: dict[str, Any], key: str, fail: Callable[[str], ModelFileError]
) -> dict[str, tuple[tuple[int, ...], str]]:
    """``{name: (shape, dtype)}`` declared under ``header[key]``, each one checked."""
    out = {}
    for name, spec in header.get(key, {}).items():
        shape = spec.get("shape") if isinstance(spec, dict) else None
        dtype = spec.get("dtype") if isinstance(spec, dict) else None
        if (
            not isinstance(shape, list)
            or len(shape) > 32
            or not all(type(s) is int and 0 <= s < 1 << 62 for s in shape)
        ):
            raise fail(f"declares parameter {name!r} with an invalid shape {shape!r}")
        if dtype not in _DTYPES:
            raise fail(f"declares parameter {name!r} with dtype {dtype!r}")
        out[name] = (tuple(shape), dtype)
    return out


def _walk_architecture(spec: Any, fail: Callable[[str], ModelFileError]) -> None:
    """Count modules and depth (iteratively) and check every config before building."""
    stack = [(spec, 1, "architecture")]
    count = 0
    while stack:
        node, depth, where = stack.pop()
        count += 1
        if count > MAX_MODULES:
            raise fail(
                f"is refused: more than {MAX_MODULES} modules (nnx.serialization.MAX_MODULES)"
            )
        if depth > MAX_DEPTH:
            raise fail(
                f"is refused: containers nested deeper than {MAX_DEPTH} "
                f"(nnx.serialization.MAX_DEPTH)"
            )
        if not isinstance(node, dict) or not isinstance(node.get("class"), str):
            raise fail(f"has a malformed {where}")
        config, children = node.get("config", {}), node.get("children", [])
        if not isinstance(config, dict) or not isinstance(children, list):
            raise fail(f"has a malformed {where} for {node['class']}")
        for k, v in config.items():
            if not _plain_value(v):
                raise fail(
                    f"has config in {where} ({node['class']}): {k}={v!r}, not a finite "
                    f"number, string, bool or null"
                )
        for i, child in enumerate(children):
            stack.append((child, depth + 1, f"{where}.{i}"))


def _plain_value(v: Any, depth: int = 0) -> bool:
    if v is None or isinstance(v, (bool, str)):
        return True
    if isinstance(v, int):
        return abs(v) < 1 << 62
    if isinstance(v, float):
        return math.isfinite(v)
    if isinstance(v, list) and depth < 2:
        return all(_plain_value(x, depth + 1) for x in v)
    return False


def read_header(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The JSON header of a model file (format, version, architecture, metadata)."""
    path = Path(path)
    with _Archive(path, "nnx.load") as archive:
        return archive.header()


def _build(spec: Any, path: Path, shapes: dict[str, tuple[int, ...]], prefix: str = "") -> Module:
    where = "architecture" + ("." + prefix.rstrip(".") if prefix else "")
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
    kids = [_build(c, path, shapes, f"{prefix}{i}.") for i, c in enumerate(children)]
    _check_shapes_before_allocating(cls, config, shapes, prefix, path)
    try:
        return cls(*kids, **config)
    except (TypeError, ValueError, OverflowError, MemoryError) as exc:
        raise ModelFileError(
            f"nnx.load: {str(path)!r}: cannot rebuild {name}(**{config!r}) at {where}: {exc}"
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
    except (TypeError, ValueError, OverflowError) as exc:
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
    max_bytes: int | None = None,
) -> Module:
    """Rebuild the network saved at ``path`` on a backend and dtype.

    By default the current backend, device and default float dtype
    (:func:`nnx.set_backend`, :func:`nnx.set_default_dtype`), whatever the saved
    network used; ``backend``, ``dtype`` and ``device`` override them for this call
    only (nothing changes for the caller or for other threads). Building the modules
    does not consume nnx's random generator (:func:`nnx.manual_seed`).

    ``max_bytes`` (default :data:`MAX_BYTES`) bounds the total bytes of the arrays the
    file declares; every other bound is described in the module documentation.

    Raises ``FileNotFoundError``, or :class:`ModelFileError` (a ``ValueError``) for a
    truncated file, another format, a newer version, pickled content, parameters
    whose names or shapes do not fit the architecture, or a file beyond the limits.
    """
    return load_archive(Path(path), backend, dtype, device, max_bytes)[0]


def load_archive(
    path: str | os.PathLike[str],
    backend: str | None = None,
    dtype: Any = None,
    device: Any = None,
    max_bytes: int | None = None,
) -> tuple[Module, dict[str, Any], dict[str, np.ndarray]]:
    """:func:`load` of ``path``, also returning the header and the ``extra/`` arrays
    (what :mod:`nnx.training.checkpoint` reads back)."""
    path = Path(path)
    limit = MAX_BYTES if max_bytes is None else max_bytes
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
        raise TypeError(f"nnx.load: max_bytes must be a non-negative int, got {max_bytes!r}")
    with _Archive(path, "nnx.load") as archive:
        header = archive.header()
        fail = archive.fail
        declared = _declared(header, "parameters", fail)
        extra_declared = _declared(header, "extra", fail)
        _walk_architecture(header["architecture"], fail)
        names = sorted(k[len(_PARAM) :] for k in archive.entries if k.startswith(_PARAM))
        if names != sorted(declared):
            raise ModelFileError(
                f"nnx.load: {str(path)!r}: parameter entries {names} do not match "
                f"the header's {sorted(declared)}"
            )
        extras = sorted(k[len(_EXTRA) :] for k in archive.entries if k.startswith(_EXTRA))
        if extras != sorted(extra_declared):
            raise fail(f"has extra entries {extras} that do not match the header's")
        unknown = set(archive.entries) - {_HEADER}
        unknown -= {_PARAM + n for n in names} | {_EXTRA + n for n in extras}
        if unknown:
            raise fail(f"holds entries the header does not declare: {sorted(unknown)[:5]}")
        total = sum(
            math.prod(s) * np.dtype(d).itemsize
            for s, d in (*declared.values(), *extra_declared.values())
        )
        if total > limit:
            raise fail(
                f"is refused: it declares {total} bytes of arrays, more than max_bytes="
                f"{limit} (pass a larger nnx.load(..., max_bytes=...) if it is genuine)"
            )
        for key, group, prefix in (
            ("parameters", declared, _PARAM),
            ("extra", extra_declared, _EXTRA),
        ):
            for n, (shape, dt) in group.items():  # shapes against the .npy headers first
                with archive.stream(prefix + n) as f:
                    stored, _, sdt = archive.npy_header(prefix + n, f)
                if stored != shape or sdt.newbyteorder("=") != np.dtype(dt):
                    raise fail(
                        f"the {key} do not fit the header: {n!r} is declared with dtype {dt} "
                        f"and shape {shape}, the file stores dtype {sdt} and shape {stored}"
                    )
        shapes = {n: s for n, (s, _) in declared.items()}
        with backends.isolated(backend, device, dtype, rng=np.random.default_rng(0)):
            # init draws from a throw-away generator: loading never shifts the user's seed
            network = _build(header["architecture"], path, shapes)
        state = {n: archive.read(_PARAM + n, s, d) for n, (s, d) in declared.items()}
        extra = {n: archive.read(_EXTRA + n, s, d) for n, (s, d) in extra_declared.items()}
    try:
        network.load_state_dict(state, strict=True)
    except (KeyError, ValueError) as exc:
        msg = exc.args[0] if exc.args else exc
        raise ModelFileError(
            f"nnx.load: {str(path)!r}: the parameters do not fit the architecture: {msg}"
        ) from None
    return network, header, extra
