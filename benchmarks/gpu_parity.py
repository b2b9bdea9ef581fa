#!/usr/bin/env python
"""Check that every nnx module gives NumPy's results on another backend (a GPU).

    python benchmarks/gpu_parity.py --backend cupy                # CuPy on the GPU
    python benchmarks/gpu_parity.py --backend torch --device cuda # PyTorch CUDA tensors
    python benchmarks/gpu_parity.py --backend array_api_strict    # runs anywhere

For each module (and the sliding windows of ``nnx.backends``) the same parameters and
float32 data go through ``forward``, ``backward_update_gradient`` and
``backward_delta`` on NumPy and on the target backend; outputs, input gradients and
parameter gradients must agree within float32 tolerance (``--rtol``, ``--atol``).
Prints one line per check and exits 1 if any disagrees. Part of
``benchmarks/gpu_check.sh``.
"""

from __future__ import annotations

import argparse
import copy
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import nnx  # noqa: E402
from nnx import backends  # noqa: E402


def modules() -> list[tuple[str, Any, tuple[int, ...]]]:
    """(name, module built on NumPy, input shape)."""
    return _modules_1d() + _modules_2d() + _regularizers()


def _modules_2d() -> list[tuple[str, Any, tuple[int, ...]]]:
    """Images, channels last, where this nnx has them (issue 14)."""
    if not hasattr(nnx, "Conv2D"):
        return []
    return [
        ("Conv2D(3,2,4)", nnx.Conv2D(3, 2, 4), (3, 9, 8, 2)),
        (
            "Conv2D((3,2),2,4,stride=(2,1),bias)",
            nnx.Conv2D((3, 2), 2, 4, stride=(2, 1), bias=True),
            (3, 9, 8, 2),
        ),
        ("Conv2D(3,2,3,padding=same)", nnx.Conv2D(3, 2, 3, padding="same"), (3, 7, 6, 2)),
        ("Conv2D(5,1,6) LeNet", nnx.Conv2D(5, 1, 6), (4, 28, 28, 1)),
        ("Conv1D(3,2,4,padding=1)", nnx.Conv1D(3, 2, 4, padding=1), (5, 17, 2)),
        ("MaxPool2D(2)", nnx.MaxPool2D(2), (3, 9, 8, 3)),
        ("MaxPool2D(3,stride=1)", nnx.MaxPool2D(3, stride=1), (3, 9, 8, 3)),
        ("AvgPool2D(2)", nnx.AvgPool2D(2), (3, 9, 8, 3)),
        ("Flatten 4-D", nnx.Flatten(), (3, 4, 5, 2)),
    ]


def _regularizers() -> list[tuple[str, Any, tuple[int, ...]]]:
    """BatchNorm (train mode: batch statistics); Dropout in eval mode (the identity; its
    masks come from nnx's generator, not comparable across libraries)."""
    out = []
    if hasattr(nnx, "BatchNorm"):
        out += [
            ("BatchNorm(6)", nnx.BatchNorm(6), (5, 6)),
            ("BatchNorm(3) 4-D", nnx.BatchNorm(3), (3, 4, 5, 3)),
        ]
    if hasattr(nnx, "Dropout"):
        out.append(("Dropout(0.5) eval", nnx.Dropout(0.5).eval(), (5, 6)))
    return out


def _modules_1d() -> list[tuple[str, Any, tuple[int, ...]]]:
    return [
        ("Conv1D(3,2,4)", nnx.Conv1D(3, 2, 4), (5, 17, 2)),
        ("Conv1D(3,2,4,stride=2,bias)", nnx.Conv1D(3, 2, 4, stride=2, bias=True), (5, 17, 2)),
        ("Conv1D(4,3,5,stride=4)", nnx.Conv1D(4, 3, 5, stride=4), (5, 18, 3)),
        ("MaxPool1D(2,2)", nnx.MaxPool1D(2, 2), (5, 17, 3)),
        ("MaxPool1D(3,1)", nnx.MaxPool1D(3, 1), (5, 17, 3)),
        ("AvgPool1D(2,2)", nnx.AvgPool1D(2, 2), (5, 17, 3)),
        ("AvgPool1D(3,2)", nnx.AvgPool1D(3, 2), (5, 17, 3)),
        ("Flatten", nnx.Flatten(), (5, 7, 3)),
        ("Linear(6,4)", nnx.Linear(6, 4), (5, 6)),
        ("Linear(6,4) batch 1", nnx.Linear(6, 4), (1, 6)),
        ("ReLU", nnx.ReLU(), (5, 6)),
        ("LeakyReLU", nnx.LeakyReLU(0.1), (5, 6)),
        ("Sigmoid", nnx.Sigmoid(), (5, 6)),
        ("StableSigmoid", nnx.StableSigmoid(), (5, 6)),
        ("TanH", nnx.TanH(), (5, 6)),
        ("Softplus", nnx.Softplus(), (5, 6)),
        ("Softmax", nnx.Softmax(), (5, 6)),
        ("LogSoftmax", nnx.LogSoftmax(), (5, 6)),
        (
            "seed CNN",
            nnx.Sequential(
                nnx.Conv1D(3, 1, 8),
                nnx.MaxPool1D(2, 2),
                nnx.Flatten(),
                nnx.Linear(8 * 15, 10),
                nnx.ReLU(),
                nnx.Linear(10, 3),
            ),
            (4, 32, 1),
        ),
    ]


