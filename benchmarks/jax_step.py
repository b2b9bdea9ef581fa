"""Per-step cost of the JAX backend against NumPy (process CPU time, one thread each).

Run as ``OPENBLAS_NUM_THREADS=1 XLA_FLAGS="--xla_cpu_multi_thread_eigen=false
intra_op_parallelism_threads=1" python benchmarks/jax_step.py``; the figures quoted in
docs/extending.rst come from it.
"""

from __future__ import annotations

import time
import timeit

import numpy as np

import nnx


def step_time(model: str, backend: str) -> float:
    """Best-of-5 CPU seconds of one ``Optim.step`` at batch 32."""
    with nnx.use_backend(backend):
        nnx.manual_seed(0)
        if model == "mlp":
            net = nnx.Sequential(nnx.Linear(40, 100), nnx.ReLU(), nnx.Linear(100, 10))
            shape: tuple[int, ...] = (32, 40)
        else:
            net = nnx.models.seed_cnn(256, 1, 10)
            shape = (32, 256, 1)
        opt = nnx.Optim(net, nnx.CELogSoftmax(), eps=1e-3)
        rng = np.random.default_rng(0)
        X, y = nnx.asarray(rng.standard_normal(shape)), nnx.asarray(rng.integers(0, 10, 32))
        for _ in range(20):
            opt.step(X, y)
        n = 200 if model == "mlp" else 20
        timer = time.process_time
        return min(timeit.repeat(lambda: opt.step(X, y), number=n, repeat=5, timer=timer)) / n


def main() -> None:
    for model in ("mlp", "seed_cnn"):
        t_np, t_jax = step_time(model, "numpy"), step_time(model, "jax")
        print(
            f"{model} batch 32: numpy {t_np * 1e3:.3f} ms, jax {t_jax * 1e3:.3f} ms "
            f"({t_jax / t_np:.1f} times)"
        )


if __name__ == "__main__":
    main()
