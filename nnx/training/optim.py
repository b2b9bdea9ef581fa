"""The :class:`Optim` facade: the original library's training API, assembled from the parts of
:mod:`nnx.training`.

The facade checks the arguments and builds things; it runs nothing per batch. A loop
is: place the data and build the batch iterator (:mod:`~nnx.training.data`), build the
updater (:mod:`~nnx.training.step`, or :mod:`~nnx.training.graph` around it), and hand
both, with the observers (early stopping, checkpoint, plot, callback), to the epoch
loop (:mod:`~nnx.training.loop`), which calls the updater batch after batch.
"""

from __future__ import annotations

import math
import numbers
import os
from collections.abc import Callable
from typing import Any

import numpy as np

from .. import backends, distributed
from ..module import Array, Loss, Module, check_positive_int, mode, namespace
from . import data as placement
from .callbacks import CallEachEpoch, EarlyStopping
from .checkpoint import Checkpoint, call_signature
from .graph import GraphedStep
from .guard import non_finite_parameter
from .history import HISTORY_COLUMNS, LivePlot, history_frame
from .loop import Observer, Trainer, evaluate
from .progress import Progress, bars_setting
from .signals import Terminated
from .step import DataParallelStep, Step

__all__ = ["Optim"]


class Optim:
    r"""Ties a network, a loss and an update rule together, and runs training loops.

    ``step(batch_x, batch_y)`` does forward, loss, backward and update, and returns
    the per-sample losses. The gradient is that of the *sum* of the per-sample losses
    :math:`L = \sum_i \ell_i` (the :class:`~nnx.Loss` contract), so the plain update
    :math:`w \leftarrow w - \epsilon \nabla_w L` scales with the batch size, as in the
    original library (NeuralNetworksDIY). With an ``optimizer`` (:mod:`nnx.optimizers`), ``optimizer.step``
    replaces ``network.update_parameters(eps)``.

    The loops :meth:`SGD` and :meth:`SGD_eval`:

    - draw a new shuffle every epoch from ``numpy.random.default_rng(seed)``: the same
      seed gives the same sequence of batches; batches are consecutive slices of
      ``batch_size`` samples of the shuffled order, the last one smaller;
    - move host data (NumPy arrays, lists) to the network's backend and dtype once
      when ``X`` and ``y`` together take at most :attr:`max_device_bytes`, otherwise
      batch by batch; integer labels ``(n,)`` and one-hot targets ``(n, K)`` both work;
    - check the loss of every batch before the update: a non-finite loss raises
      ``FloatingPointError`` naming the epoch and the batch (both 1-based), with the
      parameters as they were before that step;
    - train in training mode and evaluate in evaluation mode (:meth:`nnx.Module.train`,
      :meth:`~nnx.Module.eval`: what :class:`~nnx.Dropout` and :class:`~nnx.BatchNorm`
      look at), giving every module back the mode it had when the call returns;
    - stop cleanly on Ctrl-C (``KeyboardInterrupt``): bars closed, the parameters
      (and buffers, such as BatchNorm's running statistics) put back as they were at
      the end of the last finished epoch (or the best epoch, see ``restore_best``), and
      the history of the finished epochs returned; :attr:`interrupted` is then ``True``.

    Parameters
    ----------
    network : Module
        The model (usually a :class:`Sequential`).
    loss : Loss
        Per-sample loss, e.g. :class:`~nnx.CELogSoftmax`.
    eps : float, default 1e-3
        Step size of the plain update (unused with an ``optimizer``).
    optimizer : nnx.optimizers.Optimizer, optional
        Update rule used after each backward pass.
    comm : nnx.distributed.Communicator, optional
        Train data-parallel on the ranks of ``comm`` (:func:`nnx.distributed.init`,
        :doc:`/scaling`): ``step``, ``SGD`` and ``SGD_eval`` first check that every
        rank built the same network and runs the loop with the same arguments, and
        give every rank rank 0's parameters (once per network); each rank then takes
        its contiguous share of every global batch (``batch_size`` is the global batch,
        every rank draws the same shuffle), the gradients are summed with one allreduce
        per step and every rank applies the same update: the parameters are those of
        one process training on the global batches, up to float rounding. The
        non-finite check and the label checks see every rank's share (every rank stops
        at the same batch with the same error); ``evaluate``, ``score`` and the test
        passes of ``SGD_eval`` are computed on shares and summed; only rank 0 shows
        progress bars and draws ``online_plot``. Ctrl-C, or an error on one rank only,
        stops every rank (see :class:`nnx.distributed.MPICommunicator`).
    cuda_graph : bool, default False
        Replay each step as CUDA graphs (:mod:`nnx.training.graph`): the first batch of
        each shape runs eagerly and is recorded, later ones cost a few launches instead
        of one per operation. For the ``cupy`` backend and ``torch`` on CUDA, with the
        plain update or an optimiser whose step has no changing scalars (``SGD``,
        ``Momentum``; not ``Adam``).

    Examples
    --------
    >>> import nnx, numpy as np
    >>> net = nnx.Sequential(nnx.Linear(2, 2))
    >>> opt = nnx.Optim(net, nnx.CELogSoftmax(), eps=0.1)
    >>> opt.step(nnx.asarray([[1.0, 0.0]]), nnx.asarray(np.array([1]))).shape
    (1,)
    >>> X, y = np.random.default_rng(0).normal(size=(64, 2)), np.arange(64) % 2
    >>> opt.SGD(X, y, batch_size=16, epochs=3).shape
    (3,)
    """

    #: Largest ``X.nbytes + y.nbytes`` (on the network's dtype) moved to the backend at
    #: once; larger data is moved batch by batch.
    max_device_bytes: int = placement.Placement.max_device_bytes
    #: Batch size of the evaluation passes (:meth:`score`, test losses).
    eval_batch_size: int = 1024

    def __init__(
        self,
        network: Module,
        loss: Loss,
        eps: float = 1e-3,
        optimizer: Any = None,
        comm: Any = None,
        cuda_graph: bool = False,
    ) -> None:
        if not isinstance(network, Module):
            raise TypeError(f"Optim: network must be a nnx Module, got {type(network).__name__}")
        if not isinstance(loss, Loss):
            raise TypeError(f"Optim: loss must be a nnx Loss, got {type(loss).__name__}")
        if isinstance(eps, bool) or not isinstance(eps, numbers.Real):
            raise TypeError(
                f"Optim: eps must be a non-negative number, got {type(eps).__name__} {eps!r}"
            )
        if not (eps >= 0 and math.isfinite(eps)):
            raise ValueError(f"Optim: eps must be a non-negative number (finite), got {eps!r}")
        if optimizer is not None and not callable(getattr(optimizer, "step", None)):
            raise TypeError(
                f"Optim: optimizer must have a step(network) method (see nnx.optimizers), "
                f"got {type(optimizer).__name__}"
            )
        if optimizer is not None and callable(getattr(optimizer, "bind", None)):
            optimizer.bind(network)  # one optimiser, one network: its state is per parameter
        if cuda_graph and optimizer is not None and not getattr(optimizer, "capturable", False):
            raise ValueError(
                f"Optim: cuda_graph=True needs an update a CUDA graph can replay; "
                f"{type(optimizer).__name__}'s step changes its scalars every step (use "
                f"SGD or Momentum, or cuda_graph=False)"
            )
        if cuda_graph and comm is not None:
            raise ValueError(
                "Optim: cuda_graph=True with comm= is not supported: a data-parallel step "
                "sums the gradients over the ranks between the backward pass and the update"
            )
        #: The communicator of data-parallel training (``None``: this process alone).
        self.comm = comm
        self._dp = None if comm is None else distributed.DataParallel(comm)
        self.cuda_graph = bool(cuda_graph)
        self._eager = (
            Step(network, loss, float(eps), optimizer)
            if self._dp is None
            else DataParallelStep(network, loss, float(eps), optimizer, self._dp)
        )
        self.network = network
        #: The split made by the last :meth:`SGD_eval` (host or backend arrays as given).
        self.X_train: Any = None
        self.y_train: Any = None
        self.X_test: Any = None
        self.y_test: Any = None
        #: History of the last loop (dict of lists), kept up to date epoch by epoch.
        self.history: dict[str, list[float]] = {}
        #: Whether the last loop was stopped by Ctrl-C or SIGTERM.
        self.interrupted = False
        #: Whether the last loop was stopped by SIGTERM (:mod:`nnx.training.signals`).
        self.terminated = False
        #: Epoch (1-based, as the bars count) whose parameters the last :meth:`SGD_eval`
        #: kept: the last one, or the best one with ``restore_best=True``.
        self.best_epoch: int | None = None
        #: What the last :meth:`SGD_eval` returned (the original library's attribute): its DataFrame
        #: with ``return_dataframe=True``, else its four arrays.
        self.train_df: Any = None

    @property
    def network(self) -> Module:
        """The model being trained."""
        return self._eager.network

    @network.setter
    def network(self, network: Module) -> None:
        self._eager.network = network
        self._placement = placement.Placement(network)
        #: the updater the loops call: the eager step, or its CUDA-graph replay
        self._updater: Step | GraphedStep = (
            GraphedStep(self._eager) if self.cuda_graph else self._eager
        )

    # the updater's own settings: a callback may change them between steps
    @property
    def loss(self) -> Loss:
        """The per-sample loss."""
        return self._eager.loss

    @loss.setter
    def loss(self, loss: Loss) -> None:
        self._eager.loss = loss

    @property
    def eps(self) -> float:
        """Step size of the plain update (unused with an ``optimizer``)."""
        return self._eager.eps

    @eps.setter
    def eps(self, eps: float) -> None:
        self._eager.eps = eps

    @property
    def optimizer(self) -> Any:
        """The update rule (``None``: the plain update with :attr:`eps`)."""
        return self._eager.optimizer

    @optimizer.setter
    def optimizer(self, optimizer: Any) -> None:
        self._eager.optimizer = optimizer

    def _place(self) -> placement.Placement:
        self._placement.max_device_bytes = self.max_device_bytes
        return self._placement

    # -- one step ---------------------------------------------------------------------
    def step(self, batch_x: Any, batch_y: Any) -> Array:
        """One training step on a batch; returns the per-sample losses (backend array).

        Runs in the network's current mode, as a PyTorch step does (modules start in
        training mode; :meth:`SGD`, :meth:`SGD_eval`, :meth:`score`, :meth:`evaluate`
        and :meth:`predict` switch it and give it back). Raises ``FloatingPointError``
        (parameters untouched) if the loss is not finite. With a communicator,
        ``batch_x`` is the global batch: this rank trains on its share and returns that
        share's losses.
        """
        dp = self._dp
        if dp is not None:
            dp.sync("Optim.step", self.network)
            batch_x, batch_y = placement.host(batch_x), placement.host(batch_y)
            lo, hi = dp.shard(0, int(batch_x.shape[0]) if len(batch_x.shape) else 0)
            batch_x, batch_y = batch_x[lo:hi, ...], batch_y[lo:hi, ...]
        place = self._placement
        like = place.like()
        X, y = place.to_network(batch_x, like), place.to_network(batch_y, like)
        try:
            losses = self._updater(X, y)[0]
        except FloatingPointError as exc:
            bad = non_finite_parameter(self.network)
            if bad is not None:
                raise FloatingPointError(
                    f"Optim.step: {exc}; parameter {bad!r} was already non-finite before "
                    f"this step (an earlier update overflowed: lower the learning rate)"
                ) from None
            raise FloatingPointError(f"Optim.step: {exc}") from None
        except BaseException as exc:
            if dp is not None:
                dp.failed(exc)
            raise
        if losses is None:  # this rank's share of a batch shorter than the ranks: empty
            return namespace(X).zeros((0,), dtype=X.dtype if like is None else like.dtype)
        if self.cuda_graph:  # a graph's buffer: the next replay overwrites it
            return namespace(losses).asarray(losses, copy=True)
        return losses

    # -- evaluation -------------------------------------------------------------------
    def predict(self, X: Any) -> Array:
        """Network output for ``X`` (moved to the network's backend), in batches of
        :attr:`eval_batch_size`, in evaluation mode (:meth:`nnx.Module.eval`; every
        module's own mode is given back afterwards)."""
        X = placement.host(X)
        n = int(X.shape[0]) if len(X.shape) else 0
        place = self._placement
        with mode(self.network, False):
            if n <= self.eval_batch_size:
                return self.network.forward(place.to_network(X))
            parts = [
                self.network.forward(place.to_network(X[i : i + self.eval_batch_size, ...]))
                for i in range(0, n, self.eval_batch_size)
            ]
        return namespace(parts[0]).concat(parts, axis=0)

    def _evaluation(self, data: placement.Data) -> placement.Batches:
        """The batches of an evaluation pass over ``data`` (this rank's part of it)."""
        part = data if self._dp is None else self._dp.part(data)
        return placement.Batches(self._placement, part, self.eval_batch_size, n=data.n)

    def _evaluate(self, owner: str, data: placement.Data) -> tuple[float, float]:
        """One pass over ``data``; with a communicator, every rank first checks the
        others' network and takes rank 0's parameters (once per network), then passes
        over its share."""
        if self._dp is None:
            return evaluate(self._updater, self._evaluation(data))
        self._dp.sync(owner, self.network, f"n={data.n}")
        return evaluate(self._updater, self._evaluation(data), self._dp.reduce)

    def evaluate(self, X: Any, y: Any) -> tuple[float, float]:
        """Mean per-sample loss and accuracy on ``(X, y)`` (accuracy is NaN unless the
        outputs are ``(n, K)`` and ``y`` holds labels or one-hot rows); no update; in
        evaluation mode, as :meth:`score` and :meth:`predict`.

        >>> import nnx, numpy as np
        >>> opt = nnx.Optim(nnx.Sequential(nnx.Linear(2, 2)), nnx.CELogSoftmax())
        >>> loss, acc = opt.evaluate(np.eye(2), np.array([0, 1]))
        """
        return self._evaluate("Optim.evaluate", self._place().prepare("Optim.evaluate", X, y))

    def score(self, X: Any, y: Any) -> float:
        """Accuracy of ``argmax(network(X))`` against integer labels or one-hot ``y``.

        ``X`` and ``y`` are checked exactly as :meth:`evaluate` checks them (sample
        counts, finiteness, label shape, dtype and range, through the loss); no samples
        is a ``ValueError``, and so are outputs that are not ``(n, K)`` scores.

        >>> import nnx, numpy as np
        >>> opt = nnx.Optim(nnx.Sequential(nnx.Linear(2, 2)), nnx.CELogSoftmax())
        >>> 0.0 <= opt.score(np.eye(2), np.array([0, 1])) <= 1.0
        True

        With a communicator, every rank scores its share of rank 0's network, with the
        same checks, and the counts are summed: every rank returns the same number or
        raises the same error.
        """
        data = self._place().prepare("Optim.score", X, y)
        _, accuracy = self._evaluate("Optim.score", data)
        if not math.isnan(accuracy):
            return accuracy
        raise ValueError(
            f"Optim.score: accuracy needs (n, K) outputs (K >= 2) and integer labels "
            f"(n,) or one-hot targets (n, K); got y of shape {tuple(data.y.shape)}"
        )

    # -- loops ------------------------------------------------------------------------
    def _use_network(self, network: Module | None) -> None:
        if network is not None:
            if not isinstance(network, Module):
                raise TypeError(
                    f"Optim: network must be a nnx Module, got {type(network).__name__}"
                )
            if self.optimizer is not None and hasattr(self.optimizer, "reset"):
                self.optimizer.reset()
            if self.optimizer is not None and callable(getattr(self.optimizer, "bind", None)):
                self.optimizer.bind(network)
            self.network = network

    def _trainer(
        self,
        owner: str,
        train: placement.Data,
        batch_size: int,
        shuffle: bool,
        rng: np.random.Generator,
        test: placement.Data | None = None,
    ) -> Trainer:
        """The epoch loop over ``train`` (a new order every epoch, drawn from ``rng``;
        on several ranks each takes its share of every batch), evaluating on ``test``."""
        shard = None if self._dp is None else self._dp.shard
        batches = placement.Batches(self._placement, train, batch_size, shuffle, rng, shard)
        tests = None if test is None else self._evaluation(test)
        return Trainer(owner, self._updater, batches, tests, self._dp)

    def _interrupted(self, stop: KeyboardInterrupt | None) -> None:
        self.interrupted = stop is not None
        self.terminated = isinstance(stop, Terminated)

    # -- data-parallel hooks ------------------------------------------------------------
    def _sync(self, owner: str, loop: str) -> None:
        """Same network and loop arguments on every rank; rank 0's parameters (once)."""
        if self._dp is not None:
            self._dp.sync(owner, self.network, loop)

    def _common_seed(self, seed: int | None) -> int | None:
        """The same seed on every rank (rank 0's draw for ``seed=None``)."""
        return seed if self._dp is None else self._dp.common_seed(seed)

    def _shows(self, progress: bool | str | None) -> bool | str | None:
        """Bars (and plots) only on rank 0."""
        return progress if self._dp is None or self._dp.root else False

    def SGD(
        self,
        X: Any,
        y: Any,
        batch_size: int,
        epochs: int,
        network: Module | None = None,
        shuffle: bool = True,
        seed: int | None = 42,
        progress: bool | None = None,
        checkpoint: str | os.PathLike[str] | None = None,
        verbose: bool | int | str | None = None,
    ) -> np.ndarray:
        """Mini-batch training; returns the mean per-sample loss of each epoch.

        Parameters
        ----------
        X, y : array
            Inputs ``(n, ...)`` and targets: integer labels ``(n,)`` or ``(n, ...)``
            targets such as one-hot rows. NumPy or backend arrays.
        batch_size, epochs : int
            Batches are consecutive slices of ``batch_size`` samples, the last smaller.
        network : Module, optional
            Train this network instead (it becomes ``self.network``).
        shuffle : bool, default True
            Draw a new order every epoch from ``default_rng(seed)``.
        seed : int or None, default 42
            Seed of the shuffles; ``None``: drawn from NumPy's global random state (or
            from nnx's generator after :func:`nnx.manual_seed`).
        progress : bool, optional
            Progress bars: ``None`` shows them in a terminal or notebook only.
        checkpoint : path, optional
            Write the training state there after every epoch and resume from it when
            it exists; removed when training ends normally
            (:mod:`nnx.training.checkpoint`).
        verbose : {"auto", 0, 1, 2} or bool, optional
            Keras's word for ``progress`` (an earlier version of the original library
            had it too): 0 or ``False`` silent, 1 or ``True`` bars, 2 one printed line
            per epoch, ``"auto"``/``None`` as ``progress``. Give one of the two.

        Returns
        -------
        numpy.ndarray
            Shape ``(epochs_done,)``: :math:`\\frac{1}{n}\\sum_i \\ell_i` of each epoch
            (fewer than ``epochs`` after Ctrl-C).
        """
        shown = bars_setting("Optim.SGD", progress, verbose)
        check_positive_int("Optim.SGD", "batch_size", batch_size)
        check_positive_int("Optim.SGD", "epochs", epochs)
        self._use_network(network)
        train = self._place().prepare("Optim.SGD", X, y)
        seed = self._common_seed(seed)
        self._sync(
            "Optim.SGD",
            f"n={train.n} batch_size={batch_size} epochs={epochs} shuffle={shuffle} seed={seed}"
            + _resuming(checkpoint),
        )
        rng = backends.get_rng() if seed is None else np.random.default_rng(seed)
        trainer = self._trainer("Optim.SGD", train, int(batch_size), shuffle, rng)
        self.history = {"epoch": [], "loss_train": [], "score_train": []}
        observers: list[Observer] = []
        saver, first = None, 1
        if checkpoint is not None:
            call = call_signature(
                self,
                loop="SGD",
                n=train.n,
                batch_size=int(batch_size),
                shuffle=bool(shuffle),
                seed=seed,
            )
            saver = Checkpoint(checkpoint, "Optim.SGD", call, self.network)
            if saver.exists():
                resumed = saver.restore(self.network, self.optimizer, rng)
                self.history, first = resumed["history"], resumed["epoch"] + 1
            if self._dp is None or self._dp.root:  # one writer; every rank resumes
                saver.follow(self.network, self.optimizer, rng, self.history)
                observers.append(saver.on_epoch_end)
        bars = Progress(self._shows(shown), int(epochs))
        self._interrupted(None)
        stop = trainer.run(int(epochs), self.history, bars, observers, first)
        self._interrupted(stop)
        if saver is not None and stop is None and (self._dp is None or self._dp.root):
            saver.remove()
        return np.asarray(self.history["loss_train"], dtype=np.float64)

    def SGD_eval(
        self,
        X: Any,
        y: Any,
        batch_size: int,
        epochs: int,
        test_size: float | int,
        patience: int | None = 10,
        network: Module | None = None,
        shuffle_train: bool = True,
        shuffle_test: bool = False,
        seed: int | None = 42,
        return_dataframe: bool = False,
        online_plot: bool | str | os.PathLike[str] = False,
        progress: bool | None = None,
        restore_best: bool = False,
        monitor: str | None = None,
        callback: Callable[[dict[str, float]], Any] | None = None,
        checkpoint: str | os.PathLike[str] | None = None,
        verbose: bool | int | str | None = None,
    ) -> Any:
        """Train on a split of ``(X, y)``, evaluating on the rest after every epoch.

        Words: the arguments and columns keep the original library's names
        (NeuralNetworksDIY), in which "test" is the part held out of ``(X, y)``: what
        the rest of nnx (bars, command line, ``history.csv``) calls the *validation
        split*, ``val_loss`` and ``val_acc``; a data set's own test set is not involved.

        A random part of ``test_size`` samples (a fraction in (0, 1), rounded up, or a
        count) is the validation split, drawn from ``numpy.random.default_rng(seed)``:
        the same seed gives the same split (``seed=None``: fresh randomness from NumPy's
        global state, or nnx's generator after :func:`nnx.manual_seed`). Both parts keep
        the data's order (with ``shuffle_test``, the held-out part comes in random order,
        as scikit-learn's ``train_test_split`` gives it). The split is kept on the Optim
        as :attr:`X_train`, :attr:`y_train`, :attr:`X_test`, :attr:`y_test`, as given
        (NumPy stays NumPy, float64 stays float64).

        Every epoch trains on the training part (a new shuffle per epoch when
        ``shuffle_train``, reproducible from ``seed``), then records
        ``loss_train``/``score_train`` (mean loss and accuracy over the epoch's batches,
        measured during the epoch, as Keras does) and ``loss_test``/``score_test`` (a
        full pass over the validation split).

        Early stopping: when the monitored test quantity has not improved for
        ``patience`` epochs, training stops (``patience`` None or 0: never). The
        monitored quantity (``monitor=None``) is the test accuracy for class targets
        (integer labels or one-hot rows) and the test loss otherwise (an autoencoder's
        targets); ``monitor="score"`` (highest ``score_test``) or ``"loss"`` (lowest
        ``loss_test``) chooses. The network ends with the last finished epoch's
        parameters, or, with ``restore_best=True`` (Keras's ``restore_best_weights``),
        with those of the best epoch (:attr:`best_epoch`), also after Ctrl-C.

        Parameters
        ----------
        progress : bool, optional
            Nested bars (epochs, batches). ``None``: only in a terminal or notebook;
            ``False``: silent.
        online_plot : bool or path
            Redraw the learning curves after every epoch: live in a notebook, else a PNG
            file (``"learning_curve.png"`` for ``True``, or the given path).
        callback : callable, optional
            Called after every epoch with that epoch's record (a dict).
        checkpoint : path, optional
            Write the training state there after every epoch (network, optimiser,
            epoch, random state, history, early-stopping state) and resume from it
            when it exists; removed when training ends normally
            (:mod:`nnx.training.checkpoint`). A non-finite loss or parameter keeps the
            parameters of before that step, or the best epoch's with ``restore_best``.
        verbose : {"auto", 0, 1, 2} or bool, optional
            Keras's word for ``progress``: 0 or ``False`` silent, 1 or ``True`` bars, 2
            one printed line per epoch, ``"auto"``/``None`` as ``progress``.

        Returns
        -------
        pandas.DataFrame or tuple of numpy.ndarray
            With ``return_dataframe``, a DataFrame with columns ``epoch`` (counted from
            0, as the original library and Keras's ``History.epoch`` do), ``loss_train``,
            ``loss_test``, ``score_train``, ``score_test``; otherwise the four arrays in
            the original library's order ``(loss_train, score_train, loss_test, score_test)``, one
            value per epoch. Also kept as :attr:`train_df`.
        """
        owner = "Optim.SGD_eval"
        shown = bars_setting(owner, progress, verbose)
        check_positive_int(owner, "batch_size", batch_size)
        check_positive_int(owner, "epochs", epochs)
        if patience is not None and patience != 0:
            check_positive_int(owner, "patience", patience)
        if monitor not in (None, "score", "loss"):
            raise ValueError(f"{owner}: monitor must be None, 'score' or 'loss', got {monitor!r}")
        if return_dataframe:
            history_frame({c: [] for c in HISTORY_COLUMNS})  # pandas there?
        plot = LivePlot(online_plot) if online_plot and self._shows(True) else None
        self._use_network(network)
        seed = self._common_seed(seed)
        train, test, parts = self._place().split(owner, X, y, test_size, shuffle_test, seed)
        self.X_train, self.y_train, self.X_test, self.y_test = parts
        n = train.n + test.n
        self._sync(
            owner,
            f"n={train.n}+{test.n} batch_size={batch_size} epochs={epochs} "
            f"patience={patience} shuffle={shuffle_train},{shuffle_test} seed={seed}"
            + _resuming(checkpoint),
        )
        rng = backends.get_rng() if seed is None else np.random.default_rng(seed)
        trainer = self._trainer(owner, train, int(batch_size), shuffle_train, rng, test)
        self.history = {c: [] for c in HISTORY_COLUMNS}
        if monitor is None:
            monitor = "score" if placement.is_class_target(y) else "loss"
        stopping = EarlyStopping(monitor, patience or None)
        saver, first = None, 1
        if checkpoint is not None:
            call = call_signature(
                self,
                loop="SGD_eval",
                n=n,
                batch_size=int(batch_size),
                test_size=test_size,
                shuffle_train=bool(shuffle_train),
                shuffle_test=bool(shuffle_test),
                seed=seed,
                patience=patience,
                monitor=monitor,
            )
            saver = Checkpoint(checkpoint, owner, call, self.network)
            if saver.exists():
                resumed = saver.restore(self.network, self.optimizer, rng)
                self.history, first = resumed["history"], resumed["epoch"] + 1
                early = resumed["early"] or {}
                stopping.best_value = early.get("best_value")
                stopping.best_epoch = early.get("best_epoch")
                stopping.wait = early.get("wait", 0)
                stopping.best_state = resumed["best_state"]
                if stopping.stopped:  # written after the stopping epoch, before the end
                    first = int(epochs) + 1
                if plot is not None:
                    plot.update(self.history)
        bars = Progress(self._shows(shown), int(epochs))
        observers: list[Observer] = []
        if plot is not None:
            plot.history = self.history
            observers.append(plot.on_epoch_end)
        if callback is not None:
            observers.append(CallEachEpoch(callback).on_epoch_end)
        observers.append(stopping.on_epoch_end)
        if saver is not None and (self._dp is None or self._dp.root):
            saver.follow(self.network, self.optimizer, rng, self.history, stopping)
            observers.append(saver.on_epoch_end)  # after the stopping verdict: its state
        self._interrupted(None)
        self.best_epoch = None
        try:
            stop = trainer.run(int(epochs), self.history, bars, observers, first)
        except FloatingPointError:
            self.best_epoch = stopping.best_epoch
            if restore_best and stopping.best_state is not None:
                self.network.load_state_dict(stopping.best_state)
            raise
        self._interrupted(stop)
        if saver is not None and stop is None and (self._dp is None or self._dp.root):
            saver.remove()
        self.best_epoch = stopping.best_epoch
        if restore_best and stopping.best_state is not None:
            self.network.load_state_dict(stopping.best_state)
        elif not restore_best:
            self.best_epoch = self.history["epoch"][-1] if self.history["epoch"] else None
        if return_dataframe:
            frame = history_frame(self.history)
            frame["epoch"] -= 1  # counted from 0, as the original library and Keras's History do
            self.train_df = frame
        else:
            self.train_df = tuple(
                np.asarray(self.history[c], dtype=np.float64)
                for c in ("loss_train", "score_train", "loss_test", "score_test")
            )
        return self.train_df


def _resuming(checkpoint: str | os.PathLike[str] | None) -> str:
    """Part of the loop's arguments every rank must agree on: whether it resumes (a
    checkpoint that rank 0 wrote and another rank cannot see is a clear error, not a
    job whose ranks start from different epochs)."""
    if not isinstance(checkpoint, (str, os.PathLike)):
        return ""  # None, or a wrong type that Checkpoint refuses with its own message
    return f" resume={os.path.exists(checkpoint)}"
