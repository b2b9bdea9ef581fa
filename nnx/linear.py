r"""Fully connected layer."""

from __future__ import annotations

from typing import Any

from . import init
from .init import InitType
from .module import Array, Module, check_positive_int, mT, namespace, ones_row


class Linear(Module):
    r"""Affine map of each row: :math:`Z = XW + b`.

    .. math::
        \text{forward:}\quad Z = X W + \mathbf{1} b, \qquad
        X \in \mathbb{R}^{n \times d_{in}},\ W \in \mathbb{R}^{d_{in} \times d_{out}},\
        b \in \mathbb{R}^{1 \times d_{out}}

    .. math::
        \text{backward\_update\_gradient:}\quad
        \nabla_W L \mathrel{+}= X^\top \delta, \qquad
        \nabla_b L \mathrel{+}= \mathbf{1}^\top \delta = \sum_i \delta_{i,:}

    .. math::
        \text{backward\_delta:}\quad \frac{\partial L}{\partial X} = \delta W^\top

    Parameters
    ----------
    input_size : int
        Features per input row, :math:`d_{in}`.
    output_size : int
        Features per output row, :math:`d_{out}`.
    bias : bool, default True
        Add the learnable row :math:`b`.
    init_type : str, default ``"he_normal"``
        One of :data:`nnx.init.INIT_TYPES` (fan_in = input_size, fan_out = output_size).

    Shapes
    ------
    input ``(batch, input_size)``, output ``(batch, output_size)``,
    ``weight`` ``(input_size, output_size)``, ``bias`` ``(1, output_size)``.

    Examples
    --------
    >>> import nnx
    >>> nnx.manual_seed(0)
    >>> layer = nnx.Linear(4, 3)
    >>> layer(nnx.asarray([[1.0, 2.0, 3.0, 4.0]])).shape
    (1, 3)
    """

    _fresh_gradients = True  # every gradient write goes through accumulate_gradient

    def __init__(
        self,
        input_size: int,
        output_size: int,
        bias: bool = True,
        init_type: InitType = "he_normal",
    ) -> None:
        super().__init__()
        owner = f"Linear({input_size!r}, {output_size!r})"
        for arg, value in (("input_size", input_size), ("output_size", output_size)):
            check_positive_int(owner, arg, value)
        init.check_init_type(owner, init_type)
        self.input_size, self.output_size = int(input_size), int(output_size)
        self.bias, self.init_type = bool(bias), init_type
        shape = (self.input_size, self.output_size)
        self._register("weight", init.parameter(shape, init_type, *shape))
        if self.bias:
            self._register(
                "bias",
                init.parameter((1, self.output_size), init.bias_init_type(init_type), *shape),
            )

    @staticmethod
    def parameter_shapes(
        input_size: int, output_size: int, bias: bool = True, **_: Any
    ) -> dict[str, tuple[int, ...]]:
        """Shapes of the parameters for these constructor arguments (nothing allocated)."""
        shapes = {"weight": (int(input_size), int(output_size))}
        if bias:
            shapes["bias"] = (1, int(output_size))
        return shapes

    def get_config(self) -> dict[str, Any]:
        return {
            "input_size": self.input_size,
            "output_size": self.output_size,
            "bias": self.bias,
            "init_type": self.init_type,
        }

    def extra_repr(self) -> str:
        return f"{self.input_size}, {self.output_size}, bias={self.bias}"

    def forward(self, X: Array) -> Array:
        W = self._parameters["weight"]
        given = X
        if not _rows_like(X, W, self.input_size):
            # another float dtype is cast; anything else raises, saying why
            X = self._check_input(X, ("batch", self.input_size), like=W)
        out = namespace(X).matmul(X, W)
        if self.bias:
            out += self._parameters["bias"]
        # the backward pass on this input skips its check and reuses the cast
        self._cache_key, self._cache = given, (X, None, None)
        return out

    def _check_backward(self, input: Array, delta: Array) -> tuple[Array, Array]:
        """``(input, delta)``, checked unless this very pair (or input) was checked;
        floating arrays of another dtype are cast to the weight's."""
        # The cache (cleared by ``to`` and ``load_state_dict``): the last input as given
        # (key) and as checked, and the last delta as given and as checked.
        W = self._parameters["weight"]
        given_input, given_delta = input, delta
        if input is self._cache_key:
            input, last_delta, checked_delta = self._cache
            if delta is last_delta and delta is not None:
                return input, checked_delta  # the second backward method of a pair
        else:
            input = self._check_input(input, ("batch", self.input_size), like=W)
        if not (_rows_like(delta, W, self.output_size) and delta.shape[0] == input.shape[0]):
            delta = self._check_input(delta, (input.shape[0], self.output_size), "delta", like=W)
        self._cache_key, self._cache = given_input, (input, given_delta, delta)
        return input, delta

    def backward_update_gradient(self, input: Array, delta: Array) -> None:
        input, delta = self._check_backward(input, delta)
        self._add_gradients(input, delta)

    def backward_delta(self, input: Array, delta: Array) -> Array:
        input, delta = self._check_backward(input, delta)
        return namespace(delta).matmul(delta, mT(self._parameters["weight"]))

    def _add_gradients(self, input: Array, delta: Array) -> None:
        xp = namespace(delta)
        self.accumulate_product("weight", mT(input), delta)  # Xᵀ δ
        if self.bias:
            self.accumulate_gradient("bias", xp.matmul(ones_row(delta), delta))  # 1ᵀ δ


def _rows_like(X: Any, W: Array, width: int) -> bool:
    """Whether ``X`` is a ``(batch, width)`` array of ``W``'s library and dtype: the
    valid case, checked without building a message (``_check_input`` does the rest)."""
    if type(X) is not type(W) or X.dtype != W.dtype:
        return False
    shape = X.shape
    return len(shape) == 2 and shape[1] == width
