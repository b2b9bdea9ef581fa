"""An autoencoder on the 8x8 digits with BCELoss (as in the experiments of the original
library, NeuralNetworksDIY).

    python examples/autoencoder_digits.py                  # best available backend
    python examples/autoencoder_digits.py --backend cupy   # NVIDIA GPU
    python examples/autoencoder_digits.py --backend numpy --epochs 20

Encoder 64 -> 32 -> 10 (TanH), decoder 10 -> 32 -> 64 with a StableSigmoid output,
trained with Adam on BCELoss (pixels scaled to [0, 1]); early stopping on the
validation loss. Writes ``reconstructions.png`` (test digits, top row, and their
reconstructions, bottom row), ``learning_curve.png`` and the trained model.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

import nnx
from nnx.cli import limit_threads
from nnx.training import Progress

try:  # run as a script from the repository, or with examples/ on the path
    from train_mnist1d_gpu import choose_backend
except ImportError:  # pragma: no cover
    from examples.train_mnist1d_gpu import choose_backend


def autoencoder(size: int = 64, hidden: int = 32, code: int = 10) -> nnx.Sequential:
    encoder = nnx.Sequential(
        nnx.Linear(size, hidden), nnx.TanH(), nnx.Linear(hidden, code), nnx.TanH()
    )
    decoder = nnx.Sequential(
        nnx.Linear(code, hidden), nnx.TanH(), nnx.Linear(hidden, size), nnx.StableSigmoid()
    )
    return nnx.Sequential(encoder, decoder)


def save_reconstructions(originals: np.ndarray, recon: np.ndarray, path: Path) -> None:
    from matplotlib.figure import Figure

    n = originals.shape[0]
    fig = Figure(figsize=(n * 0.9, 2.0), layout="constrained")
    axes = fig.subplots(2, n)
    for i in range(n):
        for row, img in ((0, originals[i]), (1, recon[i])):
            axes[row, i].imshow(img.reshape(8, 8), cmap="gray_r", vmin=0, vmax=1)
            axes[row, i].set_axis_off()
    fig.suptitle("test digits (top) and their reconstructions (bottom)")
    fig.savefig(path, dpi=100)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].replace("\n", " "))
    p.add_argument(
        "--backend", default="auto", choices=["auto", "cupy", "torch", "numpy", "array_api_strict"]
    )
    p.add_argument("--device", default=None)
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/example-autoencoder")
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="BLAS and PyTorch CPU threads (default 1, as nnx train)",
    )
    args = p.parse_args()
    backend, device = choose_backend(p, args)
    with limit_threads(args.threads, torch=backend == "torch"):
        train(args, backend, device)


def train(args: argparse.Namespace, backend: str, device: str | None) -> None:
    nnx.set_backend(backend, device)
    nnx.manual_seed(args.seed)
    X, _, X_test, y_test = nnx.datasets.digits(flatten=True)
    net = autoencoder()
    optim = nnx.Optim(net, nnx.BCELoss(), optimizer=nnx.optimizers.Adam(lr=args.lr))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    loss_train, _, loss_val, _ = optim.SGD_eval(
        X,
        X,
        args.batch_size,
        args.epochs,
        test_size=0.1,
        patience=10,
        shuffle_test=True,
        seed=args.seed,
        monitor="loss",
        restore_best=True,
        callback=None if Progress.resolve(None) else _log,
    )
    nnx.training.plot_history(
        optim.history, out / "learning_curve.png", labels=("train", "validation")
    )
    test_loss, _ = optim.evaluate(X_test, X_test)
    # one test digit of each class
    picks = [int(np.flatnonzero(y_test == k)[0]) for k in range(10)]
    recon = nnx.to_numpy(optim.predict(X_test[picks]))
    save_reconstructions(X_test[picks], recon, out / "reconstructions.png")
    nnx.save(net, out / "model.npz", metadata={"dataset": "digits", "test_bce": test_loss})
    mse = float(np.mean((nnx.to_numpy(optim.predict(X_test)) - X_test) ** 2))
    print(
        f"test BCE {test_loss:.2f} per image, pixel MSE {mse:.4f}  [backend "
        f"{nnx.get_backend()}, best epoch {optim.best_epoch} of {len(loss_train)}]  "
        f"wrote {out}/",
        flush=True,
    )


def _log(r: dict) -> None:
    print(f"epoch {r['epoch']:3d}  loss {r['loss_train']:.4f}  val_loss {r['loss_test']:.4f}")


if __name__ == "__main__":
    main()
