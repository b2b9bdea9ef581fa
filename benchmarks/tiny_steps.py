"""The original library's smallest recipe, step by step: nnx against a framework-free
NumPy step, PyTorch and (optionally) the original library itself.

``classification.ipynb`` of NeuralNetworksDIY trains ``Linear(64, 32), TanH, Linear(32,
16), TanH, Linear(16, 8), TanH, Linear(8, 2), Sigmoid`` with ``CrossEntropyLoss`` on the
two-class 8x8 digits (360 samples) at batch 8 for 50 epochs: 2,250 steps of a few
microseconds of arithmetic each, so a step costs what its library calls cost. Timed in
one run, one thread each, the best of ``--repeats`` runs of the 50 epochs:

- ``nnx``: ``Optim(net, CrossEntropyLoss(), eps=1e-2).SGD(X, y, 8, 50)``, the notebook's
  call (float32, shuffled batches, the per-batch accuracy, the checks);
- ``numpy by hand``: the same forward, log-softmax cross-entropy, backward and update as
  bare NumPy calls on shuffled batches, with nothing around them: what any library
  built on NumPy can at best reach on this recipe;
- ``pytorch``: ``nn.Sequential``, ``CrossEntropyLoss(reduction="sum")`` and
  ``optim.SGD`` on the same batches;
- ``original`` (with ``--original PATH``, a clone of dataymeric/NeuralNetworksDIY): its
  own ``Optim.SGD`` (float64, and its ``1 - sum(y * yhat)`` "cross-entropy").

Usage::

    OMP_NUM_THREADS=1 python benchmarks/tiny_steps.py [--original PATH] [--repeats 5]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import platform
import sys
import time
from collections.abc import Callable
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np

import nnx

EPOCHS, BATCH, LR = 50, 8, 1e-2
SIZES = (64, 32, 16, 8, 2)


def two_class_digits() -> tuple[np.ndarray, np.ndarray]:
    """The 360 digits 0 and 1 (``load_digits(n_class=2)``), one-hot targets."""
    X, y, Xt, yt = nnx.datasets.digits(flatten=True)
    X, y = np.concatenate([X, Xt]), np.concatenate([y, yt])
    keep = y < 2
    return X[keep].astype(np.float64), np.eye(2)[y[keep]]


def best_of(repeats: int, run: Callable[[], Any]) -> float:
    """Least wall-clock seconds of ``repeats`` calls (after one warm-up call)."""
    run()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        run()
        times.append(time.perf_counter() - t)
    return min(times)


def nnx_sgd(X: np.ndarray, Y: np.ndarray) -> Callable[[], Any]:
    net = nnx.Sequential(
        nnx.Linear(64, 32), nnx.TanH(), nnx.Linear(32, 16), nnx.TanH(),
        nnx.Linear(16, 8), nnx.TanH(), nnx.Linear(8, 2), nnx.Sigmoid(),
    )  # fmt: skip
    return lambda: nnx.Optim(net.reset(), nnx.CrossEntropyLoss(), eps=LR).SGD(
        X, Y, BATCH, EPOCHS, progress=False
    )


def numpy_by_hand(X: np.ndarray, Y: np.ndarray) -> Callable[[], Any]:
    X, Y = X.astype(np.float32), Y.astype(np.float32)
    rng = np.random.default_rng(0)
    Ws = [rng.standard_normal((a, b)).astype(np.float32) * 0.1 for a, b in pairwise(SIZES)]
    bs = [np.zeros((1, b), np.float32) for b in SIZES[1:]]
    lr = np.float32(LR)

    def step(x: np.ndarray, t: np.ndarray) -> float:
        acts = [x]
        for i in range(4):
            z = x.dot(Ws[i])
            z += bs[i]
            x = np.tanh(z) if i < 3 else 1.0 / (1.0 + np.exp(-z))
            acts.append(x)
        shifted = x - x.max(axis=1, keepdims=True)
        e = np.exp(shifted)
        s = e.sum(axis=1, keepdims=True)
        loss = -float(np.vecdot(t, shifted - np.log(s)).sum())
        d = (e / s - t) * x * (1.0 - x)
        for i in range(3, -1, -1):
            gW, gb = acts[i].T.dot(d), d.sum(axis=0, keepdims=True)
            if i:
                a = acts[i]
                d = d.dot(Ws[i].T) * (1.0 - a * a)
            Ws[i] -= lr * gW
            bs[i] -= lr * gb
        return loss

    def epochs() -> None:
        for _ in range(EPOCHS):
            order = rng.permutation(len(X))
            for k in range(0, len(X), BATCH):
                idx = order[k : k + BATCH]
                step(X[idx], Y[idx])

    return epochs


def pytorch(X: np.ndarray, Y: np.ndarray) -> Callable[[], Any]:
    import torch

    torch.set_num_threads(1)
    Xt, Yt = torch.tensor(X, dtype=torch.float32), torch.tensor(Y, dtype=torch.float32)
    layers: list[Any] = []
    for a, b in pairwise(SIZES):
        layers += [torch.nn.Linear(a, b), torch.nn.Tanh()]
    net = torch.nn.Sequential(*layers[:-1], torch.nn.Sigmoid())
    opt = torch.optim.SGD(net.parameters(), lr=LR)
    loss = torch.nn.CrossEntropyLoss(reduction="sum")
    rng = np.random.default_rng(0)

    def epochs() -> None:
        for _ in range(EPOCHS):
            order = torch.from_numpy(rng.permutation(len(X)))
            for k in range(0, len(X), BATCH):
                idx = order[k : k + BATCH]
                opt.zero_grad()
                value = loss(net(Xt[idx]), Yt[idx])
                value.backward()
                opt.step()
                float(value.detach())

    return epochs


def original(path: Path, X: np.ndarray, Y: np.ndarray) -> Callable[[], Any]:
    """The original library's own loop (its ``src`` package, imported from ``path``)."""
    sys.path.insert(0, str(path))
    from src.activation import Sigmoid, TanH  # type: ignore[import-not-found]
    from src.encapsulation import Optim, Sequential  # type: ignore[import-not-found]
    from src.linear import Linear  # type: ignore[import-not-found]
    from src.loss import CrossEntropyLoss  # type: ignore[import-not-found]

    net = Sequential(
        Linear(64, 32), TanH(), Linear(32, 16), TanH(),
        Linear(16, 8), TanH(), Linear(8, 2), Sigmoid(),
    )  # fmt: skip

    def epochs() -> None:
        with contextlib.redirect_stderr(io.StringIO()):  # its tqdm bars
            Optim(net.reset(), CrossEntropyLoss(), eps=LR).SGD(X, Y, BATCH, EPOCHS)

    return epochs


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].replace("\n", " "))
    p.add_argument("--original", type=Path, help="a clone of dataymeric/NeuralNetworksDIY")
    p.add_argument("--repeats", type=int, default=5, help="runs of the 50 epochs (default 5)")
    args = p.parse_args(argv)
    X, Y = two_class_digits()
    steps = EPOCHS * -(-len(X) // BATCH)
    runs: dict[str, Callable[[], Any]] = {
        "nnx": nnx_sgd(X, Y),
        "numpy by hand": numpy_by_hand(X, Y),
    }
    try:
        runs["pytorch"] = pytorch(X, Y)
    except ImportError:
        print("pytorch: not installed, left out")
    if args.original is not None:
        runs["original"] = original(args.original, X, Y)
    seconds = {name: best_of(args.repeats, run) for name, run in runs.items()}
    print(
        f"{cpu_model()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"NumPy {np.__version__}, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}; "
        f"{len(X)} samples, batch {BATCH}, {EPOCHS} epochs = {steps} steps, best of "
        f"{args.repeats}"
    )
    base = [b for b in ("original", "pytorch") if b in seconds]
    print(
        f"{'':16}{'s / 50 epochs':>14}{'µs / step':>11}" + "".join(f"{'vs ' + b:>13}" for b in base)
    )
    for name, s in seconds.items():
        ratios = "".join(f"{s / seconds[b]:>13.2f}" for b in base)
        print(f"{name:16}{s:>14.4f}{s / steps * 1e6:>11.1f}{ratios}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
