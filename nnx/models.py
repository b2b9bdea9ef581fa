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
``cnn2d``       for ``(batch, height, width, channels)`` images (:data:`IMAGE_MODELS`):
                two 3x3 "same" convolutions, a 2x2 max-pool, a third convolution and
                pool, each convolution followed by BatchNorm and ReLU, then Dropout -
                Linear - ReLU - Dropout - Linear (98-99% on the 8x8 digits measured)
==============  ====================================================================

:func:`for_input` builds any of them from the shape of one sample, ``(length,
channels)`` or ``(height, width, channels)``.

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
from .convolution2d import Conv2D, MaxPool2D
from .linear import Linear
from .module import check_positive_int
from .regularization import BatchNorm, Dropout
from .sequential import Sequential

__all__ = [
    "ALIASES",
    "IMAGE_MODELS",
    "MODELS",
    "build",
    "cnn",
    "cnn2d",
    "for_input",
    "mlp",
    "resolve",
    "seed_cnn",
    "simple_cnn",
]


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


def cnn(
    length: int,
    channels: int,
    classes: int,
    width: int = 32,
    batchnorm: bool = False,
    dropout: float = 0.0,
) -> Sequential:
    r"""A deeper, translation-invariant CNN (global average pooling).

    Lengths: :math:`L \to L-4 \to L-8 \to P = \lfloor (L-8)/2 \rfloor \to P-2 \to
    P-4`, then the mean over the remaining :math:`P-4` positions of each of the
    ``2 width`` channels feeds ``Linear(2 width, classes)``. Convolutions have biases
    and He-normal weights. Needs :math:`L \ge 18`.

    With ``batchnorm``, a :class:`~nnx.BatchNorm` follows every convolution (which then
    has no bias: BatchNorm's :math:`\beta` is one); with ``dropout`` > 0, a
    :class:`~nnx.Dropout` precedes the classifier.

    >>> import nnx
    >>> nnx.models.cnn(40, 1, 10)[9]
    AvgPool1D(k_size=12, stride=12)
    >>> len(nnx.models.cnn(40, 1, 10, batchnorm=True, dropout=0.2))
    17
    """
    _check("nnx.models.cnn", length, channels, classes)
    pooled = (length - 8 - 2) // 2 + 1
    final = pooled - 4
    if final < 1:
        raise ValueError(f"nnx.models.cnn: length must be at least 18, got {length}")
    conv = {"bias": not batchnorm, "init_type": "he_normal"}

    def block(k: int, c_in: int, c_out: int) -> list:
        layers = [Conv1D(k, c_in, c_out, **conv)]
        return layers + [BatchNorm(c_out), ReLU()] if batchnorm else layers + [ReLU()]

    return Sequential(
        *block(5, channels, width),
        *block(5, width, width),
        MaxPool1D(2, 2),
        *block(3, width, 2 * width),
        *block(3, 2 * width, 2 * width),
        AvgPool1D(final, final),
        Flatten(),
        *([Dropout(dropout)] if dropout > 0 else []),
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


def cnn2d(
    height: int, width: int, channels: int, classes: int, filters: int = 16, p: float = 0.3
) -> Sequential:
    r"""A small image CNN with BatchNorm and Dropout, for ``(batch, height, width,
    channels)`` inputs.

    ``Conv2D(3, C, f, "same") - BatchNorm - ReLU - Conv2D(3, f, f, "same") - BatchNorm -
    ReLU - MaxPool2D(2) - Conv2D(3, f, 2f, "same") - BatchNorm - ReLU - MaxPool2D(2) -
    Flatten - Dropout(p) - Linear(2f H' W', 128) - ReLU - Dropout(p) - Linear(128, K)``
    with :math:`H' = \lfloor \lfloor H/2 \rfloor / 2 \rfloor` (likewise :math:`W'`);
    convolutions without bias (BatchNorm's :math:`\beta` is one), He-normal weights.
    Needs :math:`H, W \ge 4`.

    >>> import nnx
    >>> net = nnx.models.cnn2d(8, 8, 1, 10)
    >>> net(nnx.asarray(__import__("numpy").zeros((2, 8, 8, 1)))).shape
    (2, 10)
    """
    owner = "nnx.models.cnn2d"
    for arg, value in (("height", height), ("width", width), ("filters", filters)):
        check_positive_int(owner, arg, value)
    _check(owner, 1, channels, classes)
    if height < 4 or width < 4:
        raise ValueError(f"{owner}: images must be at least 4x4, got {height}x{width}")
    f = int(filters)
    conv = {"padding": "same", "init_type": "he_normal"}
    flat = 2 * f * ((height // 2) // 2) * ((width // 2) // 2)
    return Sequential(
        Conv2D(3, channels, f, **conv),
        BatchNorm(f),
        ReLU(),
        Conv2D(3, f, f, **conv),
        BatchNorm(f),
        ReLU(),
        MaxPool2D(2),
        Conv2D(3, f, 2 * f, **conv),
        BatchNorm(2 * f),
        ReLU(),
        MaxPool2D(2),
        Flatten(),
        Dropout(p),
        Linear(flat, 128),
        ReLU(),
        Dropout(p),
        Linear(128, classes),
    )


#: The old name of :func:`simple_cnn`, kept for scripts that use it.
seed_cnn = simple_cnn

#: The builders by name.
MODELS: dict[str, Callable[..., Sequential]] = {
    "cnn": cnn,
    "simple_cnn": simple_cnn,
    "mlp": mlp,
    "cnn2d": cnn2d,
}

#: The models for images ``(height, width, channels)``; the others take sequences.
IMAGE_MODELS = ("cnn2d",)

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
    """A sequence model of :data:`MODELS` (or of :data:`ALIASES`) by name; image models
    take their shape through :func:`for_input`."""
    name = resolve(name)
    if name in IMAGE_MODELS:
        raise ValueError(
            f"nnx.models.build: {name!r} takes images; use nnx.models.for_input({name!r}, "
            f"(height, width, channels), classes)"
        )
    return MODELS[name](length, channels, classes)


def for_input(name: str, shape: tuple[int, ...], classes: int) -> Sequential:
    """A model of :data:`MODELS` by name for samples of ``shape``: ``(length,
    channels)`` for the sequence models, ``(height, width, channels)`` for
    :data:`IMAGE_MODELS`.

    >>> import nnx
    >>> nnx.models.for_input("cnn2d", (8, 8, 1), 10)[0]
    Conv2D(3, 1, 16, stride=1, padding='same', bias=False)
    """
    name = resolve(name)
    shape = tuple(int(n) for n in shape)
    rank = 3 if name in IMAGE_MODELS else 2
    if len(shape) != rank:
        kind = "(height, width, channels) images" if rank == 3 else "(length, channels) signals"
        raise ValueError(
            f"nnx.models.for_input: model {name!r} takes {kind}, got samples of shape {shape}"
        )
    return MODELS[name](*shape, classes)
