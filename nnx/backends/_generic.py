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
