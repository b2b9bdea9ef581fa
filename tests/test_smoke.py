"""A first end-to-end check on every backend: the seed CNN takes a training step."""

import numpy as np

import nnx


def test_seed_cnn_step(backend, rng):
    net = nnx.Sequential(
        nnx.Conv1D(3, 1, 8),
        nnx.MaxPool1D(2, 2),
        nnx.Flatten(),
        nnx.Linear(8 * 15, 10),
        nnx.ReLU(),
        nnx.Linear(10, 3),
    )
    opt = nnx.Optim(net, nnx.CELogSoftmax(), eps=0.1)
    X = rng.standard_normal((16, 32, 1))
    y = rng.integers(0, 3, 16)
    first = float(np.mean(nnx.to_numpy(opt.step(X, y))))
    for _ in range(30):
        last = float(np.mean(nnx.to_numpy(opt.step(X, y))))
    assert np.isfinite(first) and last < first
    assert nnx.backends.backend_of(net[0]._parameters["weight"]).name == backend
