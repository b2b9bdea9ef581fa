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

import contextlib
import math
from collections.abc import Callable, Iterator, Mapping
from typing import Any, NamedTuple

import numpy as np

from . import backends
from .backends import fused

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
    _buffers : dict[str, array]
        State that is not learned by gradient descent (BatchNorm's running statistics):
        saved by :meth:`state_dict` and :func:`nnx.save`, moved by :meth:`to`, never
        touched by an optimiser.
    training : bool
        Training mode (``True``, the default) or evaluation mode; only some modules
        behave differently (:class:`~nnx.Dropout`, :class:`~nnx.BatchNorm`). Set it
        with :meth:`train` / :meth:`eval`, which also set every sub-module's.

    A module may keep what its forward computed for its backward, found again by the
    input's identity: write a new array rather than into the input between a forward
    and its backward (PyTorch raises there; a NumPy array cannot tell it was written).
    """

    #: class default, so that modules built before the attribute existed still work
    training: bool = True

    #: Gradients bound with ``set_gradient(..., reuse=True)``: buffers that the next
    #: fresh gradient of the same name is written into (:meth:`accumulate_product`).
    _reusable: dict[str, Array] | None = None

    #: Whether every gradient write of ``backward_update_gradient`` goes through
    #: :meth:`accumulate_gradient`, so that inside :meth:`fresh_gradients` a step may
    #: overwrite stale gradients instead of zeroing them first. A subclass that
    #: overrides ``backward_update_gradient`` gets ``False`` unless it sets the flag
    #: itself (it may write ``_gradient`` directly).
    _fresh_gradients: bool = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "backward_update_gradient" in cls.__dict__ and "_fresh_gradients" not in cls.__dict__:
            cls._fresh_gradients = False

    def __init__(self) -> None:
        self._fresh: set[str] | None = None
        self._parameters: dict[str, Array] = {}
        self._gradient: dict[str, Array] = {}
        self._owned: dict[str, Array] = {}
        self._buffers: dict[str, Array] = {}
        self.training = True
        self._cache_key: Any = None
        self._cache: Any = None

    #: Attributes in which a forward keeps arrays for the next backward (found by the
    #: input's identity): not pickled or copied, dropped when the parameters change.
    _transient: tuple[str, ...] = ("_cache_key", "_cache")

    def __getstate__(self) -> dict[str, Any]:
        """Pickle and deep copy: everything but what a forward kept for its backward."""
        return _without(self.__dict__, self._transient)

    # -- the protocol ---------------------------------------------------------------
    def forward(self, X: Array) -> Array:
        """Compute the module's output for input ``X``."""
        raise NotImplementedError(f"{type(self).__name__} does not implement forward")

    def __call__(self, X: Array) -> Array:
        return self.forward(X)

    def backward_update_gradient(self, input: Array, delta: Array) -> None:
        """Add :math:`\\partial L / \\partial w` to the gradients (no-op without parameters)."""

    def backward_delta(self, input: Array, delta: Array) -> Array:
        """Return :math:`\\partial L / \\partial \\text{input}` (same shape as ``input``)."""
        raise NotImplementedError(f"{type(self).__name__} does not implement backward_delta")

    def backward(self, input: Array, delta: Array, input_grad: bool = True) -> Array | None:
        """``backward_update_gradient`` then ``backward_delta``; returns
        :math:`\\partial L / \\partial \\text{input}`, or ``None`` without ``input_grad``
        (a training step needs no gradient of the data)."""
        self.backward_update_gradient(input, delta)
        return self.backward_delta(input, delta) if input_grad else None

    def train(self, mode: bool = True) -> Module:
        """Put this module and every sub-module in training mode (``mode=False``:
        evaluation mode); returns ``self``, as PyTorch does."""
        if not isinstance(mode, bool):
            raise TypeError(f"{self.name}.train: mode must be a bool, got {mode!r}")
        for module in self.all_modules():
            module.training = mode
        return self

    def eval(self) -> Module:
        """Evaluation mode for this module and every sub-module (``train(False)``)."""
        return self.train(False)

    def update_parameters(self, learning_rate: float = 1e-3) -> None:
        """Gradient descent step: :math:`w \\leftarrow w - \\epsilon \\, \\nabla_w L` with
        :math:`\\epsilon` = ``learning_rate`` (the original library's keyword)."""
        for name, p in self._parameters.items():  # rebinds values, never keys
            if self._owned.get(name) is p:  # nnx's own writeable array: one fused update
                fused.subtract_scaled_(p, learning_rate, self._gradient[name])
            else:
                self._subtract(name, p, learning_rate * self._gradient[name])

    def zero_grad(self) -> None:
        """Reset the accumulated gradients to zero (in place where the arrays allow it)."""
        for name in self._gradient:
            self._zero(name)

    # -- the parameter API: what optimisers, loops and serialization use ----------------
    def parameters_and_gradients(self, prefix: str = "") -> Iterator[tuple[str, Array, Array]]:
        """``(dotted name, parameter, gradient)`` for this module and its descendants.

        The one walk over the parameters: names as in :meth:`named_parameters`
        (``"0.weight"``), in a stable order.
        """
        for name, p in self._parameters.items():
            yield prefix + name, p, self._gradient[name]
        for i, child in enumerate(self.children()):
            yield from child.parameters_and_gradients(f"{prefix}{i}.")

    def accumulate_gradient(self, name: str, value: Array) -> None:
        """Add a contribution to the gradient of this module's parameter ``name``.

        ``value`` must be a new array (the result of the gradient computation; it may
        become the buffer). Inside :meth:`fresh_gradients` the first contribution
        replaces the previous step's gradient, the same result as :meth:`zero_grad`
        then adding, without writing zeros (measured: see ``benchmarks/results``).
        Immutable arrays (JAX) are rebound instead of updated in place.
        """
        fresh = self._fresh
        if fresh is not None and name in fresh:
            fresh.discard(name)
            self._gradient[name] = value
            return
        g = self._gradient[name]
        if backends.is_mutable(g):
            g += value
        else:
            self._gradient[name] = g + value

    def accumulate_product(self, name: str, a: Array, b: Array) -> None:
        """Add the matrix product ``a @ b`` to the gradient of parameter ``name``.

        The same as ``accumulate_gradient(name, a @ b)``, except that a fresh gradient
        (inside :meth:`fresh_gradients`) whose array was bound with
        ``set_gradient(name, buffer, reuse=True)`` is written straight into that buffer
        where the library can (NumPy, PyTorch): a data-parallel step binds views of its
        packed allreduce buffer so, and the pack then copies nothing. Worth it for large
        gradients only (a ``Linear`` weight); small ones use :meth:`accumulate_gradient`.
        """
        reusable = self._reusable
        if reusable:
            out, fresh = reusable.get(name), self._fresh
            if (
                out is not None
                and fresh is not None
                and name in fresh
                and out is self._gradient[name]
                and backends.matmul_into(a, b, out)
            ):
                fresh.discard(name)
                return
        self.accumulate_gradient(name, namespace(a).matmul(a, b))

    def get_parameter(self, name: str) -> Array:
        """Parameter ``name`` (dotted for a descendant's: ``"0.weight"``)."""
        module, local = self.locate_parameter(name)
        return module._parameters[local]

    def set_parameter(self, name: str, value: Array) -> None:
        """Bind parameter ``name`` (dotted for a descendant's) to the array ``value``.

        Same as assigning ``_parameters[name]``, as the original library (NeuralNetworksDIY) documents: ``value`` must
        keep the shape, it is used from the next call on, and it is never modified in
        place (the next update binds a new array).
        """
        module, local = self.locate_parameter(name)
        old = module._parameters[local]
        if tuple(value.shape) != tuple(old.shape):
            raise ValueError(
                f"{module.name}.set_parameter: parameter {name!r} has shape "
                f"{tuple(old.shape)}, got {tuple(value.shape)}"
            )
        module._parameters[local] = value

    def set_gradient(self, name: str, value: Array, reuse: bool = False) -> None:
        """Bind the gradient of parameter ``name`` (dotted for a descendant's) to ``value``
        (e.g. gradients summed over processes). Same shape as the parameter.

        With ``reuse=True``, ``value`` is also where the next fresh gradient of ``name``
        may be written (:meth:`accumulate_product`), as long as it stays bound: only
        for a buffer that nobody else reads between steps (a data-parallel step's
        packed allreduce buffer).
        """
        module, local = self.locate_parameter(name)
        old = module._gradient[local]
        if tuple(value.shape) != tuple(old.shape):
            raise ValueError(
                f"{module.name}.set_gradient: gradient {name!r} has shape "
                f"{tuple(old.shape)}, got {tuple(value.shape)}"
            )
        module._gradient[local] = value
        if reuse:
            module._reusable = {**(module._reusable or {}), local: value}
        elif module._reusable and local in module._reusable:
            module._reusable = {k: v for k, v in module._reusable.items() if k != local}

    def apply_update(self, rule: Callable[[str, Array, Array], Array]) -> None:
        """:math:`w \\leftarrow w - d` with ``d = rule(dotted name, w, gradient)`` for every
        parameter of this module and its descendants.

        The update is written in place where the parameter is nnx's own writeable
        array, and binds a new array where it is not (an array the user assigned, which
        is never modified; or an immutable JAX array).
        """
        for module, prefix in _modules_with_prefix(self):
            for name, p in list(module._parameters.items()):
                module._subtract(name, p, rule(prefix + name, p, module._gradient[name]))

    def fresh_gradients(self) -> contextlib.AbstractContextManager[None]:
        """Inside the ``with`` block, the first gradient contribution of each parameter
        replaces the old value; on exit, gradients nobody wrote are zero. The same
        gradients as :meth:`zero_grad` before the block (what a training step needs).

        Modules whose class writes ``_gradient`` itself (``_fresh_gradients`` false)
        are zeroed on entry instead.
        """
        return Module._FreshGradients(self)

    class _FreshGradients:
        """The context manager of :meth:`Module.fresh_gradients` (a class: it runs once per
        training step, and a generator-based one costs several times more)."""

        __slots__ = ("fresh", "zeroed")

        def __init__(self, root: Module) -> None:
            fresh, zeroed, todo = [], [], [root]
            leaf = Module.children
            while todo:
                m = todo.pop()
                if m._gradient:
                    (fresh if m._fresh_gradients else zeroed).append(m)
                if type(m).children is not leaf:  # a container (a leaf has no children)
                    todo += m.children()
            self.fresh, self.zeroed = fresh, zeroed

        def __enter__(self) -> None:
            for m in self.fresh:
                m._fresh = set(m._gradient)
            for m in self.zeroed:  # its own gradients only: children decide for themselves
                for name in m._gradient:
                    m._zero(name)

        def __exit__(self, *exc: object) -> None:
            for m in self.fresh:
                for name in m._fresh or ():
                    m._zero(name)
                m._fresh = None

    def _subtract(self, name: str, p: Array, step: Array) -> None:
        if self._owned.get(name) is p:  # nnx's own array, and a mutable one
            p -= step
        else:  # an array the user assigned, or an immutable one: bind a new array
            self._bind(name, p - step)

    def _zero(self, name: str) -> None:
        g = self._gradient[name]
        if backends.is_mutable(g):
            g[...] = 0
        else:
            self._gradient[name] = namespace(g).zeros_like(g)

    def locate_parameter(self, name: str) -> tuple[Module, str]:
        """The module holding parameter ``name`` (dotted) and its name there.

        ``KeyError`` if there is no such parameter."""
        module, local = self, name
        while local not in module._parameters and "." in local:
            head, local = local.split(".", 1)
            children = module.children()
            if not head.isdigit() or int(head) >= len(children):
                break
            module = children[int(head)]
        if local not in module._parameters:
            raise KeyError(f"{self.name}: no parameter named {name!r}")
        return module, local

    # -- parameters -----------------------------------------------------------------
    def _register(self, name: str, value: Array) -> None:
        """Register a parameter and its zero gradient buffer."""
        self._bind(name, value)
        self._gradient[name] = namespace(value).zeros_like(value)

    def _bind(self, name: str, value: Array) -> None:
        """Bind a parameter to a new array nnx owns: updated in place later if the
        library allows it (``_owned`` lists exactly those)."""
        self._parameters[name] = value
        if backends.is_mutable(value):
            self._owned[name] = value
        else:
            self._owned.pop(name, None)

    def children(self) -> list[Module]:
        """Direct sub-modules (none for a plain layer)."""
        return []

    @property
    def row_independent(self) -> bool:
        """Whether sample ``b`` of the output depends on sample ``b`` of the input only,
        in the current mode: true of every layer but :class:`~nnx.BatchNorm` in
        training mode (a container: true of all its children). Gradient checks perturb
        one sample per row of one batched call when it holds, whole batches otherwise.
        """
        return all(child.row_independent for child in self.children())

    def named_parameters(self, prefix: str = "") -> Iterator[tuple[str, Array]]:
        """``(dotted name, parameter)`` pairs, this module's then its children's."""
        for name, p, _ in self.parameters_and_gradients(prefix):
            yield name, p

    def named_buffers(self, prefix: str = "") -> Iterator[tuple[str, Array]]:
        """``(dotted name, buffer)`` pairs (see ``_buffers``), this module's then its
        children's."""
        for module, pre in _modules_with_prefix(self, prefix):
            for name, b in module._buffers.items():
                yield pre + name, b

    def _register_buffer(self, name: str, value: Array) -> None:
        """Register (or rebind) a buffer: an array saved with the parameters but not
        learned."""
        self._buffers[name] = value

    def _update_buffer(self, name: str, value: Array) -> None:
        """Give buffer ``name`` a new value: written in place where the array allows it
        (its memory stays the one a recorded CUDA graph reads), bound anew where not."""
        old = self._buffers[name]
        if backends.is_mutable(old):
            old[...] = value
        else:
            self._buffers[name] = value

    def named_gradients(self, prefix: str = "") -> Iterator[tuple[str, Array]]:
        """``(dotted name, gradient)`` pairs in the order of :meth:`named_parameters`."""
        for name, _, g in self.parameters_and_gradients(prefix):
            yield name, g

    def parameters(self) -> list[Array]:
        """All parameters (recursively), in a stable order."""
        return [p for _, p in self.named_parameters()]

    def all_modules(self) -> Iterator[Module]:
        """This module and every descendant, depth first (what PyTorch's
        ``Module.modules()`` yields; the name ``modules`` is the original library's list of a
        :class:`~nnx.Sequential`'s own modules)."""
        yield self
        for child in self.children():
            yield from child.all_modules()

    def num_parameters(self) -> int:
        """Total number of scalar parameters."""
        return sum(math.prod(p.shape) for p in self.parameters())

    def state_dict(self) -> dict[str, np.ndarray]:
        """Parameters, then buffers, as NumPy arrays by dotted name (``"0.weight"``,
        ``"3.bias"``, ``"1.running_mean"``)."""
        state = {name: backends.to_numpy(p).copy() for name, p in self.named_parameters()}
        state.update((name, backends.to_numpy(b).copy()) for name, b in self.named_buffers())
        return state

    def load_state_dict(self, state: Mapping[str, Any], strict: bool = True) -> None:
        """Copy values from ``state`` (arrays of any backend) into the parameters and
        buffers.

        Values are converted to each parameter's backend, device and dtype. With
        ``strict``, missing or unexpected names raise :class:`StateDictError` (a
        ``ValueError``, and a ``KeyError`` as the names are keys); a shape mismatch
        raises ``ValueError``. Everything is checked before anything is written: on an
        error the module is unchanged. Gradients are reset to zero.
        """
        owner = f"{type(self).__name__}.load_state_dict"
        if not isinstance(state, Mapping):
            raise TypeError(
                f"{owner}: expected a mapping of names to arrays (what state_dict() "
                f"returns), got {type(state).__name__}"
            )
        own = dict(self.named_parameters())
        own.update(self.named_buffers())
        if strict:
            missing = sorted(set(own) - set(state))
            unexpected = sorted(map(str, set(state) - set(own)))
            if missing or unexpected:
                raise StateDictError(
                    f"{owner}: missing keys {missing}, unexpected keys {unexpected}"
                )
        writes = []  # (module, name, value, kind), all checked before any is written
        for module, prefix in _modules_with_prefix(self):
            for kind, arrays in (("parameter", module._parameters), ("buffer", module._buffers)):
                for name, old in arrays.items():
                    key = prefix + name
                    if key not in state:
                        continue
                    value = backends.to_numpy(state[key])
                    if tuple(value.shape) != tuple(old.shape):
                        raise ValueError(
                            f"{owner}: {kind} {key!r} expects shape {tuple(old.shape)}, "
                            f"got {tuple(value.shape)}"
                        )
                    value = value.astype(backends.dtype_name(old), copy=True)
                    writes.append((module, name, backends.from_numpy(value, old), kind))
        for module, name, value, kind in writes:
            if kind == "parameter":
                module._bind(name, value)
            else:
                module._buffers[name] = value
        for module, _ in _modules_with_prefix(self):
            module._forget_forward()
        self.zero_grad()

    def to(self, backend: str | None = None, dtype: Any = None, device: Any = None) -> Module:
        """Move parameters, gradients and buffers (recursively) to a backend, dtype and
        device.

        ``backend=None``: the module's own backend when only ``dtype`` or ``device`` is
        given (``net.to(dtype="float64")`` stays where it is, as PyTorch's ``to(dtype)``
        keeps the device), the current backend for a bare ``to()``. ``dtype`` defaults
        to each parameter's own, ``device`` to the module's own when it stays on its
        backend, else to the target backend's default. Returns ``self``.
        """
        home = next((a for _, a in self.named_parameters()), None)
        if home is None:
            home = next((a for _, a in self.named_buffers()), None)
        stays = backend is None and (dtype is not None or device is not None) and home is not None
        if stays:
            target = backends.backend_of(home)
        elif backend is not None:
            target = backends.lookup(backend, f"{type(self).__name__}.to")
        else:
            target = backends.current()
        if device is not None:
            dev = target.normalize_device(device)
        elif stays:
            dev = target.device_of(home)
        else:
            dev = backends.get_device() if target is backends.current() else None
        dt = None if dtype is None else backends.canonical_dtype(dtype)
        if dt is not None and dt not in backends.FLOAT_DTYPES:
            raise ValueError(
                f"{type(self).__name__}.to: dtype must be float32 or float64, got {dtype!r}"
            )
        for module in self.all_modules():
            for table in (module._parameters, module._gradient, module._buffers):
                for name, value in list(table.items()):
                    host = backends.to_numpy(value)
                    host = host.astype(dt or host.dtype, copy=False)
                    table[name] = target.from_numpy(host, dev)
            module._owned = {k: p for k, p in module._parameters.items() if backends.is_mutable(p)}
            module._forget_forward()
            module._reusable = None  # the old gradients' buffers are not the new ones
            module._moved()
        return self

    def _moved(self) -> None:
        """Hook for subclasses holding other arrays (optimiser state, buffers)."""

    def _forget_forward(self) -> None:
        """Drop what the last forward kept for its backward (new parameter values)."""
        for name in self._transient:
            setattr(self, name, None)

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
    ) -> Array:
        """Check that ``X`` is a floating array of ``shape`` (``None`` = any size) and
        return it, cast to ``like``'s dtype where it is a floating array of another dtype.

        ``like`` (a parameter, or the input a delta belongs to) fixes the expected
        backend and dtype. A floating ``X`` of ``like``'s backend in another float dtype
        is cast (the module boundary, as in Keras: float64 data into a float32 network);
        integer or boolean data and arrays of another backend raise. Entries of
        ``shape`` may be strings used only in the message (any size accepted).
        """
        # Fast path for the common, valid case: no message (``self.name`` is a repr) is
        # built unless a check fails; check_array then raises with the full message.
        if like is not None:
            ok = type(X) is type(like) and X.dtype == like.dtype
            if not ok and type(X) is type(like) and is_floating(X) and is_floating(like):
                X, ok = namespace(like).astype(X, like.dtype), True
        else:
            ok = backends.backend_of(X) is not None and is_floating(X)
        if ok:
            dims = X.shape
            if len(dims) == len(shape):
                for s, n in zip(shape, dims):  # noqa: B905 - lengths compared above
                    if s != n and isinstance(s, int):
                        break
                else:
                    return X
        if like is not None and type(X) is not type(like) and isinstance(X, type(like)):
            return self._check_input(backends.base_array(X), shape, what, like)  # np.memmap
        check_array(self.name, X, shape, what, like)
        return X


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


