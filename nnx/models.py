r"""Ready-made networks for ``(batch, length, channels)`` inputs and ``K`` classes.

Every builder takes the input ``length``, the number of input ``channels`` and of
``classes`` and returns a :class:`~nnx.Sequential` whose output is ``(batch, classes)``
raw logits (train them with :class:`~nnx.CELogSoftmax`). Parameters are drawn from
nnx's generator (:func:`nnx.manual_seed`) on the current backend and dtype.

==============  ====================================================================
``simple_cnn``  the CNN of the original library (NeuralNetworksDIY): Conv1D(3, C, 32) -
                MaxPool1D(2, 2) - Flatten - Linear(32 P, 100) - ReLU - Linear(100, K),
                with :math:`P = \lfloor (L - 2) / 2 \rfloor` (its experiments had
                :math:`L = 256`, hence their ``Linear(4064, 100)``)
``cnn``         a deeper CNN: four ReLU convolutions (5, 5, 3, 3 taps; 32, 32, 64, 64
                channels) with a max-pool after the second, then a global average pool
                and a Linear(64, K) classifier. Global pooling makes it translation
                invariant, which MNIST-1D rewards (96% test accuracy measured).
``mlp``         Flatten - Linear(L C, 100) - ReLU - Linear(100, 100) - ReLU -
                Linear(100, K), the MNIST-1D paper's MLP
==============  ====================================================================

``seed_cnn``, the name this model had before, is kept as an alias (:data:`ALIASES`):
``build("seed_cnn", ...)`` and ``nnx.models.seed_cnn`` still work.

>>> import nnx
>>> net = nnx.models.build("cnn", length=40, channels=1, classes=10)
>>> net(nnx.asarray(__import__("numpy").zeros((2, 40, 1)))).shape
(2, 10)
"""

from __future__ import annotations

from collections.abc import Callable

from .activation import ReLU
from .convolution import AvgPool1D, Conv1D, Flatten, MaxPool1D
from .encapsulation import Sequential
from .linear import Linear
from .module import check_positive_int

__all__ = ["ALIASES", "MODELS", "build", "cnn", "mlp", "resolve", "seed_cnn", "simple_cnn"]


def _check(owner: str, length: int, channels: int, classes: int) -> None:
    for arg, value in (("length", length), ("channels", channels), ("classes", classes)):
        check_positive_int(owner, arg, value)


def simple_cnn(
    length: int, channels: int, classes: int, width: int = 32, hidden: int = 100
) -> Sequential:
    r"""The CNN of the original library (NeuralNetworksDIY), for inputs of ``length``
    and ``channels``.

    ``(B, L, C) -> Conv1D(3, C, width) -> (B, L-2, width) -> MaxPool1D(2, 2) ->
    (B, P, width) -> Flatten -> Linear(P width, hidden) -> ReLU -> Linear(hidden, K)``
    with :math:`P = \lfloor (L-2)/2 \rfloor`.

    >>> import nnx
    >>> nnx.models.simple_cnn(256, 1, 10)[3]
    Linear(4064, 100, bias=True)
    """
    _check("nnx.models.simple_cnn", length, channels, classes)
    if length < 4:
        raise ValueError(f"nnx.models.simple_cnn: length must be at least 4, got {length}")
    pooled = (length - 3 + 1 - 2) // 2 + 1
    return Sequential(
        Conv1D(3, channels, width),
        MaxPool1D(2, 2),
        Flatten(),
        Linear(pooled * width, hidden),
        ReLU(),
        Linear(hidden, classes),
    )


def cnn(length: int, channels: int, classes: int, width: int = 32) -> Sequential:
    r"""A deeper, translation-invariant CNN (global average pooling).

    Lengths: :math:`L \to L-4 \to L-8 \to P = \lfloor (L-8)/2 \rfloor \to P-2 \to
    P-4`, then the mean over the remaining :math:`P-4` positions of each of the
    ``2 width`` channels feeds ``Linear(2 width, classes)``. Convolutions have biases
    and He-normal weights. Needs :math:`L \ge 18`.

    >>> import nnx
    >>> nnx.models.cnn(40, 1, 10)[9]
    AvgPool1D(k_size=12, stride=12)
    """
    _check("nnx.models.cnn", length, channels, classes)
    pooled = (length - 8 - 2) // 2 + 1
    final = pooled - 4
    if final < 1:
        raise ValueError(f"nnx.models.cnn: length must be at least 18, got {length}")
    conv = {"bias": True, "init_type": "he_normal"}
    return Sequential(
        Conv1D(5, channels, width, **conv),
        ReLU(),
        Conv1D(5, width, width, **conv),
        ReLU(),
        MaxPool1D(2, 2),
        Conv1D(3, width, 2 * width, **conv),
        ReLU(),
        Conv1D(3, 2 * width, 2 * width, **conv),
        ReLU(),
        AvgPool1D(final, final),
        Flatten(),
        Linear(2 * width, classes),
    )


def mlp(
    length: int, channels: int, classes: int, hidden: tuple[int, ...] = (100, 100)
) -> Sequential:
    """Flatten, then ``Linear - ReLU`` for each hidden size, then ``Linear(., classes)``.

    >>> import nnx
    >>> len(nnx.models.mlp(40, 1, 10))
    6
    """
    _check("nnx.models.mlp", length, channels, classes)
    layers: list = [Flatten()]
    size = length * channels
    for h in hidden:
        check_positive_int("nnx.models.mlp", "hidden size", h)
        layers += [Linear(size, int(h)), ReLU()]
        size = int(h)
    layers.append(Linear(size, classes))
    return Sequential(*layers)


#: The old name of :func:`simple_cnn`, kept for scripts that use it.
seed_cnn = simple_cnn

#: The builders by name.
MODELS: dict[str, Callable[..., Sequential]] = {"cnn": cnn, "simple_cnn": simple_cnn, "mlp": mlp}

#: Old model names, still accepted by :func:`build` and ``nnx train --model``.
ALIASES: dict[str, str] = {"seed_cnn": "simple_cnn"}


def resolve(name: str) -> str:
    """The name in :data:`MODELS` of a model name or alias; ValueError if unknown.

    >>> import nnx
    >>> nnx.models.resolve("seed_cnn")
    'simple_cnn'
    """
    name = ALIASES.get(name, name)
    if name not in MODELS:
        raise ValueError(
            f"nnx.models.build: unknown model {name!r}; choose one of {sorted(MODELS)}"
        )
    return name


def build(name: str, length: int, channels: int, classes: int) -> Sequential:
    """A model of :data:`MODELS` (or of :data:`ALIASES`) by name."""
    return MODELS[resolve(name)](length, channels, classes)
