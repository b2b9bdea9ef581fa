r"""1-D convolution, pooling and flattening, channels last: ``(batch, length, chan)``.

Conv1D zero-pads its input first when asked (``padding``): an int :math:`p` on both
ends, a pair ``(before, after)``, ``"valid"`` (none) or ``"same"`` (stride 1: the output
keeps the input's length; an odd total puts the extra zero after, as PyTorch does).

Every module here reads its input through sliding windows
:math:`V[b, o, c, k] = X[b, o s + k, c]` of shape ``(batch, out_length, chan, k_size)``
with :math:`\text{out\_length} = \lfloor (\text{length} - k) / s \rfloor + 1`, built by
:func:`nnx.backends.sliding_window` (a strided view on NumPy and CuPy, ``unfold`` on
PyTorch, a gather elsewhere). Backward passes scatter window gradients back with one
strided slice ``+=`` per kernel tap :math:`k`: ``dX[:, k : k + s(O-1) + 1 : s] += ...``
(:func:`nnx.backends.add_at`, in place except on JAX), which accumulates overlapping
windows correctly on every backend.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from . import backends, init
from .init import InitType
from .module import Array, Module, check_positive_int, device_of, mT, namespace


def _tap(k: int, stride: int, out_length: int) -> slice:
    """Positions ``k, k + s, ..., k + s (O - 1)``: tap ``k`` of every window."""
    return slice(k, k + stride * (out_length - 1) + 1, stride)


def _taps(k: int, stride: int, out_length: int) -> tuple[Any, ...]:
    """Index of tap ``k`` of every window in a ``(batch, length, chan)`` array."""
    return (slice(None), _tap(k, stride, out_length), ...)


Padding = int | str | Sequence[int]
Pads = tuple[tuple[int, int], ...]


def int_tuple(owner: str, arg: str, value: Any, n: int) -> tuple[int, ...]:
    """``value`` (a positive int, or ``n`` of them) as an ``n``-tuple of positive ints."""
    values = tuple(value) if isinstance(value, (tuple, list)) else (value,) * n
    if len(values) != n:
        raise ValueError(f"{owner}: {arg} must be an int or {n} ints, got {value!r}")
    for v in values:
        check_positive_int(owner, arg, v)
    return tuple(int(v) for v in values)


def _non_negative(owner: str, value: Any, padding: Any) -> int:
    if isinstance(value, bool) or not hasattr(value, "__index__") or int(value) < 0:
        raise ValueError(
            f"{owner}: padding must be a non-negative int, a pair of them, 'same' or "
            f"'valid', got {padding!r}"
        )
    return int(value)


def resolve_padding(
    owner: str, padding: Any, k_size: tuple[int, ...], stride: tuple[int, ...], pair: str
) -> Pads:
    r"""Zeros ``(before, after)`` per spatial axis.

    ``"valid"``: none. ``"same"`` (stride 1 only, as in PyTorch): :math:`k - 1` in
    total, :math:`\lfloor (k-1)/2 \rfloor` before and the rest after. An int: that
    many on both ends of every axis. A pair: ``pair="axes"`` reads it per axis (2-D:
    ``(rows, columns)``), ``pair="ends"`` as ``(before, after)`` of the one axis (1-D).
    """
    n = len(k_size)
    if isinstance(padding, str):
        if padding == "valid":
            return ((0, 0),) * n
        if padding == "same":
            if any(s != 1 for s in stride):
                raise ValueError(
                    f"{owner}: padding='same' needs stride 1 (as in PyTorch), got "
                    f"stride={stride if n > 1 else stride[0]}"
                )
            return tuple(((k - 1) // 2, k - 1 - (k - 1) // 2) for k in k_size)
        raise ValueError(
            f"{owner}: padding must be an int, a pair, 'same' or 'valid', got {padding!r}"
        )
    if isinstance(padding, (tuple, list)):
        if len(padding) != 2:
            raise ValueError(f"{owner}: a padding pair needs 2 ints, got {padding!r}")
        a, b = (_non_negative(owner, v, padding) for v in padding)
        return ((a, b),) if pair == "ends" else ((a, a), (b, b))
    p = _non_negative(owner, padding, padding)
    return ((p, p),) * n


def padding_config(padding: Any) -> Any:
    """``padding`` as given, with a pair as a list (JSON, for ``get_config``)."""
    return list(padding) if isinstance(padding, (tuple, list)) else padding


def pad_zeros(X: Array, pads: Pads) -> Array:
    """``X`` with zeros around its spatial axes (axes ``1 .. len(pads)``): one copy."""
    if not any(lo or hi for lo, hi in pads):
        return X
    xp = namespace(X)
    shape = (
        (X.shape[0],)
        + tuple(n + lo + hi for n, (lo, hi) in zip(X.shape[1:], pads, strict=False))
        + tuple(X.shape[1 + len(pads) :])
    )
    out = xp.zeros(shape, dtype=X.dtype, device=device_of(X))
    return backends.set_at(out, interior(X.shape, pads), X)


def interior(shape: tuple[int, ...], pads: Pads) -> tuple[slice, ...]:
    """Index of the unpadded input inside its padded copy."""
    spatial = tuple(slice(lo, lo + n) for n, (lo, _) in zip(shape[1:], pads, strict=False))
    return (slice(None), *spatial, ...)


def unpad(dX: Array, shape: tuple[int, ...], pads: Pads) -> Array:
    """The gradient of the unpadded input from that of the padded one."""
    if not any(lo or hi for lo, hi in pads):
        return dX
    return dX[interior(shape, pads)]


class _Windowed(Module):
    """Shared geometry and checks of Conv1D and the pools."""

    k_size: int
    stride: int

    #: zeros ``(before, after)`` of the length axis (only Conv1D pads)
    pads: Pads = ((0, 0),)

    def _init_geometry(self, owner: str, k_size: Any, stride: Any) -> None:
        check_positive_int(owner, "k_size", k_size)
        check_positive_int(owner, "stride", stride)
        self.k_size, self.stride = int(k_size), int(stride)

    def out_length(self, length: int) -> int:
        """:math:`\\lfloor (\\text{length} + p_0 + p_1 - k) / s \\rfloor + 1`."""
        ((lo, hi),) = self.pads
        return (length + lo + hi - self.k_size) // self.stride + 1

    def _check_x(self, X: Array, chan: Any, like: Array = None) -> tuple[Array, int]:
        """``(X, out_length)``: ``X`` checked, cast to ``like``'s float dtype if needed."""
        X = self._check_input(X, ("batch", "length", chan), like=like)
        ((lo, hi),) = self.pads
        if X.shape[1] + lo + hi < self.k_size:
            padded = f" padded to {X.shape[1] + lo + hi}" if lo or hi else ""
            raise ValueError(
                f"{self.name}: input length {X.shape[1]}{padded} is shorter than k_size "
                f"{self.k_size} (input shape {tuple(X.shape)})"
            )
        return X, self.out_length(X.shape[1])

    def _check_delta(
        self, input: Array, delta: Array, chan_out: int | None = None
    ) -> tuple[Array, int]:
        """``(delta, out_length)``: ``delta`` checked against the output shape for
        ``input`` (already checked), cast to ``input``'s float dtype if needed."""
        out_length = self.out_length(input.shape[1])
        chan = input.shape[2] if chan_out is None else chan_out
        delta = self._check_input(delta, (input.shape[0], out_length, chan), "delta", like=input)
        return delta, out_length


