"""CUDA graphs: record a function's kernel launches once, replay them with one launch.

A training step of a small model on a GPU is bound by launch overhead: dozens of tiny
kernels, each costing more on the host than on the device. A CUDA graph records the
kernels one call of a function enqueues (stream capture) and replays them all with one
launch. What a replay computes is fixed at capture: the same input and output buffers,
the same shapes, the same Python scalars. The caller copies new data into the captured
input buffers before each replay and reads the captured outputs after it.

CuPy: stream capture on a private memory pool (the graph owns every buffer it wrote
during capture), with CuPy's CUB accelerators off and matrix products done by a CuPy
reduction kernel instead of cuBLAS, which CuPy refuses to call while capturing.
PyTorch: ``torch.cuda.graph``. Other libraries have no graphs: :func:`capture_graph`
raises ``ValueError`` saying so.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


class CapturedGraph:
    """A recorded function: :meth:`replay` runs its kernels again on the same buffers.

    ``outputs`` is what the function returned during capture: arrays that every replay
    overwrites in place.
    """

    def __init__(self, replay: Callable[[], None], outputs: Any, keep: Any = None) -> None:
        self._replay = replay
        self.outputs = outputs
        self._keep = keep  # the memory pool and graph objects the replays use

    def replay(self) -> None:
        """Enqueue the recorded kernels (asynchronous, like the eager calls were)."""
        self._replay()