def losses() -> list[tuple[str, Any, str]]:
    return [
        ("MSELoss", nnx.MSELoss(), "real"),
        ("BCELoss", nnx.BCELoss(), "prob"),
        ("CrossEntropyLoss", nnx.CrossEntropyLoss(), "logp"),
        ("CELogSoftmax labels", nnx.CELogSoftmax(), "labels"),
        ("CELogSoftmax one-hot", nnx.CELogSoftmax(), "onehot"),
    ]


class Checker:
    def __init__(self, rtol: float, atol: float) -> None:
        self.rtol, self.atol, self.failed, self.count = rtol, atol, 0, 0

    def same(self, what: str, ref: Any, got: Any) -> None:
        self.count += 1
        a, b = nnx.to_numpy(ref), nnx.to_numpy(got)
        ok = a.shape == b.shape and np.allclose(a, b, rtol=self.rtol, atol=self.atol)
        err = float(np.max(np.abs(a - b))) if a.shape == b.shape and a.size else 0.0
        if not ok:
            self.failed += 1
        print(f"{'ok  ' if ok else 'FAIL'} {what:55s} max |diff| {err:.2e}", flush=True)


def run(backend: str, device: Any, rtol: float, atol: float) -> int:
    check = Checker(rtol, atol)
    rng = np.random.default_rng(0)
    nnx.set_default_dtype("float32")
    on_target = {"name": backend, "device": device}

    def target(a: np.ndarray) -> Any:
        with nnx.use_backend(**on_target):
            return nnx.asarray(a)

    # sliding windows: strided view (NumPy, CuPy), unfold (PyTorch), gather (others)
    x = rng.standard_normal((3, 11, 2)).astype(np.float32)
    for k, s in ((1, 1), (3, 1), (3, 2), (4, 4), (2, 3)):
        check.same(
            f"sliding_window(k={k}, stride={s})",
            backends.sliding_window(x, k, s),
            backends.sliding_window(target(x), k, s),
        )
    for name, module, shape in modules():
        nnx.manual_seed(0)
        with nnx.use_backend("numpy"):
            ref = module
            moved = copy.deepcopy(module).to(backend=backend, device=device)
        X = rng.standard_normal(shape).astype(np.float32)
        Xt = target(X)
        out_ref, out = ref.forward(X), moved.forward(Xt)
        check.same(f"{name}: forward", out_ref, out)
        delta = rng.standard_normal(tuple(out_ref.shape)).astype(np.float32)
        dt = target(delta)
        ref.zero_grad()
        moved.zero_grad()
        if isinstance(ref, nnx.Sequential):
            d_ref, d_got = ref.backward(X, delta), moved.backward(Xt, dt)
        else:
            ref.backward_update_gradient(X, delta)
            moved.backward_update_gradient(Xt, dt)
            d_ref, d_got = ref.backward_delta(X, delta), moved.backward_delta(Xt, dt)
        check.same(f"{name}: backward_delta", d_ref, d_got)
        got = dict(moved.named_gradients())
        for pname, g in ref.named_gradients():
            check.same(f"{name}: gradient {pname}", g, got[pname])
        ref.update_parameters(0.1)
        moved.update_parameters(0.1)
        got = dict(moved.named_parameters())
        for pname, p in ref.named_parameters():
            check.same(f"{name}: update_parameters {pname}", p, got[pname])
    for name, loss, kind in losses():
        yhat = rng.standard_normal((6, 5)).astype(np.float32)
        if kind == "prob":
            yhat = 1 / (1 + np.exp(-yhat))
            y = (rng.random((6, 5)) > 0.5).astype(np.float32)
        elif kind == "logp":
            yhat = yhat - np.log(np.exp(yhat).sum(axis=1, keepdims=True))
            y = np.eye(5, dtype=np.float32)[rng.integers(0, 5, 6)]
        elif kind == "labels":
            y = rng.integers(0, 5, 6)
        elif kind == "onehot":
            y = np.eye(5, dtype=np.float32)[rng.integers(0, 5, 6)]
        else:
            y = rng.standard_normal((6, 5)).astype(np.float32)
        yt, yhatt = target(y), target(yhat)
        check.same(f"{name}: forward", loss.forward(y, yhat), loss.forward(yt, yhatt))
        check.same(f"{name}: backward", loss.backward(y, yhat), loss.backward(yt, yhatt))
    if backend == "cupy" or (backend == "torch" and str(device).startswith("cuda")):
        with nnx.use_backend(**on_target):  # the networks are built on the GPU
            graph_parity(check, target, rng)
    print(f"{check.count - check.failed}/{check.count} checks agree on {backend} ({device})")
    return 1 if check.failed else 0