class Conv1D(_Windowed):
    r"""1-D convolution (cross-correlation), channels last.

    .. math::
        \text{forward:}\quad Z[b, o, d] = \sum_{k=0}^{K-1} \sum_{c} X[b, o s + k, c]\,
        W[k, c, d] + \beta[d]

    .. math::
        \text{backward\_update\_gradient:}\quad
        \nabla_W L[k, c, d] \mathrel{+}= \sum_{b, o} X[b, o s + k, c]\, \delta[b, o, d]

        \nabla_\beta L[d] \mathrel{+}= \sum_{b, o} \delta[b, o, d]

    .. math::
        \text{backward\_delta:}\quad \frac{\partial L}{\partial X}[b, t, c] =
        \sum_{(o, k):\, o s + k = t} \sum_d \delta[b, o, d]\, W[k, c, d]

    (a transposed convolution: overlapping windows add up).

    Parameters
    ----------
    k_size : int
        Kernel size :math:`K` (taps per window).
    chan_in : int
        Input channels :math:`C`.
    chan_out : int
        Output channels :math:`D`.
    stride : int, default 1
        Step :math:`s` between windows.
    padding : int, pair, ``"same"`` or ``"valid"``, default 0
        Zeros added to the input first: :math:`p` at both ends, ``(before, after)``,
        none, or ``"same"`` (stride 1; output length = input length). :math:`X` in the
        formulas is the padded input; ``backward_delta`` returns the gradient of the
        unpadded one.
    bias : bool, default False
        Add a learnable :math:`\beta` of shape ``(chan_out,)``.
    init_type : str, default ``"xavier_normal"``
        fan_in = k_size * chan_in, fan_out = k_size * chan_out.

    Shapes
    ------
    input ``(batch, length, chan_in)``; output
    ``(batch, (length + p_0 + p_1 - k_size) // stride + 1, chan_out)``; ``weight``
    ``(k_size, chan_in, chan_out)``; ``bias`` ``(chan_out,)``.

    Examples
    --------
    >>> import nnx, numpy as np
    >>> conv = nnx.Conv1D(3, 1, 32, stride=1)
    >>> conv(nnx.asarray(np.zeros((8, 256, 1)))).shape
    (8, 254, 32)
    >>> nnx.Conv1D(3, 1, 4, padding="same")(nnx.asarray(np.zeros((8, 256, 1)))).shape
    (8, 256, 4)
    """

    _fresh_gradients = True  # every gradient write goes through accumulate_gradient

    def __init__(
        self,
        k_size: int,
        chan_in: int,
        chan_out: int,
        stride: int = 1,
        bias: bool = False,
        init_type: InitType = "xavier_normal",
        padding: Padding = 0,
    ) -> None:
        super().__init__()
        owner = f"Conv1D({k_size!r}, {chan_in!r}, {chan_out!r}, stride={stride!r})"
        self._init_geometry(owner, k_size, stride)
        self.pads = resolve_padding(owner, padding, (self.k_size,), (self.stride,), "ends")
        self.padding = padding_config(padding)
        check_positive_int(owner, "chan_in", chan_in)
        check_positive_int(owner, "chan_out", chan_out)
        init.check_init_type(owner, init_type)
        self.chan_in, self.chan_out = int(chan_in), int(chan_out)
        self.bias, self.init_type = bool(bias), init_type
        fan_in, fan_out = self.k_size * self.chan_in, self.k_size * self.chan_out
        shape = (self.k_size, self.chan_in, self.chan_out)
        self._register("weight", init.parameter(shape, init_type, fan_in, fan_out))
        if self.bias:
            self._register(
                "bias",
                init.parameter((self.chan_out,), init.bias_init_type(init_type), fan_in, fan_out),
            )

    @staticmethod
    def parameter_shapes(
        k_size: int, chan_in: int, chan_out: int, bias: bool = False, **_: Any
    ) -> dict[str, tuple[int, ...]]:
        """Shapes of the parameters for these constructor arguments (nothing allocated)."""
        shapes = {"weight": (int(k_size), int(chan_in), int(chan_out))}
        if bias:
            shapes["bias"] = (int(chan_out),)
        return shapes

    def get_config(self) -> dict[str, Any]:
        return {
            "k_size": self.k_size,
            "chan_in": self.chan_in,
            "chan_out": self.chan_out,
            "stride": self.stride,
            "padding": self.padding,
            "bias": self.bias,
            "init_type": self.init_type,
        }

    def extra_repr(self) -> str:
        pad = f", padding={self.padding!r}" if self.padding != 0 else ""
        return (
            f"{self.k_size}, {self.chan_in}, {self.chan_out}, stride={self.stride}{pad}, "
            f"bias={self.bias}"
        )

    def _cols(self, xp: Any, X: Array, out_length: int) -> Array:
        """im2col: the ``(batch * out_length, k_size * chan_in)`` matrix of windows.

        Rows are laid out tap-major (``k * chan_in + c``), so that each row of a
        stride-1 window is one contiguous run of the input (a fast copy) and the weight
        ``(k_size, chan_in, chan_out)`` reshapes to ``(k_size * chan_in, chan_out)``
        without a permutation. (Channel-major rows measured 1.5-2x slower to build.)
        """
        windows = backends.sliding_window(pad_zeros(X, self.pads), self.k_size, self.stride)
        windows = xp.permute_dims(windows, (0, 1, 3, 2))  # (B, O, K, C), still a view
        return xp.reshape(windows, (X.shape[0] * out_length, self.k_size * self.chan_in))

    def forward(self, X: Array) -> Array:
        W = self._parameters["weight"]
        key = X
        X, out_length = self._check_x(X, self.chan_in, like=W)
        xp = namespace(X)
        cols = self._cols(xp, X, out_length)
        out = xp.matmul(cols, xp.reshape(W, (self.k_size * self.chan_in, self.chan_out)))
        if self.bias:
            out += self._parameters["bias"]
        # the backward pass on this very input reuses the checked windows (not if cast)
        self._cache_key, self._cache = (key if key is X else None), cols
        return xp.reshape(out, (X.shape[0], out_length, self.chan_out))

    def _check_backward(self, input: Array, delta: Array) -> tuple[Array, Array, int, bool]:
        """``(input, delta, out_length, cached)``: ``input`` checked unless the last
        forward checked it (``cached``), ``delta`` checked; both cast to W's dtype."""
        cached = input is self._cache_key
        if not cached:
            input, _ = self._check_x(input, self.chan_in, like=self._parameters["weight"])
        delta, out_length = self._check_delta(input, delta, self.chan_out)
        return input, delta, out_length, cached

    def backward_update_gradient(self, input: Array, delta: Array) -> None:
        input, delta, out_length, cached = self._check_backward(input, delta)
        xp = namespace(input)
        batch = input.shape[0]
        cols = self._cache if cached else self._cols(xp, input, out_length)
        d2 = xp.reshape(delta, (batch * out_length, self.chan_out))
        grad = xp.matmul(mT(cols), d2)
        self.accumulate_gradient(
            "weight", xp.reshape(grad, (self.k_size, self.chan_in, self.chan_out))
        )
        if self.bias:
            self.accumulate_gradient("bias", xp.sum(d2, axis=0))

    def backward_delta(self, input: Array, delta: Array) -> Array:
        input, delta, out_length, _ = self._check_backward(input, delta)
        W = self._parameters["weight"]
        xp = namespace(input)
        batch, K, s, C = input.shape[0], self.k_size, self.stride, self.chan_in
        ((lo, hi),) = self.pads
        padded = (batch, input.shape[1] + lo + hi, C)
        d2 = xp.reshape(delta, (batch * out_length, self.chan_out))  # one 2-D GEMM per call
        if s == K:  # back-to-back windows: tap k of window o is position o * K + k
            # (B*O, D) @ (D, K*C): the gradient of every window tap at once, in place
            W_t = xp.reshape(xp.permute_dims(W, (2, 0, 1)), (self.chan_out, K * C))
            taps = xp.reshape(xp.matmul(d2, W_t), (batch, out_length * K, C))
            if out_length * K == padded[1]:
                return unpad(taps, tuple(input.shape), self.pads)
            dX = xp.zeros(padded, dtype=input.dtype, device=device_of(input))
            dX = backends.set_at(dX, (slice(None), slice(0, out_length * K), ...), taps)
            return unpad(dX, tuple(input.shape), self.pads)
        # Overlapping (or gapped) windows: one GEMM per tap added into its positions.
        # Measured faster than one (B*O, K*C) GEMM followed by K strided adds, which
        # writes and re-reads a K-times larger intermediate.
        dX = xp.zeros(padded, dtype=input.dtype, device=device_of(input))
        for k in range(K):
            W_k = W[k, ...]  # (C, D)
            tap = xp.matmul(d2, mT(W_k))
            dX = backends.add_at(
                dX, _taps(k, s, out_length), xp.reshape(tap, (batch, out_length, C))
            )
        return unpad(dX, tuple(input.shape), self.pads)