def count_true(xp: Any, mask: Array) -> Array:
    """Number of ``True`` entries of a boolean ``mask``, as a 0-d array on its device
    (read it with ``int``): ``count_nonzero`` (standard 2024.12) when the namespace has
    it, else a sum."""
    count_nonzero = getattr(xp, "count_nonzero", None)
    if count_nonzero is not None:
        return count_nonzero(mask)
    return xp.sum(xp.astype(mask, xp.int64))


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


def device_of(x: Array) -> Any:
    """``x``'s device (``None`` for a library without devices): where arrays created to
    go with ``x`` belong."""
    return getattr(x, "device", None)


_ROWS: dict[tuple[Any, ...], Array] = {}


def constant_row(kind: str, like: Array, n: int, dtype: Any = None) -> Array:
    """A cached ``(1, n)`` row on ``like``'s library and device: ``"ones"`` (in
    ``dtype``) or ``"arange"`` (``0 .. n-1``, default integer dtype). A training step
    would otherwise build it for every batch (an allocation, and on a GPU a kernel)."""
    device = device_of(like)
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
    is one matrix product: a single BLAS call, measured faster than NumPy's
    ``sum(axis=0)`` over a short batch (``benchmarks/results``). The rounding is BLAS's
    rather than NumPy's: the same sum to float precision."""
    return constant_row("ones", like, like.shape[0], like.dtype)


