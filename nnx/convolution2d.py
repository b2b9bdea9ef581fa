r"""2-D convolution and pooling, channels last: ``(batch, height, width, chan)``.

Every module here reads its (zero-padded, for Conv2D) input :math:`X` through the
windows :math:`V[b, p, q, c, i, j] = X[b, p s_h + i, q s_w + j, c]` of shape
``(batch, out_h, out_w, chan, k_h, k_w)``, with

.. math::
    \text{out\_h} = \Big\lfloor \frac{H + p_{top} + p_{bottom} - k_h}{s_h} \Big\rfloor + 1,
    \qquad
    \text{out\_w} = \Big\lfloor \frac{W + p_{left} + p_{right} - k_w}{s_w} \Big\rfloor + 1,

built by :func:`nnx.backends.sliding_window_2d` (a strided view on NumPy and CuPy, two
``unfold`` on PyTorch, one gather elsewhere). Conv2D turns them into the im2col matrix
(one copy) and multiplies it with the weight (one GEMM). Backward passes add the
gradient of each kernel tap :math:`(i, j)` into the strided slice of the positions it
read, ``dX[:, i : i + s_h (P-1) + 1 : s_h, j : j + s_w (Q-1) + 1 : s_w] += ...``, which
accumulates overlapping windows on every backend.

``k_size``, ``stride`` (and Conv2D's ``padding``) are an int (both axes) or a pair
``(rows, columns)``.
"""

from __future__ import annotations

from typing import Any

from . import backends, init
from .convolution import (
    Padding,
    Pads,
    int_tuple,
    pad_zeros,
    padding_config,
    resolve_padding,
    unpad,
)
from .init import InitType
from .module import Array, Module, check_positive_int, device_of, mT, namespace

__all__ = ["AvgPool2D", "Conv2D", "MaxPool2D"]


def _taps(k_size: tuple[int, int], stride: tuple[int, int], out: tuple[int, int]) -> list:
    """Index of tap ``(i, j)`` of every window, for the taps in row-major order."""
    (kh, kw), (sh, sw), (oh, ow) = k_size, stride, out
    return [
        (slice(None), slice(i, i + sh * (oh - 1) + 1, sh), slice(j, j + sw * (ow - 1) + 1, sw), ...)
        for i in range(kh)
        for j in range(kw)
    ]


def _pair(value: Any) -> Any:
    """A pair as given by the user, as a JSON-friendly value (int or list)."""
    return list(value) if isinstance(value, (tuple, list)) else int(value)


