"""A training run for the checkpoint tests, run as a subprocess.

``python tests/checkpoint_run.py OPTIMIZER CHECKPOINT RESULT [LOOP]`` trains a small
MLP with ``Optim.SGD_eval`` (or ``SGD``) and ``checkpoint=CHECKPOINT``, prints
``epoch N`` after every epoch, and writes the final parameters and history to RESULT
(.npz). Killed and started again, it must write the same RESULT as a run never killed.
"""

from __future__ import annotations

import sys

import numpy as np

import nnx

OPTIMIZERS = {
    "eps": lambda: None,
    "sgd": lambda: nnx.optimizers.SGD(0.01),
    "momentum": lambda: nnx.optimizers.Momentum(0.01),
    "nesterov": lambda: nnx.optimizers.Momentum(0.01, nesterov=True),
    "adam": lambda: nnx.optimizers.Adam(0.005),
}
EPOCHS = 12


def main(name: str, checkpoint: str, result: str, loop: str = "SGD_eval") -> None:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(1500, 20))
    y = (X[:, :3].sum(axis=1) > 0).astype(np.int64) + (X[:, 3] > 1)
    nnx.manual_seed(0)
    net = nnx.Sequential(nnx.Linear(20, 64), nnx.TanH(), nnx.Linear(64, 3))
    opt = nnx.Optim(net, nnx.CELogSoftmax(), eps=0.002, optimizer=OPTIMIZERS[name]())

    def say(record: dict) -> None:
        print(f"epoch {record['epoch']}", flush=True)

    if loop == "SGD":
        opt.SGD(X, y, 10, EPOCHS, checkpoint=checkpoint, progress=False)
    else:
        opt.SGD_eval(
            X, y, 10, EPOCHS, 0.2, patience=None, checkpoint=checkpoint, progress=False,
            callback=say,
        )  # fmt: skip
    history = {f"history/{k}": np.asarray(v, dtype=np.float64) for k, v in opt.history.items()}
    np.savez(result, **net.state_dict(), **history, interrupted=opt.interrupted)
    print("done", flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:])
