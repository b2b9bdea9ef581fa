r"""Element-wise steps of back-propagation fused into one kernel where a library can.

Each function computes its formula with standard namespace operations, which costs one
kernel launch per operation on a GPU. Where the array's library has a fused kernel for
it (CuPy: an ``ElementwiseKernel``, see ``nnx/backends/_cupy.py``), that one launch is
used instead: the same values, a fraction of the launch overhead that bounds a small
model's step on a GPU (``benchmarks/gpu_profile.py`` measures both).
"""

from __future__ import annotations

from typing import Any

from . import backend_of

__all__ = ["relu_backward", "subtract_scaled_", "tanh_backward"]


def _kernel(x: Any, name: str) -> Any:
    backend = backend_of(x)
    return None if backend is None else backend.fused_kernel(name)


def tanh_backward(y: Any, delta: Any) -> Any:
    r""":math:`\delta \odot (1 - y^2)`, the input gradient of :math:`y = \tanh x`."""
    k = _kernel(y, "tanh_backward")
    return k(y, delta) if k is not None else delta * (1.0 - y * y)


def relu_backward(x: Any, delta: Any, xp: Any) -> Any:
    r""":math:`\delta \odot \mathbb{1}[x > 0]`, the input gradient of :math:`\max(x, 0)`."""
    k = _kernel(x, "relu_backward")
    # a 0/1 float mask: NumPy's ``where`` with an irregular mask measured slower
    return k(x, delta) if k is not None else delta * xp.astype(x > 0, delta.dtype)


def subtract_scaled_(p: Any, a: float, g: Any) -> None:
    r""":math:`p \leftarrow p - a\,g`, in place (``p`` must be writeable)."""
    k = _kernel(p, "subtract_scaled")
    if k is not None:
        k(g, p.dtype.type(a), p)
    else:
        p -= a * g
