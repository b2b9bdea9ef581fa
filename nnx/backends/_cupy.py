"""CuPy backend: NVIDIA GPUs through CUDA."""

from __future__ import annotations

import contextlib
import threading
import types
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from ._base import Backend, seed_from
from ._graph import CapturedGraph
from ._strided import strided_windows, strided_windows_2d

#: ``capturing`` is True while code that a CUDA graph records (or its eager rehearsal) runs
_graph_state = threading.local()


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
        self.xp = capturable_namespace(xp, cupy)

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

    def synchronize(self, x: Any) -> None:
        with self._cupy.cuda.Device(x.device.id):
            self._cupy.cuda.get_current_stream().synchronize()

    def windows(self, x: Any, k_size: int, stride: int) -> Any:
        return strided_windows(self._cupy.lib.stride_tricks.as_strided, x, k_size, stride)

    def windows_2d(self, x: Any, k_size: tuple[int, int], stride: tuple[int, int]) -> Any:
        return strided_windows_2d(self._cupy.lib.stride_tricks.as_strided, x, k_size, stride)

    def uniform(self, shape: tuple[int, ...], like: Any, rng: np.random.Generator) -> Any:
        # drawn on the GPU by a generator seeded from nnx's: reproducible, no transfer
        seed = seed_from(rng)
        with self._cupy.cuda.Device(like.device.id):
            return self._cupy.random.default_rng(seed).random(shape, dtype=like.dtype)

    def fused_kernel(self, name: str) -> Any:
        kernels = self.__dict__.setdefault("_fused", {})
        if name not in kernels:
            source = FUSED_SOURCES.get(name)
            kernels[name] = None if source is None else self._cupy.ElementwiseKernel(*source)
        return kernels[name]

    def flushes_subnormals(self, dtype: str) -> bool:
        # CuPy compiles every kernel with -ftz=true: float32 subnormals read as zero
        return dtype == "float32"

    # -- CUDA graphs ----------------------------------------------------------------
    def graphs_supported(self, device: Any) -> bool:
        return True

    @contextlib.contextmanager
    def graph_mode(self, pool: Any) -> Iterator[None]:
        """Run code the way a captured graph will: allocations from ``pool``, matrix
        products by a reduction kernel, CUB off. The eager rehearsal of a step runs in
        this mode too, so every kernel the capture needs is compiled before it starts."""
        core = self._cupy._core
        saved = core.get_reduction_accelerators(), core.get_routine_accelerators()
        core.set_reduction_accelerators([])
        core.set_routine_accelerators([])
        _graph_state.capturing = True
        try:
            with self._cupy.cuda.using_allocator(pool.malloc):
                yield
        finally:
            _graph_state.capturing = False
            core.set_reduction_accelerators(saved[0])
            core.set_routine_accelerators(saved[1])

    def new_graph_pool(self) -> Any:
        """A memory pool of its own for a graph's buffers (nothing else allocates there)."""
        return self._cupy.cuda.MemoryPool()

    def capture(self, fn: Callable[[], Any], device: Any, pool: Any = None) -> CapturedGraph:
        cupy = self._cupy
        pool = pool if pool is not None else self.new_graph_pool()
        with cupy.cuda.Device(device if device is not None else cupy.cuda.Device().id):
            cupy.cuda.Device().synchronize()
            stream = cupy.cuda.Stream(non_blocking=True)
            with self.graph_mode(pool), stream:
                stream.begin_capture()
                try:
                    outputs = fn()
                finally:
                    graph = stream.end_capture()  # also when fn failed: the stream stays usable
            graph.upload(stream)
            stream.synchronize()

        def replay() -> None:
            graph.launch(cupy.cuda.get_current_stream())

        return CapturedGraph(replay, outputs, keep=(graph, stream, pool))


#: ElementwiseKernel (inputs, outputs, body, name) of each :mod:`nnx.backends.fused` op
FUSED_SOURCES = {
    "tanh_backward": ("T y, T d", "T out", "out = d * (1 - y * y)", "nnx_tanh_backward"),
    "relu_backward": ("T x, T d", "T out", "out = x > 0 ? d : (T)0", "nnx_relu_backward"),
    "subtract_scaled": ("T g, T a", "T p", "p -= a * g", "nnx_subtract_scaled"),
}

