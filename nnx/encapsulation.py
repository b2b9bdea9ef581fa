r"""Containers and training: :class:`Sequential` and :class:`Optim`."""

from __future__ import annotations

import copy
import math
import numbers
import os
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from . import backends, training
from . import checkpoint as checkpointing
from .module import Array, Loss, Module, check_positive_int, is_floating, namespace


class Sequential(Module):
    r"""A chain of modules, itself a :class:`~nnx.Module` (so chains nest).

    .. math::
        z^0 = X,\quad z^h = M^h(z^{h-1}) \quad (h = 1..H)

    ``backward(input, delta)`` walks the chain in reverse, for :math:`h = H, \dots, 1`,
    calling each module's two backward methods with its own input :math:`z^{h-1}`:

    .. math::
        \text{backward\_update\_gradient:}\quad \nabla_{w^h} L \mathrel{+}=
        \Big(\frac{\partial z^h}{\partial w^h}\Big)^{\!\top} \delta^h

        \text{backward\_delta:}\quad \delta^{h-1} =
        \Big(\frac{\partial z^h}{\partial z^{h-1}}\Big)^{\!\top} \delta^h

    from :math:`\delta^H =` ``delta`` :math:`= \partial L / \partial z^H`; it returns
    :math:`\delta^0 = \partial L / \partial X`.

    Parameter names are dotted, as in PyTorch: ``"0.weight"``, ``"2.1.bias"``.

    >>> import nnx
    >>> net = nnx.Sequential(nnx.Linear(4, 8), nnx.ReLU(), nnx.Linear(8, 2))
    >>> len(net), net[0]
    (3, Linear(4, 8, bias=True))
    """

    def __init__(self, *modules: Module) -> None:
        super().__init__()
        if len(modules) == 1 and isinstance(modules[0], (list, tuple)):
            modules = tuple(modules[0])
        self._modules: list[Module] = []
        self._initial: list[dict[str, np.ndarray]] = []
        self._inputs: list[Array] | None = None
        for m in modules:
            self.add(m)

    # -- container API ----------------------------------------------------------------
    def _checked(self, module: Any) -> Module:
        if not isinstance(module, Module):
            raise TypeError(
                f"Sequential: expected a nnx Module, got {type(module).__name__} {module!r}"
            )
        return module

    def add(self, module: Module) -> Sequential:
        """Append ``module``; returns ``self`` for chaining."""
        self._modules.append(self._checked(module))
        self._initial.append(_snapshot(module))
        self._inputs = None
        return self

    def insert(self, index: int, module: Module) -> Sequential:
        """Insert ``module`` before position ``index``; returns ``self``."""
        self._modules.insert(index, self._checked(module))
        self._initial.insert(index, _snapshot(module))
        self._inputs = None
        return self

    def reset(self) -> Sequential:
        """Restore every module's parameters to their values when it was added."""
        for module, initial in zip(self._modules, self._initial, strict=True):
            module.load_state_dict(initial)
        self._inputs = None
        return self

    def children(self) -> list[Module]:
        return list(self._modules)

    def __len__(self) -> int:
        return len(self._modules)

    def __getitem__(self, index: int | slice) -> Any:
        if isinstance(index, slice):
            return Sequential(*self._modules[index])
        return self._modules[index]

    def __iter__(self) -> Iterator[Module]:
        return iter(self._modules)

    def __repr__(self) -> str:
        if not self._modules:
            return "Sequential()"
        lines = [f"  ({i}): " + repr(m).replace("\n", "\n  ") for i, m in enumerate(self._modules)]
        return "Sequential(\n" + "\n".join(lines) + "\n)"

    @property
    def name(self) -> str:
        return f"Sequential of {len(self._modules)} modules"

    def get_config(self) -> dict[str, Any]:
        return {}

    # -- the module protocol ----------------------------------------------------------
    def forward(self, X: Array) -> Array:
        inputs = [X]
        for module in self._modules:
            inputs.append(module.forward(inputs[-1]))
        self._inputs = inputs
        return inputs[-1]

    def _chain_inputs(self, input: Array) -> list[Array]:
        if self._inputs is None or self._inputs[0] is not input:
            self.forward(input)
        assert self._inputs is not None
        return self._inputs

    def backward(self, input: Array, delta: Array, input_grad: bool = True) -> Array | None:
        """Accumulate every gradient and return :math:`\\partial L / \\partial X`.

        Uses the intermediate outputs of the last ``forward`` when it ran on this very
        ``input``, otherwise recomputes them. With ``input_grad=False`` the first
        module's ``backward_delta`` (which nobody needs during training) is skipped
        and ``None`` is returned.
        """
        inputs = self._chain_inputs(input)
        modules = self._modules
        for i in range(len(modules) - 1, -1, -1):
            # backward_update_gradient then backward_delta (fused where a module can)
            delta = modules[i]._backprop(inputs[i], delta, input_grad or i > 0)
        return delta

    def _backprop(self, input: Array, delta: Array, input_grad: bool) -> Array | None:
        return self.backward(input, delta, input_grad)

    def backward_update_gradient(self, input: Array, delta: Array) -> None:
        inputs = self._chain_inputs(input)
        for i in range(len(self._modules) - 1, -1, -1):
            self._modules[i].backward_update_gradient(inputs[i], delta)
            if i:
                delta = self._modules[i].backward_delta(inputs[i], delta)

    def backward_delta(self, input: Array, delta: Array) -> Array:
        inputs = self._chain_inputs(input)
        for i in range(len(self._modules) - 1, -1, -1):
            delta = self._modules[i].backward_delta(inputs[i], delta)
        return delta

    def update_parameters(self, gradient_step: float = 1e-3) -> None:
        for module in self._modules:
            module.update_parameters(gradient_step)

    def zero_grad(self) -> None:
        for module in self._modules:
            module.zero_grad()

    def _start_step(self) -> None:
        for module in self._modules:
            module._start_step()

    def _end_step(self) -> None:
        for module in self._modules:
            module._end_step()

    def _moved(self) -> None:
        self._inputs = None


