r"""The two base classes: :class:`Module` (a layer) and :class:`Loss`.

A network is a chain of modules :math:`z^h = M^h(z^{h-1}; w^h)`. Back-propagation
needs, for each module, the two vector-Jacobian products of the incoming
:math:`\delta^h = \partial L / \partial z^h`:

.. math::

    \frac{\partial L}{\partial w^h} = \Big(\frac{\partial z^h}{\partial w^h}\Big)^{\!\top}
    \delta^h \quad \text{(backward\_update\_gradient, accumulated)}, \qquad
    \delta^{h-1} = \Big(\frac{\partial z^h}{\partial z^{h-1}}\Big)^{\!\top} \delta^h
    \quad \text{(backward\_delta)}.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from . import backends

Array = Any


class Module:
    """Base class of every layer.

    Attributes
    ----------
    _parameters : dict[str, array]
        Learnable parameters by name.
    _gradient : dict[str, array]
        Accumulated :math:`\\partial L / \\partial w` for each parameter (same keys,
        shapes, backend and dtype).
    """

    #: Whether ``backward_update_gradient`` adds through :meth:`_accumulate`, so that
    #: an :class:`~nnx.Optim` step may overwrite stale gradients instead of zeroing
    #: them first. A subclass that overrides ``backward_update_gradient`` gets
    #: ``False`` unless it sets the flag itself (see ``__init_subclass__``).
    _fresh_gradients: bool = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "backward_update_gradient" in cls.__dict__ and "_fresh_gradients" not in cls.__dict__:
            cls._fresh_gradients = False
        # a subclass that overrides a backward method gets the unfused _backprop, which
        # calls the overrides
        overrides = {"backward_update_gradient", "backward_delta"} & cls.__dict__.keys()
        if overrides and "_backprop" not in cls.__dict__:
            cls._backprop = Module._backprop

    def __init__(self) -> None:
        self._fresh: set[str] | None = None
        self._parameters: dict[str, Array] = {}
        self._gradient: dict[str, Array] = {}
        self._owned: dict[str, Array] = {}
        self._cache_key: Any = None
        self._cache: Any = None

    # -- the protocol ---------------------------------------------------------------
    def forward(self, X: Array) -> Array:
        """Compute the module's output for input ``X``."""
        raise NotImplementedError(f"{type(self).__name__} does not implement forward")

    def __call__(self, X: Array) -> Array:
        return self.forward(X)

    def backward_update_gradient(self, input: Array, delta: Array) -> None:
        """Add :math:`\\partial L / \\partial w` to ``_gradient`` (no-op without parameters)."""

    def backward_delta(self, input: Array, delta: Array) -> Array:
        """Return :math:`\\partial L / \\partial \\text{input}` (same shape as ``input``)."""
        raise NotImplementedError(f"{type(self).__name__} does not implement backward_delta")

    def _backprop(self, input: Array, delta: Array, input_grad: bool) -> Array | None:
        """``backward_update_gradient``, then ``backward_delta`` (``None`` without
        ``input_grad``): one module's part of :meth:`Sequential.backward`.

        A module may fuse the two (e.g. check ``delta`` once); the result must be the
        same as the two calls.
        """
        self.backward_update_gradient(input, delta)
        return self.backward_delta(input, delta) if input_grad else None

    def update_parameters(self, gradient_step: float = 1e-3) -> None:
        """Gradient descent step: :math:`w \\leftarrow w - \\epsilon \\, \\nabla_w L`."""
        for name, p in self._parameters.items():
            step = gradient_step * self._gradient[name]
            if self._owned.get(name) is p:
                p -= step
            else:  # an array the user assigned: never modify it in place
                self._set_parameter(name, p - step)

    def zero_grad(self) -> None:
        """Reset the accumulated gradients to zero (in place, no reallocation)."""
        for g in self._gradient.values():
            g[...] = 0

    def _accumulate(self, name: str, value: Array) -> None:
        """``_gradient[name] += value``, or ``= value`` on the first call of an Optim step.

        ``value`` must be a new array (the result of the gradient computation). Between
        :meth:`_start_step` and :meth:`_end_step` the first contribution to each
        gradient replaces the previous step's buffer: the same result as ``zero_grad``
        followed by ``+=``, without writing zeros and adding them (measured 11 % of an
        MLP training step).
        """
        fresh = self._fresh
        if fresh is not None and name in fresh:
            fresh.discard(name)
            self._gradient[name] = value
        else:
            self._gradient[name] += value

    def _start_step(self) -> None:
        """What :class:`~nnx.Optim` calls instead of :meth:`zero_grad` before a step."""
        if self._fresh_gradients:
            self._fresh = set(self._gradient)
        else:
            self.zero_grad()

    def _end_step(self) -> None:
        """After the step's backward pass: gradients nobody wrote become zeros."""
        fresh = self._fresh
        if fresh:
            for name in fresh:
                self._gradient[name][...] = 0
        self._fresh = None

    # -- parameters -----------------------------------------------------------------
    def _register(self, name: str, value: Array) -> None:
        """Register a parameter and its zero gradient buffer."""
        self._set_parameter(name, value)
        self._gradient[name] = namespace(value).zeros_like(value)

    def _set_parameter(self, name: str, value: Array) -> None:
        self._parameters[name] = value
        self._owned[name] = value

    def children(self) -> list[Module]:
        """Direct sub-modules (none for a plain layer)."""
        return []

    def named_parameters(self, prefix: str = "") -> Iterator[tuple[str, Array]]:
        """``(dotted name, parameter)`` pairs, this module's then its children's."""
        for name, p in self._parameters.items():
            yield prefix + name, p
        for i, child in enumerate(self.children()):
            yield from child.named_parameters(f"{prefix}{i}.")

    def named_gradients(self, prefix: str = "") -> Iterator[tuple[str, Array]]:
        """``(dotted name, gradient)`` pairs in the order of :meth:`named_parameters`."""
        for name, g in self._gradient.items():
            yield prefix + name, g
        for i, child in enumerate(self.children()):
            yield from child.named_gradients(f"{prefix}{i}.")

    def parameters(self) -> list[Array]:
        """All parameters (recursively), in a stable order."""
        return [p for _, p in self.named_parameters()]

    def modules(self) -> Iterator[Module]:
        """This module and every descendant, depth first."""
        yield self
        for child in self.children():
            yield from child.modules()

    def num_parameters(self) -> int:
        """Total number of scalar parameters."""
        return sum(int(np.prod(p.shape)) for p in self.parameters())

    def state_dict(self) -> dict[str, np.ndarray]:
        """Parameters as NumPy arrays by dotted name (``"0.weight"``, ``"3.bias"``)."""
        return {name: backends.to_numpy(p).copy() for name, p in self.named_parameters()}

    def load_state_dict(self, state: dict[str, Any], strict: bool = True) -> None:
        """Copy values from ``state`` (arrays of any backend) into the parameters.

        Values are converted to each parameter's backend, device and dtype. With
        ``strict``, missing or unexpected names raise ``KeyError``; a shape mismatch
        always raises ``ValueError``. Gradients are reset to zero.
        """
        own = dict(self.named_parameters())
        if strict:
            missing = sorted(set(own) - set(state))
            unexpected = sorted(set(state) - set(own))
            if missing or unexpected:
                raise KeyError(
                    f"{type(self).__name__}.load_state_dict: missing keys {missing}, "
                    f"unexpected keys {unexpected}"
                )
        for module, prefix in _modules_with_prefix(self):
            for name, p in list(module._parameters.items()):
                key = prefix + name
                if key not in state:
                    continue
                value = backends.to_numpy(state[key])
                if tuple(value.shape) != tuple(p.shape):
                    raise ValueError(
                        f"{type(self).__name__}.load_state_dict: parameter {key!r} expects "
                        f"shape {tuple(p.shape)}, got {tuple(value.shape)}"
                    )
                value = value.astype(backends.dtype_name(p), copy=True)
                module._set_parameter(name, backends.from_numpy(value, p))
        self.zero_grad()

    def to(self, backend: str | None = None, dtype: Any = None, device: Any = None) -> Module:
        """Move parameters and gradients (recursively) to a backend, dtype and device.

        ``backend`` defaults to the current backend, ``dtype`` to each parameter's own,
        ``device`` to the target backend's default. Returns ``self``.
        """
        target = (
            backends._get(backend, f"{type(self).__name__}.to")
            if backend is not None
            else backends.current()
        )
        dev = (
            target.normalize_device(device)
            if device is not None
            else (backends.get_device() if target is backends.current() else None)
        )
        dt = None if dtype is None else backends._dtype_name(dtype)
        if dt is not None and dt not in backends.FLOAT_DTYPES:
            raise ValueError(
                f"{type(self).__name__}.to: dtype must be float32 or float64, got {dtype!r}"
            )
        for module in self.modules():
            for table in (module._parameters, module._gradient):
                for name, value in list(table.items()):
                    host = backends.to_numpy(value)
                    host = host.astype(dt or host.dtype, copy=False)
                    table[name] = target.from_numpy(host, dev)
            module._owned = dict(module._parameters)
            module._cache_key = module._cache = None
            module._moved()
        return self

    def _moved(self) -> None:
        """Hook for subclasses holding other arrays (optimiser state, buffers)."""

    # -- description ----------------------------------------------------------------
    def get_config(self) -> dict[str, Any]:
        """Constructor arguments that rebuild this module (used by ``nnx.save``)."""
        return {}

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.extra_repr()})"

    @property
    def name(self) -> str:
        """Short description used in error messages, e.g. ``"Linear(4, 3)"``."""
        return repr(self)

    # -- checks shared by the layers --------------------------------------------------
    def _check_input(
        self, X: Array, shape: tuple[Any, ...], what: str = "input", like: Array = None
    ) -> None:
        """Check that ``X`` is a floating array of ``shape`` (``None`` = any size).

        ``like`` (a parameter) fixes the expected backend and dtype. Entries of
        ``shape`` may be strings used only in the message (any size accepted).
        """
        # Fast path for the common, valid case: no message (``self.name`` is a repr) is
        # built unless a check fails; check_array then raises with the full message.
        if like is not None:
            ok = type(X) is type(like) and X.dtype == like.dtype
        else:
            ok = backends.backend_of(X) is not None and is_floating(X)
        if ok:
            dims = X.shape
            if len(dims) == len(shape):
                for s, n in zip(shape, dims):  # noqa: B905 - lengths compared above
                    if s != n and isinstance(s, int):
                        break
                else:
                    return
        check_array(self.name, X, shape, what, like)


