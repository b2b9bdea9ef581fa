"""NumPy backend: the default, CPU only."""

from __future__ import annotations

from typing import Any

import numpy as np

from ._base import Backend
from ._strided import strided_windows


class NumpyBackend(Backend):
    name = "numpy"
    module_name = "numpy"
    install_hint = "pip install numpy"

    def _load(self) -> None:
        import array_api_compat.numpy as xp

        self.array_type = np.ndarray
        self.xp = xp

    def from_numpy(self, a: np.ndarray, device: Any = None) -> np.ndarray:
        return np.array(a, copy=True)

    def to_numpy(self, x: Any) -> np.ndarray:
        return np.asarray(x)

    def windows(self, x: np.ndarray, k_size: int, stride: int) -> np.ndarray:
        return strided_windows(np.lib.stride_tricks.as_strided, x, k_size, stride)
