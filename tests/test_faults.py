"""Training faults: diverging losses, Ctrl-C, and a long soak, on every backend.

- A non-finite loss stops ``Optim.step`` / ``SGD`` / ``SGD_eval`` with
  ``FloatingPointError`` naming the epoch and the batch; the parameters are exactly
  those from before the bad step.
- ``KeyboardInterrupt`` raised inside a training loop (injected by a module whose
  forward raises it on its N-th call) ends the loop cleanly: it returns the history of
  the finished epochs, every progress bar is closed, and the parameters are those of a
  reference run stopped after the same epochs.
- A soak of 10,000 training steps on NumPy shows no memory growth (``tracemalloc``
  also sees NumPy's buffers); the other backends run a shorter soak that watches
  Python-level allocations. Figures are printed (``pytest -s``) and recorded as test
  properties.
"""

from __future__ import annotations

import gc
import math
import re
import time
import tracemalloc

import numpy as np
import pytest
from helpers import host, record_tqdm_bars

import nnx

# -- helpers -------------------------------------------------------------------------------


class Trap(nnx.Module):
    """Identity layer that misbehaves on its ``at``-th forward call (1-based).

    ``action="nan"`` returns NaNs (a non-finite loss follows), ``"interrupt"`` raises
    ``KeyboardInterrupt`` as Ctrl-C would. With ``watch``, the watched network's
    parameters are recorded at that moment (= before the bad step).
    """

    def __init__(self, at: int, action: str, watch: nnx.Module | None = None) -> None:
        super().__init__()
        self.at, self.action, self.watch = at, action, watch
        self.calls = 0
        self.before: dict[str, np.ndarray] | None = None

    def forward(self, X):
        self.calls += 1
        if self.calls == self.at:
            if self.watch is not None:
                self.before = self.watch.state_dict()
            if self.action == "interrupt":
                raise KeyboardInterrupt
            return X * math.nan
        return X

    def backward_delta(self, input, delta):
        return delta


def make_net(seed: int = 0) -> nnx.Sequential:
    nnx.manual_seed(seed)
    return nnx.Sequential(nnx.Linear(4, 8), nnx.TanH(), nnx.Linear(8, 3))


def data(n: int = 40, seed: int = 3) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, 4))
    y = (X[:, 0] > 0).astype(np.int64) + (X[:, 1] > 0.5).astype(np.int64)
    return X, y


