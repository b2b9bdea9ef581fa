"""PyTorch backend: tensors on any torch device (CPU, CUDA, MPS)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from ._base import Backend, seed_from
from ._graph import CapturedGraph


class TorchBackend(Backend):
    name = "torch"
    module_name = "torch"
    install_hint = (
        "pip install torch  (the CPU build: pip install torch --index-url "
        "https://download.pytorch.org/whl/cpu)"
    )

    def _load(self) -> None:
        import array_api_compat.torch as xp
        import torch

        self._torch = torch
        self.array_type = torch.Tensor
        self.xp = xp

    def normalize_device(self, device: Any) -> Any:
        if device is None:
            return None
        try:
            dev = self._torch.device(device)
        except (RuntimeError, TypeError) as exc:
            raise ValueError(f"backend 'torch': invalid device {device!r}: {exc}") from None
        if dev.type == "cuda" and not self._torch.cuda.is_available():
            raise RuntimeError(
                "backend 'torch': device 'cuda' asked for, but torch.cuda.is_available() "
                "is False (a CPU build of PyTorch, or no NVIDIA GPU)"
            )
        return dev

    def device_of(self, x: Any) -> Any:
        return x.device

    def from_numpy(self, a: np.ndarray, device: Any = None) -> Any:
        t = self._torch.from_numpy(np.array(a, copy=True))
        return t if device is None else t.to(device)

    def to_numpy(self, x: Any) -> np.ndarray:
        return x.detach().cpu().numpy()

    def synchronize(self, x: Any) -> None:
        if x.device.type == "cuda":
            self._torch.cuda.synchronize(x.device)

    def base_array(self, x: Any) -> Any:
        return x.detach().as_subclass(self._torch.Tensor)  # nn.Parameter ...: plain data

    def host_view(self, x: Any) -> np.ndarray | None:
        if x.device.type != "cpu" or x.requires_grad or not x.is_contiguous():
            return None
        return x.numpy()  # shares the tensor's memory

    def from_host_memory(self, a: np.ndarray, device: Any = None) -> Any:
        if device is not None and self._torch.device(device).type != "cpu":
            return None
        return self._torch.from_numpy(a)  # shares a's memory

    def matmul_into(self, a: Any, b: Any, out: Any) -> bool:
        T = self._torch.Tensor
        if not (
            isinstance(a, T)
            and isinstance(b, T)
            and isinstance(out, T)
            and a.ndim == b.ndim == 2
            and a.dtype == b.dtype == out.dtype
            and a.device == b.device == out.device
            and tuple(out.shape) == (a.shape[0], b.shape[1])
            and out.is_contiguous()
            and not out.requires_grad
        ):
            return False
        self._torch.matmul(a, b, out=out)
        return True

    def windows(self, x: Any, k_size: int, stride: int) -> Any:
        # Tensor.unfold(dim, size, step) appends the window axis: (B, O, C, K), no copy.
        return x.unfold(1, k_size, stride)

    def windows_2d(self, x: Any, k_size: tuple[int, int], stride: tuple[int, int]) -> Any:
        # each unfold appends its window axis: (B, OH, W, C, kh) then (B, OH, OW, C, kh, kw)
        return x.unfold(1, k_size[0], stride[0]).unfold(2, k_size[1], stride[1])

    def uniform(self, shape: tuple[int, ...], like: Any, rng: np.random.Generator) -> Any:
        # drawn on the tensor's device by a generator seeded from nnx's: reproducible
        gen = self._torch.Generator(device=like.device)
        gen.manual_seed(seed_from(rng))
        return self._torch.rand(shape, generator=gen, dtype=like.dtype, device=like.device)

    # -- CUDA graphs ----------------------------------------------------------------
    def graphs_supported(self, device: Any) -> bool:
        return device is not None and self._torch.device(device).type == "cuda"

    @contextlib.contextmanager
    def graph_mode(self, pool: Any) -> Iterator[None]:
        """PyTorch captures every operation nnx uses: nothing to change."""
        yield

    def new_graph_pool(self) -> Any:
        return self._torch.cuda.graph_pool_handle()

    def capture(self, fn: Callable[[], Any], device: Any, pool: Any = None) -> CapturedGraph:
        torch = self._torch
        if device is None or torch.device(device).type != "cuda":
            raise ValueError(
                f"backend 'torch': CUDA graphs need tensors on a CUDA device, got device {device!r}"
            )
        with torch.cuda.device(device):
            torch.cuda.synchronize()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool):
                outputs = fn()
        return CapturedGraph(graph.replay, outputs, keep=graph)