class MaxPool1D(_Windowed):
    r"""Max over each window, per channel.

    .. math::
        \text{forward:}\quad Z[b, o, c] = \max_{0 \le k < K} X[b, o s + k, c]

    .. math::
        \text{backward\_delta:}\quad \frac{\partial L}{\partial X}[b, t, c] =
        \sum_{(o, k):\, o s + k = t} \delta[b, o, c]\,
        \mathbb{1}\big[k = k^*(b, o, c)\big]

    where :math:`k^*` is the *first* tap reaching the maximum (PyTorch's choice for
    ties); overlapping windows add up. No parameters: ``backward_update_gradient`` is a
    no-op.

    The maximum is computed tap by tap (``K - 1`` element-wise ``maximum`` calls on
    strided slices), which measured far faster than an ``argmax`` over the window axis.

    Shapes: ``(batch, length, chan)`` -> ``(batch, (length - k_size) // stride + 1, chan)``.

    >>> import nnx
    >>> nnx.MaxPool1D(2, 2)(nnx.asarray([[[1.0], [3.0], [2.0], [0.0]]]))[..., 0]
    array([[3., 2.]], dtype=float32)
    """

    def __init__(self, k_size: int, stride: int = 1) -> None:
        super().__init__()
        self._init_geometry(f"MaxPool1D({k_size!r}, {stride!r})", k_size, stride)

    def get_config(self) -> dict[str, Any]:
        return {"k_size": self.k_size, "stride": self.stride}

    def forward(self, X: Array) -> Array:
        _, out_length = self._check_x(X, None)
        xp = namespace(X)
        out = X[:, _tap(0, self.stride, out_length), :]
        if self.k_size == 1:  # a view of the input: the output is the caller's own array
            out = xp.asarray(out, copy=True)
        for k in range(1, self.k_size):
            out = xp.maximum(out, X[:, _tap(k, self.stride, out_length), :])
        self._cache_key, self._cache = X, out
        return out

    def backward_delta(self, input: Array, delta: Array) -> Array:
        self._check_x(input, None)
        delta, out_length = self._check_delta(input, delta)
        xp = namespace(input)
        out = self._cache if self._cache_key is input else self.forward(input)
        K, s = self.k_size, self.stride
        batch, length, chan = input.shape
        # Tap k receives delta where it is the first tap equal to the window's maximum.
        # Masks are applied by multiplying with a 0/1 float array: NumPy's ``where``
        # with an irregular mask measured ~20x slower. The last tap gets what no earlier
        # tap claimed, ``delta - sum(earlier taps)`` (exact: at most one term is nonzero).
        taps = []
        claimed = None
        for k in range(K - 1):
            eq = input[:, _tap(k, s, out_length), :] == out
            hit = eq if claimed is None else xp.logical_and(eq, xp.logical_not(claimed))
            taps.append(delta * xp.astype(hit, delta.dtype))
            claimed = eq if claimed is None else xp.logical_or(claimed, eq)
        rest = delta
        for t in taps:
            rest = rest - t
        taps.append(rest)
        if s == K:  # back-to-back windows: interleave the taps, no zeros and no scatter
            dX = xp.reshape(xp.stack(taps, axis=2), (batch, out_length * K, chan))
            if out_length * K == length:
                return dX
            tail = xp.zeros(
                (batch, length - out_length * K, chan), dtype=input.dtype, device=device_of(input)
            )
            return xp.concat([dX, tail], axis=1)
        dX = xp.zeros(input.shape, dtype=input.dtype, device=device_of(input))
        for k, t in enumerate(taps):
            dX = backends.add_at(dX, _taps(k, s, out_length), t)
        return dX