def assert_same_state(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def assert_close_state(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
    """Same parameters up to float32 rounding (a run repeated on another object)."""
    assert got.keys() == want.keys()
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-6, atol=1e-7, err_msg=k)


def run_catching_interrupt(fn, *args, **kwargs):
    """Call ``fn``; a KeyboardInterrupt escaping it fails the test (not the session)."""
    try:
        return fn(*args, **kwargs)
    except KeyboardInterrupt:
        pytest.fail("KeyboardInterrupt escaped the training loop")


@pytest.fixture
def bars(monkeypatch):
    """Every tqdm bar the loops create (forced on with ``progress=True``)."""
    created = record_tqdm_bars(monkeypatch)
    # the batch bar is drawn from the first batch on, not after half a second
    monkeypatch.setattr(nnx.training.progress, "BATCH_BAR_DELAY", 0.0)
    return created


def assert_closed(bars: list) -> None:
    # the epochs bar, and the batch bar unless the very first batch failed (it is drawn
    # at the first batch's end)
    assert bars, "expected an epochs bar"
    still_open = [b.desc for b in bars if not b.disable]
    assert not still_open, f"progress bars left open: {still_open}"


# -- non-finite losses ---------------------------------------------------------------------
@pytest.mark.parametrize("optimizer", [None, "momentum", "adam"])
def test_step_non_finite_loss_keeps_parameters(backend, optimizer):
    net = make_net()
    trap = Trap(at=2, action="nan", watch=net)
    net.add(trap)
    rule = None if optimizer is None else nnx.optimizers.get(optimizer, 0.01)
    opt = nnx.Optim(net, nnx.CELogSoftmax(), eps=0.1, optimizer=rule)
    X, y = data(8)
    opt.step(X, y)
    with pytest.raises(FloatingPointError, match=r"Optim\.step.*non-finite"):
        opt.step(X, y)
    assert_same_state(net.state_dict(), trap.before)


@pytest.mark.parametrize("epoch, batch", [(1, 1), (3, 2), (4, 5)])
def test_sgd_non_finite_loss_names_epoch_and_batch(backend, bars, epoch, batch):
    X, y = data(40)  # 5 batches of 8 per epoch
    net = make_net()
    trap = Trap(at=(epoch - 1) * 5 + batch, action="nan", watch=net)
    net.add(trap)
    opt = nnx.Optim(net, nnx.CELogSoftmax(), eps=0.05)
    with pytest.raises(FloatingPointError) as info:
        opt.SGD(X, y, batch_size=8, epochs=6, progress=True)
    message = str(info.value)
    assert re.search(rf"Optim\.SGD\b.*\bepoch {epoch}\b.*\bbatch {batch}\b", message), message
    assert_same_state(net.state_dict(), trap.before)
    assert_closed(bars)


def test_sgd_eval_non_finite_loss_names_epoch_and_batch(backend):
    X, y = data(50)  # test_size 0.2: 40 training samples, 5 batches, + 1 evaluation pass
    net = make_net()
    trap = Trap(at=(2 - 1) * 6 + 4, action="nan", watch=net)
    net.add(trap)
    opt = nnx.Optim(net, nnx.CELogSoftmax(), eps=0.05)
    with pytest.raises(FloatingPointError) as info:
        opt.SGD_eval(
            X, y, batch_size=8, epochs=5, test_size=0.2, progress=False, restore_best=False
        )
    message = str(info.value)
    assert re.search(r"Optim\.SGD_eval\b.*\bepoch 2\b.*\bbatch 4\b", message), message
    assert_same_state(net.state_dict(), trap.before)


def test_sgd_eval_non_finite_loss_restores_the_best_epoch(backend):
    """With restore_best=True a blow-up leaves the best epoch's parameters."""
    X, y = data(50)
    net = make_net()
    trap = Trap(at=(3 - 1) * 6 + 2, action="nan", watch=net)
    net.add(trap)
    opt = nnx.Optim(net, nnx.CELogSoftmax(), eps=0.05)
    states = {}

    def remember(record):
        states[record["epoch"]] = net.state_dict()

    with pytest.raises(FloatingPointError, match=r"epoch 3\b.*batch 2\b"):
        opt.SGD_eval(
            X, y, 8, 5, test_size=0.2, progress=False, restore_best=True, callback=remember
        )
    assert len(opt.history["epoch"]) == 2  # the finished epochs are kept
    assert opt.best_epoch in (1, 2)
    assert_same_state(net.state_dict(), states[opt.best_epoch])


@pytest.mark.parametrize("loop", ["SGD", "SGD_eval"])
def test_non_finite_data_is_refused_before_training(backend, loop):
    """NaN in the data is the user's, not a divergence: ValueError before any step."""
    X, y = data(40)
    X[21, 2] = np.nan
    X_before = X.copy()
    net = make_net()
    initial = net.state_dict()
    opt = nnx.Optim(net, nnx.CELogSoftmax(), eps=0.05)
    args = (X, y, 8, 2) if loop == "SGD" else (X, y, 8, 2, 0.25)
    with pytest.raises(ValueError, match=rf"Optim\.{loop}\b.*non-finite.*sample 21\b"):
        getattr(opt, loop)(*args, progress=False)
    np.testing.assert_array_equal(X, X_before)  # the caller's data is untouched
    assert_same_state(net.state_dict(), initial)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # NumPy reports the overflow too
def test_real_divergence_stops_with_finite_parameters(backend):
    """Linear regression with a far too large step: the loss explodes to inf."""
    rng = np.random.default_rng(0)
    X = rng.standard_normal((64, 4)) * 10
    y = X @ rng.standard_normal((4, 2))
    nnx.manual_seed(0)
    net = nnx.Sequential(nnx.Linear(4, 2))
    opt = nnx.Optim(net, nnx.MSELoss(), eps=1.0)
    with pytest.raises(FloatingPointError, match=r"epoch \d+.*batch \d+"):
        opt.SGD(X, y, batch_size=16, epochs=1000, progress=False)
    for k, v in net.state_dict().items():
        assert np.all(np.isfinite(v)), k


# -- Ctrl-C --------------------------------------------------------------------------------
def test_sgd_interrupt_returns_finished_epochs(backend, bars):
    X, y = data(40)
    ref = nnx.Optim(make_net(), nnx.CELogSoftmax(), eps=0.05)
    ref_losses = ref.SGD(X, y, batch_size=8, epochs=2, seed=7, progress=False)

    net = make_net()
    net.add(Trap(at=2 * 5 + 3, action="interrupt"))  # epoch 3, batch 3
    opt = nnx.Optim(net, nnx.CELogSoftmax(), eps=0.05)
    losses = run_catching_interrupt(opt.SGD, X, y, batch_size=8, epochs=6, seed=7, progress=True)

    assert opt.interrupted
    assert isinstance(losses, np.ndarray) and losses.shape == (2,)
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-6)
    # parameters of the end of epoch 2 (half of epoch 3 undone)
    assert_close_state(net.state_dict(), ref.network.state_dict())
    assert_closed(bars)