class _Windowed2D(Module):
    """Shared geometry and checks of Conv2D and the 2-D pools."""

    k_size: tuple[int, int]
    stride: tuple[int, int]
    pads: Pads = ((0, 0), (0, 0))

    def _init_geometry(self, owner: str, k_size: Any, stride: Any) -> None:
        self.k_size = int_tuple(owner, "k_size", k_size, 2)  # type: ignore[assignment]
        self.stride = int_tuple(owner, "stride", stride, 2)  # type: ignore[assignment]

    def padded_shape(self, shape: tuple[int, ...]) -> tuple[int, int, int, int]:
        """Shape of the input after zero padding."""
        (t, b), (left, r) = self.pads
        return (shape[0], shape[1] + t + b, shape[2] + left + r, shape[3])

    def out_shape(self, height: int, width: int) -> tuple[int, int]:
        """``(out_h, out_w)`` for an input of ``height`` x ``width`` pixels."""
        _, h, w, _ = self.padded_shape((0, height, width, 0))
        (kh, kw), (sh, sw) = self.k_size, self.stride
        return (h - kh) // sh + 1, (w - kw) // sw + 1

    def _check_x(self, X: Array, chan: Any, like: Array = None) -> tuple[Array, tuple[int, int]]:
        """``(X, (out_h, out_w))``: ``X`` checked, cast to ``like``'s float dtype if needed."""
        X = self._check_input(X, ("batch", "height", "width", chan), like=like)
        _, h, w, _ = self.padded_shape(tuple(X.shape))
        if h < self.k_size[0] or w < self.k_size[1]:
            padded = f" ({h}x{w} padded)" if any(a or b for a, b in self.pads) else ""
            raise ValueError(
                f"{self.name}: the kernel {self.k_size[0]}x{self.k_size[1]} is larger than "
                f"the input {X.shape[1]}x{X.shape[2]}{padded} (input shape {tuple(X.shape)})"
            )
        return X, self.out_shape(X.shape[1], X.shape[2])

    def _check_delta(
        self, input: Array, delta: Array, chan_out: int | None = None
    ) -> tuple[Array, tuple[int, int]]:
        """``(delta, (out_h, out_w))``: ``delta`` checked against the output shape for
        ``input`` (already checked), cast to ``input``'s float dtype if needed."""
        oh, ow = self.out_shape(input.shape[1], input.shape[2])
        chan = input.shape[3] if chan_out is None else chan_out
        delta = self._check_input(delta, (input.shape[0], oh, ow, chan), "delta", like=input)
        return delta, (oh, ow)

    def _scatter(self, xp: Any, grads: list[Array], input: Array, out: tuple[int, int]) -> Array:
        """Sum the per-tap gradients ``(B, P, Q, C)`` (row-major taps) into the input's
        shape."""
        if self.stride == self.k_size:  # back-to-back windows: interleave, no zeros or adds
            kh, kw = self.k_size
            stacked = xp.stack(grads, axis=3)  # (B, P, Q, kh*kw, C)
            taps = xp.reshape(stacked, (input.shape[0], out[0], out[1], kh, kw, input.shape[3]))
            return self._interleave(xp, taps, input, out)
        dX = xp.zeros(input.shape, dtype=input.dtype, device=device_of(input))
        for g, index in zip(grads, _taps(self.k_size, self.stride, out), strict=True):
            dX = backends.add_at(dX, index, g)
        return dX

    def _interleave(self, xp: Any, taps: Array, input: Array, out: tuple[int, int]) -> Array:
        """Gradient of the padded input from ``taps`` ``(B, P, Q, k_h, k_w, C)`` when
        windows sit back to back (stride = kernel): tap ``(i, j)`` of window ``(p, q)`` is
        pixel ``(p k_h + i, q k_w + j)``, so a permutation and a reshape place them all."""
        (kh, kw), (oh, ow) = self.k_size, out
        batch, chan = input.shape[0], taps.shape[-1]
        grid = xp.reshape(
            xp.permute_dims(taps, (0, 1, 3, 2, 4, 5)), (batch, oh * kh, ow * kw, chan)
        )
        shape = self.padded_shape(tuple(input.shape))
        if (oh * kh, ow * kw) == shape[1:3]:
            return grid
        dX = xp.zeros(shape, dtype=input.dtype, device=device_of(input))
        return backends.set_at(dX, (slice(None), slice(0, oh * kh), slice(0, ow * kw), ...), grid)


