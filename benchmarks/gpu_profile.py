#!/usr/bin/env python
"""Where does an nnx training step spend its time on a GPU? (a diagnostic, issue 7)

    python benchmarks/gpu_profile.py                 # CuPy on cuda:0 against PyTorch CUDA
    python benchmarks/gpu_profile.py --json out.json

Prints, for the MLP and the seed CNN of ``benchmarks/run.py`` at batch 256 and 1024:

* the time of each phase of a training step (:class:`nnx.training.step.Step`) (each module's forward, the loss, reading
  the loss, backward, update), as *enqueue* time (until the Python call returns) and
  *synchronised* time (until the GPU is done) — when the two are close the step is
  bound by launch overhead, not by the GPU;
* the PyTorch CUDA step with and without reading the loss (``loss.item()``);
* micro-benchmarks: the cost of one launch through CuPy, array-api-compat's CuPy
  namespace and PyTorch; plain namespace calls against fused CuPy kernels
  (``ElementwiseKernel``, ``cupy.fuse``) for the TanH backward, the SGD update and the
  log-softmax; the cost of a device-to-host read of one number.

A diagnostic, not a test: it asserts nothing and never runs in CI.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


def timed(fn: Callable[[], Any], sync: Callable[[], None], reps: int = 200) -> dict[str, float]:
    """Median µs per call: enqueue (no sync inside the loop) and synchronised."""
    for _ in range(10):
        fn()
    sync()
    blocks_enq, blocks_sync = [], []
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(reps):
            fn()
        t1 = time.perf_counter()
        sync()
        t2 = time.perf_counter()
        blocks_enq.append((t1 - t0) / reps * 1e6)
        blocks_sync.append((t2 - t0) / reps * 1e6)
    # and one call at a time, synchronised after each (latency of one call)
    lat = []
    for _ in range(50):
        t0 = time.perf_counter()
        fn()
        sync()
        lat.append((time.perf_counter() - t0) * 1e6)
    return {
        "enqueue_us": statistics.median(blocks_enq),
        "throughput_us": statistics.median(blocks_sync),
        "latency_us": statistics.median(lat),
    }


def fmt(name: str, r: dict[str, float]) -> str:
    return (
        f"  {name:<44} enqueue {r['enqueue_us']:9.1f} µs   pipelined {r['throughput_us']:9.1f} µs"
        f"   one-at-a-time {r['latency_us']:9.1f} µs"
    )


def profile_case(
    model: str,
    batch: int,
    csync: Callable[[], None],
    tsync: Callable[[], None],
    graph_mode: bool = False,
) -> dict[str, Any]:
    """Phase timings of one nnx step on CuPy, and the PyTorch CUDA step. With
    ``graph_mode``, the phases run as a CUDA graph records them (matrix products by
    nnx's reduction kernel, CUB off): their one-at-a-time times are the GPU time each
    phase adds to a graph replay."""
    if graph_mode:
        from nnx import backends

        cupy_backend = backends.BACKENDS["cupy"]
        with cupy_backend.graph_mode(cupy_backend.new_graph_pool()):
            return profile_case(model, batch, csync, tsync)
    import cupy
    import run as bench  # benchmarks/run.py
    import torch

    import nnx

    layers, in_shape, classes = bench.model_spec(model)
    nnx.manual_seed(0)
    rng = np.random.default_rng(1)
    Xh = rng.standard_normal((batch, *in_shape)).astype(np.float32)
    yh = rng.integers(0, classes, batch).astype(np.int64)
    net = bench.build_nnx(nnx, layers)
    loss = nnx.CELogSoftmax()
    opt = nnx.Optim(net, loss, eps=1e-3)
    X, y = nnx.asarray(Xh), nnx.asarray(yh)
    key = f"{model}/b{batch}"
    print(f"\n{key}")
    rows: dict[str, Any] = {}
    rows["Optim.step"] = timed(lambda: opt.step(X, y), csync, reps=50)
    print(fmt("Optim.step (whole)", rows["Optim.step"]))
    # phases, each on the state a step leaves
    mods = list(net)
    inputs = [X]
    for m in mods:
        inputs.append(m.forward(inputs[-1]))
    for i, m in enumerate(mods):
        r = timed(lambda m=m, i=i: m.forward(inputs[i]), csync, reps=50)
        rows[f"forward {i} {type(m).__name__}"] = r
        print(fmt(f"forward {i} {type(m).__name__}", r))
    yhat = inputs[-1]
    r = timed(lambda: loss.forward(y, yhat), csync, reps=50)
    rows["loss.forward"] = r
    print(fmt("loss.forward", r))
    losses = loss.forward(y, yhat)
    r = timed(lambda: float(cupy.sum(losses)), csync, reps=50)
    rows["float(sum(losses))"] = r
    print(fmt("float(sum(losses))", r))
    r = timed(lambda: loss.backward(y, yhat), csync, reps=50)
    rows["loss.backward"] = r
    print(fmt("loss.backward", r))
    delta = loss.backward(y, yhat)
    deltas = [delta]
    for i in range(len(mods) - 1, -1, -1):
        m = mods[i]
        d = deltas[-1]
        r = timed(lambda m=m, i=i, d=d: m.backward_update_gradient(inputs[i], d), csync, 50)
        rows[f"bug {i} {type(m).__name__}"] = r
        print(fmt(f"backward_update_gradient {i} {type(m).__name__}", r))
        if i:
            r = timed(lambda m=m, i=i, d=d: m.backward_delta(inputs[i], d), csync, 50)
            rows[f"bd {i} {type(m).__name__}"] = r
            print(fmt(f"backward_delta {i} {type(m).__name__}", r))
            deltas.append(m.backward_delta(inputs[i], d))
    r = timed(lambda: net.update_parameters(0.0), csync, reps=50)
    rows["update_parameters"] = r
    print(fmt("update_parameters", r))
    # PyTorch
    tm = bench.build_torch(torch, layers).cuda()
    Xt = Xh.transpose(0, 2, 1).copy() if len(in_shape) == 2 else Xh
    tX, ty = torch.from_numpy(Xt).cuda(), torch.from_numpy(yh).cuda()
    topt = torch.optim.SGD(tm.parameters(), lr=1e-3)
    crit = torch.nn.CrossEntropyLoss(reduction="sum")

    def tstep(read: bool) -> Any:
        topt.zero_grad()
        out = crit(tm(tX), ty)
        out.backward()
        topt.step()
        return out.item() if read else out

    for read in (False, True):
        r = timed(lambda read=read: tstep(read), tsync, reps=50)
        name = "torch step" + (" + loss.item()" if read else "")
        rows[name] = r
        print(fmt(name, r))
    return rows


def graph_case(
    model: str, batch: int, csync: Callable[[], None], tsync: Callable[[], None]
) -> dict[str, Any]:
    """Whole-step CUDA graphs: nnx ``Optim(cuda_graph=True)`` on CuPy and on torch CUDA
    tensors, against nnx's eager step and PyTorch's eager and ``torch.cuda.graph``
    steps (each step reads its loss)."""
    import run as bench  # benchmarks/run.py
    import torch

    import nnx

    layers, in_shape, classes = bench.model_spec(model)
    rng = np.random.default_rng(1)
    Xh = rng.standard_normal((batch, *in_shape)).astype(np.float32)
    yh = rng.integers(0, classes, batch).astype(np.int64)
    rows: dict[str, Any] = {}
    print(f"\ngraph {model}/b{batch}")
    for backend, device, sync in (("cupy", None, csync), ("torch", "cuda", tsync)):
        with nnx.use_backend(backend, device=device):
            nnx.manual_seed(0)
            net = bench.build_nnx(nnx, layers)
            X, y = nnx.asarray(Xh), nnx.asarray(yh)
            for graph in (False, True):
                name = f"nnx {backend} {'graph' if graph else 'eager'} step"
                try:
                    opt = nnx.Optim(net, nnx.CELogSoftmax(), eps=1e-3, cuda_graph=graph)
                    rows[name] = timed(lambda o=opt, a=X, b=y: o.step(a, b), sync, reps=100)
                    print(fmt(name, rows[name]))
                except Exception as exc:  # noqa: BLE001 - a diagnostic goes on
                    print(f"  {name}: failed: {type(exc).__name__}: {exc}")

    tm = bench.build_torch(torch, layers).cuda()
    Xt = Xh.transpose(0, 2, 1).copy() if len(in_shape) == 2 else Xh
    tX, ty = torch.from_numpy(Xt).cuda(), torch.from_numpy(yh).cuda()
    topt = torch.optim.SGD(tm.parameters(), lr=1e-3)
    crit = torch.nn.CrossEntropyLoss(reduction="sum")

    def tstep() -> Any:
        topt.zero_grad(set_to_none=False)
        out = crit(tm(tX), ty)
        out.backward()
        topt.step()
        return out

    rows["torch eager + item"] = timed(lambda: tstep().item(), tsync, reps=200)
    print(fmt("PyTorch eager step + item", rows["torch eager + item"]))
    try:
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            for _ in range(3):
                tstep()
        torch.cuda.current_stream().wait_stream(s)
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            tout = tstep()
        rows["torch graph + item"] = timed(lambda: (g.replay(), tout.item()), tsync, reps=200)
        print(fmt("PyTorch graph replay + item", rows["torch graph + item"]))
    except Exception as exc:  # noqa: BLE001 - a diagnostic goes on
        print(f"  PyTorch graph: failed: {type(exc).__name__}: {exc}")
    return rows


def _lsm(z: Any, lse: Any) -> Any:
    """log-softmax with a fused log-sum-exp reduction (max, one reduction, subtract)."""
    import cupy

    m = cupy.max(z, axis=-1, keepdims=True)
    return z - m - lse(z, m, axis=-1, keepdims=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="write every figure to this JSON file")
    parser.add_argument("--batch-sizes", default="256,1024")
    args = parser.parse_args()

    import cupy
    import torch

    import nnx

    results: dict[str, Any] = {}
    dev = cupy.cuda.Device()

    def csync() -> None:
        dev.synchronize()

    def tsync() -> None:
        torch.cuda.synchronize()

    nnx.set_backend("cupy")
    print(f"CuPy {cupy.__version__}, PyTorch {torch.__version__}, nnx backend cupy")

    # ---------------------------------------------------------------- phase breakdown
    for model in ("mlp", "seed_cnn"):
        for batch in [int(b) for b in args.batch_sizes.split(",")]:
            try:
                results[f"{model}/b{batch}"] = profile_case(model, batch, csync, tsync)
            except Exception as exc:  # noqa: BLE001 - a diagnostic goes on
                print(f"{model}/b{batch}: failed: {type(exc).__name__}: {exc}")

    # ------------------------------------------- phases as a CUDA graph records them
    for model in ("mlp", "seed_cnn"):
        batch = max(int(b) for b in args.batch_sizes.split(","))
        print(f"\ngraph mode (what a replay runs): {model}/b{batch}")
        try:
            results[f"graph-mode/{model}/b{batch}"] = profile_case(
                model, batch, csync, tsync, graph_mode=True
            )
        except Exception as exc:  # noqa: BLE001 - a diagnostic goes on
            print(f"graph mode {model}/b{batch}: failed: {type(exc).__name__}: {exc}")

    # ---------------------------------------------------------------- CUDA graph probe
    for model in ("mlp", "seed_cnn"):
        for batch in [int(b) for b in args.batch_sizes.split(",")]:
            try:
                results[f"graph/{model}/b{batch}"] = graph_case(model, batch, csync, tsync)
            except Exception as exc:  # noqa: BLE001 - a diagnostic goes on
                print(f"graph {model}/b{batch}: failed: {type(exc).__name__}: {exc}")

    # ---------------------------------------------------------------- micro-benchmarks
    import array_api_compat.cupy as cxp

    print("\nmicro-benchmarks (µs per call)")
    micro: dict[str, Any] = {}
    a = cupy.ones((256, 100), dtype=cupy.float32)
    b = cupy.ones((256, 100), dtype=cupy.float32)
    ta = torch.ones((256, 100), device="cuda")
    tb = torch.ones((256, 100), device="cuda")
    for name, fn, s in [
        ("cupy.multiply", lambda: cupy.multiply(a, b), csync),
        ("a * b (cupy operator)", lambda: a * b, csync),
        ("array_api_compat.cupy.multiply", lambda: cxp.multiply(a, b), csync),
        ("cupy.sum(axis=0)", lambda: cupy.sum(a, axis=0), csync),
        ("array_api_compat.cupy.sum(axis=0)", lambda: cxp.sum(a, axis=0), csync),
        ("cupy.max(axis=-1, keepdims)", lambda: cupy.max(a, axis=-1, keepdims=True), csync),
        ("a @ b.T (cupy, 256x100x256)", lambda: a @ b.T, csync),
        ("torch a * b", lambda: ta * tb, tsync),
        ("torch sum(0)", lambda: ta.sum(0), tsync),
        ("torch a @ b.T", lambda: ta @ tb.T, tsync),
        ("float(cupy.sum(a)) (device read)", lambda: float(cupy.sum(a)), csync),
        ("torch a.sum().item()", lambda: ta.sum().item(), tsync),
    ]:
        try:
            micro[name] = timed(fn, s, reps=500)
            print(fmt(name, micro[name]))
        except Exception as exc:  # noqa: BLE001 - a diagnostic goes on
            print(f"  {name}: failed: {type(exc).__name__}: {exc}")

    tanh_bwd = cupy.ElementwiseKernel("T y, T d", "T out", "out = d * (1 - y * y)", "nnx_tanh_bwd")
    sgd = cupy.ElementwiseKernel("T g, T eps", "T p", "p -= eps * g", "nnx_sgd")

    @cupy.fuse()
    def tanh_bwd_fused(y, d):  # noqa: ANN001, ANN202
        return d * (1 - y * y)

    for shape in [(256, 100), (1024, 100), (1024, 4064)]:
        y = cupy.random.standard_normal(shape, dtype=cupy.float32)
        d = cupy.random.standard_normal(shape, dtype=cupy.float32)
        p = cupy.random.standard_normal(shape, dtype=cupy.float32)
        for name, fn in [
            (f"tanh bwd plain {shape}", lambda y=y, d=d: d * (1.0 - y * y)),
            (f"tanh bwd ElementwiseKernel {shape}", lambda y=y, d=d: tanh_bwd(y, d)),
            (f"tanh bwd cupy.fuse {shape}", lambda y=y, d=d: tanh_bwd_fused(y, d)),
            (f"sgd plain p -= eps*g {shape}", lambda p=p, d=d: p.__isub__(1e-3 * d)),
            (
                f"sgd ElementwiseKernel {shape}",
                lambda p=p, d=d: sgd(d, cupy.float32(1e-3), p),
            ),
        ]:
            try:
                micro[name] = timed(fn, csync, reps=300)
                print(fmt(name, micro[name]))
            except Exception as exc:  # noqa: BLE001 - a diagnostic goes on
                print(f"  {name}: failed: {type(exc).__name__}: {exc}")

    from nnx.activation import log_softmax

    lse = cupy.ReductionKernel(
        "T x, T m", "T s", "exp(x - m)", "a + b", "s = log(a)", "0", "nnx_logsumexp"
    )
    for shape in [(256, 10), (1024, 10)]:
        z = cupy.random.standard_normal(shape, dtype=cupy.float32)
        for name, fn in [
            (f"log_softmax nnx {shape}", lambda z=z: log_softmax(cxp, z)),
            (
                f"log_softmax max+ReductionKernel {shape}",
                lambda z=z: _lsm(z, lse),
            ),
        ]:
            try:
                micro[name] = timed(fn, csync, reps=300)
                print(fmt(name, micro[name]))
            except Exception as exc:  # noqa: BLE001 - a diagnostic goes on
                print(f"  {name}: failed: {type(exc).__name__}: {exc}")
    results["micro"] = micro
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