def test_sgd_interrupt_in_first_epoch(backend, bars):
    X, y = data(40)
    net = make_net()
    initial = net.state_dict()
    net.add(Trap(at=4, action="interrupt"))
    opt = nnx.Optim(net, nnx.CELogSoftmax(), eps=0.05)
    losses = run_catching_interrupt(opt.SGD, X, y, batch_size=8, epochs=3, progress=True)
    assert opt.interrupted
    assert losses.shape == (0,)
    assert_same_state(net.state_dict(), initial)
    assert_closed(bars)


def test_sgd_eval_interrupt_returns_finished_epochs(backend, bars):
    pytest.importorskip("pandas")
    X, y = data(50)
    kwargs = dict(batch_size=8, test_size=0.2, patience=None, seed=5, return_dataframe=True)
    ref = nnx.Optim(make_net(), nnx.CELogSoftmax(), eps=0.05)
    ref_hist = ref.SGD_eval(X, y, epochs=3, progress=False, **kwargs)

    net = make_net()
    net.add(Trap(at=3 * 6 + 2, action="interrupt"))  # epoch 4, batch 2
    opt = nnx.Optim(net, nnx.CELogSoftmax(), eps=0.05)
    hist = run_catching_interrupt(opt.SGD_eval, X, y, epochs=8, progress=True, **kwargs)

    assert opt.interrupted
    assert list(hist.columns) == ["epoch", "loss_train", "loss_test", "score_train", "score_test"]
    assert list(hist["epoch"]) == [0, 1, 2]
    np.testing.assert_allclose(hist.to_numpy(), ref_hist.to_numpy(), rtol=1e-6)
    assert_close_state(net.state_dict(), ref.network.state_dict())
    assert_closed(bars)


def test_sgd_eval_interrupt_during_evaluation(backend, bars):
    """Ctrl-C in the test pass of epoch 2: epoch 1 is the last finished epoch."""
    X, y = data(50)
    net = make_net()
    net.add(Trap(at=6 + 6, action="interrupt"))  # the evaluation call of epoch 2
    opt = nnx.Optim(net, nnx.CELogSoftmax(), eps=0.05)
    out = run_catching_interrupt(
        opt.SGD_eval, X, y, batch_size=8, epochs=5, test_size=0.2, progress=True
    )
    assert opt.interrupted
    assert len(out) == 4 and all(a.shape == (1,) for a in out)
    assert all(np.all(np.isfinite(a)) for a in out)
    assert_closed(bars)


