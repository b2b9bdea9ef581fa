"""A training step reads one number back from the device: the loss.

On a GPU every value brought back to Python (``float(x)``, ``int(x)``, ``bool(x)``,
``x.item()``, a copy to the host) waits for every kernel queued before it, so a step
that reads twice stalls twice. These tests count such reads on PyTorch tensors (whose
methods can be wrapped; CuPy's cannot), which run the very code a CuPy step runs:
``Optim.step`` may read the batch loss once (for its non-finite check) and nothing
else, whatever the loss, the targets, the layers and the optimiser.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np
import pytest

import nnx
from nnx import optimizers

torch = pytest.importorskip("torch")

#: Tensor methods that bring data back to the host (each is a synchronisation on CUDA)
READS = ("__float__", "__int__", "__bool__", "__index__", "item", "tolist", "cpu")


@contextlib.contextmanager
def count_reads() -> Iterator[list[str]]:
    """Record every host read of a torch tensor made inside the block."""
    seen: list[str] = []
    saved = {name: getattr(torch.Tensor, name) for name in READS}

    def wrap(name: str, method):  # noqa: ANN001, ANN202
        def counted(self, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
            seen.append(name)
            return method(self, *args, **kwargs)

        return counted

    for name, method in saved.items():
        setattr(torch.Tensor, name, wrap(name, method))
    try:
        yield seen
    finally:
        for name, method in saved.items():
            setattr(torch.Tensor, name, method)


def mlp() -> nnx.Sequential:
    return nnx.Sequential(nnx.Linear(16, 12), nnx.TanH(), nnx.Linear(12, 5))


def cnn() -> nnx.Sequential:
    return nnx.Sequential(
        nnx.Conv1D(3, 2, 4, bias=True),
        nnx.MaxPool1D(2, 2),
        nnx.ReLU(),
        nnx.Conv1D(2, 4, 3, stride=2),
        nnx.AvgPool1D(2, 1),
        nnx.Flatten(),
        nnx.Linear(6, 5),
    )


def data(kind: str, targets: str) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    X = rng.standard_normal((8, 16) if kind == "mlp" else (8, 17, 2))
    labels = rng.integers(0, 5, 8)
    if targets == "labels":
        return X, labels
    if targets == "one-hot":
        return X, np.eye(5)[labels]
    return X, rng.standard_normal((8, 5))  # real targets (MSELoss)


@pytest.fixture
def on_torch():
    with nnx.use_backend("torch"):
        nnx.manual_seed(0)
        yield


LOSSES = {
    "CELogSoftmax": (nnx.CELogSoftmax, ("labels", "one-hot")),
    "MSELoss": (nnx.MSELoss, ("real",)),
}


@pytest.mark.usefixtures("on_torch")
@pytest.mark.parametrize("kind", ["mlp", "cnn"])
@pytest.mark.parametrize(
    "loss_name,targets",
    [(name, t) for name, (_, ts) in LOSSES.items() for t in ts],
)
@pytest.mark.parametrize("optimizer", [None, "Adam", "Momentum"])
def test_a_step_reads_the_loss_once(kind, loss_name, targets, optimizer):
    net = mlp() if kind == "mlp" else cnn()
    opt_obj = None if optimizer is None else getattr(optimizers, optimizer)(1e-2)
    optim = nnx.Optim(net, LOSSES[loss_name][0](), eps=1e-2, optimizer=opt_obj)
    Xh, yh = data(kind, targets)
    X, y = nnx.asarray(Xh), nnx.asarray(yh)
    optim.step(X, y)  # first step: optimiser state, caches
    with count_reads() as seen:
        for _ in range(3):
            optim.step(X, y)
    assert len(seen) == 3, f"host reads in 3 steps: {seen}"


@pytest.mark.usefixtures("on_torch")
@pytest.mark.parametrize("targets", ["labels", "one-hot"])
def test_an_epoch_reads_once_per_batch(targets):
    """SGD over data on the device: one read per batch (its loss); what else it reads
    (the data check, a snapshot of the parameters per epoch, the epoch's accuracy) does
    not grow with the number of batches."""
    Xh, yh = data("mlp", targets)
    X, y = nnx.asarray(np.concatenate([Xh] * 4)), nnx.asarray(np.concatenate([yh] * 4))
    extra = {}
    for batch_size in (8, 4, 2):
        optim = nnx.Optim(mlp(), nnx.CELogSoftmax(), eps=1e-2)
        optim.SGD(X, y, batch_size=batch_size, epochs=1, progress=False)
        with count_reads() as seen:
            optim.SGD(X, y, batch_size=batch_size, epochs=2, progress=False)
        batches = 2 * (32 // batch_size)
        assert len(seen) >= batches
        extra[batch_size] = len(seen) - batches
    assert extra[8] == extra[4] == extra[2], f"reads beyond one per batch: {extra}"


@pytest.mark.usefixtures("on_torch")
def test_the_counter_sees_reads():
    """The counter itself works (otherwise the tests above could not fail)."""
    t = nnx.asarray(np.ones(3))
    with count_reads() as seen:
        float(t.sum())
        int(t[0])
        bool(t[1] > 0)
    assert seen == ["__float__", "__int__", "__bool__"]


@pytest.mark.parametrize("loss_cls", [nnx.CELogSoftmax, nnx.CrossEntropyLoss, nnx.NLLLoss])
def test_labels_checked_in_the_step_read(backend, loss_cls):
    """The deferred label check (device backends) raises like the immediate one (NumPy):
    ValueError naming the loss and the bad values, parameters untouched."""
    net = mlp()
    optim = nnx.Optim(net, loss_cls(), eps=1e-2)
    Xh, yh = data("mlp", "labels")
    yh = yh.copy()
    yh[3] = 7
    X, y = nnx.asarray(Xh), nnx.asarray(yh)
    before = net.state_dict()
    with pytest.raises(
        ValueError, match=rf"{loss_cls.__name__}: labels must lie in \[0, 5\).*\[0, 7\]"
    ):
        optim.step(X, y)
    after = net.state_dict()
    assert all(np.array_equal(before[k], after[k]) for k in before)
    # nothing of the refused step is reused by a later call on the very same arrays
    yhat = net._inputs[-1]  # the step's output, as Sequential kept it for backward
    with pytest.raises(ValueError, match="labels must lie"):
        optim.loss.backward(y, yhat)
    with pytest.raises(ValueError, match="labels must lie"):
        optim.loss.forward(y, yhat)
