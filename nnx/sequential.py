r"""The container :class:`Sequential` (re-exported by :mod:`nnx.encapsulation`, where the
original library had it with ``Optim``)."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import numpy as np

from .module import Array, Module

__all__ = ["Sequential"]


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

    #: the chain's inputs and outputs of the last forward, too
    _transient = (*Module._transient, "_inputs")

    def __init__(self, *modules: Module) -> None:
        super().__init__()
        if len(modules) == 1 and isinstance(modules[0], (list, tuple)):
            modules = tuple(modules[0])
        self._modules = _ModuleList(self)
        # (module, its state when it joined): pairs, since ids change in a copy
        self._initial: list[tuple[Module, dict[str, np.ndarray]]] = []
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
        self._modules.append(module)
        return self

    def insert(self, index: int, module: Module) -> Sequential:
        """Insert ``module`` before position ``index``; returns ``self``."""
        self._modules.insert(index, module)
        return self

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Unpickle, also what an earlier nnx pickled: a plain list of modules and a
        list of their initial states."""
        self.__dict__.update(state)
        if not isinstance(self._modules, _ModuleList):
            modules = list(self._modules)
            self._modules = _ModuleList(self)
            list.extend(self._modules, modules)
        if self._initial and isinstance(self._initial[0], dict):
            self._initial = list(zip(self._modules, self._initial, strict=True))

    def _edited(self, before: list[Module]) -> None:
        """After any change to the list of modules (``before``: the old list): every
        entry must be a Module (else the change is undone), newcomers get their initial
        snapshot, and the chain's saved inputs are dropped."""
        bad = [m for m in self._modules if not isinstance(m, Module)]
        if bad:
            list.__init__(self._modules, before)
            self._checked(bad[0])
        kept = {id(pair[0]): pair for pair in self._initial}
        self._initial = [kept.get(id(m)) or (m, _snapshot(m)) for m in self._modules]
        self._inputs = None

    def reset(self) -> Sequential:
        """Restore every module's parameters to their values when it was added; returns
        the network (``Optim(net.reset(), loss)``, as in the original library)."""
        for module, initial in self._initial:
            module.load_state_dict(initial)
        self._inputs = None
        return self

    def children(self) -> list[Module]:
        return list(self._modules)

    @property
    def modules(self) -> list[Module]:
        """The list of this network's modules, in order, as in the original library
        (``net.modules[0]``, ``len(net.modules)``, ``for m in net.modules``).

        For every module at any depth (PyTorch's ``modules()``) use
        :meth:`~nnx.Module.all_modules`. The list may be edited in place (``append``,
        ``insert``, ``del``, item assignment ...) or replaced: every entry is checked to
        be a Module, and :meth:`reset` returns each module to its parameters of when it
        joined the list.
        """
        return self._modules

    @modules.setter
    def modules(self, modules: list[Module]) -> None:
        self._modules[:] = modules

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
            delta = modules[i].backward(inputs[i], delta, input_grad or i > 0)
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

    def update_parameters(self, eps: float = 1e-3, *, learning_rate: float | None = None) -> None:
        """Gradient descent step of every module: :math:`w \\leftarrow w - \\epsilon
        \\nabla_w L`, :math:`\\epsilon` = ``eps`` (the original library's keyword for a
        ``Sequential``) or ``learning_rate`` (the keyword of :meth:`Module.update_parameters`,
        so that a ``Sequential`` can stand wherever a module does)."""
        step = eps if learning_rate is None else learning_rate
        for module in self._modules:
            module.update_parameters(step)

    def zero_grad(self) -> None:
        for module in self._modules:
            module.zero_grad()


class _ModuleList(list):  # type: ignore[type-arg]
    """``Sequential.modules``: a plain list to read, whose every edit is reported to
    its network (checks, :meth:`Sequential.reset` snapshots, saved inputs)."""

    __slots__ = ("owner",)

    def __init__(self, owner: Sequential) -> None:
        super().__init__()
        self.owner = owner

    def __reduce_ex__(self, protocol: Any) -> Any:  # a copy is filled without reporting
        return (_restored, (self.owner, list(self)))


def _restored(owner: Sequential, modules: list[Module]) -> _ModuleList:
    restored = _ModuleList(owner)
    list.extend(restored, modules)
    return restored


def _edit(name: str) -> Any:
    method = getattr(list, name)

    def edit(self: _ModuleList, *args: Any) -> Any:
        before = list(self)
        result = method(self, *args)
        self.owner._edited(before)
        return self if name in ("__iadd__", "__imul__") else result

    edit.__name__ = name
    return edit


for _name in (
    "append", "extend", "insert", "remove", "pop", "clear", "sort", "reverse",
    "__setitem__", "__delitem__", "__iadd__", "__imul__",
):  # fmt: skip
    setattr(_ModuleList, _name, _edit(_name))


def _snapshot(module: Module) -> dict[str, np.ndarray]:
    return copy.deepcopy(module.state_dict())
