"""Figure: a Linear/Sigmoid autoencoder trained with BCELoss on the 8x8 digits.

Writes docs/_generated/autoencoder.png: test digits (top row) and their reconstructions
through a 16-unit bottleneck (bottom row). Runs in a few seconds on a CPU.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the working tree's nnx
import nnx  # noqa: E402

OUT = Path(__file__).resolve().parents[1] / "_generated" / "autoencoder.png"


def main() -> None:
    start = time.perf_counter()
    # [train]
    # (n, 64) rows of pixels scaled to [0, 1]: the targets of BCELoss are the inputs.
    X_train, _, X_test, _ = nnx.datasets.digits(flatten=True)
    rng = np.random.default_rng(0)

    nnx.set_backend("numpy")
    nnx.manual_seed(0)
    autoencoder = nnx.Sequential(
        nnx.Linear(64, 32, init_type="xavier_normal"),
        nnx.Sigmoid(),
        nnx.Linear(32, 16, init_type="xavier_normal"),
        nnx.Sigmoid(),
        nnx.Linear(16, 32, init_type="xavier_normal"),
        nnx.Sigmoid(),
        nnx.Linear(32, 64, init_type="xavier_normal"),
        nnx.StableSigmoid(),
    )
    optim = nnx.Optim(autoencoder, nnx.BCELoss(), eps=3e-2)
    batch = 32
    for epoch in range(150):
        perm = rng.permutation(len(X_train))
        losses = []
        for i in range(0, len(X_train), batch):
            xb = X_train[perm[i : i + batch]]
            losses.append(float(np.mean(nnx.to_numpy(optim.step(xb, xb)))))
        if epoch % 50 == 49:
            print(f"epoch {epoch + 1}: train BCE per image {np.mean(losses):.2f}")
    recon = nnx.to_numpy(autoencoder(nnx.asarray(X_test)))
    # [/train]
    test_bce = float(np.mean(nnx.to_numpy(nnx.BCELoss()(nnx.asarray(X_test), nnx.asarray(recon)))))

    n = 10
    fig, axes = plt.subplots(2, n, figsize=(n * 0.9, 2.2), dpi=130)
    for j in range(n):
        for row, images in enumerate((X_test, recon)):
            ax = axes[row, j]
            ax.imshow(images[j].reshape(8, 8), cmap="gray_r", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
    axes[0, 0].set_ylabel("input", fontsize=9)
    axes[1, 0].set_ylabel("output", fontsize=9)
    fig.suptitle(
        f"64-32-16-32-64 Sigmoid autoencoder, BCELoss; test BCE per image {test_bce:.1f}",
        fontsize=9,
    )
    fig.tight_layout()
    OUT.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(OUT)
    print(f"wrote {OUT} in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