def check_array(
    owner: str, X: Array, shape: tuple[Any, ...], what: str, like: Array = None
) -> None:
    """Raise a ``TypeError``/``ValueError`` naming ``owner`` unless ``X`` fits.

    ``shape`` entries: an ``int`` (that exact size), ``None`` or a string (any size; the
    string names the axis in the message).
    """
    backend = backends.backend_of(X)
    if backend is None and not backends.is_array(X):
        raise TypeError(f"{owner}: expected {what} to be an array, got {type(X).__name__}")
    if like is not None and type(X) is not type(like):
        raise TypeError(
            f"{owner}: {what} is a {backends.backend_name(X)} array but the module's "
            f"parameters are on backend {backends.backend_name(like)!r}; move the data "
            f"with nnx.asarray(...) or the module with .to(...)"
        )
    if len(X.shape) != len(shape) or any(
        isinstance(s, int) and s != n for s, n in zip(shape, X.shape, strict=True)
    ):
        expected = "(" + ", ".join("?" if s is None else str(s) for s in shape) + ")"
        raise ValueError(
            f"{owner}: expected {what} of shape {expected}, got shape {tuple(X.shape)}"
        )
    if like is not None:
        if X.dtype != like.dtype:
            raise TypeError(
                f"{owner}: expected {what} of dtype {backends.dtype_name(like)} (the "
                f"parameters' dtype), got {backends.dtype_name(X)}; convert it explicitly"
            )
    elif not is_floating(X):
        raise TypeError(
            f"{owner}: expected a floating-point {what}, got dtype {backends.dtype_name(X)}"
        )