class AvgPool1D(_Windowed):
    r"""Mean over each window, per channel.

    .. math::
        \text{forward:}\quad Z[b, o, c] = \frac{1}{K} \sum_{k=0}^{K-1} X[b, o s + k, c]

    .. math::
        \text{backward\_delta:}\quad \frac{\partial L}{\partial X}[b, t, c] =
        \frac{1}{K} \sum_{(o, k):\, o s + k = t} \delta[b, o, c]

    No parameters: ``backward_update_gradient`` is a no-op.

    Shapes: ``(batch, length, chan)`` -> ``(batch, (length - k_size) // stride + 1, chan)``.

    >>> import nnx
    >>> nnx.AvgPool1D(2, 2)(nnx.asarray([[[1.0], [3.0], [2.0], [0.0]]]))[..., 0]
    array([[2., 1.]], dtype=float32)
    """

    def __init__(self, k_size: int, stride: int = 1) -> None:
        super().__init__()
        self._init_geometry(f"AvgPool1D({k_size!r}, {stride!r})", k_size, stride)

    def get_config(self) -> dict[str, Any]:
        return {"k_size": self.k_size, "stride": self.stride}

    def forward(self, X: Array) -> Array:
        _, out_length = self._check_x(X, None)
        out = X[:, _tap(0, self.stride, out_length), :]
        for k in range(1, self.k_size):
            out = out + X[:, _tap(k, self.stride, out_length), :]
        return out / self.k_size

    def backward_delta(self, input: Array, delta: Array) -> Array:
        self._check_x(input, None)
        delta, out_length = self._check_delta(input, delta)
        xp = namespace(input)
        share = delta / self.k_size
        dX = xp.zeros(input.shape, dtype=input.dtype, device=device_of(input))
        for k in range(self.k_size):
            dX = backends.add_at(dX, _taps(k, self.stride, out_length), share)
        return dX


