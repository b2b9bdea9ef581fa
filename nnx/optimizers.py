r"""Optimisers: update rules applied to a network after its backward pass.

An optimiser walks every parameter :math:`w` of a network together with its
accumulated gradient :math:`g = \partial L / \partial w` and updates :math:`w` in
place. It keeps its state (velocities, moment estimates) on the parameters' backend,
device and dtype; if the network is moved (``Module.to``) the state follows at the
next step.

=================  ==============================================================
:class:`SGD`       :math:`w \leftarrow w - \eta g`
:class:`Momentum`  :math:`b \leftarrow \mu b + g,\ w \leftarrow w - \eta b`
                   (Nesterov: :math:`w \leftarrow w - \eta (g + \mu b)`)
:class:`Adam`      bias-corrected first and second moments (Kingma & Ba, 2015)
=================  ==============================================================

The rules are exactly PyTorch's ``torch.optim.SGD`` (with ``dampening=0``) and
``torch.optim.Adam`` (without weight decay), step for step.

Use with :class:`nnx.Optim`:

>>> import nnx
>>> net = nnx.Sequential(nnx.Linear(4, 3))
>>> opt = nnx.Optim(net, nnx.CELogSoftmax(), optimizer=nnx.optimizers.Adam(lr=1e-3))

or directly, after a backward pass: ``optimizer.step(net)``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from . import backends
from .module import Array, Module, namespace

__all__ = ["SGD", "Adam", "Momentum", "Optimizer", "get"]


def _check_number(owner: str, arg: str, value: Any, low: float, high: float | None) -> float:
    """``float(value)`` if it lies in ``[low, high)`` (``high=None``: no upper bound)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{owner}: {arg} must be a number, got {type(value).__name__} {value!r}")
    v = float(value)
    if not math.isfinite(v) or v < low or (high is not None and v >= high):
        bound = f"[{low}, {high})" if high is not None else f">= {low}"
        raise ValueError(f"{owner}: {arg} must be {bound}, got {value!r}")
    return v