# -- soak ---------------------------------------------------------------------------------
SOAK_STEPS = 10_000  # NumPy, under tracemalloc (which also traces NumPy's data buffers)
SOAK_STEPS_OTHER = 1_000  # other backends: live-object count only (buffers are invisible)
SOAK_GROWTH_LIMIT = 256 * 1024  # bytes of traced memory, from after the warm-up to the end


def _soak_setup():
    rng = np.random.default_rng(0)
    n, batch = 100, 4  # 25 steps per epoch
    X = rng.standard_normal((n, 16, 1))
    y = rng.integers(0, 3, n)
    nnx.manual_seed(0)
    net = nnx.Sequential(
        nnx.Conv1D(3, 1, 4),
        nnx.MaxPool1D(2, 2),
        nnx.Flatten(),
        nnx.Linear(4 * 7, 3),
        nnx.LogSoftmax(),
    )
    return nnx.Optim(net, nnx.CrossEntropyLoss(), eps=1e-3), X, y, batch, n // batch


def test_soak_no_memory_growth(backend, record_property):
    """10,000 SGD steps (NumPy): traced memory after the run ~ after the warm-up.

    The only legitimate growth is the history (three floats per epoch, ~40 KB here).
    Leaking one small array or even one Python float per step would exceed the limit.
    """
    if backend != "numpy":
        pytest.skip("tracemalloc traces NumPy's buffers only; see test_soak_live_objects")
    opt, X, y, batch, per_epoch = _soak_setup()
    warm_epochs = SOAK_STEPS // per_epoch // 10
    epochs = SOAK_STEPS // per_epoch - warm_epochs
    gc.collect()
    tracemalloc.start()
    try:
        opt.SGD(X, y, batch, warm_epochs, seed=1, progress=False)
        gc.collect()
        before = tracemalloc.get_traced_memory()[0]
        objects_before = len(gc.get_objects())
        t0 = time.perf_counter()
        losses = opt.SGD(X, y, batch, epochs, seed=2, progress=False)
        elapsed = time.perf_counter() - t0
        gc.collect()
        after, peak = tracemalloc.get_traced_memory()
        objects_after = len(gc.get_objects())
    finally:
        tracemalloc.stop()

    total = (warm_epochs + epochs) * per_epoch
    growth = after - before
    record_property("soak_steps", total)
    record_property("soak_bytes_before", before)
    record_property("soak_bytes_after", after)
    print(
        f"\nsoak[{backend}]: {total} steps; traced memory {before} B after "
        f"{warm_epochs * per_epoch} warm-up steps -> {after} B at the end (growth {growth} B, "
        f"peak {peak} B); live objects {objects_before} -> {objects_after}; {elapsed:.1f} s"
    )
    assert total == SOAK_STEPS
    assert np.all(np.isfinite(losses))
    assert growth < SOAK_GROWTH_LIMIT, f"memory grew by {growth} bytes over {total} steps"
    assert objects_after - objects_before < 100, (objects_before, objects_after)


@pytest.fixture
def one_torch_thread(backend):
    """Tiny tensors: PyTorch's intra-op threads only add contention on a busy CI box."""
    if backend != "torch":
        yield
        return
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def test_soak_live_objects(backend, one_torch_thread, record_property):
    """1,000 SGD steps on every backend: no Python objects (arrays, tensors) pile up."""
    opt, X, y, batch, per_epoch = _soak_setup()
    opt.SGD(X, y, batch, 4, seed=1, progress=False)
    gc.collect()
    before = len(gc.get_objects())
    losses = opt.SGD(X, y, batch, SOAK_STEPS_OTHER // per_epoch, seed=2, progress=False)
    gc.collect()
    after = len(gc.get_objects())
    record_property("live_objects_before", before)
    record_property("live_objects_after", after)
    print(f"\nlive objects[{backend}]: {before} -> {after} over {SOAK_STEPS_OTHER} steps")
    assert np.all(np.isfinite(losses))
    assert after - before < 100, f"{after - before} more live objects after the soak"
    assert all(np.all(np.isfinite(host(p))) for p in opt.network.parameters())