#: graph-mode matmul of two 2-D float arrays: a tiled GEMM kernel of nnx's own, its sum
#: split into chunks (one partial product each, then summed) until about GEMM_BLOCKS
#: blocks keep the GPU busy, each chunk at least GEMM_MIN_CHUNK terms long
GEMM_BLOCKS = 256
GEMM_MIN_CHUNK = 256
GEMM_SOURCE = r"""
extern "C" __global__ void nnx_gemm(
    const T* __restrict__ A, const T* __restrict__ B, T* __restrict__ C,
    const int M, const int N, const int K, const int kchunk,
    const long long sam, const long long sak, const long long sbk, const long long sbn)
{
    // C[z] = A[:, kz] @ B[kz, :] over the z-th chunk of kchunk terms; 64x64 outputs per
    // block, 4x4 per thread, tiles of 16 terms staged in shared memory
    __shared__ T As[16][65];
    __shared__ T Bs[16][65];
    const int tx = threadIdx.x, ty = threadIdx.y, tid = ty * 16 + tx;
    const int m0 = blockIdx.y * 64, n0 = blockIdx.x * 64;
    const int kbeg = blockIdx.z * kchunk;
    const int kend = min(K, kbeg + kchunk);
    T acc[4][4];
    for (int i = 0; i < 4; ++i)
        for (int j = 0; j < 4; ++j) acc[i][j] = (T)0;
    for (int k0 = kbeg; k0 < kend; k0 += 16) {
        for (int e = tid; e < 1024; e += 256) {
            const int mm = e >> 4, kk = e & 15;
            const int gm = m0 + mm, gk = k0 + kk;
            As[kk][mm] = (gm < M && gk < kend) ? A[gm * sam + gk * sak] : (T)0;
            const int kb = e >> 6, nn = e & 63;
            const int gkb = k0 + kb, gn = n0 + nn;
            Bs[kb][nn] = (gkb < kend && gn < N) ? B[gkb * sbk + gn * sbn] : (T)0;
        }
        __syncthreads();
        #pragma unroll
        for (int kk = 0; kk < 16; ++kk) {
            T a[4], b[4];
            #pragma unroll
            for (int i = 0; i < 4; ++i) a[i] = As[kk][ty + 16 * i];
            #pragma unroll
            for (int j = 0; j < 4; ++j) b[j] = Bs[kk][tx + 16 * j];
            #pragma unroll
            for (int i = 0; i < 4; ++i)
                #pragma unroll
                for (int j = 0; j < 4; ++j) acc[i][j] += a[i] * b[j];
        }
        __syncthreads();
    }
    T* Cz = C + (long long)blockIdx.z * M * N;
    for (int i = 0; i < 4; ++i) {
        const int gm = m0 + ty + 16 * i;
        if (gm >= M) continue;
        for (int j = 0; j < 4; ++j) {
            const int gn = n0 + tx + 16 * j;
            if (gn < N) Cz[(long long)gm * N + gn] = acc[i][j];
        }
    }
}
"""


def _capturing() -> bool:
    return getattr(_graph_state, "capturing", False)


def capturable_namespace(base: Any, cupy: Any) -> types.ModuleType:
    """array-api-compat's CuPy namespace whose ``matmul`` and ``vecdot`` work while a CUDA
    graph is captured: CuPy refuses to call cuBLAS then (``NotImplementedError``, seen
    with CuPy 14.2), so in graph mode they are one reduction kernel,
    :math:`C_{mn} = \\sum_k A_{mk} B_{kn}` over broadcast views (no copy). Outside graph
    mode they are array-api-compat's functions (cuBLAS)."""
    ns = types.ModuleType(base.__name__, base.__doc__)
    ns.__dict__.update(base.__dict__)
    plain_matmul, plain_vecdot = base.matmul, base.vecdot
    products = cupy.ReductionKernel(
        "T a, T b", "T c", "a * b", "a + b", "c = a", "0", "nnx_sum_of_products"
    )

    gemm_kernels: dict[Any, Any] = {}

    def matmul(x1: Any, x2: Any, /) -> Any:
        if not _capturing() or x1.ndim < 2 or x2.ndim < 2 or x1.dtype != x2.dtype:
            return plain_matmul(x1, x2)
        if x1.ndim == x2.ndim == 2 and x1.dtype.char in "fd" and 0 not in (*x1.shape, x2.shape[1]):
            return gemm(x1, x2)
        return products(x1[..., :, None, :], cupy.swapaxes(x2, -1, -2)[..., None, :, :], axis=-1)

    def gemm(x1: Any, x2: Any) -> Any:
        # C = A B with A, B any strided 2-D views; blockIdx.z sums its own chunk of terms
        (m, k), n = x1.shape, x2.shape[1]
        kernel = gemm_kernels.get(x1.dtype.char)
        if kernel is None:
            ctype = "float" if x1.dtype.char == "f" else "double"
            kernel = cupy.RawKernel(f"typedef {ctype} T;\n{GEMM_SOURCE}", "nnx_gemm")
            gemm_kernels[x1.dtype.char] = kernel
        tiles = -(-m // 64) * -(-n // 64)
        chunks = max(1, min(-(-k // GEMM_MIN_CHUNK), -(-GEMM_BLOCKS // tiles)))
        chunk = -(-k // chunks)
        chunks = -(-k // chunk)
        out = cupy.empty((chunks, m, n), dtype=x1.dtype)
        i1, i2 = x1.itemsize, x2.itemsize
        args = (x1, x2, out, *map(np.int32, (m, n, k, chunk)))
        strides = (
            x1.strides[0] // i1,
            x1.strides[1] // i1,
            x2.strides[0] // i2,
            x2.strides[1] // i2,
        )
        kernel((-(-n // 64), -(-m // 64), chunks), (16, 16), args + tuple(map(np.int64, strides)))
        return out[0] if chunks == 1 else out.sum(axis=0)

    def vecdot(x1: Any, x2: Any, /, *, axis: int = -1) -> Any:
        if not _capturing() or x1.dtype != x2.dtype:
            return plain_vecdot(x1, x2, axis=axis)
        return products(x1, x2, axis=axis)

    ns.matmul, ns.vecdot = matmul, vecdot
    return ns