class Optimizer:
    """Base class: per-parameter state keyed by dotted name, updates in place.

    Subclasses implement :meth:`_direction`, which returns the array :math:`d` such
    that the update is :math:`w \\leftarrow w - d`, and may read and write
    ``self.state[name]`` (a dict of arrays on the parameter's backend).
    """

    #: Whether a CUDA graph can replay :meth:`step` (``Optim(cuda_graph=True)``): true
    #: when every scalar the update uses is the same at every step.
    capturable: bool = False

    def __init__(self, lr: float) -> None:
        self.lr = _check_number(type(self).__name__, "lr", lr, 0.0, None)
        self.state: dict[str, dict[str, Array]] = {}
        self.steps = 0
        self._network: Module | None = None

    def reset(self) -> None:
        """Forget every state (velocities, moments, step count) and the bound network."""
        self.state.clear()
        self.steps = 0
        self._network = None

    def bind(self, network: Module) -> None:
        """Tie this optimiser (and its per-parameter state) to ``network``.

        The first :meth:`step` (or :class:`~nnx.Optim`) binds it; another network is
        then refused with ``ValueError``, since two networks sharing one optimiser
        would silently share their velocities and moments. :meth:`reset` unbinds.
        """
        if not isinstance(network, Module):
            raise TypeError(
                f"{type(self).__name__}: expected a nnx Module, got {type(network).__name__}"
            )
        if self._network is not None and self._network is not network:
            raise ValueError(
                f"{self!r} is already bound to another network ({self._network.name}); "
                f"its state belongs to that network's parameters. Create one optimiser "
                f"per network (or call reset() to start over with this one)"
            )
        self._network = network

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly: class, hyper-parameters, step count and
        the per-parameter state as NumPy arrays (``{"state": {param: {name: array}}}``).

        >>> import nnx
        >>> nnx.optimizers.Adam().state_dict()
        {'class': 'Adam', 'config': {'lr': 0.001, 'beta1': 0.9, 'beta2': 0.999, 'eps': 1e-08}, 'steps': 0, 'state': {}}
        """
        return {
            "class": type(self).__name__,
            "config": self.get_config(),
            "steps": self.steps,
            "state": {
                key: {k: backends.to_numpy(v).copy() for k, v in st.items()}
                for key, st in self.state.items()
            },
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned (arrays of any backend).

        The class and hyper-parameters must match (``ValueError`` otherwise); the arrays
        move to the parameters' backend, device and dtype at the next step.
        """
        owner = f"{type(self).__name__}.load_state_dict"
        if not isinstance(state, dict) or not {"class", "config", "steps", "state"} <= set(state):
            raise ValueError(f"{owner}: expected a dict from state_dict(), got {state!r:.80}")
        if state["class"] != type(self).__name__ or dict(state["config"]) != self.get_config():
            raise ValueError(
                f"{owner}: the state is of {state['class']}({state['config']}), this "
                f"optimiser is {self!r}"
            )
        steps = state["steps"]
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
            raise ValueError(f"{owner}: steps must be a non-negative int, got {steps!r}")
        self.state = {
            key: {k: np.array(backends.to_numpy(v), copy=True) for k, v in st.items()}
            for key, st in state["state"].items()
        }
        self.steps = steps

    def step(self, network: Module) -> None:
        """Update every parameter of ``network`` from its accumulated gradient."""
        if not isinstance(network, Module):
            raise TypeError(
                f"{type(self).__name__}.step: expected a nnx Module, got {type(network).__name__}"
            )
        self.bind(network)
        self.steps += 1
        network.apply_update(self._update)

    def _update(self, name: str, p: Array, g: Array) -> Array:
        """The direction :math:`d` of parameter ``name`` (``w <- w - d``)."""
        state = self.state.setdefault(name, {})
        self._follow(state, p)
        return self._direction(namespace(p), state, g)

    @staticmethod
    def _follow(state: dict[str, Array], p: Array) -> None:
        """Move state arrays to ``p``'s backend, device and dtype if the network moved."""
        for k, s in state.items():
            if type(s) is not type(p) or s.dtype != p.dtype or s.shape != p.shape:
                if tuple(s.shape) != tuple(p.shape):
                    raise ValueError(
                        f"optimizer state {k!r} has shape {tuple(s.shape)} but the "
                        f"parameter has {tuple(p.shape)}; call reset() after changing the network"
                    )
                host = backends.to_numpy(s).astype(backends.dtype_name(p))
                state[k] = backends.from_numpy(host, p)

    def _direction(self, xp: Any, state: dict[str, Array], g: Array) -> Array:
        raise NotImplementedError

    def get_config(self) -> dict[str, Any]:
        return {"lr": self.lr}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"


class SGD(Optimizer):
    r"""Plain gradient descent, :math:`w \leftarrow w - \eta\, g`.

    Same as ``Optim(..., eps=lr)`` without an optimiser, and as ``torch.optim.SGD(lr)``.

    >>> import nnx
    >>> nnx.optimizers.SGD(lr=0.01)
    SGD(lr=0.01)
    """

    capturable = True

    def __init__(self, lr: float) -> None:
        super().__init__(lr)

    def _direction(self, xp: Any, state: dict[str, Array], g: Array) -> Array:
        return self.lr * g


class Momentum(Optimizer):
    r"""Gradient descent with (heavy-ball or Nesterov) momentum.

    With velocity :math:`b_0 = 0`:

    .. math::
        b_t = \mu\, b_{t-1} + g_t, \qquad
        w_t = w_{t-1} - \eta\, \begin{cases} b_t & \text{(heavy ball)} \\
        g_t + \mu\, b_t & \text{(Nesterov)} \end{cases}

    which is ``torch.optim.SGD(lr, momentum=mu, dampening=0, nesterov=...)``.

    Parameters
    ----------
    lr : float
        Step size :math:`\eta`.
    momentum : float, default 0.9
        :math:`\mu \in [0, 1)`.
    nesterov : bool, default False
        Use Nesterov's look-ahead form.

    Examples
    --------
    >>> import nnx
    >>> nnx.optimizers.Momentum(0.01, nesterov=True)
    Momentum(lr=0.01, momentum=0.9, nesterov=True)
    """

    capturable = True

    def __init__(self, lr: float, momentum: float = 0.9, nesterov: bool = False) -> None:
        super().__init__(lr)
        self.momentum = _check_number("Momentum", "momentum", momentum, 0.0, 1.0)
        if not isinstance(nesterov, bool):
            raise TypeError(f"Momentum: nesterov must be a bool, got {nesterov!r}")
        self.nesterov = nesterov

    def get_config(self) -> dict[str, Any]:
        return {"lr": self.lr, "momentum": self.momentum, "nesterov": self.nesterov}

    def _direction(self, xp: Any, state: dict[str, Array], g: Array) -> Array:
        b = state.get("velocity")
        if b is None:
            b = state["velocity"] = xp.asarray(g, copy=True)
        else:
            b *= self.momentum  # in place where arrays allow it; JAX binds new ones
            b += g
            state["velocity"] = b
        if self.nesterov:
            return self.lr * (g + self.momentum * b)
        return self.lr * b