def _snapshot(module: Module) -> dict[str, np.ndarray]:
    return copy.deepcopy(module.state_dict())


def _check_finite(owner: str, name: str, A: Any) -> None:
    """Raise ``ValueError`` naming the first sample of floating ``A`` with a NaN or inf."""
    if isinstance(A, np.ndarray):
        if A.dtype.kind not in "fc":
            return
        ok = np.isfinite(A.reshape(A.shape[0], -1)).all(axis=1)
    else:
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


def _non_finite_parameter(network: Module) -> str | None:
    """Name of the first parameter holding a NaN or an infinity (``None``: all finite).

    One read: the per-parameter finiteness flags are stacked on the device."""
    named = list(network.named_parameters())
    if not named:
        return None
    xp = namespace(named[0][1])
    flags = xp.stack([xp.all(xp.isfinite(p)) for _, p in named])
    ok = backends.to_numpy(flags)
    if ok.all():
        return None
    return named[int(np.argmin(ok))][0]


class _EpochStart:
    """Parameters and optimiser state at the start of an epoch (host copies), to
    replay the epoch when a parameter turns non-finite."""

    def __init__(self, optim: Optim) -> None:
        self.parameters = optim.network.state_dict()
        opt = optim.optimizer
        self.optimizer = opt.state_dict() if callable(getattr(opt, "state_dict", None)) else None
        rng = backends.get_rng()
        self.rng = copy.deepcopy(rng.bit_generator.state) if hasattr(rng, "bit_generator") else None

    def restore(self, optim: Optim) -> None:
        optim.network.load_state_dict(self.parameters)
        if self.optimizer is not None:
            optim.optimizer.load_state_dict(self.optimizer)
        if self.rng is not None:
            backends.get_rng().bit_generator.state = self.rng


@backends.quiet_float_errors  # a non-finite loss is reported as FloatingPointError
def _forward_loss(net: Module, loss: Loss, X: Array, y: Array) -> tuple[Array, Array, float]:
    """Output, per-sample losses and their sum (a Python float).

    The sum is the one value a training step brings back from the device. On a device
    backend the loss's label checks are deferred to this read (``Loss._pending_checks``):
    their counts travel in the same transfer, so a GPU step synchronises once, not once
    per check. On NumPy there is nothing to wait for, and the loss checks at once.
    """
    yhat = net.forward(X)
    if type(X) is np.ndarray:
        losses = loss.forward(y, yhat)
        return yhat, losses, float(namespace(losses).sum(losses))
    pending: list[tuple[Array, int, Callable[[], None]]] = []
    loss._pending_checks = pending
    try:
        losses = loss.forward(y, yhat)
    finally:
        loss._pending_checks = None
    xp = namespace(losses)
    total = xp.sum(losses)
    if not pending:
        return yhat, losses, float(total)
    counts = [xp.astype(xp.asarray(c), total.dtype) for c, _, _ in pending]
    read = backends.to_numpy(xp.stack([total, *counts]))
    for (_, expected, fail), count in zip(pending, read[1:], strict=True):
        if count != expected:
            loss._forget()
            fail()
    return yhat, losses, float(read[0])