class Flatten(Module):
    r"""Row-major flattening of every axis after the batch axis, for inputs of any rank.

    .. math::
        \text{forward:}\quad Z[b, \operatorname{flat}(i_1, \dots, i_r)] =
        X[b, i_1, \dots, i_r] \qquad
        \text{backward\_delta:}\quad \frac{\partial L}{\partial X}[b, i_1, \dots, i_r]
        = \delta[b, \operatorname{flat}(i_1, \dots, i_r)]

    with :math:`\operatorname{flat}` the row-major (C order) index, e.g.
    :math:`l \cdot C + c` for ``(batch, length, chan)`` and :math:`(h W + w) C + c` for
    ``(batch, height, width, chan)``. No parameters.

    Shapes: ``(batch, d_1, ..., d_r)`` -> ``(batch, d_1 * ... * d_r)`` (:math:`r \ge 1`).

    >>> import nnx, numpy as np
    >>> nnx.Flatten()(nnx.asarray(np.zeros((2, 5, 3)))).shape
    (2, 15)
    >>> nnx.Flatten()(nnx.asarray(np.zeros((2, 4, 4, 16)))).shape
    (2, 256)
    """

    def _width(self, X: Array) -> int:
        if len(getattr(X, "shape", ())) < 2:
            self._check_input(X, ("batch", "features"))  # raises, says why
        self._check_input(X, ("batch",) + ("?",) * (len(X.shape) - 1))
        width = 1
        for n in X.shape[1:]:
            width *= n
        return width

    def forward(self, X: Array) -> Array:
        # explicit width: reshape (0, -1) is ambiguous for an empty batch
        width = self._width(X)
        return namespace(X).reshape(X, (X.shape[0], width))

    def backward_delta(self, input: Array, delta: Array) -> Array:
        width = self._width(input)
        delta = self._check_input(delta, (input.shape[0], width), "delta", like=input)
        return namespace(input).reshape(delta, tuple(input.shape))