#: Array API namespace of an array (the layers' short name for
#: :func:`nnx.backends.namespace_of`; an alias, not a wrapper: it runs ~10 times a step).
namespace = backends.namespace_of


def _modules_with_prefix(module: Module, prefix: str = "") -> Iterator[tuple[Module, str]]:
    yield module, prefix
    for i, child in enumerate(module.children()):
        yield from _modules_with_prefix(child, f"{prefix}{i}.")


@contextlib.contextmanager
def mode(module: Module, training: bool) -> Iterator[None]:
    """Run the block with ``module`` (and its sub-modules) in training or evaluation
    mode, then give every module back the mode it had (a mixed network stays mixed)."""
    saved = [(m, m.training) for m in module.all_modules()]
    if any(t is not training for _, t in saved):
        module.train(training)
    try:
        yield
    finally:
        for m, t in saved:
            m.training = t


class DeferredCheck(NamedTuple):
    """A check of a loss's input that needs one number read from the device.

    ``count`` is a 0-d array on the device; the check passes when it equals
    ``expected``; otherwise ``fail()`` raises the full error (it may read more).
    """

    count: Array
    expected: int
    fail: Callable[[], None]


class StateDictError(KeyError, ValueError):
    """Missing or unexpected names given to :meth:`Module.load_state_dict`: bad input
    (a ``ValueError``), about keys (a ``KeyError``)."""

    def __str__(self) -> str:  # the message as written, not KeyError's repr of it
        return str(self.args[0]) if self.args else ""