class Optim:
    r"""Ties a network, a loss and an update rule together, and runs training loops.

    ``step(batch_x, batch_y)`` does forward, loss, backward and update, and returns
    the per-sample losses. The gradient is that of the *sum* of the per-sample losses
    :math:`L = \sum_i \ell_i` (the :class:`~nnx.Loss` contract), so the plain update
    :math:`w \leftarrow w - \epsilon \nabla_w L` scales with the batch size, as in the
    seed library. With an ``optimizer`` (:mod:`nnx.optimizers`), ``optimizer.step``
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
    - stop cleanly on Ctrl-C (``KeyboardInterrupt``): bars closed, the parameters
      put back as they were at the end of the last finished epoch (or the best epoch,
      see ``restore_best``), and the history of the finished epochs returned;
      :attr:`interrupted` is then ``True``.

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
    max_device_bytes: int = 1 << 30
    #: Batch size of the evaluation passes (:meth:`score`, test losses).
    eval_batch_size: int = 1024

    def __init__(
        self, network: Module, loss: Loss, eps: float = 1e-3, optimizer: Any = None
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
        self.network, self.loss, self.eps = network, loss, float(eps)
        self.optimizer = optimizer
        #: The split made by the last :meth:`SGD_eval` (host or backend arrays as given).
        self.X_train: Any = None
        self.y_train: Any = None
        self.X_test: Any = None
        self.y_test: Any = None
        #: History of the last loop (dict of lists), kept up to date epoch by epoch.
        self.history: dict[str, list[float]] = {}
        #: Whether the last loop was stopped by Ctrl-C or SIGTERM.
        self.interrupted = False
        #: Whether the last loop was stopped by SIGTERM (:mod:`nnx.checkpoint`).
        self.terminated = False
        #: Epoch (1-based) whose parameters the last :meth:`SGD_eval` kept.
        self.best_epoch: int | None = None

    # -- data -------------------------------------------------------------------------
    #: ``(network, module, name)`` of the parameter ``_like`` found last
    _like_ref: tuple[Module, Module, str] | None = None

    def _like(self) -> Array | None:
        """A parameter of the network (its backend, device and dtype are the network's).

        This runs twice per training step: the (module, name) found is remembered and
        reused while the network is the same object and the module still has it.
        """
        ref = self._like_ref
        if ref is not None and ref[0] is self.network:
            p = ref[1]._parameters.get(ref[2])
            if p is not None:
                return p
        for module in self.network.modules():
            for name, p in module._parameters.items():
                self._like_ref = (self.network, module, name)
                return p
        return None

    def _device_data(self, X: Any) -> Array:
        """Data on the network's backend; floating data takes the network's dtype.

        This is the one place where nnx converts: host data (NumPy arrays, lists) or
        arrays of another backend are moved, floating data is cast to the parameters'
        dtype; integer labels keep their dtype. Arrays already right are returned as is.
        """
        like = self._like()
        if like is None:
            return backends.asarray(X) if backends.backend_of(X) is not backends.current() else X
        if type(X) is type(like) and (X.dtype == like.dtype or not is_floating(X)):
            return X
        host = backends.to_numpy(X) if backends.is_array(X) else np.asarray(X)
        if host.dtype.kind == "f":
            host = host.astype(backends.dtype_name(like), copy=False)
        elif host.dtype.kind not in "iub":
            raise TypeError(f"Optim: cannot use data of dtype {host.dtype} ({type(X).__name__})")
        return backends.from_numpy(host, like)

    def _on_network(self, X: Any) -> bool:
        like = self._like()
        return like is None or type(X) is type(like)

    def _prepare(self, owner: str, X: Any, y: Any) -> tuple[Any, Any, int, bool]:
        """Check ``X``/``y`` and move them at once when they fit.

        Returns ``(X, y, n, on_device)``; when ``on_device`` is False, ``X`` and ``y``
        are NumPy arrays moved batch by batch.
        """
        if not backends.is_array(X):
            X = np.asarray(X)
        if not backends.is_array(y):
            y = np.asarray(y)
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
            _check_finite(owner, name, A)
        if self._on_network(X) and self._on_network(y):
            return self._device_data(X), self._device_data(y), n, True
        like = self._like()
        itemsize = np.dtype(backends.dtype_name(like)).itemsize if like is not None else 8
        size = int(np.prod(X.shape)) * itemsize + int(np.prod(y.shape)) * 8
        if size <= self.max_device_bytes:
            return self._device_data(X), self._device_data(y), n, True
        return backends.to_numpy(X), backends.to_numpy(y), n, False

    def _batches(
        self, X: Any, y: Any, n: int, batch_size: int, order: np.ndarray | None, on_device: bool
    ) -> Iterator[tuple[Array, Array]]:
        """Consecutive batches of ``batch_size`` in ``order`` (``None``: as stored)."""
        idx = None
        if order is not None and on_device:
            idx = (
                backends.from_numpy(order.astype(np.int64), X)
                if not isinstance(X, np.ndarray)
                else order
            )
        for start in range(0, n, batch_size):
            stop = min(start + batch_size, n)
            if order is None:
                bx, by = X[start:stop, ...], y[start:stop, ...]
            elif on_device and idx is not None and not isinstance(X, np.ndarray):
                xp = namespace(X)
                sel = idx[start:stop]
                bx, by = xp.take(X, sel, axis=0), xp.take(y, sel, axis=0)
            else:
                sel = order[start:stop]
                bx, by = X[sel], y[sel]
            if not on_device or isinstance(bx, np.ndarray):
                bx, by = self._device_data(bx), self._device_data(by)
            yield bx, by

    # -- one step ---------------------------------------------------------------------
    def _step(self, X: Array, y: Array) -> tuple[Array, Array, float]:
        """Forward, loss, finiteness check, backward, update.

        Returns ``(losses, yhat, sum of losses)``; raises ``FloatingPointError`` before
        touching the parameters when the loss is not finite.
        """
        net = self.network
        # zero_grad() in effect: each gradient's first contribution overwrites it
        net._start_step()
        try:
            yhat, losses, total = _forward_loss(net, self.loss, X, y)
            if not math.isfinite(total):
                raise FloatingPointError(
                    f"non-finite loss (sum over the batch = {total}); the parameters were "
                    f"not updated"
                )
            delta = self.loss.backward(y, yhat)
            if isinstance(net, Sequential):
                net.backward(X, delta, input_grad=False)
            else:
                net.backward_update_gradient(X, delta)
        finally:
            net._end_step()
        if self.optimizer is not None:
            self.optimizer.step(net)
        else:
            net.update_parameters(self.eps)
        return losses, yhat, total

    def step(self, batch_x: Any, batch_y: Any) -> Array:
        """One training step on a batch; returns the per-sample losses (backend array).

        Raises ``FloatingPointError`` (parameters untouched) if the loss is not finite.
        """
        X, y = self._device_data(batch_x), self._device_data(batch_y)
        try:
            return self._step(X, y)[0]
        except FloatingPointError as exc:
            bad = _non_finite_parameter(self.network)
            if bad is not None:
                raise FloatingPointError(
                    f"Optim.step: {exc}; parameter {bad!r} was already non-finite before "
                    f"this step (an earlier update overflowed: lower the learning rate)"
                ) from None
            raise FloatingPointError(f"Optim.step: {exc}") from None

    # -- evaluation -------------------------------------------------------------------
    @staticmethod
    def _correct(yhat: Array, y: Array) -> Array | None:
        """Number of rows where ``argmax(yhat)`` equals the label, as a 0-d integer array
        on the network's device (``None``: not a classification). Callers add these up
        on the device and read the sum once, not once per batch (a GPU synchronisation)."""
        if len(yhat.shape) != 2 or yhat.shape[1] < 2:
            return None
        xp = namespace(yhat)
        pred = xp.argmax(yhat, axis=-1)
        if len(y.shape) == 2:
            if tuple(y.shape) != tuple(yhat.shape):
                return None
            target = xp.argmax(y, axis=-1)
        elif len(y.shape) == 1 and not is_floating(y):
            target = xp.astype(y, pred.dtype)
        else:
            return None
        return xp.sum(xp.astype(pred == target, xp.int64))

    def predict(self, X: Any) -> Array:
        """Network output for ``X`` (moved to the network's backend), in batches of
        :attr:`eval_batch_size`."""
        if not backends.is_array(X):
            X = np.asarray(X)
        n = int(X.shape[0]) if len(X.shape) else 0
        if n <= self.eval_batch_size:
            return self.network.forward(self._device_data(X))
        parts = [
            self.network.forward(self._device_data(X[i : i + self.eval_batch_size, ...]))
            for i in range(0, n, self.eval_batch_size)
        ]
        return namespace(parts[0]).concat(parts, axis=0)

    def _evaluate(self, X: Any, y: Any, n: int) -> tuple[float, float]:
        """Mean per-sample loss and accuracy (NaN when not a classification).

        Sums stay on the device until the end: one read, however many batches."""
        total: Any = 0.0
        correct: Any = 0
        counted = True
        for start in range(0, n, self.eval_batch_size):
            stop = min(start + self.eval_batch_size, n)
            bx = self._device_data(X[start:stop, ...])
            by = self._device_data(y[start:stop, ...])
            yhat = self.network.forward(bx)
            losses = self.loss.forward(by, yhat)
            total = total + namespace(losses).sum(losses)
            c = self._correct(yhat, by)
            if c is None:
                counted = False
            elif counted:
                correct = correct + c
        return float(total) / n, (int(correct) / n if counted else math.nan)

    def evaluate(self, X: Any, y: Any) -> tuple[float, float]:
        """Mean per-sample loss and accuracy on ``(X, y)`` (accuracy is NaN unless the
        outputs are ``(n, K)`` and ``y`` holds labels or one-hot rows); no update.

        >>> import nnx, numpy as np
        >>> opt = nnx.Optim(nnx.Sequential(nnx.Linear(2, 2)), nnx.CELogSoftmax())
        >>> loss, acc = opt.evaluate(np.eye(2), np.array([0, 1]))
        """
        X, y, n, _ = self._prepare("Optim.evaluate", X, y)
        return self._evaluate(X, y, n)

    def score(self, X: Any, y: Any) -> float:
        """Accuracy of ``argmax(network(X))`` against integer labels or one-hot ``y``.

        ``X`` and ``y`` are checked exactly as :meth:`evaluate` checks them (sample
        counts, finiteness, label shape, dtype and range, through the loss); no samples
        is a ``ValueError``, and so are outputs that are not ``(n, K)`` scores.

        >>> import nnx, numpy as np
        >>> opt = nnx.Optim(nnx.Sequential(nnx.Linear(2, 2)), nnx.CELogSoftmax())
        >>> 0.0 <= opt.score(np.eye(2), np.array([0, 1])) <= 1.0
        True
        """
        X, y, n, _ = self._prepare("Optim.score", X, y)
        _, accuracy = self._evaluate(X, y, n)
        if math.isnan(accuracy):
            raise ValueError(
                f"Optim.score: accuracy needs (n, K) outputs (K >= 2) and integer labels "
                f"(n,) or one-hot targets (n, K); got y of shape {tuple(y.shape)}"
            )
        return accuracy

    # -- loops ------------------------------------------------------------------------
    def _epoch(
        self,
        owner: str,
        epoch: int,
        data: tuple[Any, Any, int, bool],
        batch_size: int,
        order: np.ndarray | None,
        bars: training.Progress,
    ) -> tuple[float, float]:
        """Train one epoch; returns (mean per-sample loss, running accuracy).

        A non-finite loss, or non-finite parameters after an update, raises
        ``FloatingPointError`` naming the epoch and the batch, with the network back
        at the parameters it had before that step. The parameters are checked once per
        epoch, and when a loss is not finite; finding the step whose update overflowed
        replays the epoch from its start (the same operations in the same order)."""
        X, y, n, on_device = data
        batches = -(-n // batch_size)
        start = _EpochStart(self)
        bars.start_epoch(epoch, batches)
        total, counted = 0.0, True
        correct: Any = 0  # a device array after the first batch: read once, at the end
        for b, (bx, by) in enumerate(self._batches(X, y, n, batch_size, order, on_device), 1):
            try:
                _, yhat, s = self._step(bx, by)
            except FloatingPointError as exc:
                if _non_finite_parameter(self.network) is not None:
                    self._replay(owner, epoch, start, data, batch_size, order, batches)
                raise FloatingPointError(
                    f"{owner}: non-finite loss at epoch {epoch}, batch {b} of {batches}: {exc}"
                ) from None
            total += s
            c = self._correct(yhat, by)
            if c is None:
                counted = False
            elif counted:
                correct = correct + c
            bars.batch_bar.update(1)
        if _non_finite_parameter(self.network) is not None:
            self._replay(owner, epoch, start, data, batch_size, order, batches)
        return total / n, (int(correct) / n if counted else math.nan)

    def _replay(
        self,
        owner: str,
        epoch: int,
        start: _EpochStart,
        data: tuple[Any, Any, int, bool],
        batch_size: int,
        order: np.ndarray | None,
        batches: int,
    ) -> None:
        """Find the step of this epoch whose update made a parameter non-finite: replay
        the epoch from its start, checking after every update; leave the parameters
        of before that step and raise ``FloatingPointError`` naming it."""
        X, y, n, on_device = data
        start.restore(self)
        for b, (bx, by) in enumerate(self._batches(X, y, n, batch_size, order, on_device), 1):
            before = self.network.state_dict()
            try:
                self._step(bx, by)
            except FloatingPointError:
                break
            bad = _non_finite_parameter(self.network)
            if bad is not None:
                self.network.load_state_dict(before)
                raise FloatingPointError(
                    f"{owner}: non-finite parameter {bad!r} after the update at epoch "
                    f"{epoch}, batch {b} of {batches} (lower the learning rate); the "
                    f"parameters are those before that step"
                )
        start.restore(self)  # not reproduced (a non-deterministic device): epoch start
        raise FloatingPointError(
            f"{owner}: non-finite parameters during epoch {epoch} (the batch could not be "
            f"found again: the replay differed); the parameters are those of the start of "
            f"epoch {epoch}"
        )

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
        seed : int, default 42
            Seed of the shuffles.
        progress : bool, optional
            Progress bars: ``None`` shows them in a terminal or notebook only.
        checkpoint : path, optional
            Write the training state there after every epoch and resume from it when
            it exists; removed when training ends normally (:mod:`nnx.checkpoint`).

        Returns
        -------
        numpy.ndarray
            Shape ``(epochs_done,)``: :math:`\\frac{1}{n}\\sum_i \\ell_i` of each epoch
            (fewer than ``epochs`` after Ctrl-C).
        """
        check_positive_int("Optim.SGD", "batch_size", batch_size)
        check_positive_int("Optim.SGD", "epochs", epochs)
        self._use_network(network)
        data = self._prepare("Optim.SGD", X, y)
        n = data[2]
        rng = np.random.default_rng(seed)
        self.interrupted = self.terminated = False
        self.history = {"epoch": [], "loss_train": [], "score_train": []}
        saver = None
        first = 1
        if checkpoint is not None:
            call = checkpointing.call_signature(
                self, loop="SGD", n=n, batch_size=int(batch_size), shuffle=bool(shuffle), seed=seed
            )
            saver = checkpointing.Checkpoint(checkpoint, "Optim.SGD", call)
            if saver.exists():
                resumed = saver.restore(self.network, self.optimizer, rng)
                self.history, first = resumed["history"], resumed["epoch"] + 1
        last = self.network.state_dict()
        bars = training.Progress(progress, int(epochs))
        try:
            with checkpointing.sigterm_as_interrupt():
                for epoch in range(first, int(epochs) + 1):
                    order = rng.permutation(n) if shuffle else None
                    loss, score = self._epoch(
                        "Optim.SGD", epoch, data, int(batch_size), order, bars
                    )
                    last = self.network.state_dict()
                    for k, v in (("epoch", epoch), ("loss_train", loss), ("score_train", score)):
                        self.history[k].append(v)
                    bars.end_epoch(loss=loss)
                    if saver is not None:
                        saver.save(self.network, self.optimizer, epoch, rng, self.history)
        except KeyboardInterrupt as exc:
            self.interrupted = True
            self.terminated = isinstance(exc, checkpointing.Terminated)
            self.network.load_state_dict(last)
        finally:
            bars.close()
        if saver is not None and not self.interrupted:
            saver.remove()
        return np.asarray(self.history["loss_train"], dtype=np.float64)

    def _split(
        self, X: Any, y: Any, test_size: float | int, shuffle_test: bool, seed: int | None
    ) -> tuple[np.ndarray, np.ndarray]:
        n = int(X.shape[0]) if len(getattr(X, "shape", ())) else 0
        if isinstance(test_size, bool) or not isinstance(test_size, (int, float)):
            raise TypeError(
                f"Optim.SGD_eval: test_size must be a float or an int, got {test_size!r}"
            )
        if isinstance(test_size, float):
            if not 0.0 < test_size < 1.0:
                raise ValueError(
                    f"Optim.SGD_eval: a float test_size must lie in (0, 1), got {test_size}"
                )
            n_test = math.ceil(test_size * n)
        else:
            n_test = int(test_size)
        if not 0 < n_test < n:
            raise ValueError(
                f"Optim.SGD_eval: test_size={test_size!r} leaves {n_test} test and "
                f"{n - n_test} training samples out of {n}; both must be at least 1"
            )
        order = np.random.default_rng(seed).permutation(n) if shuffle_test else np.arange(n)
        return order[: n - n_test], order[n - n_test :]

    @staticmethod
    def _take(A: Any, idx: np.ndarray) -> Any:
        if isinstance(A, np.ndarray):
            return A[idx]
        if not backends.is_array(A):
            return np.asarray(A)[idx]
        xp = namespace(A)
        return xp.take(A, backends.from_numpy(idx.astype(np.int64), A), axis=0)

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
        restore_best: bool = True,
        monitor: str = "score",
        callback: Callable[[dict[str, float]], Any] | None = None,
        checkpoint: str | os.PathLike[str] | None = None,
    ) -> Any:
        """Train on a split of ``(X, y)``, evaluating on the rest after every epoch.

        The last ``test_size`` part of the data (a fraction in (0, 1) or a count) is the
        test set; with ``shuffle_test`` the split is drawn at random from
        ``default_rng(seed)`` instead. The split is kept on the Optim as
        :attr:`X_train`, :attr:`y_train`, :attr:`X_test`, :attr:`y_test`.

        Every epoch trains on the training part (a new shuffle per epoch when
        ``shuffle_train``), then records ``loss_train``/``score_train`` (mean loss and
        accuracy over the epoch's batches, measured during the epoch, as Keras does)
        and ``loss_test``/``score_test`` (a full pass over the test set).

        Early stopping: when the monitored test quantity (``monitor="score"``: highest
        ``score_test``; ``"loss"``: lowest ``loss_test``) has not improved for
        ``patience`` epochs, training stops (``patience=None``: never). Without an
        accuracy (outputs that are not ``(n, K)``), the test loss is monitored. With
        ``restore_best`` (default) the network ends with the parameters of the best
        epoch (:attr:`best_epoch`), also after Ctrl-C; otherwise with the last
        finished epoch's.

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
            when it exists; removed when training ends normally (:mod:`nnx.checkpoint`).

        Returns
        -------
        pandas.DataFrame or tuple of numpy.ndarray
            With ``return_dataframe``, a DataFrame with columns ``epoch, loss_train,
            loss_test, score_train, score_test``; otherwise the four arrays
            ``(loss_train, loss_test, score_train, score_test)``, one value per epoch.
        """
        owner = "Optim.SGD_eval"
        check_positive_int(owner, "batch_size", batch_size)
        check_positive_int(owner, "epochs", epochs)
        if patience is not None:
            check_positive_int(owner, "patience", patience)
        if monitor not in ("score", "loss"):
            raise ValueError(f"{owner}: monitor must be 'score' or 'loss', got {monitor!r}")
        if return_dataframe:
            training.history_frame({c: [] for c in training.HISTORY_COLUMNS})  # pandas there?
        plot = training.LivePlot(online_plot) if online_plot else None
        self._use_network(network)
        if not backends.is_array(X):
            X = np.asarray(X)
        if not backends.is_array(y):
            y = np.asarray(y)
        if int(y.shape[0]) != int(X.shape[0]):
            raise ValueError(
                f"{owner}: X and y must have the same number of samples, got X {tuple(X.shape)} "
                f"and y {tuple(y.shape)}"
            )
        train_idx, test_idx = self._split(X, y, test_size, shuffle_test, seed)
        self.X_train, self.y_train = self._take(X, train_idx), self._take(y, train_idx)
        self.X_test, self.y_test = self._take(X, test_idx), self._take(y, test_idx)
        train = self._prepare(owner, self.X_train, self.y_train)
        test = self._prepare(owner, self.X_test, self.y_test)
        rng = np.random.default_rng(seed)
        self.interrupted = self.terminated = False
        self.history = {c: [] for c in training.HISTORY_COLUMNS}
        best_value, best_state, wait = None, None, 0
        self.best_epoch = None
        saver = None
        first = 1
        if checkpoint is not None:
            call = checkpointing.call_signature(
                self,
                loop="SGD_eval",
                n=int(X.shape[0]),
                batch_size=int(batch_size),
                test_size=test_size,
                shuffle_train=bool(shuffle_train),
                shuffle_test=bool(shuffle_test),
                seed=seed,
                patience=patience,
                monitor=monitor,
            )
            saver = checkpointing.Checkpoint(checkpoint, owner, call)
            if saver.exists():
                resumed = saver.restore(self.network, self.optimizer, rng)
                self.history, first = resumed["history"], resumed["epoch"] + 1
                early = resumed["early"] or {}
                best_value, wait = early.get("best_value"), early.get("wait", 0)
                self.best_epoch, best_state = early.get("best_epoch"), resumed["best_state"]
                if plot is not None:
                    plot.update(self.history)
        last = self.network.state_dict()
        bars = training.Progress(progress, int(epochs))
        stopped_early = False
        try:
            with checkpointing.sigterm_as_interrupt():
                for epoch in range(first, int(epochs) + 1):
                    if stopped_early:
                        break
                    order = rng.permutation(train[2]) if shuffle_train else None
                    loss_train, score_train = self._epoch(
                        owner, epoch, train, int(batch_size), order, bars
                    )
                    loss_test, score_test = self._evaluate(test[0], test[1], test[2])
                    last = self.network.state_dict()
                    record = {
                        "epoch": epoch,
                        "loss_train": loss_train,
                        "loss_test": loss_test,
                        "score_train": score_train,
                        "score_test": score_test,
                    }
                    for k, v in record.items():
                        self.history[k].append(v)
                    bars.end_epoch(loss=loss_train, test_loss=loss_test, test_score=score_test)
                    if plot is not None:
                        plot.update(self.history)
                    if callback is not None:
                        callback(dict(record))
                    use_score = monitor == "score" and math.isfinite(score_test)
                    value = score_test if use_score else -loss_test
                    if best_value is None or (math.isfinite(value) and value > best_value):
                        best_value, best_state, wait = value, last, 0
                        self.best_epoch = epoch
                    else:
                        wait += 1
                        stopped_early = patience is not None and wait >= patience
                    if saver is not None:
                        early = {
                            "best_value": best_value,
                            "wait": wait,
                            "best_epoch": self.best_epoch,
                        }
                        saver.save(
                            self.network,
                            self.optimizer,
                            epoch,
                            rng,
                            self.history,
                            early,
                            best_state,
                        )
        except KeyboardInterrupt as exc:
            self.interrupted = True
            self.terminated = isinstance(exc, checkpointing.Terminated)
            self.network.load_state_dict(last)
        except FloatingPointError:
            if restore_best and best_state is not None:
                self.network.load_state_dict(best_state)
            raise
        finally:
            bars.close()
        if saver is not None and not self.interrupted:
            saver.remove()
        if restore_best and best_state is not None:
            self.network.load_state_dict(best_state)
        elif not restore_best:
            self.best_epoch = self.history["epoch"][-1] if self.history["epoch"] else None
        if return_dataframe:
            return training.history_frame(self.history)
        return tuple(
            np.asarray(self.history[c], dtype=np.float64)
            for c in ("loss_train", "loss_test", "score_train", "score_test")
        )
