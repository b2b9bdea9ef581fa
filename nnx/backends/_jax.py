"""JAX backend: ``jax.numpy`` (itself an Array API namespace) on the CPU, eager (no jit).

JAX arrays are immutable: ``p -= d`` binds a new array to the local name and ``x[i] =
v`` raises. nnx handles this here and in :class:`nnx.Module`'s parameter API (updates
bind new arrays where ``mutable_arrays`` is false), and with :meth:`add_at`, never with
branches in the layers. ``float64`` needs ``jax_enable_x64``, switched on when nnx is
asked to use JAX (JAX would otherwise give float32 silently), not when it merely meets a
JAX array (``nnx.to_numpy`` of one leaves the user's JAX settings alone).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ._base import Backend
from ._generic import gather_windows


class JaxBackend(Backend):
    name = "jax"
    module_name = "jax"
    array_modules = ("jax", "jaxlib")
    install_hint = 'pip install "jax[cpu]"'
    mutable_arrays = False

    def _load(self) -> None:
        import jax
        import jax.numpy as xp

        self._jax = jax
        self.array_type = jax.Array
        self.xp = xp

    def prepare(self) -> JaxBackend:
        if not self._jax.config.jax_enable_x64:
            self._jax.config.update("jax_enable_x64", True)  # else float64 becomes float32
        return self

    def from_numpy(self, a: np.ndarray, device: Any = None) -> Any:
        return self.xp.asarray(np.array(a, copy=True))

    def to_numpy(self, x: Any) -> np.ndarray:
        return np.array(x, copy=True)

    def windows(self, x: Any, k_size: int, stride: int) -> Any:
        return gather_windows(self.xp, x, k_size, stride)

    def add_at(self, x: Any, index: Any, value: Any) -> Any:
        return x.at[index].add(value)

    def set_at(self, x: Any, index: Any, value: Any) -> Any:
        return x.at[index].set(value)

    def flushes_subnormals(self, dtype: str) -> bool:
        # XLA's CPU kernels run with flush-to-zero: subnormals read as zero in both dtypes
        return True
