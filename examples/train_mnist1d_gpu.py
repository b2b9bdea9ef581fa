"""Train a CNN on MNIST-1D on a GPU (CuPy or PyTorch CUDA), or unchanged on the CPU.

    python examples/train_mnist1d_gpu.py                      # best available backend
    python examples/train_mnist1d_gpu.py --backend cupy       # NVIDIA GPU through CuPy
    python examples/train_mnist1d_gpu.py --backend torch --device cuda:0
    python examples/train_mnist1d_gpu.py --backend numpy --epochs 5   # CPU

The data is generated on the host (NumPy); ``Optim.SGD_eval`` moves it to the
network's backend once, trains with Adam and early stopping, and the script reports
the test accuracy, writes the learning curves, the history and the trained model.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import nnx


def pick_backend(name: str) -> tuple[str, str | None]:
    """``auto``: CuPy if a GPU answers, else PyTorch with CUDA, else NumPy."""
    if name != "auto":
        return name, None
    try:
        nnx.set_backend("cupy")
        return "cupy", None
    except (ImportError, RuntimeError):
        pass
    try:
        nnx.set_backend("torch", "cuda")
        return "torch", "cuda"
    except (ImportError, RuntimeError, ValueError):
        pass
    return "numpy", None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "--backend", default="auto", choices=["auto", "cupy", "torch", "numpy", "array_api_strict"]
    )
    p.add_argument("--device", default=None, help="cuda:N (cupy, torch)")
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    p.add_argument("--model", default="cnn", choices=sorted(nnx.models.MODELS))
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/example-mnist1d")
    args = p.parse_args()

    backend, auto_device = pick_backend(args.backend)
    nnx.set_backend(backend, args.device or auto_device)
    nnx.set_default_dtype(args.dtype)
    nnx.manual_seed(args.seed)
    print(f"backend {nnx.get_backend()} device {nnx.get_device()} dtype {nnx.get_default_dtype()}")

    X, y, X_test, y_test = nnx.datasets.mnist1d()
    net = nnx.models.build(args.model, length=X.shape[1], channels=X.shape[2], classes=10)
    optim = nnx.Optim(net, nnx.CELogSoftmax(), optimizer=nnx.optimizers.Adam(lr=args.lr))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    t0 = time.perf_counter()
    history = optim.SGD_eval(
        X,
        y,
        args.batch_size,
        args.epochs,
        test_size=0.1,
        patience=10,
        shuffle_test=True,
        seed=args.seed,
        restore_best=True,
        return_dataframe=True,
        online_plot=out / "learning_curve.png",
    )
    seconds = time.perf_counter() - t0
    accuracy = optim.score(X_test, y_test)
    history.to_csv(out / "history.csv", index=False)
    nnx.save(net, out / "model.npz", metadata={"dataset": "mnist1d", "test_accuracy": accuracy})
    print(
        f"test accuracy {accuracy:.4f} (best epoch {optim.best_epoch} of {len(history)}) "
        f"in {seconds:.1f}s; wrote {out}/"
    )


if __name__ == "__main__":
    main()
