"""Data placement and the batch iterator: the one place where the training side converts
data.

Host data (NumPy arrays, lists) and arrays of another backend are moved to the
network's backend and device; floating data takes the parameters' dtype, integer labels
keep theirs. Whether a data set moves at once or batch by batch is decided once per
loop (:meth:`Placement.prepare`, :meth:`Placement.split`); :class:`Batches` then cuts
it into batches, a new order every epoch, on the network's backend: the iterator the
epoch loop (:mod:`nnx.training.loop`) pulls from.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import numpy as np

from .. import backends
from ..module import Array, Module, is_floating, namespace


class Data(NamedTuple):
    """A checked data set: ``X``, ``y``, the sample count, and whether the arrays are
    already on the network's backend (else host arrays moved batch by batch)."""

    X: Any
    y: Any
    n: int
    on_device: bool


def host(A: Any) -> Any:
    """``A`` itself if it is an array of a known library, else a NumPy array of it."""
    return A if backends.is_array(A) else np.asarray(A)


class Placement:
    """Moves data to ``network``'s backend, device and float dtype."""

    #: Largest ``X.nbytes + y.nbytes`` (on the network's dtype) moved at once.
    max_device_bytes: int = 1 << 30

    def __init__(self, network: Module) -> None:
        self.network = network
        self._where: tuple[Module, str] | None = None  # the parameter found last

    def like(self) -> Array | None:
        """A parameter of the network: its backend, device and dtype are the target.

        Read from its module on every call (a step converts twice): a parameter that
        was reassigned or moved (``Module.to``) is seen at once.
        """
        where = self._where
        if where is not None:
            try:
                return where[0].get_parameter(where[1])
            except KeyError:
                pass
        for name, p, _ in self.network.parameters_and_gradients():
            self._where = self.network.locate_parameter(name)
            return p
        return None

    def to_network(self, X: Any, like: Array | None = None) -> Array:
        """``X`` on the network's backend; floating data in the network's dtype.

        Arrays already right are returned as they are (never copied or modified).
        """
        if like is None:
            like = self.like()
        if like is None:
            return backends.asarray(X) if backends.backend_of(X) is not backends.current() else X
        if type(X) is type(like) and (X.dtype == like.dtype or not is_floating(X)):
            return X
        values = backends.to_numpy(X) if backends.is_array(X) else np.asarray(X)
        if values.dtype.kind == "f":
            values = values.astype(backends.dtype_name(like), copy=False)
        elif values.dtype.kind not in "iub":
            raise TypeError(f"Optim: cannot use data of dtype {values.dtype} ({type(X).__name__})")
        return backends.from_numpy(values, like)

    def prepare(self, owner: str, X: Any, y: Any, finite_checked: bool = False) -> Data:
        """Check ``X``/``y`` (sample axis, same count, numbers, finite unless
        ``finite_checked``) and move them at once when they fit in
        :attr:`max_device_bytes`; otherwise keep host copies for :class:`Batches` to
        move batch by batch."""
        X, y = host(X), host(y)
        if len(X.shape) == 0 or len(y.shape) == 0:
            raise ValueError(
                f"{owner}: X and y need a sample axis, got shapes {X.shape}, {y.shape}"
            )
        n = int(X.shape[0])
        if int(y.shape[0]) != n:
            raise ValueError(
                f"{owner}: X and y must have the same number of samples, got X {tuple(X.shape)} "
                f"and y {tuple(y.shape)}"
            )
        if n == 0:
            raise ValueError(f"{owner}: no samples (X has shape {tuple(X.shape)})")
        for name, A in (("X", X), ("y", y)):
            if isinstance(A, np.ndarray) and A.dtype.kind not in "biuf":
                raise TypeError(
                    f"{owner}: {name} must hold numbers (bool, int or float), got dtype {A.dtype}"
                )
            if not finite_checked:
                check_finite(owner, name, A)
        like = self.like()
        on_network = like is None or (type(X) is type(like) and type(y) is type(like))
        if on_network:
            return Data(self.to_network(X, like), self.to_network(y, like), n, True)
        itemsize = np.dtype(backends.dtype_name(like)).itemsize if like is not None else 8
        size = math.prod(X.shape) * itemsize + math.prod(y.shape) * 8
        if size <= self.max_device_bytes:
            return Data(self.to_network(X, like), self.to_network(y, like), n, True)
        return Data(backends.to_numpy(X), backends.to_numpy(y), n, False)

    def split(
        self, owner: str, X: Any, y: Any, test_size: float | int, shuffle_test: bool, seed: Any
    ) -> tuple[Data, Data, tuple[Any, Any, Any, Any]]:
        """Check ``X``/``y`` once, split them (:func:`split_indices`) and place both parts
        (:meth:`prepare`). Returns ``(train, test, (X_train, y_train, X_test, y_test))``,
        the last four as given (NumPy stays NumPy, float64 stays float64)."""
        X, y = host(X), host(y)
        if int(y.shape[0]) != int(X.shape[0]):
            raise ValueError(
                f"{owner}: X and y must have the same number of samples, got X {tuple(X.shape)} "
                f"and y {tuple(y.shape)}"
            )
        n = int(X.shape[0]) if len(X.shape) else 0
        for name, A in (("X", X), ("y", y)):  # before the split: messages name the user's rows
            if n:
                check_finite(owner, name, A)
        train_idx, test_idx = split_indices(owner, n, test_size, shuffle_test, seed)
        train_idx, test_idx = to_index(train_idx, X), to_index(test_idx, X)
        parts = (take(X, train_idx), take(y, train_idx), take(X, test_idx), take(y, test_idx))
        train = self.prepare(owner, parts[0], parts[1], finite_checked=True)
        test = self.prepare(owner, parts[2], parts[3], finite_checked=True)
        return train, test, parts


