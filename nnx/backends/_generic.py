"""Backend-independent pieces written only with Array API standard functions."""

from __future__ import annotations

from typing import Any


def gather_windows(xp: Any, x: Any, k_size: int, stride: int) -> Any:
    """Sliding windows by an index gather, for namespaces without strided views.

    Builds flat indices ``o * stride + k`` of shape ``(out_length * k_size,)``, takes
    them along the length axis, and reshapes ``(batch, out_length, k_size, channels)``
    before moving the tap axis last. Returns a new array of shape
    ``(batch, out_length, channels, k_size)``.
    """
    batch, length, channels = x.shape
    out_length = (length - k_size) // stride + 1
    device = getattr(x, "device", None)
    starts = xp.arange(out_length, device=device) * stride
    taps = xp.arange(k_size, device=device)
    idx = xp.reshape(starts[:, None] + taps[None, :], (-1,))
    gathered = xp.take(x, idx, axis=1)  # (batch, out_length * k_size, channels)
    gathered = xp.reshape(gathered, (batch, out_length, k_size, channels))
    return xp.permute_dims(gathered, (0, 1, 3, 2))


def gather_windows_2d(xp: Any, x: Any, k_size: tuple[int, int], stride: tuple[int, int]) -> Any:
    """2-D sliding windows by one index gather, for namespaces without strided views.

    The image axes are merged (``(batch, height * width, channels)``, a free reshape of a
    row-major array) and the flat pixel indices ``(p s_h + i) W + q s_w + j`` of every
    window ``(p, q)`` and tap ``(i, j)`` are taken along them at once. Returns a new array
    of shape ``(batch, out_h, out_w, channels, k_h, k_w)``.
    """
    batch, height, width, channels = x.shape
    (kh, kw), (s_h, s_w) = k_size, stride
    out_h, out_w = (height - kh) // s_h + 1, (width - kw) // s_w + 1
    device = getattr(x, "device", None)
    rows = xp.arange(out_h, device=device) * s_h
    cols = xp.arange(out_w, device=device) * s_w
    ti = xp.arange(kh, device=device)
    tj = xp.arange(kw, device=device)
    # index[p, q, i, j] = (p s_h + i) * width + (q s_w + j)
    idx = (rows[:, None, None, None] + ti[None, None, :, None]) * width + (
        cols[None, :, None, None] + tj[None, None, None, :]
    )
    flat = xp.reshape(x, (batch, height * width, channels))
    gathered = xp.take(flat, xp.reshape(idx, (-1,)), axis=1)
    gathered = xp.reshape(gathered, (batch, out_h, out_w, kh, kw, channels))
    return xp.permute_dims(gathered, (0, 1, 2, 5, 3, 4))