def check_positive_int(owner: str, arg: str, value: Any) -> None:
    """Raise unless ``value`` is a positive integer (``bool`` is refused)."""
    if isinstance(value, bool) or not hasattr(value, "__index__"):
        raise TypeError(f"{owner}: {arg} must be an int, got {type(value).__name__} {value!r}")
    if int(value) <= 0:
        raise ValueError(f"{owner}: {arg} must be a positive int, got {value!r}")


_FLOATING: dict[type, dict[Any, bool]] = {}


def is_floating(X: Array) -> bool:
    """Whether ``X`` has a real floating dtype (cached per library and dtype)."""
    dt = X.dtype
    table = _FLOATING.setdefault(type(dt), {})  # one table per library: no cross-library ==
    result = table.get(dt)
    if result is None:
        result = table[dt] = backends.dtype_name(X).startswith("float")
    return result


def mT(x: Array) -> Array:
    """Matrix transpose: the standard's ``.mT`` attribute (a view), else the function."""
    try:
        return x.mT
    except AttributeError:  # e.g. CuPy < 14
        return namespace(x).matrix_transpose(x)


_ROWS: dict[tuple[Any, ...], Array] = {}


def constant_row(kind: str, like: Array, n: int, dtype: Any = None) -> Array:
    """A cached ``(1, n)`` row on ``like``'s library and device: ``"ones"`` (in
    ``dtype``) or ``"arange"`` (``0 .. n-1``, default integer dtype). A training step
    would otherwise build it for every batch (an allocation, and on a GPU a kernel)."""
    device = getattr(like, "device", None)
    key = (kind, type(like), str(device), n, dtype)
    row = _ROWS.get(key)
    if row is None:
        if len(_ROWS) >= 64:  # batch sizes come and go (a last, smaller batch)
            _ROWS.clear()
        xp = namespace(like)
        if kind == "ones":
            row = xp.ones((1, n), dtype=dtype, device=device)
        else:
            row = xp.arange(n, device=device)[None, :]
        _ROWS[key] = row
    return row


