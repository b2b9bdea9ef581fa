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
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

__all__ = ["DATASETS", "digits", "load", "mnist1d", "one_hot"]

DATASETS_EXTRA = 'pip install "nnx-backprop[datasets]"'

Split = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def _missing(package: str, loader: str, exc: ImportError) -> ImportError:
    return ImportError(
        f"nnx.datasets.{loader}() needs the optional package {package!r}, which could not be "
        f"imported ({exc}). Install the data-set extras with: {DATASETS_EXTRA}"
    )


@functools.lru_cache(maxsize=4)
def _mnist1d_cached(seed: int | None) -> Split:
    try:
        import mnist1d.data
    except ImportError as exc:
        raise _missing("mnist1d", "mnist1d", exc) from None
    args = mnist1d.data.get_dataset_args()
    if seed is not None:
        args.seed = int(seed)
    # make_dataset builds the signals from their templates; get_dataset would first try
    # to download a pickle, which nnx never does (and never unpickles).
    data = mnist1d.data.make_dataset(args)
    out = (
        np.asarray(data["x"], dtype=np.float32),
        np.asarray(data["y"], dtype=np.int64),
        np.asarray(data["x_test"], dtype=np.float32),
        np.asarray(data["y_test"], dtype=np.int64),
    )
    for a in out:
        a.setflags(write=False)
    return out


def _shape(split: Split, flatten: bool) -> Split:
    X_tr, y_tr, X_te, y_te = (np.array(a, copy=True) for a in split)
    if not flatten:
        X_tr, X_te = X_tr[..., None], X_te[..., None]
    return X_tr, y_tr, X_te, y_te


def mnist1d(flatten: bool = False, seed: int | None = None) -> Split:
    r"""MNIST-1D (Greydanus, 2020): 10 digit templates as 1-D signals of length 40.

    Generated with ``mnist1d.data.make_dataset(mnist1d.data.get_dataset_args())``: the
    default arguments (4,000 training and 1,000 test signals, seed 42), so the data is
    the same every time; about a second, cached for the session. ``seed`` overrides the
    generator's seed.

    Returns ``X_train (4000, 40, 1)``, ``y_train (4000,)``, ``X_test (1000, 40, 1)``,
    ``y_test (1000,)`` (``(n, 40)`` inputs with ``flatten=True``).

    >>> import nnx
    >>> X, y, Xt, yt = nnx.datasets.mnist1d()
    >>> X.shape, y.shape, Xt.shape, yt.shape
    ((4000, 40, 1), (4000,), (1000, 40, 1), (1000,))
    """
    return _shape(_mnist1d_cached(seed), flatten)


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


def digits(flatten: bool = False, test_size: float = 0.2, seed: int = 0) -> Split:
    r"""The 1,797 8x8 hand-written digits bundled with scikit-learn.

    Pixels are scaled from 0..16 to :math:`[0, 1]` (ready for a sigmoid output and
    :class:`~nnx.BCELoss`); images are read row by row into sequences of length 64.
    The train/test split is stratified and reproducible (``test_size``, ``seed``):
    1,437 / 360 samples by default.

    Returns ``X_train (1437, 64, 1)``, ``y_train (1437,)``, ``X_test (360, 64, 1)``,
    ``y_test (360,)`` (``(n, 64)`` inputs with ``flatten=True``).

    >>> import nnx
    >>> X, y, Xt, yt = nnx.datasets.digits(flatten=True)
    >>> X.shape, Xt.shape, float(X.max())
    ((1437, 64), (360, 64), 1.0)
    """
    if not isinstance(test_size, float) or not 0.0 < test_size < 1.0:
        raise ValueError(
            f"nnx.datasets.digits: test_size must be a float in (0, 1), got {test_size!r}"
        )
    return _shape(_digits_cached(test_size, int(seed)), flatten)


DATASETS = {"mnist1d": mnist1d, "digits": digits}


def load(name: str, flatten: bool = False) -> Split:
    """A data set by name (``"mnist1d"`` or ``"digits"``)."""
    if name not in DATASETS:
        raise ValueError(
            f"nnx.datasets.load: unknown data set {name!r}; choose one of {sorted(DATASETS)}"
        )
    return DATASETS[name](flatten=flatten)


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
