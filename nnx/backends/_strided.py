"""Strided sliding windows (1-D and 2-D) shared by NumPy and CuPy (identical ``as_strided`` signatures).

Both libraries express strides in bytes and offer ``lib.stride_tricks.as_strided`` with
the same signature, so a single function builds the window view for both: the NumPy
backend passes ``numpy.lib.stride_tricks.as_strided``, the CuPy backend passes
``cupy.lib.stride_tricks.as_strided``. The tests run the CuPy code path with NumPy's
``as_strided`` to check the stride arithmetic on machines without a GPU.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def strided_windows(as_strided: Callable[..., Any], x: Any, k_size: int, stride: int) -> Any:
    """Return a ``(batch, out_length, channels, k_size)`` view of ``x`` (no copy).

    ``x`` has shape ``(batch, length, channels)`` and byte strides ``(sb, sl, sc)``.
    Window ``o`` starts at position ``o * stride``; tap ``k`` of it is position
    ``o * stride + k``. Hence the view's strides are ``(sb, stride * sl, sc, sl)``:

    >>> import numpy as np
    >>> x = np.arange(8.0).reshape(1, 8, 1)          # strides (64, 8, 8)
    >>> w = strided_windows(np.lib.stride_tricks.as_strided, x, 3, 2)
    >>> w.shape, w.strides
    ((1, 3, 1, 3), (64, 16, 8, 8))
    >>> w[0, :, 0, :]
    array([[0., 1., 2.],
           [2., 3., 4.],
           [4., 5., 6.]])
    """
    batch, length, channels = x.shape
    out_length = (length - k_size) // stride + 1
    sb, sl, sc = x.strides
    return as_strided(
        x, shape=(batch, out_length, channels, k_size), strides=(sb, stride * sl, sc, sl)
    )


def strided_windows_2d(
    as_strided: Callable[..., Any], x: Any, k_size: tuple[int, int], stride: tuple[int, int]
) -> Any:
    """Return a ``(batch, out_h, out_w, channels, k_h, k_w)`` view of ``x`` (no copy).

    ``x`` has shape ``(batch, height, width, channels)`` and byte strides
    ``(sb, sh, sw, sc)``. Tap ``(i, j)`` of window ``(p, q)`` is pixel
    ``(p * s_h + i, q * s_w + j)``, hence the strides
    ``(sb, s_h * sh, s_w * sw, sc, sh, sw)``:

    >>> import numpy as np
    >>> x = np.arange(16.0).reshape(1, 4, 4, 1)
    >>> w = strided_windows_2d(np.lib.stride_tricks.as_strided, x, (2, 2), (2, 2))
    >>> w.shape
    (1, 2, 2, 1, 2, 2)
    >>> w[0, 1, 0, 0]
    array([[ 8.,  9.],
           [12., 13.]])
    """
    batch, height, width, channels = x.shape
    (kh, kw), (s_h, s_w) = k_size, stride
    out_h, out_w = (height - kh) // s_h + 1, (width - kw) // s_w + 1
    sb, sh, sw, sc = x.strides
    return as_strided(
        x,
        shape=(batch, out_h, out_w, channels, kh, kw),
        strides=(sb, s_h * sh, s_w * sw, sc, sh, sw),
    )