def ones_row(like: Array) -> Array:
    r"""A ``(1, n)`` row of ones, ``n = like.shape[0]``, in ``like``'s library, dtype and
    device (cached), so that :math:`\mathbf{1}^\top \delta` (the sum over the batch)
    is one matrix product: a single BLAS call, which NumPy's ``sum(axis=0)`` over a
    short batch is not (with NumPy, 0.8 µs instead of 1.3 µs at (32, 10), 1.0 µs
    instead of 3.9 µs at (256, 10)). The rounding is BLAS's rather than NumPy's: the
    same sum to float precision."""
    return constant_row("ones", like, like.shape[0], like.dtype)


#: Array API namespace of an array (the layers' short name for
#: :func:`nnx.backends.namespace_of`; an alias, not a wrapper: it runs ~10 times a step).
namespace = backends.namespace_of


def _modules_with_prefix(module: Module, prefix: str = "") -> Iterator[tuple[Module, str]]:
    yield module, prefix
    for i, child in enumerate(module.children()):
        yield from _modules_with_prefix(child, f"{prefix}{i}.")


class Loss:
    """Base class of the losses.

    ``forward(y, yhat)`` returns the per-sample losses, shape ``(batch,)``;
    ``backward(y, yhat)`` returns :math:`\\partial L / \\partial \\hat y` for
    :math:`L = \\sum_i \\ell_i`, the same shape as ``yhat``.
    """

    #: Set by :class:`~nnx.Optim` during a training step: a list to which a loss may add
    #: ``(count, expected, fail)`` instead of reading ``count`` from the device; the step
    #: reads the counts together with the loss and calls ``fail()`` (which raises) when
    #: one differs from ``expected`` (one device-to-host read per step). ``None``
    #: outside a step.
    _pending_checks: list[tuple[Array, int, Callable[[], None]]] | None = None

    def forward(self, y: Array, yhat: Array) -> Array:
        raise NotImplementedError

    def backward(self, y: Array, yhat: Array) -> Array:
        raise NotImplementedError

    def _forget(self) -> None:
        """Drop anything cached from the last calls (a deferred check failed)."""

    def __call__(self, y: Array, yhat: Array) -> Array:
        return self.forward(y, yhat)

    def get_config(self) -> dict[str, Any]:
        return {}

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"
