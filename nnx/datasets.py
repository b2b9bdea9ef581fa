r"""Small classification data sets, built or read locally (nothing is downloaded).

Each loader returns ``(X_train, y_train, X_test, y_test)`` as NumPy arrays: ``X`` in
float32, channels last, shape ``(n, length, 1)`` (ready for :class:`~nnx.Conv1D`;
:class:`~nnx.Flatten` or ``flatten=True`` gives ``(n, length)`` rows for an MLP), and
``y`` integer labels in int64, shape ``(n,)``. Every call returns fresh arrays.

================  ========  =======  ======  =======  =================================
loader            train     test     length  classes  source
================  ========  =======  ======  =======  =================================
:func:`mnist1d`   4,000     1,000    40      10       ``mnist1d`` package, generated
:func:`digits`    1,437     360      64      10       scikit-learn's bundled 8x8 digits
================  ========  =======  ======  =======  =================================

They need the optional packages of the ``datasets`` extra:
``pip install "nnx-backprop[datasets]"``.

**Cache.** Generating MNIST-1D takes 1.7 to 3.1 s on the development machine (2 shared
cores of an AMD EPYC, loaded; importing ``mnist1d`` and SciPy included); reading it back
from the cache takes about 2 ms. So :func:`mnist1d` keeps the
generated arrays in one ``.npz`` file per set of generator arguments, in the user's
cache folder (``platformdirs.user_cache_dir("nnx")/datasets``: ``~/.cache/nnx/datasets``
on Linux). The file name is a hash of the generator's arguments (the ``seed``; the others are
the defaults of the installed ``mnist1d`` package), of that package's version and of
nnx's cache format, so a change of any of them generates anew.
Files are written atomically (a temporary file renamed over the target) and read
without pickle; a missing, truncated or otherwise unreadable file is regenerated and
rewritten. An unwritable cache folder is not an error: the data is then generated
every time.

Where the cache lives, in order of precedence:

- the ``cache`` argument of :func:`mnist1d` / :func:`load` (``nnx train --data-cache``):
  a folder, or ``False`` (or ``"off"``) for no cache;
- the environment variable ``NNX_DATA_CACHE``: a folder, or ``off`` (also ``0``,
  ``false``, ``no``, or empty) for no cache;
- the user's cache folder above.

The 8x8 digits are read from scikit-learn's bundled file (about 1 s on first use,
dominated by importing scikit-learn) and are not cached on disk.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "CACHE_ENV",
    "DATASETS",
    "IMAGE_DATASETS",
    "cache_dir",
    "digits",
    "load",
    "mnist1d",
    "one_hot",
]

DATASETS_EXTRA = 'pip install "nnx-backprop[datasets]"'

#: Environment variable that relocates (a folder) or turns off (``off``) the cache.
CACHE_ENV = "NNX_DATA_CACHE"
# Bumped when the layout of the cached files changes: old files are then ignored.
CACHE_FORMAT = 1
_OFF = {"", "0", "off", "false", "no", "none"}
_KEYS = ("X_train", "y_train", "X_test", "y_test")

Split = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def _missing(package: str, loader: str, exc: ImportError) -> ImportError:
    return ImportError(
        f"nnx.datasets.{loader}() needs the optional package {package!r}, which could not be "
        f"imported ({exc}). Install the data-set extras with: {DATASETS_EXTRA}"
    )


def cache_dir(cache: str | os.PathLike[str] | bool | None = None) -> Path | None:
    """The folder where generated data sets are cached, or ``None`` when caching is off.

    ``cache``: a folder, ``False`` or ``"off"`` (off), or ``None``/``True`` (the ``NNX_DATA_CACHE``
    environment variable if set, else the user's cache folder; see the module docs).

    >>> import nnx
    >>> nnx.datasets.cache_dir(False) is None
    True
    >>> nnx.datasets.cache_dir("/tmp/my-cache").as_posix()
    '/tmp/my-cache'
    """
    if cache is False or (isinstance(cache, str) and cache.strip().lower() in _OFF):
        return None
    if cache is not None and cache is not True:
        return Path(cache).expanduser()
    env = os.environ.get(CACHE_ENV)
    if env is not None:
        return None if env.strip().lower() in _OFF else Path(env).expanduser()
    try:
        from platformdirs import user_cache_dir
    except ImportError:  # the datasets extra brings platformdirs; XDG's default otherwise
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "nnx"
    else:
        base = Path(user_cache_dir("nnx", appauthor=False))
    return base / "datasets"


def _key(name: str, args: dict[str, Any]) -> str:
    blob = json.dumps({"name": name, "format": CACHE_FORMAT, **args}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def _read(path: Path) -> Split | None:
    """The four arrays of a cache file, or None when it is missing or unreadable."""
    try:
        with np.load(path, allow_pickle=False) as f:
            out = tuple(f[k] for k in _KEYS)
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return None
    X, y, Xt, yt = out
    if X.ndim != 2 or Xt.ndim != 2 or X.shape[0] != y.shape[0] or Xt.shape[0] != yt.shape[0]:
        return None
    return out  # type: ignore[return-value]


def _write(path: Path, split: Split, args: dict[str, Any]) -> None:
    """Write atomically; a folder that cannot be written is skipped, not an error."""
    from .atomic import atomic_open

    with contextlib.suppress(OSError), atomic_open(path, "wb") as f:
        np.savez(f, **dict(zip(_KEYS, split, strict=True)), args=json.dumps(args))


def _cached(name: str, args: dict[str, Any], build: Callable[[], Split], cache: Any) -> Split:
    folder = cache_dir(cache)
    path = None if folder is None else folder / f"{name}-{_key(name, args)}.npz"
    split = None if path is None else _read(path)
    if split is None:
        split = build()
        if path is not None:
            _write(path, split, args)
    return split


def _mnist1d_key(seed: int | None) -> dict[str, Any]:
    """What determines the generated data: the package version (which fixes the default
    generator arguments) and the arguments nnx changes. Cheap: nothing is imported."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        package = version("mnist1d")
    except PackageNotFoundError as exc:
        raise _missing("mnist1d", "mnist1d", ImportError(str(exc))) from None
    return {"mnist1d": package, "seed": None if seed is None else int(seed)}


@functools.lru_cache(maxsize=4)
def _mnist1d_split(seed: int | None, cache: Any) -> Split:
    def build() -> Split:
        try:
            import mnist1d.data
        except ImportError as exc:
            raise _missing("mnist1d", "mnist1d", exc) from None
        args = mnist1d.data.get_dataset_args()
        if seed is not None:
            args.seed = int(seed)
        # make_dataset builds the signals from their templates; get_dataset would first
        # try to download a pickle, which nnx never does (and never unpickles).
        data = mnist1d.data.make_dataset(args)
        return (
            np.asarray(data["x"], dtype=np.float32),
            np.asarray(data["y"], dtype=np.int64),
            np.asarray(data["x_test"], dtype=np.float32),
            np.asarray(data["y_test"], dtype=np.int64),
        )

    out = _cached("mnist1d", _mnist1d_key(seed), build, cache)
    for a in out:
        a.setflags(write=False)
    return out


def _cache_token(cache: Any) -> Any:
    # the in-memory cache is keyed by the resolved folder, so NNX_DATA_CACHE changes apply
    folder = cache_dir(cache)
    return False if folder is None else str(folder)


def _shape(split: Split, flatten: bool) -> Split:
    X_tr, y_tr, X_te, y_te = (np.array(a, copy=True) for a in split)
    if not flatten:
        X_tr, X_te = X_tr[..., None], X_te[..., None]
    return X_tr, y_tr, X_te, y_te


def mnist1d(
    flatten: bool = False,
    seed: int | None = None,
    cache: str | os.PathLike[str] | bool | None = None,
) -> Split:
    r"""MNIST-1D (Greydanus, 2020): 10 digit templates as 1-D signals of length 40.

    Generated with ``mnist1d.data.make_dataset(mnist1d.data.get_dataset_args())``: the
    default arguments (4,000 training and 1,000 test signals, seed 42), so the data is
    the same every time. ``seed`` overrides the generator's seed. Generating takes
    1.7 to 3.1 s (measured on 2 loaded cores of an AMD EPYC); the result is cached on
    disk (about 2 ms to read back; see the module docs; ``cache``: a folder, or
    ``False`` for none) and in memory for the session.

    Returns ``X_train (4000, 40, 1)``, ``y_train (4000,)``, ``X_test (1000, 40, 1)``,
    ``y_test (1000,)`` (``(n, 40)`` inputs with ``flatten=True``).

    >>> import nnx
    >>> X, y, Xt, yt = nnx.datasets.mnist1d()
    >>> X.shape, y.shape, Xt.shape, yt.shape
    ((4000, 40, 1), (4000,), (1000, 40, 1), (1000,))
    """
    return _shape(_mnist1d_split(seed, _cache_token(cache)), flatten)


@functools.lru_cache(maxsize=4)
def _digits_cached(test_size: float, seed: int) -> Split:
    try:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
    except ImportError as exc:
        raise _missing("scikit-learn", "digits", exc) from None
    data = load_digits()
    X = np.asarray(data.data, dtype=np.float32) / 16.0
    y = np.asarray(data.target, dtype=np.int64)
    X_tr, X_te, y_tr, y_te = train_test_split(
        X, y, test_size=test_size, random_state=seed, stratify=y
    )
    out = (X_tr, y_tr, X_te, y_te)
    for a in out:
        a.setflags(write=False)
    return out


def digits(
    flatten: bool = False, test_size: float = 0.2, seed: int = 0, images: bool = False
) -> Split:
    r"""The 1,797 8x8 hand-written digits bundled with scikit-learn.

    Pixels are scaled from 0..16 to :math:`[0, 1]` (ready for a sigmoid output and
    :class:`~nnx.BCELoss`); images are read row by row into sequences of length 64, or
    kept as 8x8 images, channels last, with ``images=True`` (for :class:`~nnx.Conv2D`).
    The train/test split is stratified and reproducible (``test_size``, ``seed``):
    1,437 / 360 samples by default.

    Returns ``X_train (1437, 64, 1)``, ``y_train (1437,)``, ``X_test (360, 64, 1)``,
    ``y_test (360,)`` (``(n, 64)`` inputs with ``flatten=True``, ``(n, 8, 8, 1)`` with
    ``images=True``).

    >>> import nnx
    >>> X, y, Xt, yt = nnx.datasets.digits(flatten=True)
    >>> X.shape, Xt.shape, float(X.max())
    ((1437, 64), (360, 64), 1.0)
    >>> nnx.datasets.digits(images=True)[0].shape
    (1437, 8, 8, 1)
    """
    if not isinstance(test_size, float) or not 0.0 < test_size < 1.0:
        raise ValueError(
            f"nnx.datasets.digits: test_size must be a float in (0, 1), got {test_size!r}"
        )
    if images and flatten:
        raise ValueError("nnx.datasets.digits: choose images=True or flatten=True, not both")
    split = _shape(_digits_cached(test_size, int(seed)), flatten)
    if not images:
        return split
    X_tr, y_tr, X_te, y_te = split  # rows of the 8x8 images, read row-major
    return X_tr.reshape(-1, 8, 8, 1), y_tr, X_te.reshape(-1, 8, 8, 1), y_te


DATASETS = {"mnist1d": mnist1d, "digits": digits}


#: The data sets that are images (``load(name, images=True)``).
IMAGE_DATASETS = ("digits",)


def load(
    name: str,
    flatten: bool = False,
    cache: str | os.PathLike[str] | bool | None = None,
    images: bool = False,
) -> Split:
    """A data set by name (``"mnist1d"`` or ``"digits"``); ``cache`` as in :func:`mnist1d`
    (the digits are read from scikit-learn's file and ignore it); ``images=True`` gives
    ``(n, height, width, 1)`` inputs, for the data sets in :data:`IMAGE_DATASETS`."""
    if name not in DATASETS:
        raise ValueError(
            f"nnx.datasets.load: unknown data set {name!r}; choose one of {sorted(DATASETS)}"
        )
    if images and name not in IMAGE_DATASETS:
        raise ValueError(
            f"nnx.datasets.load: {name!r} holds 1-D signals, not images; images=True works "
            f"for {list(IMAGE_DATASETS)}"
        )
    if name == "mnist1d":
        return mnist1d(flatten=flatten, cache=cache)
    return digits(flatten=flatten, images=images)


def one_hot(y: Any, num_classes: int | None = None, dtype: Any = np.float32) -> np.ndarray:
    r"""One-hot rows of integer labels: :math:`Y_{ik} = \mathbb{1}[y_i = k]`.

    ``y`` has shape ``(n,)`` (any array; it is brought to NumPy); the result has shape
    ``(n, num_classes)`` (default ``max(y) + 1``) and the given dtype.

    >>> import nnx, numpy as np
    >>> nnx.datasets.one_hot(np.array([0, 2]), 3)
    array([[1., 0., 0.],
           [0., 0., 1.]], dtype=float32)
    """
    from . import backends

    labels = backends.to_numpy(y) if backends.is_array(y) else np.asarray(y)
    if labels.ndim != 1:
        raise ValueError(f"nnx.datasets.one_hot: expected labels of shape (n,), got {labels.shape}")
    if labels.size and labels.dtype.kind not in "iu":
        if labels.dtype.kind == "f" and np.all(labels == np.round(labels)):
            labels = labels.astype(np.int64)
        else:
            raise TypeError(
                f"nnx.datasets.one_hot: expected integer labels, got dtype {labels.dtype}"
            )
    if num_classes is None:
        num_classes = int(labels.max()) + 1 if labels.size else 0
    if (
        isinstance(num_classes, bool)
        or not isinstance(num_classes, (int, np.integer))
        or num_classes < 0
    ):
        raise ValueError(
            f"nnx.datasets.one_hot: num_classes must be an int >= 0, got {num_classes!r}"
        )
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(
            f"nnx.datasets.one_hot: labels must lie in [0, {num_classes}), got values in "
            f"[{labels.min()}, {labels.max()}]"
        )
    out = np.zeros((labels.shape[0], int(num_classes)), dtype=dtype)
    out[np.arange(labels.shape[0]), labels.astype(np.int64)] = 1
    return out
