"""array-api-strict backend: the reference implementation of the standard.

It has no strided views, no einsum and no integer-array setitem, which is exactly why
it is in the test matrix: code that passes here uses the standard and nothing else.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ._base import Backend
from ._generic import gather_windows, gather_windows_2d


class StrictBackend(Backend):
    name = "array_api_strict"
    module_name = "array_api_strict"
    install_hint = "pip install array-api-strict"

    def _load(self) -> None:
        import array_api_strict as xp

        self.array_type = type(xp.asarray(0))
        self.xp = xp

    def from_numpy(self, a: np.ndarray, device: Any = None) -> Any:
        return self.xp.asarray(np.array(a, copy=True))

    def to_numpy(self, x: Any) -> np.ndarray:
        # DLPack is the standard's way out of a library.
        return np.from_dlpack(x).copy()

    def windows(self, x: Any, k_size: int, stride: int) -> Any:
        return gather_windows(self.xp, x, k_size, stride)

    def windows_2d(self, x: Any, k_size: tuple[int, int], stride: tuple[int, int]) -> Any:
        return gather_windows_2d(self.xp, x, k_size, stride)
