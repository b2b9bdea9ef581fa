r"""Containers and training: :class:`Sequential` and :class:`Optim`."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import numpy as np

from . import backends
from .module import Array, Loss, Module, is_floating, namespace


class Sequential(Module):
    r"""A chain of modules, itself a :class:`~nnx.Module` (so chains nest).

    .. math::
        z^0 = X,\quad z^h = M^h(z^{h-1}) \quad (h = 1..H)

    ``backward(input, delta)`` walks the chain in reverse: for :math:`h = H..1`,
    ``M^h.backward_update_gradient(z^{h-1}, \delta^h)`` then
    :math:`\delta^{h-1} =` ``M^h.backward_delta(z^{h-1}, \delta^h)``; it returns
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
        for i in range(len(self._modules) - 1, -1, -1):
            module = self._modules[i]
            module.backward_update_gradient(inputs[i], delta)
            if i == 0 and not input_grad:
                return None
            delta = module.backward_delta(inputs[i], delta)
        return delta

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

    def _moved(self) -> None:
        self._inputs = None


def _snapshot(module: Module) -> dict[str, np.ndarray]:
    return copy.deepcopy(module.state_dict())


class Optim:
    """Ties a network, a loss and a step size (or an optimiser) together.

    ``step(batch_x, batch_y)`` runs forward, loss, backward and the parameter update,
    and returns the per-sample losses of the batch.

    >>> import nnx, numpy as np
    >>> net = nnx.Sequential(nnx.Linear(2, 2))
    >>> opt = nnx.Optim(net, nnx.CELogSoftmax(), eps=0.1)
    >>> opt.step(nnx.asarray([[1.0, 0.0]]), nnx.asarray(np.array([1]))).shape
    (1,)
    """

    def __init__(
        self, network: Module, loss: Loss, eps: float = 1e-3, optimizer: Any = None
    ) -> None:
        if not isinstance(network, Module):
            raise TypeError(f"Optim: network must be a nnx Module, got {type(network).__name__}")
        if not isinstance(loss, Loss):
            raise TypeError(f"Optim: loss must be a nnx Loss, got {type(loss).__name__}")
        self.network, self.loss, self.eps = network, loss, float(eps)
        self.optimizer = optimizer

    def _device_data(self, X: Any) -> Array:
        """Data on the network's backend; floating data takes the network's dtype.

        This is the one place where nnx converts: host data (NumPy arrays, lists) or
        arrays of another backend are moved, floating data is cast to the parameters'
        dtype; integer labels keep their dtype. Arrays already right are returned as is.
        """
        like = next(iter(self.network.parameters()), None)
        if like is None:
            return backends.asarray(X) if backends.backend_of(X) is not backends.current() else X
        if type(X) is type(like) and (X.dtype == like.dtype or not is_floating(X)):
            return X
        host = backends.to_numpy(X) if backends.is_array(X) else np.asarray(X)
        if host.dtype.kind == "f":
            host = host.astype(backends.dtype_name(like), copy=False)
        return backends.from_numpy(host, like)

    def step(self, batch_x: Any, batch_y: Any) -> Array:
        """One training step on a batch; returns the per-sample losses (backend array)."""
        X, y = self._device_data(batch_x), self._device_data(batch_y)
        net = self.network
        net.zero_grad()
        yhat = net.forward(X)
        losses = self.loss.forward(y, yhat)
        delta = self.loss.backward(y, yhat)
        if isinstance(net, Sequential):
            net.backward(X, delta, input_grad=False)
        else:
            net.backward_update_gradient(X, delta)
        if self.optimizer is not None:
            self.optimizer.step(net)
        else:
            net.update_parameters(self.eps)
        return losses

    def predict(self, X: Any) -> Array:
        """Network output for ``X`` (moved to the network's backend)."""
        return self.network.forward(self._device_data(X))

    def score(self, X: Any, y: Any) -> float:
        """Accuracy of ``argmax(network(X))`` against labels or one-hot ``y``."""
        yhat = self.predict(X)
        xp = namespace(yhat)
        pred = backends.to_numpy(xp.argmax(yhat, axis=-1))
        target = backends.to_numpy(y)
        if target.ndim == 2:
            target = target.argmax(axis=1)
        return float(np.mean(pred == target))
