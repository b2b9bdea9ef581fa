"""Optim's training loops (SGD, SGD_eval) on every backend, and parity with PyTorch."""

from __future__ import annotations

import math

import numpy as np
import pytest
from helpers import record_tqdm_bars

import nnx
from nnx.module import Module


class Recorder(Module):
    """Identity layer that records the first feature of every training input it sees."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[np.ndarray] = []
        self.recording = True

    def forward(self, X):
        if self.recording:
            self.seen.append(nnx.to_numpy(X)[:, 0].copy())
        return X

    def backward_delta(self, input, delta):
        return delta


class FailingLoss(nnx.CELogSoftmax):
    """CELogSoftmax that raises KeyboardInterrupt on its ``at``-th forward call."""

    def __init__(self, at: int) -> None:
        self.calls, self.at = 0, at

    def forward(self, y, yhat):
        self.calls += 1
        if self.calls == self.at:
            raise KeyboardInterrupt
        return super().forward(y, yhat)


def _data(rng, n=60, d=4, k=3):
    X = rng.standard_normal((n, d))
    W = rng.standard_normal((d, k))
    return X, np.argmax(X @ W, axis=1)


def _net(d=4, k=3):
    return nnx.Sequential(nnx.Linear(d, 8), nnx.TanH(), nnx.Linear(8, k))


def _params(net):
    return {k: v.copy() for k, v in net.state_dict().items()}


def _same(a, b, tol=0.0):
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_allclose(a[k], b[k], rtol=tol, atol=tol)


# -- SGD -----------------------------------------------------------------------------
def test_sgd_returns_mean_loss_per_epoch_and_learns(backend, rng):
    X, y = _data(rng)
    net = _net()
    opt = nnx.Optim(net, nnx.CELogSoftmax(), eps=0.05)
    before = float(np.mean(nnx.to_numpy(opt.loss(nnx.asarray(y), net(nnx.asarray(X))))))
    losses = opt.SGD(X, y, batch_size=16, epochs=8, progress=False)
    assert isinstance(losses, np.ndarray) and losses.shape == (8,) and losses.dtype == np.float64
    assert losses[-1] < losses[0] < before * 1.5
    assert opt.score(X, y) > 0.7


def test_batches_are_consecutive_slices_of_a_new_shuffle_each_epoch(backend):
    n, bs, seed = 23, 5, 7
    X = np.arange(n, dtype=float)[:, None] * np.ones((1, 2))
    y = np.arange(n) % 2
    rec = Recorder()
    net = nnx.Sequential(rec, nnx.Linear(2, 2))
    nnx.Optim(net, nnx.CELogSoftmax(), eps=0.0).SGD(X, y, bs, 3, seed=seed, progress=False)
    assert [len(b) for b in rec.seen] == [5, 5, 5, 5, 3] * 3
    rng = np.random.default_rng(seed)
    epochs = [np.concatenate(rec.seen[i * 5 : (i + 1) * 5]).astype(int) for i in range(3)]
    for got in epochs:
        np.testing.assert_array_equal(got, rng.permutation(n))
    assert not np.array_equal(epochs[0], epochs[1])
    assert not np.array_equal(epochs[1], epochs[2])


def test_no_shuffle_keeps_order(backend):
    X = np.arange(10, dtype=float)[:, None]
    rec = Recorder()
    net = nnx.Sequential(rec, nnx.Linear(1, 2))
    nnx.Optim(net, nnx.CELogSoftmax(), eps=0.0).SGD(
        X, np.zeros(10, dtype=int), 4, 2, shuffle=False, progress=False
    )
    np.testing.assert_array_equal(np.concatenate(rec.seen), np.tile(np.arange(10.0), 2))


def test_same_seed_same_result_other_seed_other_result(backend, rng):
    X, y = _data(rng)
    runs = []
    for seed in (3, 3, 4):
        nnx.manual_seed(0)
        net = _net()
        nnx.Optim(net, nnx.CELogSoftmax(), eps=0.05).SGD(X, y, 8, 2, seed=seed, progress=False)
        runs.append(_params(net))
    _same(runs[0], runs[1])
    assert not np.allclose(runs[0]["0.weight"], runs[2]["0.weight"])


def test_integer_labels_and_one_hot_give_the_same_training(backend, rng):
    X, y = _data(rng)
    results = []
    for targets in (y, nnx.datasets.one_hot(y, 3)):
        nnx.manual_seed(1)
        net = _net()
        opt = nnx.Optim(net, nnx.CELogSoftmax(), eps=0.05)
        results.append((opt.SGD(X, targets, 16, 3, progress=False), _params(net)))
        assert opt.score(X, targets) == opt.score(X, y)
    np.testing.assert_allclose(results[0][0], results[1][0], rtol=1e-5)
    _same(results[0][1], results[1][1], tol=1e-5)


def test_host_backend_and_batchwise_data_paths_agree(backend, rng):
    X, y = _data(rng)
    results = []
    for mode in ("host", "device", "batchwise"):
        nnx.manual_seed(2)
        net = _net()
        opt = nnx.Optim(net, nnx.CELogSoftmax(), eps=0.05)
        data = (nnx.asarray(X), nnx.asarray(y)) if mode == "device" else (X, y)
        if mode == "batchwise":
            opt.max_device_bytes = 0
        results.append((opt.SGD(*data, 16, 2, progress=False), _params(net)))
        assert nnx.backends.backend_of(net[0]._parameters["weight"]).name == backend
    for other in results[1:]:
        np.testing.assert_allclose(results[0][0], other[0], rtol=1e-6)
        _same(results[0][1], other[1], tol=1e-6)


def test_input_arrays_are_not_modified(backend, rng):
    X, y = _data(rng)
    X0, y0 = X.copy(), y.copy()
    opt = nnx.Optim(_net(), nnx.CELogSoftmax(), eps=0.05)
    opt.SGD(X, y, 16, 2, progress=False)
    opt.SGD_eval(X, y, 16, 2, 0.25, progress=False)
    np.testing.assert_array_equal(X, X0)
    np.testing.assert_array_equal(y, y0)


class NaNLoss(nnx.CELogSoftmax):
    """CELogSoftmax whose ``at``-th forward call returns NaN losses."""

    def __init__(self, at: int) -> None:
        self.calls, self.at = 0, at

    def forward(self, y, yhat):
        self.calls += 1
        out = super().forward(y, yhat)
        return out * float("nan") if self.calls == self.at else out


def test_non_finite_loss_names_epoch_and_batch_and_keeps_parameters(backend, rng):
    X, y = _data(rng, n=40)
    nnx.manual_seed(5)
    net = _net()
    opt = nnx.Optim(net, NaNLoss(at=4 + 3), eps=0.05)  # epoch 2, batch 3 of 4
    nnx.manual_seed(5)
    ref = _net()
    ref_opt = nnx.Optim(ref, nnx.CELogSoftmax(), eps=0.05)
    for start in (0, 10, 20, 30, 0, 10):  # epoch 1, then batches 1-2 of epoch 2
        ref_opt.step(X[start : start + 10], y[start : start + 10])
    with pytest.raises(FloatingPointError, match=r"epoch 2, batch 3 of 4"):
        opt.SGD(X, y, 10, 3, shuffle=False, progress=False)
    _same(_params(net), _params(ref), tol=1e-6)
    assert opt.history["epoch"] == [1]


@pytest.mark.parametrize("where", ["X", "y"])
def test_non_finite_data_is_refused_before_training(backend, rng, where):
    X, y = _data(rng, n=40)
    Y = nnx.datasets.one_hot(y, 3)
    (X if where == "X" else Y)[17, 1] = np.nan
    net = _net()
    before = _params(net)
    with pytest.raises(
        ValueError, match=rf"Optim.SGD: {where} contains non-finite values.*sample 17"
    ):
        nnx.Optim(net, nnx.CELogSoftmax(), eps=0.05).SGD(X, Y, 10, 1)
    _same(_params(net), before)


def test_step_refuses_non_finite_loss(backend):
    net = _net()
    before = _params(net)
    with pytest.raises(FloatingPointError, match="Optim.step: non-finite loss"):
        nnx.Optim(net, nnx.CELogSoftmax(), eps=0.1).step(np.full((2, 4), np.inf), np.array([0, 1]))
    _same(_params(net), before)


def test_keyboard_interrupt_returns_finished_epochs(backend, rng, capsys):
    X, y = _data(rng, n=40)
    nnx.manual_seed(3)
    net = _net()
    opt = nnx.Optim(net, FailingLoss(at=4 * 2 + 3), eps=0.05)  # 4 batches/epoch: epoch 3
    losses = opt.SGD(X, y, 10, 5, seed=1, progress=True)
    assert losses.shape == (2,) and opt.interrupted
    nnx.manual_seed(3)
    ref = _net()
    ref_losses = nnx.Optim(ref, nnx.CELogSoftmax(), eps=0.05).SGD(
        X, y, 10, 2, seed=1, progress=False
    )
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-6)
    _same(_params(net), _params(ref), tol=1e-6)  # back to the end of epoch 2
    err = capsys.readouterr().err
    assert "epochs:  40%" in err and "2/5" in err  # the bar was drawn, then closed


def test_keyboard_interrupt_in_sgd_eval(backend, rng):
    X, y = _data(rng, n=40)
    opt = nnx.Optim(_net(), FailingLoss(at=11), eps=0.05)  # 3 train batches + 1 test pass
    out = opt.SGD_eval(X, y, 10, 5, 0.25, progress=False, return_dataframe=True)
    assert opt.interrupted and list(out["epoch"]) == [0, 1]


def test_progress_silent_when_not_interactive_or_asked(backend, rng, capsys):
    X, y = _data(rng, n=20)
    opt = nnx.Optim(_net(), nnx.CELogSoftmax(), eps=0.05)
    opt.SGD(X, y, 5, 2)  # pytest captures stderr: not a terminal
    opt.SGD_eval(X, y, 5, 2, 0.2, progress=False)
    captured = capsys.readouterr()
    assert captured.err == "" and captured.out == ""
    opt.SGD_eval(X, y, 5, 2, 0.2, progress=True)
    err = capsys.readouterr().err
    assert "epochs: 100%" in err and "2/2" in err
    # the held-out split is "validation" on the bar, as on the command line
    assert "val_loss=" in err and "val_acc=" in err and "acc=" in err
    assert "test" not in err


def test_verbose_is_keras_word_for_progress(backend, rng, capsys):
    X, y = _data(rng, n=20)
    opt = nnx.Optim(_net(), nnx.CELogSoftmax(), eps=0.05)
    opt.SGD(X, y, 5, 2, verbose=False)  # the original's random_data notebook passes it
    opt.SGD_eval(X, y, 5, 2, 0.2, verbose=0)
    captured = capsys.readouterr()
    assert captured.err == "" and captured.out == ""
    opt.SGD(X, y, 5, 2, verbose=1)
    assert "epochs: 100%" in capsys.readouterr().err
    losses = opt.SGD(X, y, 5, 2, verbose=2)  # one line per epoch, no bars
    captured = capsys.readouterr()
    assert captured.err == ""
    lines = captured.out.splitlines()
    assert [line.split(" - ")[0] for line in lines] == ["Epoch 1/2", "Epoch 2/2"]
    assert lines[1].split(" - ")[1] == f"loss: {losses[1]:.4g}"
    opt.SGD_eval(X, y, 5, 2, 0.2, verbose=2)
    last = capsys.readouterr().out.splitlines()[-1]
    assert last.startswith("Epoch 2/2 - loss: ") and " - val_acc: " in last
    with pytest.raises(TypeError, match="Optim.SGD: pass progress or verbose, not both"):
        opt.SGD(X, y, 5, 1, progress=True, verbose=0)
    with pytest.raises(ValueError, match="Optim.SGD_eval: verbose must be .* got 3"):
        opt.SGD_eval(X, y, 5, 1, 0.2, verbose=3)


# -- SGD_eval ------------------------------------------------------------------------
def test_sgd_eval_split_is_kept_and_reproducible(backend, rng):
    X, y = _data(rng, n=50)
    opt = nnx.Optim(_net(), nnx.CELogSoftmax(), eps=0.01)
    opt.SGD_eval(X, y, 10, 1, test_size=0.2, progress=False)
    # a random split (seed 42), both parts in the data's order
    test_rows = np.flatnonzero(np.isin(X[:, 0], nnx.to_numpy(opt.X_test)[:, 0]))
    assert len(test_rows) == 10 and not np.array_equal(test_rows, np.arange(40, 50))
    np.testing.assert_array_equal(nnx.to_numpy(opt.X_test), X[test_rows])
    np.testing.assert_array_equal(nnx.to_numpy(opt.y_test), y[test_rows])
    train_rows = np.setdiff1d(np.arange(50), test_rows)
    np.testing.assert_array_equal(nnx.to_numpy(opt.y_train), y[train_rows])
    opt.SGD_eval(X, y, 10, 1, test_size=7, shuffle_test=True, seed=9, progress=False)
    first = nnx.to_numpy(opt.X_test).copy()
    assert first.shape == (7, 4) and nnx.to_numpy(opt.X_train).shape == (43, 4)
    opt.SGD_eval(X, y, 10, 1, test_size=7, shuffle_test=True, seed=9, progress=False)
    np.testing.assert_array_equal(nnx.to_numpy(opt.X_test), first)
    together = np.concatenate([nnx.to_numpy(opt.X_train), first])
    np.testing.assert_array_equal(np.sort(together[:, 0]), np.sort(X[:, 0]))
    opt.SGD_eval(X, y, 10, 1, test_size=7, shuffle_test=True, seed=10, progress=False)
    assert not np.array_equal(nnx.to_numpy(opt.X_test), first)  # another seed, another split
    # NumPy's numbers are numbers: a count and a fraction, as scikit-learn takes them
    opt.SGD_eval(X, y, 10, 1, test_size=np.int64(7), shuffle_test=True, seed=9, progress=False)
    np.testing.assert_array_equal(nnx.to_numpy(opt.X_test), first)
    opt.SGD_eval(X, y, 10, 1, test_size=np.float64(0.2), progress=False)
    assert nnx.to_numpy(opt.X_test).shape == (10, 4)


def test_sgd_eval_returns_arrays_or_dataframe(backend, rng):
    X, y = _data(rng, n=50)
    opt = nnx.Optim(_net(), nnx.CELogSoftmax(), eps=0.05)
    arrays = opt.SGD_eval(X, y, 10, 3, 0.2, patience=None, progress=False)
    assert len(arrays) == 4 and all(a.shape == (3,) for a in arrays)
    assert opt.train_df is arrays
    loss_train, score_train, loss_test, score_test = arrays  # the seed's order
    np.testing.assert_array_equal(loss_train, opt.history["loss_train"])
    np.testing.assert_array_equal(score_train, opt.history["score_train"])
    np.testing.assert_array_equal(loss_test, opt.history["loss_test"])
    np.testing.assert_array_equal(score_test, opt.history["score_test"])
    assert np.all((score_test >= 0) & (score_test <= 1)) and np.all(loss_test > 0)
    df = opt.SGD_eval(X, y, 10, 3, 0.2, patience=None, return_dataframe=True, progress=False)
    assert opt.train_df is df
    assert list(df.columns) == ["epoch", "loss_train", "loss_test", "score_train", "score_test"]
    assert list(df["epoch"]) == [0, 1, 2]  # from 0, as the seed and Keras's History
    # the test columns are a real evaluation of the kept split
    loss, acc = opt.evaluate(opt.X_test, opt.y_test)
    assert acc == pytest.approx(opt.score(opt.X_test, opt.y_test))
    assert math.isfinite(loss)


def test_early_stopping_with_patience_and_restore_best(backend, rng):
    X, y = _data(rng, n=60)
    snapshots = {}
    net = _net()
    opt = nnx.Optim(net, nnx.CELogSoftmax(), eps=0.3)  # large steps: the score wanders
    hist = opt.SGD_eval(
        X,
        y,
        4,
        40,
        0.3,
        patience=3,
        restore_best=True,
        return_dataframe=True,
        progress=False,
        callback=lambda r: snapshots.setdefault(r["epoch"], _params(net)),
    )
    scores = list(hist["score_test"])
    best = int(np.argmax(scores)) + 1  # first epoch reaching the maximum
    assert opt.best_epoch == best
    assert len(scores) == min(40, best + 3)  # stopped 3 epochs without improvement
    _same(_params(net), snapshots[best])
    # never stops without patience (None or 0); restore_best=False keeps the last epoch
    for no_patience in (None, 0):
        opt2 = nnx.Optim(_net(), nnx.CELogSoftmax(), eps=0.0)
        h2 = opt2.SGD_eval(X, y, 20, 6, 0.3, patience=no_patience, progress=False)
        assert len(h2[0]) == 6 and opt2.best_epoch == 6
    # eps=0: nothing improves after epoch 1, patience 2 stops at epoch 3
    h3 = nnx.Optim(_net(), nnx.CELogSoftmax(), eps=0.0).SGD_eval(
        X, y, 20, 9, 0.3, patience=2, progress=False
    )
    assert len(h3[0]) == 3


def test_monitor_loss_for_regression(backend, rng):
    X = rng.standard_normal((40, 3))
    net = nnx.Sequential(nnx.Linear(3, 3))
    opt = nnx.Optim(net, nnx.MSELoss(), eps=0.01)
    lt, st, lte, ste = opt.SGD_eval(
        X, X, 8, 5, 0.25, monitor="loss", restore_best=True, progress=False
    )
    assert lte[-1] < lte[0]
    assert opt.best_epoch == int(np.argmin(lte)) + 1


def test_sgd_eval_non_finite_names_epoch_and_batch(backend, rng):
    X, y = _data(rng, n=40)
    opt = nnx.Optim(_net(), NaNLoss(at=2), eps=0.05)
    with pytest.raises(
        FloatingPointError, match=r"Optim.SGD_eval: non-finite loss at epoch 1, batch 2 of 3"
    ):
        opt.SGD_eval(X, y, 10, 2, 10, progress=False)
    assert opt.history["epoch"] == []


def test_online_plot_writes_png(backend, rng, tmp_path):
    X, y = _data(rng, n=30)
    path = tmp_path / "curve.png"
    opt = nnx.Optim(_net(), nnx.CELogSoftmax(), eps=0.05)
    opt.SGD_eval(X, y, 10, 2, 0.2, online_plot=str(path), progress=False)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in tmp_path.iterdir()] == ["curve.png"]  # no temp file left


@pytest.mark.parametrize(
    ("kwargs", "exc", "text"),
    [
        ({"batch_size": 0}, ValueError, "batch_size"),
        ({"epochs": 1.5}, TypeError, "epochs"),
        ({"test_size": 1.0}, ValueError, "test_size"),
        ({"test_size": 30}, ValueError, "test_size"),
        ({"patience": -1}, ValueError, "patience"),
        ({"monitor": "acc"}, ValueError, "monitor"),
    ],
)
def test_sgd_eval_argument_errors(backend, rng, kwargs, exc, text):
    X, y = _data(rng, n=30)
    args = {"batch_size": 5, "epochs": 1, "test_size": 0.2, **kwargs}
    with pytest.raises(exc, match=text):
        nnx.Optim(_net(), nnx.CELogSoftmax()).SGD_eval(X, y, **args)


def test_mismatched_lengths_and_types(backend, rng):
    X, y = _data(rng, n=30)
    opt = nnx.Optim(_net(), nnx.CELogSoftmax())
    with pytest.raises(ValueError, match="same number of samples"):
        opt.SGD(X, y[:-1], 5, 1)
    with pytest.raises(TypeError, match="Optim: network"):
        nnx.Optim("net", nnx.CELogSoftmax())
    with pytest.raises(TypeError, match="Optim: loss"):
        nnx.Optim(_net(), "ce")
    with pytest.raises(ValueError, match="eps"):
        nnx.Optim(_net(), nnx.CELogSoftmax(), eps=-1)


def test_network_argument_replaces_the_network(backend, rng):
    X, y = _data(rng, n=30)
    first, second = _net(), _net()
    before = _params(first)
    opt = nnx.Optim(first, nnx.CELogSoftmax(), eps=0.05)
    opt.SGD(X, y, 10, 1, network=second, progress=False)
    assert opt.network is second
    _same(_params(first), before)


# -- parity with PyTorch -------------------------------------------------------------
def _torch_cnn(torch, net):
    """The nnx default CNN as PyTorch modules (channels first), same weights."""
    sd = {k: torch.tensor(v) for k, v in net.state_dict().items()}
    layers = []
    for i, m in enumerate(net):
        if isinstance(m, nnx.Conv1D):
            conv = torch.nn.Conv1d(m.chan_in, m.chan_out, m.k_size, bias=True, dtype=torch.float64)
            conv.weight.data = sd[f"{i}.weight"].permute(2, 1, 0).contiguous()
            conv.bias.data = sd[f"{i}.bias"].clone()
            layers.append(conv)
        elif isinstance(m, nnx.ReLU):
            layers.append(torch.nn.ReLU())
        elif isinstance(m, nnx.MaxPool1D):
            layers.append(torch.nn.MaxPool1d(m.k_size, m.stride))
        elif isinstance(m, nnx.AvgPool1D):
            layers.append(torch.nn.AvgPool1d(m.k_size, m.stride))
        elif isinstance(m, nnx.Flatten):
            layers.append(torch.nn.Flatten())  # length is 1 here: same order
        elif isinstance(m, nnx.Linear):
            lin = torch.nn.Linear(m.input_size, m.output_size, dtype=torch.float64)
            lin.weight.data = sd[f"{i}.weight"].T.contiguous()
            lin.bias.data = sd[f"{i}.bias"][0].clone()
            layers.append(lin)
    return torch.nn.Sequential(*layers)


def test_cnn_trained_like_pytorch_float64(backend, float64, rng):
    """Default CNN, plain SGD, identical initial weights and batches: same weights."""
    torch = pytest.importorskip("torch")
    n, length, bs, epochs, lr, seed = 96, 40, 32, 2, 2e-3, 11
    X = rng.standard_normal((n, length, 1))
    y = rng.integers(0, 10, n)
    nnx.manual_seed(4)
    net = nnx.models.cnn(length, 1, 10)
    tnet = _torch_cnn(torch, net)
    nnx.Optim(net, nnx.CELogSoftmax(), eps=lr).SGD(X, y, bs, epochs, seed=seed, progress=False)
    topt = torch.optim.SGD(tnet.parameters(), lr=lr)
    order_rng = np.random.default_rng(seed)
    Xt, yt = torch.tensor(X).permute(0, 2, 1), torch.tensor(y)
    for _ in range(epochs):
        perm = torch.tensor(order_rng.permutation(n))
        for start in range(0, n, bs):
            idx = perm[start : start + bs]
            topt.zero_grad()
            loss = torch.nn.functional.cross_entropy(tnet(Xt[idx]), yt[idx], reduction="sum")
            loss.backward()
            topt.step()
    tparams = [p.detach().numpy() for p in tnet.parameters()]
    ours = []
    for m in net:
        if isinstance(m, nnx.Conv1D):
            ours += [
                nnx.to_numpy(m._parameters["weight"]).transpose(2, 1, 0),
                nnx.to_numpy(m._parameters["bias"]),
            ]
        elif isinstance(m, nnx.Linear):
            ours += [
                nnx.to_numpy(m._parameters["weight"]).T,
                nnx.to_numpy(m._parameters["bias"])[0],
            ]
    assert len(ours) == len(tparams) == 10
    moved = 0.0
    for a, b in zip(ours, tparams, strict=True):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)
    # the comparison is meaningful: training moved the weights well beyond the tolerance
    nnx.manual_seed(4)
    init = nnx.models.cnn(length, 1, 10)
    moved = max(
        float(np.max(np.abs(nnx.to_numpy(p) - nnx.to_numpy(q))))
        for p, q in zip(init.parameters(), net.parameters(), strict=True)
    )
    assert moved > 1e-3


def test_online_plot_in_a_notebook_redraws_one_display(backend, rng, tmp_path, monkeypatch):
    pytest.importorskip("IPython")
    import IPython.display

    calls = []

    class Handle:
        def update(self, fig):
            calls.append(("update", fig))

    def display(fig, display_id=None):
        calls.append(("display", fig))
        return Handle()

    monkeypatch.setattr(nnx.training.progress, "in_notebook", lambda: True)
    monkeypatch.setattr(IPython.display, "display", display)
    monkeypatch.chdir(tmp_path)
    X, y = _data(rng, n=30)
    opt = nnx.Optim(_net(), nnx.CELogSoftmax(), eps=0.05)
    opt.SGD_eval(X, y, 10, 3, 0.2, patience=None, online_plot=True, progress=False)
    assert [c[0] for c in calls] == ["display", "update", "update"]
    # a PNG image (a Figure shows as an image only once pyplot's inline backend is on)
    assert type(calls[0][1]).__name__ == "Image"
    assert calls[0][1].data.startswith(b"\x89PNG")
    assert list(tmp_path.iterdir()) == []  # no PNG in a notebook


def test_online_plot_true_outside_a_notebook_writes_learning_curve_png(
    backend, rng, tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    X, y = _data(rng, n=30)
    nnx.Optim(_net(), nnx.CELogSoftmax(), eps=0.05).SGD_eval(
        X, y, 10, 1, 0.2, online_plot=True, progress=False
    )
    assert (tmp_path / "learning_curve.png").stat().st_size > 1000


def test_missing_training_extras_are_named(backend, rng, monkeypatch):
    import sys

    X, y = _data(rng, n=20)
    opt = nnx.Optim(_net(), nnx.CELogSoftmax(), eps=0.05)
    for name in [m for m in sys.modules if m == "tqdm" or m.startswith("tqdm.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "tqdm", None)
    monkeypatch.setitem(sys.modules, "pandas", None)
    with pytest.raises(ImportError, match=r"'tqdm'.*pip install \"nnx-backprop\[train\]\""):
        opt.SGD(X, y, 5, 1, progress=True)
    assert opt.SGD(X, y, 5, 1).shape == (1,)  # automatic bars: silently none
    with pytest.raises(ImportError, match=r"'pandas'.*nnx-backprop\[train\]"):
        opt.SGD_eval(X, y, 5, 1, 0.2, return_dataframe=True)


def test_single_output_regression_has_no_accuracy_and_stops_on_loss(backend, rng):
    X = rng.standard_normal((40, 3))
    t = X @ np.array([[1.0], [-2.0], [0.5]])
    opt = nnx.Optim(nnx.Sequential(nnx.Linear(3, 1)), nnx.MSELoss(), eps=0.005)
    lt, st, lte, ste = opt.SGD_eval(X, t, 8, 6, 0.25, patience=2, restore_best=True, progress=False)
    assert np.all(np.isnan(st)) and np.all(np.isnan(ste))
    assert len(lte) == 6 and opt.best_epoch == int(np.argmin(lte)) + 1  # monitored the loss


def test_batch_bar_only_for_long_epochs_and_drawn_once(backend, monkeypatch):
    """Short epochs show only the epochs bar (a bar per epoch cost more than the epoch
    in a notebook); once an epoch has run BATCH_BAR_DELAY seconds its batch bar is
    drawn, and later epochs reuse it."""
    created = record_tqdm_bars(monkeypatch)
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((40, 4)), rng.integers(0, 3, 40)
    opt = nnx.Optim(nnx.Sequential(nnx.Linear(4, 3)), nnx.CELogSoftmax(), eps=0.01)
    # epochs shorter than the delay (a generous one: JAX compiling outside its cache
    # can make one of these epochs last half a second)
    monkeypatch.setattr(nnx.training.progress, "BATCH_BAR_DELAY", 60.0)
    opt.SGD(X, y, 8, 5, progress=True)
    assert [b.desc for b in created] == ["epochs"]
    created.clear()
    monkeypatch.setattr(nnx.training.progress, "BATCH_BAR_DELAY", 0.0)
    opt.SGD(X, y, 8, 5, progress=True)
    assert len(created) == 2  # the epochs bar and one batch bar, reset every epoch
    assert created[1].total == 5 and created[1].n == 5 and created[1].desc.startswith("epoch 5")
    assert all(b.disable for b in created)  # closed
