"""CuPy backend: NVIDIA GPUs through CUDA."""

from __future__ import annotations

from typing import Any

import numpy as np

from ._base import Backend
from ._strided import strided_windows, strided_windows_2d


class CupyBackend(Backend):
    name = "cupy"
    module_name = "cupy"
    install_hint = "pip install cupy-cuda12x  (or the cupy wheel matching your CUDA)"

    def _load(self) -> None:
        import cupy

        if not cupy.is_available():
            raise RuntimeError(
                "backend 'cupy': CuPy is installed but finds no usable NVIDIA GPU "
                "(cupy.is_available() is False). Use it on a machine with a CUDA GPU "
                "and driver, or choose another backend: nnx.set_backend('numpy')."
            )
        import array_api_compat.cupy as xp

        self._cupy = cupy
        self.array_type = cupy.ndarray
        self.xp = xp

    def normalize_device(self, device: Any) -> Any:
        if device is None:
            return None
        if isinstance(device, str) and device.startswith("cuda"):
            device = int(device.split(":")[1]) if ":" in device else 0
        if isinstance(device, int) and not isinstance(device, bool):
            count = self._cupy.cuda.runtime.getDeviceCount()
            if not 0 <= device < count:
                raise ValueError(
                    f"backend 'cupy': device {device} does not exist ({count} GPU(s) found)"
                )
            return device
        device_id = getattr(device, "id", None)
        if device_id is not None:
            return int(device_id)
        raise ValueError(f"backend 'cupy': expected a GPU index or 'cuda:N', got {device!r}")

    def device_of(self, x: Any) -> Any:
        return x.device.id

    def from_numpy(self, a: np.ndarray, device: Any = None) -> Any:
        if device is None:
            return self._cupy.asarray(a)
        with self._cupy.cuda.Device(device):
            return self._cupy.asarray(a)

    def to_numpy(self, x: Any) -> np.ndarray:
        return self._cupy.asnumpy(x)

    def windows(self, x: Any, k_size: int, stride: int) -> Any:
        return strided_windows(self._cupy.lib.stride_tricks.as_strided, x, k_size, stride)

    def windows_2d(self, x: Any, k_size: tuple[int, int], stride: tuple[int, int]) -> Any:
        return strided_windows_2d(self._cupy.lib.stride_tricks.as_strided, x, k_size, stride)

    def uniform(self, shape: tuple[int, ...], like: Any, rng: np.random.Generator) -> Any:
        # drawn on the GPU by a generator seeded from nnx's: reproducible, no transfer
        seed = int(rng.integers(2**63))
        with self._cupy.cuda.Device(like.device.id):
            return self._cupy.random.default_rng(seed).random(shape, dtype=like.dtype)

    def flushes_subnormals(self, dtype: str) -> bool:
        # CuPy compiles every kernel with -ftz=true: float32 subnormals read as zero
        return dtype == "float32"