def _without(state: dict[str, Any], names: tuple[str, ...]) -> dict[str, Any]:
    """``state`` with the attributes ``names`` set to ``None`` (a copy recomputes them)."""
    return {k: None if k in names else v for k, v in state.items()}


class Loss:
    """Base class of the losses.

    ``forward(y, yhat)`` returns the per-sample losses, shape ``(batch,)``;
    ``backward(y, yhat)`` returns :math:`\\partial L / \\partial \\hat y` for
    :math:`L = \\sum_i \\ell_i`, the same shape as ``yhat``.

    **Deferred checks.** Some checks of the targets need a value from the device
    (e.g. "every label lies in ``[0, K)``"), and on a GPU each read waits for every
    queued kernel. A training step therefore calls ``forward`` inside
    :meth:`deferred_checks`: a loss hands such a check to :meth:`require_count`, which
    inside the block records a :class:`DeferredCheck` instead of reading; the step
    reads the counts together with the loss sum (one read per step) and calls
    ``fail()`` for any count that differs, before the backward pass. Outside the
    block, :meth:`require_count` checks at once. A loss must not let ``backward`` reuse
    anything computed from targets whose deferred check failed.

    >>> import nnx, numpy as np
    >>> loss = nnx.CELogSoftmax()
    >>> y, yhat = nnx.asarray(np.array([0, 4])), nnx.asarray(np.zeros((2, 3)))
    >>> with loss.deferred_checks() as pending:
    ...     _ = loss.forward(y, yhat)
    >>> [(int(c.count), c.expected) for c in pending]
    [(1, 2)]
    """

    #: Where :meth:`require_count` records checks (``None``: check at once).
    _deferred: list[DeferredCheck] | None = None
    #: What ``forward`` keeps for ``backward`` (see :attr:`Module._transient`).
    _transient: tuple[str, ...] = ()

    def __getstate__(self) -> dict[str, Any]:
        """Pickle and deep copy: everything but what a forward kept for its backward."""
        return _without(self.__dict__, self._transient)

    def forward(self, y: Array, yhat: Array) -> Array:
        raise NotImplementedError

    def backward(self, y: Array, yhat: Array) -> Array:
        raise NotImplementedError

    @contextlib.contextmanager
    def deferred_checks(self) -> Iterator[list[DeferredCheck]]:
        """Collect the checks that :meth:`require_count` would read, in the yielded
        list, for the caller to read (with the loss) and verify."""
        saved, pending = self._deferred, []
        self._deferred = pending
        try:
            yield pending
        finally:
            self._deferred = saved

    def require_count(self, count: Array, expected: int, fail: Callable[[], None]) -> None:
        """Check that the 0-d array ``count`` equals ``expected`` (``fail()`` raises
        otherwise): at once, or deferred inside :meth:`deferred_checks`."""
        if self._deferred is not None:
            self._deferred.append(DeferredCheck(count, expected, fail))
        elif int(count) != expected:
            fail()

    def __call__(self, y: Array, yhat: Array) -> Array:
        return self.forward(y, yhat)

    def get_config(self) -> dict[str, Any]:
        return {}

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"