def graph_parity(check: Checker, target: Any, rng: np.random.Generator) -> None:
    """``Optim(cuda_graph=True)`` against the eager step on the same backend: the same
    weights, batches (two shapes: the last batch is smaller) and update rules give the
    same per-step losses and parameters; a non-finite batch leaves the parameters as
    they were, and a bad label raises the loss's error."""
    for name, make, shape in [
        ("MLP", lambda: nnx.Sequential(nnx.Linear(12, 16), nnx.TanH(), nnx.Linear(16, 5)), (12,)),
        (
            "CNN",
            lambda: nnx.Sequential(
                nnx.Conv1D(3, 2, 4), nnx.MaxPool1D(2, 2), nnx.Flatten(), nnx.Linear(28, 5)
            ),
            (17, 2),
        ),
    ]:
        for opt_name, make_opt in [
            ("eps", lambda: None),
            ("Momentum", lambda: nnx.optimizers.Momentum(1e-2, nesterov=True)),
        ]:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("error", RuntimeWarning)  # a failed recording fails
                    _graph_case(check, target, rng, name, make, shape, opt_name, make_opt)
            except Exception as exc:  # noqa: BLE001 - report and go on
                print(f"FAIL graph {name}/{opt_name}: {type(exc).__name__}: {exc}")
                check.count += 1
                check.failed += 1


def _graph_case(check, target, rng, name, make, shape, opt_name, make_opt) -> None:  # noqa: ANN001
    """One model and update rule: eager against graphed steps (see :func:`graph_parity`)."""
    eager = make()
    graphed = copy.deepcopy(eager)
    a = nnx.Optim(eager, nnx.CELogSoftmax(), eps=1e-2, optimizer=make_opt())
    b = nnx.Optim(graphed, nnx.CELogSoftmax(), eps=1e-2, optimizer=make_opt(), cuda_graph=True)
    for i, n in enumerate([8, 8, 8, 5, 8, 5]):
        X = target(rng.standard_normal((n, *shape)).astype(np.float32))
        y = target(rng.integers(0, 5, n))
        la, lb = a.step(X, y), b.step(X, y)
        check.same(f"graph {name}/{opt_name}: losses of step {i}", la, lb)
    got = dict(graphed.named_parameters())
    for pname, p in eager.named_parameters():
        check.same(f"graph {name}/{opt_name}: parameter {pname} after 6 steps", p, got[pname])
    before = {k: nnx.to_numpy(v) for k, v in graphed.named_parameters()}
    bad = rng.standard_normal((8, *shape)).astype(np.float32)
    bad[0] = np.nan
    try:
        b.step(target(bad), target(rng.integers(0, 5, 8)))
        check.same(f"graph {name}/{opt_name}: non-finite batch raises", np.zeros(1), np.ones(1))
    except FloatingPointError:
        after = dict(graphed.named_parameters())
        for k, v in before.items():
            check.same(f"graph {name}/{opt_name}: {k} kept after a non-finite loss", v, after[k])
    try:
        b.step(
            target(rng.standard_normal((8, *shape)).astype(np.float32)),
            target(np.full(8, 7)),
        )
        check.same(f"graph {name}/{opt_name}: label 7 of 5 classes raises", np.zeros(1), np.ones(1))
    except ValueError as exc:
        ok = "labels" in str(exc)
        check.same(
            f"graph {name}/{opt_name}: label error says so ({exc})"[:90],
            np.array([float(ok)]),
            np.ones(1),
        )


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--backend", default="cupy")
    p.add_argument("--device", default=None)
    p.add_argument("--rtol", type=float, default=1e-4)
    p.add_argument("--atol", type=float, default=1e-5)
    args = p.parse_args()
    return run(args.backend, args.device, args.rtol, args.atol)


if __name__ == "__main__":
    sys.exit(main())
