"""Train a CNN on MNIST-1D on a GPU (CuPy or PyTorch CUDA), or unchanged on the CPU.

    python examples/train_mnist1d_gpu.py                      # best available backend
    python examples/train_mnist1d_gpu.py --backend cupy       # NVIDIA GPU through CuPy
    python examples/train_mnist1d_gpu.py --backend torch --device cuda:0
    python examples/train_mnist1d_gpu.py --backend numpy --epochs 5   # CPU

The data is generated on the host (NumPy); ``Optim.SGD_eval`` moves it to the
network's backend once, trains with Adam and early stopping, and the script reports
the test accuracy, writes the learning curves, the history and the trained model.

It behaves like ``nnx train --model <model>``: the same recipe (learning rate, batch,
epochs, patience, validation split 0.1), the same thread policy (``--threads 1``), so on
the same backend and seed it reaches the same test accuracy; progress bars in a
terminal, one line per epoch otherwise, and the same result line.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import nnx
from nnx.cli import RECIPES, epoch_line, limit_threads
from nnx.training import Progress


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


def choose_backend(p: argparse.ArgumentParser, args: argparse.Namespace) -> tuple[str, str | None]:
    """The backend and device the arguments ask for, checked before any work: a missing
    library, no GPU or a bad number ends with one line (exit 2), as ``nnx train`` does."""
    for name in ("epochs", "batch_size"):
        value = getattr(args, name, None)
        if value is not None and value < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1, got {value}")
    backend, auto_device = pick_backend(args.backend)
    device = args.device or auto_device
    try:
        with nnx.use_backend(backend, device):
            pass
    except (ImportError, RuntimeError, ValueError) as exc:
        p.error(str(exc))
    return backend, device


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].replace("\n", " "))
    p.add_argument(
        "--backend",
        default="auto",
        choices=["auto", "cupy", "torch", "numpy", "array_api_strict"],
        help="array library (default auto: cupy, else torch on CUDA, else numpy)",
    )
    p.add_argument("--device", default=None, help="cuda:N, for cupy and torch (default: auto)")
    p.add_argument(
        "--dtype", default="float32", choices=["float32", "float64"], help="(default float32)"
    )
    p.add_argument(
        "--model", default="cnn", choices=sorted(nnx.models.MODELS), help="(default cnn)"
    )
    p.add_argument("--epochs", type=int, default=None, help="(default: the recipe of nnx train)")
    p.add_argument("--batch-size", type=int, default=None, help="(default: the recipe)")
    p.add_argument("--lr", type=float, default=None, help="Adam's rate (default: the recipe)")
    p.add_argument("--seed", type=int, default=0, help="(default 0)")
    p.add_argument("--out", default="runs/example-mnist1d", help="(default %(default)s)")
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="BLAS and PyTorch CPU threads (default 1, as nnx train)",
    )
    args = p.parse_args()
    # the recipe of `nnx train --model <model>`: same seed, same result as the CLI
    recipe = dict(RECIPES[args.model])
    for key in ("epochs", "batch_size", "lr"):
        if getattr(args, key) is not None:
            recipe[key] = getattr(args, key)

    backend, device = choose_backend(p, args)
    with limit_threads(args.threads, torch=backend == "torch"):
        nnx.set_backend(backend, device)
        nnx.set_default_dtype(args.dtype)
        print(
            f"backend {nnx.get_backend()} device {nnx.get_device()} dtype "
            f"{nnx.get_default_dtype()}, model {args.model}, Adam lr={recipe['lr']}, up to "
            f"{recipe['epochs']} epochs of batch {recipe['batch_size']}, seed {args.seed}",
            flush=True,
        )
        X, y, X_test, y_test = nnx.datasets.mnist1d()
        nnx.manual_seed(args.seed)
        net = nnx.models.build(args.model, length=X.shape[1], channels=X.shape[2], classes=10)
        optim = nnx.Optim(net, nnx.CELogSoftmax(), optimizer=nnx.optimizers.Adam(lr=recipe["lr"]))
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        bars = Progress.resolve(None) is not None  # bars in a terminal, else one line per epoch

        t0 = time.perf_counter()
        optim.SGD_eval(
            X,
            y,
            recipe["batch_size"],
            recipe["epochs"],
            test_size=0.1,
            patience=recipe["patience"],
            shuffle_test=True,
            seed=args.seed,
            restore_best=True,
            callback=None if bars else lambda r: print(epoch_line(r), flush=True),
        )
        seconds = time.perf_counter() - t0
        accuracy = optim.score(X_test, y_test)
    # written once at the end, as nnx train does (a live PNG costs a redraw per epoch)
    nnx.training.write_csv(optim.history, out / "history.csv")
    nnx.training.plot_history(
        optim.history, out / "learning_curve.png", labels=("train", "validation")
    )
    nnx.save(net, out / "model.npz", metadata={"dataset": "mnist1d", "test_accuracy": accuracy})
    print(
        f"test accuracy: {accuracy:.4f} ({round(accuracy * len(y_test))}/{len(y_test)})  "
        f"[best epoch {optim.best_epoch} of {len(optim.history['epoch'])}, train {seconds:.1f}s]  "
        f"wrote {out}/",
        flush=True,
    )


if __name__ == "__main__":
    main()