class Adam(Optimizer):
    r"""Adam (Kingma & Ba, 2015), as ``torch.optim.Adam`` without weight decay.

    With :math:`m_0 = v_0 = 0` and step count :math:`t`:

    .. math::
        m_t = \beta_1 m_{t-1} + (1 - \beta_1) g_t, \qquad
        v_t = \beta_2 v_{t-1} + (1 - \beta_2) g_t^2

    .. math::
        w_t = w_{t-1} - \frac{\eta}{1 - \beta_1^t}\,
        \frac{m_t}{\sqrt{v_t / (1 - \beta_2^t)} + \varepsilon}

    Parameters
    ----------
    lr : float, default 1e-3
        Step size :math:`\eta`.
    beta1, beta2 : float, default 0.9, 0.999
        Decay rates of the moment estimates, in :math:`[0, 1)`.
    eps : float, default 1e-8
        :math:`\varepsilon`, added to the denominator.

    Examples
    --------
    >>> import nnx
    >>> nnx.optimizers.Adam()
    Adam(lr=0.001, beta1=0.9, beta2=0.999, eps=1e-08)
    """

    def __init__(
        self, lr: float = 1e-3, beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8
    ) -> None:
        super().__init__(lr)
        self.beta1 = _check_number("Adam", "beta1", beta1, 0.0, 1.0)
        self.beta2 = _check_number("Adam", "beta2", beta2, 0.0, 1.0)
        self.eps = _check_number("Adam", "eps", eps, 0.0, None)

    def get_config(self) -> dict[str, Any]:
        return {"lr": self.lr, "beta1": self.beta1, "beta2": self.beta2, "eps": self.eps}

    def _direction(self, xp: Any, state: dict[str, Array], g: Array) -> Array:
        if "m" not in state:
            state["m"] = xp.zeros_like(g)
            state["v"] = xp.zeros_like(g)
        m, v = state["m"], state["v"]
        m *= self.beta1  # in place where arrays allow it; JAX binds new ones
        m += (1.0 - self.beta1) * g
        v *= self.beta2
        v += (1.0 - self.beta2) * (g * g)
        state["m"], state["v"] = m, v
        t = self.steps
        step_size = self.lr / (1.0 - self.beta1**t)
        denom = xp.sqrt(v) / math.sqrt(1.0 - self.beta2**t) + self.eps
        return step_size * (m / denom)


_BY_NAME = {"sgd": SGD, "momentum": Momentum, "nesterov": Momentum, "adam": Adam}


def get(name: str, lr: float | None = None) -> Optimizer:
    """Build an optimiser by name: ``"sgd"``, ``"momentum"``, ``"nesterov"``, ``"adam"``.

    ``lr=None`` uses the class default (Adam) or raises (SGD and Momentum need one).

    >>> import nnx
    >>> nnx.optimizers.get("nesterov", 0.05)
    Momentum(lr=0.05, momentum=0.9, nesterov=True)
    """
    key = name.lower() if isinstance(name, str) else name
    if key not in _BY_NAME:
        raise ValueError(
            f"nnx.optimizers.get: unknown optimizer {name!r}; choose one of {sorted(_BY_NAME)}"
        )
    cls = _BY_NAME[key]
    kwargs: dict[str, Any] = {}
    if lr is not None:
        kwargs["lr"] = lr
    elif cls is not Adam:
        raise ValueError(f"nnx.optimizers.get: optimizer {name!r} needs a learning rate")
    if key == "nesterov":
        kwargs["nesterov"] = True
    return cls(**kwargs)
