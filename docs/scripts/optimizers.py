"""Figure: plain updates, Momentum and Adam on the same network and data.

Writes docs/_generated/optimizers.png: validation accuracy and training loss per epoch of
one MLP on the 8x8 digits (same initial weights, same batches) trained with
``Optim(eps=...)`` (plain gradient steps) and with ``nnx.optimizers.Momentum`` and
``nnx.optimizers.Adam``. A few seconds on a CPU.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the working tree's nnx
import nnx  # noqa: E402

OUT = Path(__file__).resolve().parents[1] / "_generated" / "optimizers.png"
EPOCHS = 25


def network() -> nnx.Sequential:
    nnx.manual_seed(0)  # the same initial weights for every run
    return nnx.Sequential(nnx.Linear(64, 64), nnx.ReLU(), nnx.Linear(64, 10))


def main() -> None:
    start = time.perf_counter()
    nnx.set_backend("numpy")
    X_train, y_train, _, _ = nnx.datasets.digits(flatten=True)
    runs = {
        "Optim(eps=1e-4), plain steps": nnx.Optim(network(), nnx.CELogSoftmax(), eps=1e-4),
        "Momentum(lr=1e-4, momentum=0.9)": nnx.Optim(
            network(), nnx.CELogSoftmax(), optimizer=nnx.optimizers.Momentum(1e-4, 0.9)
        ),
        "Adam(lr=1e-3)": nnx.Optim(
            network(), nnx.CELogSoftmax(), optimizer=nnx.optimizers.Adam(1e-3)
        ),
    }
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(9, 3.6), dpi=100, layout="constrained")
    for label, optim in runs.items():
        h = optim.SGD_eval(
            X_train,
            y_train,
            batch_size=32,
            epochs=EPOCHS,
            test_size=0.2,
            patience=None,
            return_dataframe=True,
            progress=False,
        )
        ax_loss.plot(h["epoch"], h["loss_train"], marker=".", label=label)
        ax_acc.plot(h["epoch"], h["score_test"], marker=".", label=label)
        print(f"{label:34s} final validation accuracy {h['score_test'].iloc[-1]:.3f}")
    ax_loss.set_ylabel("training loss (mean per sample)")
    ax_loss.set_yscale("log")
    ax_acc.set_ylabel("validation accuracy (SGD_eval split)")
    for ax in (ax_loss, ax_acc):
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    ax_acc.legend(loc="lower right", fontsize=8)
    fig.suptitle("One MLP on the 8x8 digits, same initial weights and batches", fontsize=10)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(OUT)
    print(f"wrote {OUT} in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
