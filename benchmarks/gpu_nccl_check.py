#!/usr/bin/env python
"""The NCCL engine of nnx.distributed on a real GPU (run by gpu_check.sh).

One GPU allows one NCCL rank only (two ranks on one GPU fail with "Duplicate GPU
detected"), so this checks what one rank can: that CuPy's NCCL library loads, that the
NCCL calls nnx makes (``allReduce`` and ``broadcast`` in place, on the current stream,
float32 and float64) run and leave a single rank's values as they are, that
``nnx.distributed.init("nccl")`` sets up (MPI hands out NCCL's id) and picks the GPU,
and that packing CuPy gradients into one device buffer and back through the NCCL
engine returns every array intact. Exits 1 with the reason when something fails.

    python benchmarks/gpu_nccl_check.py
"""

from __future__ import annotations

import sys

import numpy as np


def main() -> int:
    import nnx
    from nnx.distributed import nccl_unavailable

    reason = nccl_unavailable()
    if reason is not None:
        print(f"NCCL unavailable: {reason}")
        return 1
    import cupy

    from nnx.distributed import CupyNccl

    ops = CupyNccl(1, CupyNccl.unique_id(), 0)
    for dtype in ("float32", "float64"):
        buf = cupy.arange(10, dtype=dtype)
        ops.allreduce(buf).synchronize()
        ops.broadcast(buf, 0).synchronize()
        np.testing.assert_array_equal(cupy.asnumpy(buf), np.arange(10, dtype=dtype))
        print(f"NCCL allReduce and broadcast, {dtype}, 1 rank: ok")

    try:
        import mpi4py  # noqa: F401
    except ImportError:
        print("mpi4py not installed: nnx.distributed.init('nccl') not checked")
        return 1
    nnx.set_backend("cupy")
    comm = nnx.distributed.init("nccl")
    print(f"init('nccl'): {comm!r}, GPU {comm.device}, backend device {nnx.get_device()}")
    # the NCCL engine on packed CuPy buffers (a one-rank job skips collectives, so the
    # engine's packing is driven directly)
    grads = [cupy.full((3, 4), 2.0, dtype=cupy.float32), cupy.arange(5, dtype=cupy.float32)]
    out = comm.nccl_allreduce_sum(grads)
    assert all(a is b for a, b in zip(out, grads, strict=True))
    np.testing.assert_array_equal(cupy.asnumpy(grads[1]), np.arange(5, dtype=np.float32))
    print("NCCLCommunicator packing through NCCL on the GPU: ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
