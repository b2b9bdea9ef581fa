"""nnx: explicit back-propagation, Torch7 style, on any Array API backend.

>>> import nnx
>>> nnx.set_backend("numpy")              # or "cupy", "torch", "array_api_strict"
>>> net = nnx.Sequential(nnx.Linear(4, 8), nnx.TanH(), nnx.Linear(8, 3))
>>> out = net(nnx.asarray([[0.0, 1.0, 2.0, 3.0]]))
>>> out.shape
(1, 3)
"""

from __future__ import annotations

from . import (
    backends,
    datasets,
    distributed,
    init,
    models,
    optimizers,
    serialization,
    testing,
    training,
)
from .activation import (
    LeakyReLU,
    LogSoftmax,
    ReLU,
    Sigmoid,
    Sigmoide,  # noqa: F401 - the original library's earlier name, kept out of __all__
    Softmax,
    Softplus,
    StableSigmoid,
    TanH,
)
from .backends import (
    asarray,
    get_backend,
    get_default_dtype,
    get_device,
    manual_seed,
    set_backend,
    set_default_dtype,
    to_numpy,
    use_backend,
)
from .convolution import AvgPool1D, Conv1D, Flatten, MaxPool1D
from .convolution2d import AvgPool2D, Conv2D, MaxPool2D
from .encapsulation import Optim, Sequential
from .linear import Linear
from .loss import BCELoss, CELogSoftmax, CrossEntropyLoss, MSELoss, NLLLoss
from .module import Loss, Module
from .regularization import BatchNorm, Dropout
from .serialization import load, save

__version__ = "0.1.0"

__all__ = [
    "AvgPool1D",
    "AvgPool2D",
    "BCELoss",
    "BatchNorm",
    "CELogSoftmax",
    "Conv1D",
    "Conv2D",
    "CrossEntropyLoss",
    "Dropout",
    "Flatten",
    "LeakyReLU",
    "Linear",
    "LogSoftmax",
    "Loss",
    "MSELoss",
    "MaxPool1D",
    "MaxPool2D",
    "NLLLoss",
    "Module",
    "Optim",
    "ReLU",
    "Sequential",
    "Sigmoid",
    "Softmax",
    "Softplus",
    "StableSigmoid",
    "TanH",
    "asarray",
    "backends",
    "datasets",
    "distributed",
    "get_backend",
    "get_default_dtype",
    "get_device",
    "init",
    "load",
    "manual_seed",
    "models",
    "optimizers",
    "save",
    "serialization",
    "set_backend",
    "set_default_dtype",
    "testing",
    "to_numpy",
    "training",
    "use_backend",
]


def __dir__() -> list[str]:
    # the public API only: not the submodules imported on the way, nor ``annotations``
    return sorted([*__all__, "__version__"])