class Conv2D(_Windowed2D):
    r"""2-D convolution (cross-correlation, as PyTorch's ``Conv2d``), channels last.

    .. math::
        \text{forward:}\quad Z[b, p, q, d] = \sum_{i=0}^{k_h-1} \sum_{j=0}^{k_w-1}
        \sum_{c} X[b, p s_h + i, q s_w + j, c]\, W[i, j, c, d] + \beta[d]

    .. math::
        \text{backward\_update\_gradient:}\quad
        \nabla_W L[i, j, c, d] \mathrel{+}= \sum_{b, p, q}
        X[b, p s_h + i, q s_w + j, c]\, \delta[b, p, q, d], \qquad
        \nabla_\beta L[d] \mathrel{+}= \sum_{b, p, q} \delta[b, p, q, d]

    .. math::
        \text{backward\_delta:}\quad \frac{\partial L}{\partial X}[b, y, x, c] =
        \sum_{\substack{(p, i):\, p s_h + i = y \\ (q, j):\, q s_w + j = x}} \sum_d
        \delta[b, p, q, d]\, W[i, j, c, d]

    (a transposed convolution: overlapping windows add up). :math:`X` is the
    zero-padded input; ``backward_delta`` returns the gradient of the unpadded one.

    As a matrix product (im2col): the windows form
    :math:`V \in \mathbb{R}^{(B P Q) \times (k_h k_w C)}` (columns tap-major), the
    weight :math:`W \in \mathbb{R}^{(k_h k_w C) \times D}`, and
    :math:`Z = V W + \mathbf{1}\beta`, :math:`\nabla_W L = V^\top \delta`.

    Parameters
    ----------
    k_size : int or (int, int)
        Kernel :math:`(k_h, k_w)`.
    chan_in, chan_out : int
        Input channels :math:`C`, output channels :math:`D`.
    stride : int or (int, int), default 1
        Steps :math:`(s_h, s_w)` between windows.
    padding : int, (int, int), ``"same"`` or ``"valid"``, default 0
        Zeros around the image: :math:`p` rows above and below (and columns left and
        right); a pair ``(rows, columns)``; none; or ``"same"`` (stride 1: the output
        keeps the input's height and width; an odd total puts the extra zero after).
    bias : bool, default False
        Add a learnable :math:`\beta` of shape ``(chan_out,)``.
    init_type : str, default ``"xavier_normal"``
        fan_in :math:`= k_h k_w C`, fan_out :math:`= k_h k_w D` (PyTorch's fans).

    Shapes
    ------
    input ``(batch, height, width, chan_in)``; output ``(batch, out_h, out_w, chan_out)``;
    ``weight`` ``(k_h, k_w, chan_in, chan_out)``; ``bias`` ``(chan_out,)``.

    Examples
    --------
    >>> import nnx, numpy as np
    >>> conv = nnx.Conv2D(5, 1, 6)
    >>> conv(nnx.asarray(np.zeros((8, 28, 28, 1)))).shape
    (8, 24, 24, 6)
    >>> nnx.Conv2D(3, 6, 16, padding="same")(nnx.asarray(np.zeros((8, 12, 12, 6)))).shape
    (8, 12, 12, 16)
    """

    _fresh_gradients = True  # every gradient write goes through accumulate_gradient

    def __init__(
        self,
        k_size: int | tuple[int, int],
        chan_in: int,
        chan_out: int,
        stride: int | tuple[int, int] = 1,
        padding: Padding = 0,
        bias: bool = False,
        init_type: InitType = "xavier_normal",
    ) -> None:
        super().__init__()
        owner = f"Conv2D({k_size!r}, {chan_in!r}, {chan_out!r}, stride={stride!r})"
        self._init_geometry(owner, k_size, stride)
        self.pads = resolve_padding(owner, padding, self.k_size, self.stride, "axes")
        check_positive_int(owner, "chan_in", chan_in)
        check_positive_int(owner, "chan_out", chan_out)
        init.check_init_type(owner, init_type)
        self.chan_in, self.chan_out = int(chan_in), int(chan_out)
        self.padding = padding_config(padding)
        self._config_k, self._config_s = _pair(k_size), _pair(stride)
        self.bias, self.init_type = bool(bias), init_type
        #: whether the im2col matrix is built transposed (see ``_cols``)
        self._transposed_cols = self.chan_in < 4
        kh, kw = self.k_size
        fan_in, fan_out = kh * kw * self.chan_in, kh * kw * self.chan_out
        shape = (kh, kw, self.chan_in, self.chan_out)
        self._register("weight", init.parameter(shape, init_type, fan_in, fan_out))
        if self.bias:
            self._register(
                "bias",
                init.parameter((self.chan_out,), init.bias_init_type(init_type), fan_in, fan_out),
            )

    @staticmethod
    def parameter_shapes(
        k_size: Any, chan_in: int, chan_out: int, bias: bool = False, **_: Any
    ) -> dict[str, tuple[int, ...]]:
        """Shapes of the parameters for these constructor arguments (nothing allocated)."""
        kh, kw = int_tuple("Conv2D", "k_size", k_size, 2)
        shapes = {"weight": (kh, kw, int(chan_in), int(chan_out))}
        if bias:
            shapes["bias"] = (int(chan_out),)
        return shapes

    def get_config(self) -> dict[str, Any]:
        return {
            "k_size": self._config_k,
            "chan_in": self.chan_in,
            "chan_out": self.chan_out,
            "stride": self._config_s,
            "padding": self.padding,
            "bias": self.bias,
            "init_type": self.init_type,
        }

    def extra_repr(self) -> str:
        pad = f", padding={self.padding!r}" if self.padding != 0 else ""
        return (
            f"{self._config_k!r}, {self.chan_in}, {self.chan_out}, "
            f"stride={self._config_s!r}{pad}, bias={self.bias}"
        )

    def _cols(self, xp: Any, X: Array, out: tuple[int, int]) -> Array:
        """im2col: the ``(batch * out_h * out_w, k_h * k_w * chan_in)`` window matrix
        :math:`V`, or its transpose :math:`V^\top` when :attr:`_transposed_cols`.

        Columns are tap-major (``(i k_w + j) C + c``): the weight ``(k_h, k_w, C, D)``
        reshapes to ``(k_h k_w C, D)`` without a permutation, and a window row is
        ``k_h`` contiguous runs of ``k_w C`` values of the input (stride 1). With few
        input channels those runs are short, and the copy is faster the other way
        round: rows of :math:`V^\top` are runs along the image (measured 2-4x faster
        to build for 1 channel, slower for 6).
        """
        windows = backends.sliding_window_2d(pad_zeros(X, self.pads), self.k_size, self.stride)
        kh, kw = self.k_size
        rows, taps = X.shape[0] * out[0] * out[1], kh * kw * self.chan_in
        if self._transposed_cols:
            windows = xp.permute_dims(windows, (4, 5, 3, 0, 1, 2))  # (kh, kw, C, B, P, Q)
            return xp.reshape(windows, (taps, rows))
        windows = xp.permute_dims(windows, (0, 1, 2, 4, 5, 3))  # (B, P, Q, kh, kw, C), a view
        return xp.reshape(windows, (rows, taps))

    def _weight_matrix(self, xp: Any) -> Array:
        kh, kw = self.k_size
        return xp.reshape(self._parameters["weight"], (kh * kw * self.chan_in, self.chan_out))

    def forward(self, X: Array) -> Array:
        W = self._parameters["weight"]
        given = X
        X, out = self._check_x(X, self.chan_in, like=W)
        xp = namespace(X)
        cols = self._cols(xp, X, out)
        V = mT(cols) if self._transposed_cols else cols
        Z = xp.matmul(V, self._weight_matrix(xp))
        if self.bias:
            Z += self._parameters["bias"]
        # the backward pass on this very input reuses the checked windows (not if cast)
        self._cache_key, self._cache = (given if given is X else None), cols
        return xp.reshape(Z, (X.shape[0], out[0], out[1], self.chan_out))

    def _check_backward(
        self, input: Array, delta: Array
    ) -> tuple[Array, Array, tuple[int, int], bool]:
        """``(input, delta, (out_h, out_w), cached)``: ``input`` checked unless the last
        forward checked it (``cached``), ``delta`` checked; both cast to W's dtype."""
        cached = input is self._cache_key
        if not cached:
            input, _ = self._check_x(input, self.chan_in, like=self._parameters["weight"])
        delta, out = self._check_delta(input, delta, self.chan_out)
        return input, delta, out, cached

    def backward_update_gradient(self, input: Array, delta: Array) -> None:
        input, delta, out, cached = self._check_backward(input, delta)
        xp = namespace(input)
        cols = self._cache if cached else self._cols(xp, input, out)
        d2 = xp.reshape(delta, (input.shape[0] * out[0] * out[1], self.chan_out))
        grad = xp.matmul(cols if self._transposed_cols else mT(cols), d2)  # Vᵀ δ
        self.accumulate_gradient(
            "weight", xp.reshape(grad, tuple(self._parameters["weight"].shape))
        )
        if self.bias:
            self.accumulate_gradient("bias", xp.sum(d2, axis=0))

    def backward_delta(self, input: Array, delta: Array) -> Array:
        input, delta, out, _ = self._check_backward(input, delta)
        xp = namespace(input)
        (kh, kw), C, D = self.k_size, self.chan_in, self.chan_out
        batch = input.shape[0]
        d2 = xp.reshape(delta, (batch * out[0] * out[1], D))
        if self.stride == self.k_size:  # back-to-back windows: no overlap, no scatter
            taps = xp.matmul(d2, mT(self._weight_matrix(xp)))  # (B*P*Q, kh*kw*C)
            taps = xp.reshape(taps, (batch, out[0], out[1], kh, kw, C))
            return unpad(self._interleave(xp, taps, input, out), tuple(input.shape), self.pads)
        # Overlapping (or gapped) windows: one GEMM per tap, added into its positions.
        W = self._parameters["weight"]
        dX = xp.zeros(
            self.padded_shape(tuple(input.shape)), dtype=input.dtype, device=device_of(input)
        )
        for t, index in enumerate(_taps(self.k_size, self.stride, out)):
            tap = xp.matmul(d2, mT(W[t // kw, t % kw, ...]))  # (B*P*Q, C)
            dX = backends.add_at(dX, index, xp.reshape(tap, (batch, out[0], out[1], C)))
        return unpad(dX, tuple(input.shape), self.pads)


class _Pool2D(_Windowed2D):
    def __init__(self, k_size: int | tuple[int, int], stride: Any = None) -> None:
        super().__init__()
        owner = f"{type(self).__name__}({k_size!r}, {stride!r})"
        self._init_geometry(owner, k_size, k_size if stride is None else stride)
        self._config = {
            "k_size": _pair(k_size),
            "stride": None if stride is None else _pair(stride),
        }

    def get_config(self) -> dict[str, Any]:
        return dict(self._config)


class MaxPool2D(_Pool2D):
    r"""Max over each ``k_h`` x ``k_w`` window, per channel.

    .. math::
        \text{forward:}\quad Z[b, p, q, c] = \max_{i < k_h,\ j < k_w}
        X[b, p s_h + i, q s_w + j, c]

    .. math::
        \text{backward\_delta:}\quad \frac{\partial L}{\partial X}[b, y, x, c] =
        \sum_{\substack{(p, i):\, p s_h + i = y \\ (q, j):\, q s_w + j = x}}
        \delta[b, p, q, c]\, \mathbb{1}\big[(i, j) = (i, j)^*(b, p, q, c)\big]

    where :math:`(i, j)^*` is the *first* tap, in row-major order, reaching the maximum
    (PyTorch's choice for ties); overlapping windows add up. No parameters.

    The maximum is taken tap by tap (``k_h k_w - 1`` element-wise ``maximum`` of strided
    slices), no ``argmax`` over a window axis (far slower, as for
    :class:`~nnx.MaxPool1D`).

    Parameters
    ----------
    k_size : int or (int, int)
        Window :math:`(k_h, k_w)`.
    stride : int, (int, int) or None, default None
        Steps :math:`(s_h, s_w)`; ``None`` means ``k_size`` (as in PyTorch).

    Shapes
    ------
    ``(batch, height, width, chan)`` -> ``(batch, out_h, out_w, chan)``.

    Examples
    --------
    >>> import nnx, numpy as np
    >>> x = nnx.asarray(np.arange(16.0).reshape(1, 4, 4, 1))
    >>> nnx.MaxPool2D(2)(x)[0, :, :, 0]
    array([[ 5.,  7.],
           [13., 15.]], dtype=float32)
    """

    def forward(self, X: Array) -> Array:
        _, out = self._check_x(X, None)
        xp = namespace(X)
        taps = _taps(self.k_size, self.stride, out)
        Z = X[taps[0]]
        if len(taps) == 1:  # a view of the input: the output is the caller's own array
            Z = xp.asarray(Z, copy=True)
        for index in taps[1:]:
            Z = xp.maximum(Z, X[index])
        self._cache_key, self._cache = X, Z
        return Z

    def backward_delta(self, input: Array, delta: Array) -> Array:
        _, out = self._check_x(input, None)
        delta, _ = self._check_delta(input, delta)
        xp = namespace(input)
        Z = self._cache if self._cache_key is input else self.forward(input)
        taps = _taps(self.k_size, self.stride, out)
        # Tap t receives delta where it is the first tap equal to the window's maximum;
        # the last tap gets what no earlier tap claimed (exact: one term is nonzero).
        grads, claimed = [], None
        for index in taps[:-1]:
            eq = input[index] == Z
            hit = eq if claimed is None else xp.logical_and(eq, xp.logical_not(claimed))
            grads.append(delta * xp.astype(hit, delta.dtype))
            claimed = eq if claimed is None else xp.logical_or(claimed, eq)
        rest = delta
        for g in grads:
            rest = rest - g
        grads.append(rest)
        return self._scatter(xp, grads, input, out)


class AvgPool2D(_Pool2D):
    r"""Mean over each ``k_h`` x ``k_w`` window, per channel.

    .. math::
        \text{forward:}\quad Z[b, p, q, c] = \frac{1}{k_h k_w} \sum_{i < k_h,\ j < k_w}
        X[b, p s_h + i, q s_w + j, c]

    .. math::
        \text{backward\_delta:}\quad \frac{\partial L}{\partial X}[b, y, x, c] =
        \frac{1}{k_h k_w} \sum_{\substack{(p, i):\, p s_h + i = y \\
        (q, j):\, q s_w + j = x}} \delta[b, p, q, c]

    No parameters. ``stride=None`` means ``k_size``.

    Shapes: ``(batch, height, width, chan)`` -> ``(batch, out_h, out_w, chan)``.

    >>> import nnx, numpy as np
    >>> x = nnx.asarray(np.arange(16.0).reshape(1, 4, 4, 1))
    >>> nnx.AvgPool2D(2)(x)[0, :, :, 0]
    array([[ 2.5,  4.5],
           [10.5, 12.5]], dtype=float32)
    """

    def forward(self, X: Array) -> Array:
        _, out = self._check_x(X, None)
        taps = _taps(self.k_size, self.stride, out)
        Z = X[taps[0]]
        for index in taps[1:]:
            Z = Z + X[index]
        return Z / (self.k_size[0] * self.k_size[1])

    def backward_delta(self, input: Array, delta: Array) -> Array:
        _, out = self._check_x(input, None)
        delta, _ = self._check_delta(input, delta)
        xp = namespace(input)
        share = delta / (self.k_size[0] * self.k_size[1])
        return self._scatter(xp, [share] * (self.k_size[0] * self.k_size[1]), input, out)