class Batches:
    """The batch iterator: consecutive batches of ``batch_size`` of a placed data set,
    on the network's backend.

    Each :meth:`epoch` draws the epoch's order (``rng.permutation(n)`` when
    ``shuffle``, else the stored order) and returns the epoch's batches, which may be
    iterated again in the same order (the replay of :mod:`nnx.training.guard`). With
    ``shard`` (data-parallel), each batch is this rank's part ``shard(start, stop)`` of
    the global batch. ``n`` is the sample count the epoch's means divide by (default:
    the data's; a rank's part of an evaluation set divides by the whole set's).
    """

    def __init__(
        self,
        placement: Placement,
        data: Data,
        batch_size: int,
        shuffle: bool = False,
        rng: Any = None,
        shard: Callable[[int, int], tuple[int, int]] | None = None,
        n: int | None = None,
    ) -> None:
        self.placement, self.data, self.batch_size = placement, data, batch_size
        self.shuffle, self.rng, self.shard = shuffle, rng, shard
        #: samples of a whole pass (every rank's), and batches of an epoch
        self.n = data.n if n is None else n
        self.count = -(-data.n // batch_size)

    def epoch(self) -> EpochBatches:
        """The next epoch's batches (draws its order from ``rng`` when shuffling)."""
        order = self.rng.permutation(self.data.n) if self.shuffle else None
        return EpochBatches(self, order)

    def iterate(self, order: np.ndarray | None) -> Iterator[tuple[Array, Array]]:
        """The batches in ``order`` (``None``: as stored)."""
        X, y, n, on_device = self.data
        idx = None if order is None else to_index(order, X)
        placement, shard, batch_size = self.placement, self.shard, self.batch_size
        like = placement.like()
        for start in range(0, n, batch_size):
            stop = min(start + batch_size, n)
            if shard is not None:
                start, stop = shard(start, stop)
            if idx is None:
                bx, by = X[start:stop, ...], y[start:stop, ...]
            else:
                bx, by = take(X, idx[start:stop]), take(y, idx[start:stop])
            if not on_device:
                bx, by = placement.to_network(bx, like), placement.to_network(by, like)
            yield bx, by


class EpochBatches:
    """One epoch of :class:`Batches`: iterable, and again in the same order."""

    __slots__ = ("batches", "order")

    def __init__(self, batches: Batches, order: np.ndarray | None) -> None:
        self.batches, self.order = batches, order

    def __iter__(self) -> Iterator[tuple[Array, Array]]:
        return self.batches.iterate(self.order)


def to_index(order: np.ndarray, like: Any) -> Any:
    """Integer indices ``order`` on ``like``'s backend and device (for :func:`take`)."""
    return backends.from_numpy(np.asarray(order, dtype=np.int64), like)


def take(A: Any, idx: Any) -> Any:
    """Rows ``idx`` of ``A`` (``idx``: indices on ``A``'s backend, see :func:`to_index`)."""
    return namespace(A).take(A, idx, axis=0)


def split_indices(
    owner: str, n: int, test_size: float | int, shuffle_test: bool, seed: int | None
) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the training and test parts of ``n`` samples: a random test part of
    ``test_size`` samples (a fraction in (0, 1), rounded up, or a count), drawn from
    ``numpy.random.default_rng(seed)`` (``seed=None``: from :func:`nnx.backends.get_rng`,
    NumPy's global state unless :func:`nnx.manual_seed` was called).

    Both parts keep the data's order, unless ``shuffle_test``: then the test part comes
    in the random order of the draw (as scikit-learn's ``train_test_split`` returns it).
    """
    if isinstance(test_size, bool) or not isinstance(test_size, numbers.Real):
        raise TypeError(f"{owner}: test_size must be a float or an int, got {test_size!r}")
    if not isinstance(test_size, numbers.Integral):  # NumPy's integers count as ints
        test_size = float(test_size)
        if not 0.0 < test_size < 1.0:
            raise ValueError(f"{owner}: a float test_size must lie in (0, 1), got {test_size}")
        n_test = math.ceil(test_size * n)
    else:
        n_test = int(test_size)
    if not 0 < n_test < n:
        raise ValueError(
            f"{owner}: test_size={test_size!r} leaves {n_test} test and "
            f"{n - n_test} training samples out of {n}; both must be at least 1"
        )
    rng = backends.get_rng() if seed is None else np.random.default_rng(seed)
    order = rng.permutation(n)
    train, test = np.sort(order[: n - n_test]), order[n - n_test :]
    return train, (test if shuffle_test else np.sort(test))


def is_class_target(y: Any) -> bool:
    """Whether ``y`` holds class targets: integer labels ``(n,)`` or one-hot rows
    ``(n, K)`` (every entry 0 or 1, one 1 per row). An autoencoder's targets are not."""
    y = backends.to_numpy(y) if backends.is_array(y) else np.asarray(y)
    if y.ndim == 1:
        return y.dtype.kind in "iu"
    if y.ndim != 2 or y.dtype.kind not in "iubf" or y.shape[0] == 0:
        return False
    ones = y == 1
    return bool(np.all(ones | (y == 0)) and np.all(ones.sum(axis=1) == 1))


def check_finite(owner: str, name: str, A: Any) -> None:
    """Raise ``ValueError`` naming the first sample of floating ``A`` with a NaN or inf."""
    if not is_floating(A):
        return
    xp = namespace(A)
    ok = backends.to_numpy(xp.all(xp.isfinite(xp.reshape(A, (A.shape[0], -1))), axis=1))
    if not ok.all():
        bad = int(np.argmin(ok))
        raise ValueError(
            f"{owner}: {name} contains non-finite values (NaN or inf), first at sample {bad} "
            f"of {A.shape[0]}; clean the data before training"
        )
