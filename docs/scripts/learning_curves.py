"""Figure: learning curves of Optim.SGD_eval on the 8x8 digits.

Writes docs/_generated/learning_curves.png with :func:`nnx.training.plot_history`, the
function ``nnx train`` and ``SGD_eval(online_plot=...)`` use, from the DataFrame that
``SGD_eval(return_dataframe=True)`` returns. A few seconds on a CPU.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the working tree's nnx
import nnx  # noqa: E402

OUT = Path(__file__).resolve().parents[1] / "_generated" / "learning_curves.png"


def main() -> None:
    start = time.perf_counter()
    nnx.set_backend("numpy")
    nnx.manual_seed(0)
    X_train, y_train, X_test, y_test = nnx.datasets.digits(flatten=True)
    net = nnx.Sequential(
        nnx.Linear(64, 64),
        nnx.ReLU(),
        nnx.Linear(64, 10),
    )
    optim = nnx.Optim(net, nnx.CELogSoftmax(), eps=1e-3)
    history = optim.SGD_eval(
        X_train,
        y_train,
        batch_size=32,
        epochs=40,
        test_size=0.2,
        patience=10,
        restore_best=True,
        return_dataframe=True,
        progress=False,
    )
    accuracy = optim.score(X_test, y_test)
    print(history.tail(3).to_string(index=False))
    title = (
        "MLP 64-64-10, 8x8 digits, eps=1e-3: "
        "SGD_eval(batch_size=32, test_size=0.2, patience=10)\n"
        f"kept epoch {optim.best_epoch} (best validation accuracy); test accuracy "
        f"(the data set's test digits): {accuracy:.3f}"
    )
    OUT.parent.mkdir(parents=True, exist_ok=True)
    nnx.training.plot_history(history, OUT, title=title)
    print(f"wrote {OUT} in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
