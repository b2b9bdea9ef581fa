"""Parameter initialisation, drawn on the host with NumPy.

Values are drawn in float64 from NumPy's global random state (``np.random.seed(42)``
reproduces a network, as in the original library) or, once :func:`nnx.manual_seed` has
been called, from nnx's own generator; then cast to the default dtype and moved to the
current backend: the same seed gives the same weights on every backend. Fan-in / fan-out follow PyTorch (``Linear``: fan_in =
input_size, fan_out = output_size; ``Conv1D``: fan_in = k_size * chan_in, fan_out =
k_size * chan_out).

==================  ================================================================
``normal``          :math:`\\mathcal{N}(0, 1)` (``torch.nn.init.normal_``)
``uniform``         :math:`\\mathcal{U}(0, 1)` (``torch.nn.init.uniform_``)
``zeros``/``ones``  constants
``he_normal``       :math:`\\mathcal{N}(0, 2 / \\text{fan\\_in})`
``he_uniform``      :math:`\\mathcal{U}(-b, b),\\ b = \\sqrt{6 / \\text{fan\\_in}}`
``xavier_normal``   :math:`\\mathcal{N}(0, 2 / (\\text{fan\\_in} + \\text{fan\\_out}))`
``xavier_uniform``  :math:`\\mathcal{U}(-b, b),\\ b = \\sqrt{6 / (\\text{fan\\_in} + \\text{fan\\_out})}`
==================  ================================================================
"""

from __future__ import annotations

import math
from typing import Any, Literal

import numpy as np

from . import backends

InitType = Literal[
    "normal",
    "uniform",
    "zeros",
    "ones",
    "he_normal",
    "he_uniform",
    "xavier_normal",
    "xavier_uniform",
]
INIT_TYPES: tuple[str, ...] = (
    "normal",
    "uniform",
    "zeros",
    "ones",
    "he_normal",
    "he_uniform",
    "xavier_normal",
    "xavier_uniform",
)


def check_init_type(owner: str, init_type: Any) -> str:
    if init_type not in INIT_TYPES:
        raise ValueError(
            f"{owner}: unknown init_type {init_type!r}; expected one of {list(INIT_TYPES)}"
        )
    return init_type


def draw(shape: tuple[int, ...], init_type: str, fan_in: int, fan_out: int) -> np.ndarray:
    """Draw a float64 NumPy array of ``shape`` for ``init_type``."""
    rng = backends.get_rng()
    if init_type == "zeros":
        return np.zeros(shape)
    if init_type == "ones":
        return np.ones(shape)
    if init_type == "normal":
        return rng.standard_normal(shape)
    if init_type == "uniform":
        return rng.random(shape)
    if init_type == "he_normal":
        return rng.normal(0.0, math.sqrt(2.0 / fan_in), shape)
    if init_type == "he_uniform":
        bound = math.sqrt(6.0 / fan_in)
        return rng.uniform(-bound, bound, shape)
    if init_type == "xavier_normal":
        return rng.normal(0.0, math.sqrt(2.0 / (fan_in + fan_out)), shape)
    if init_type == "xavier_uniform":
        bound = math.sqrt(6.0 / (fan_in + fan_out))
        return rng.uniform(-bound, bound, shape)
    raise ValueError(f"unknown init_type {init_type!r}; expected one of {list(INIT_TYPES)}")


def bias_init_type(init_type: str) -> str:
    """Init used for a bias: the same for the fan-free types, zeros for He/Xavier.

    He and Xavier are defined by a weight's fans; a bias starts at zero with them, as in
    Keras and most PyTorch recipes.
    """
    return init_type if init_type in ("normal", "uniform", "zeros", "ones") else "zeros"


def parameter(shape: tuple[int, ...], init_type: str, fan_in: int, fan_out: int) -> Any:
    """A new parameter on the current backend, in the default dtype."""
    return backends.asarray(draw(shape, init_type, fan_in, fan_out))
