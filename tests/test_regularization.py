"""Dropout, BatchNorm, buffers and the train / eval modes, on every backend.

BatchNorm is compared with ``torch.nn.BatchNorm1d`` / ``BatchNorm2d`` over several
training steps (outputs, input gradients, parameter gradients, running statistics),
then in evaluation mode, in float64; its two backward methods are checked against
central finite differences of the whole batch (its rows are coupled through the batch
statistics, so the row-stacking shortcut of ``finite_difference_check`` does not apply).
"""

from __future__ import annotations

import copy
import pickle

import numpy as np
import pytest
from helpers import assert_close, host, numerical_gradient

import nnx
from nnx import backends
from nnx.module import mode

torch = pytest.importorskip("torch")

# (input shape, momentum, affine): (batch, features), (batch, length, chan) and
# (batch, height, width, chan), as BatchNorm1d (2-D and 3-D) and BatchNorm2d see them.
BN_CASES = [
    ((6, 3), 0.1, True),
    ((5, 4), 0.5, False),
    ((4, 7, 3), 0.1, True),
    ((3, 5, 2), 1.0, True),
    ((3, 4, 5, 3), 0.1, True),
    ((2, 3, 3, 2), 0.3, False),
]
BN_IDS = [f"{'x'.join(map(str, s))}-m{m}{'' if a else '-noaffine'}" for s, m, a in BN_CASES]


def _channels_first(x, rank: int):
    return x if rank == 2 else x.movedim(-1, 1)


def _channels_last(x, rank: int):
    return x if rank == 2 else x.movedim(1, -1)


def _torch_bn(shape: tuple[int, ...], momentum: float, affine: bool):
    cls = torch.nn.BatchNorm2d if len(shape) == 4 else torch.nn.BatchNorm1d
    return cls(shape[-1], eps=1e-5, momentum=momentum, affine=affine).double()


@pytest.mark.parametrize("shape, momentum, affine", BN_CASES, ids=BN_IDS)
def test_batchnorm_matches_torch_over_steps(backend, float64, rng, shape, momentum, affine):
    """Values, dL/dx, dL/dgamma, dL/dbeta and running statistics after each of several
    SGD steps, then evaluation mode, against torch.nn.BatchNorm1d/2d."""
    bn = nnx.BatchNorm(shape[-1], momentum=momentum, affine=affine)
    ref = _torch_bn(shape, momentum, affine)
    rank = len(shape)
    for _ in range(4):
        x = rng.standard_normal(shape) * 3.0 + 1.5
        R = rng.standard_normal(shape)
        xt = torch.tensor(x, requires_grad=True)
        out_t = _channels_last(ref(_channels_first(xt, rank)), rank)
        (out_t * torch.tensor(R)).sum().backward()
        xb, delta = nnx.asarray(x), nnx.asarray(R)
        out = bn(xb)
        bn.zero_grad()
        bn.backward_update_gradient(xb, delta)
        dx = bn.backward_delta(xb, delta)
        assert_close(out, out_t.detach().numpy(), 1e-10, 1e-12, "output")
        assert_close(dx, xt.grad.numpy(), 1e-9, 1e-11, "dL/dx")
        assert_close(bn._buffers["running_mean"], ref.running_mean.numpy(), 1e-12, 1e-14)
        assert_close(bn._buffers["running_var"], ref.running_var.numpy(), 1e-12, 1e-14)
        if affine:
            assert_close(bn._gradient["weight"], ref.weight.grad.numpy(), 1e-10, 1e-12)
            assert_close(bn._gradient["bias"], ref.bias.grad.numpy(), 1e-10, 1e-12)
            with torch.no_grad():
                for p in ref.parameters():
                    p -= 0.1 * p.grad
                    p.grad = None
            bn.update_parameters(0.1)
    bn.eval()
    ref.eval()
    x = rng.standard_normal(shape)
    R = rng.standard_normal(shape)
    xt = torch.tensor(x, requires_grad=True)
    out_t = _channels_last(ref(_channels_first(xt, rank)), rank)
    (out_t * torch.tensor(R)).sum().backward()
    xb, delta = nnx.asarray(x), nnx.asarray(R)
    before = host(bn._buffers["running_mean"]), host(bn._buffers["running_var"])
    assert_close(bn(xb), out_t.detach().numpy(), 1e-10, 1e-12, "eval output")
    bn.zero_grad()
    bn.backward_update_gradient(xb, delta)
    assert_close(bn.backward_delta(xb, delta), xt.grad.numpy(), 1e-10, 1e-12, "eval dL/dx")
    if affine:
        assert_close(bn._gradient["weight"], ref.weight.grad.numpy(), 1e-10, 1e-12)
    # evaluation never moves the running statistics
    np.testing.assert_array_equal(host(bn._buffers["running_mean"]), before[0])
    np.testing.assert_array_equal(host(bn._buffers["running_var"]), before[1])


def test_batchnorm_float32_matches_torch(backend, rng):
    bn = nnx.BatchNorm(4)
    ref = torch.nn.BatchNorm2d(4)
    x = (rng.standard_normal((8, 5, 5, 4)) * 2 + 1).astype(np.float32)
    out_t = ref(torch.from_numpy(x).movedim(-1, 1)).movedim(1, -1)
    out = bn(nnx.asarray(x))
    assert backends.dtype_name(out) == "float32"
    assert_close(out, out_t.detach().numpy(), 1e-4, 1e-5)
    assert_close(bn._buffers["running_var"], ref.running_var.numpy(), 1e-5, 1e-6)


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("shape", [(5, 3), (3, 4, 2), (2, 3, 3, 2)], ids=["2d", "3d", "4d"])
def test_batchnorm_finite_differences(backend, float64, rng, shape, training):
    """Both backward methods against central differences of L = sum(BN(x) * R), all
    samples perturbed through one full-batch forward each (the batch statistics couple
    the rows)."""
    bn = nnx.BatchNorm(shape[-1], momentum=0.3)
    bn._parameters["weight"] = nnx.asarray(rng.uniform(0.5, 2.0, shape[-1]))
    bn._parameters["bias"] = nnx.asarray(rng.standard_normal(shape[-1]))
    for _ in range(2):  # running statistics away from (0, 1)
        bn(nnx.asarray(rng.standard_normal(shape) * 2 + 1))
    bn.train(training)
    x = rng.standard_normal(shape) * 1.5 + 0.5
    R = rng.standard_normal(shape)
    xb, delta = nnx.asarray(x), nnx.asarray(R)
    bn(xb)
    bn.zero_grad()
    bn.backward_update_gradient(xb, delta)
    dx = host(bn.backward_delta(xb, delta))
    grads = {k: host(g) for k, g in bn._gradient.items()}
    running = {k: host(b) for k, b in bn._buffers.items()}

    def loss_of_x(xv: np.ndarray) -> float:
        bn.load_state_dict(running, strict=False)  # each forward in training mode moves them
        return float(np.sum(host(bn(nnx.asarray(xv))) * R))

    np.testing.assert_allclose(dx.ravel(), numerical_gradient(loss_of_x, x), 1e-6, 1e-8)
    for name in ("weight", "bias"):
        original = bn._parameters[name]

        def loss_of_p(pv: np.ndarray, name: str = name) -> float:
            bn._parameters[name] = nnx.asarray(pv)
            return loss_of_x(x)

        try:
            numeric = numerical_gradient(loss_of_p, host(original))
        finally:
            bn._parameters[name] = original
        np.testing.assert_allclose(grads[name], numeric, 1e-6, 1e-8, err_msg=name)


def test_batchnorm_backward_without_forward(backend, float64, rng):
    """A backward on an input the last forward did not see recomputes its statistics
    (and does not move the running ones)."""
    bn = nnx.BatchNorm(3)
    x1, x2 = (nnx.asarray(rng.standard_normal((4, 3))) for _ in range(2))
    delta = nnx.asarray(rng.standard_normal((4, 3)))
    bn(x1)
    running = host(bn._buffers["running_mean"])
    fresh = nnx.BatchNorm(3)
    fresh(x2)
    assert_close(bn.backward_delta(x2, delta), fresh.backward_delta(x2, delta), 1e-13)
    np.testing.assert_array_equal(host(bn._buffers["running_mean"]), running)


def test_batchnorm_errors(backend):
    bn = nnx.BatchNorm(3)
    with pytest.raises(ValueError, match=r"BatchNorm\(3.*shape \(batch, 3\).*got shape \(4, 2\)"):
        bn(nnx.asarray(np.ones((4, 2))))
    with pytest.raises(ValueError, match=r"more than 1 value per feature.*\(1, 3\)"):
        bn(nnx.asarray(np.ones((1, 3))))
    bn.eval()
    assert tuple(bn(nnx.asarray(np.ones((1, 3)))).shape) == (1, 3)  # fine in eval mode
    with pytest.raises(TypeError, match=r"BatchNorm\(3.*dtype float32.*got int64"):
        bn(nnx.asarray(np.ones((4, 3), dtype=np.int64)))
    with pytest.raises(ValueError, match=r"num_features must be a positive int"):
        nnx.BatchNorm(0)
    with pytest.raises(ValueError, match=r"momentum must lie in \[0, 1\], got 1.5"):
        nnx.BatchNorm(3, momentum=1.5)
    with pytest.raises(ValueError, match=r"eps must be a positive float"):
        nnx.BatchNorm(3, eps=0.0)
    with pytest.raises(TypeError, match=r"momentum must be a float"):
        nnx.BatchNorm(3, momentum="0.1")


# -- buffers -------------------------------------------------------------------------------
def _bn_net() -> nnx.Sequential:
    return nnx.Sequential(
        nnx.Conv2D(3, 1, 4, padding=1),
        nnx.BatchNorm(4),
        nnx.ReLU(),
        nnx.Flatten(),
        nnx.Dropout(0.2),
        nnx.Linear(4 * 5 * 5, 3),
        nnx.BatchNorm(3, affine=False),
    )


def _run_some_steps(net, rng, optimizer=None, steps: int = 3) -> None:
    opt = nnx.Optim(net, nnx.CrossEntropyLoss(), eps=0.01, optimizer=optimizer)
    for _ in range(steps):
        opt.step(rng.standard_normal((6, 5, 5, 1)), rng.integers(0, 3, 6))


def test_buffers_in_state_dict_not_in_parameters(backend, rng):
    net = _bn_net()
    _run_some_steps(net, rng)
    state = net.state_dict()
    buffers = {"1.running_mean", "1.running_var", "6.running_mean", "6.running_var"}
    assert buffers <= set(state)
    assert not buffers & {name for name, _ in net.named_parameters()}
    assert not buffers & {name for name, _, _ in net.parameters_and_gradients()}
    assert {name for name, _ in net.named_buffers()} == buffers
    assert net.num_parameters() == 1 * 9 * 4 + 2 * 4 + 100 * 3 + 3
    assert not np.allclose(state["1.running_var"], 1.0)  # the steps moved them
    other = _bn_net()
    other.load_state_dict(state)
    for name, value in other.state_dict().items():
        np.testing.assert_array_equal(value, state[name], err_msg=name)
    bad = dict(state)
    bad["1.running_mean"] = np.zeros(5)
    with pytest.raises(ValueError, match=r"buffer '1.running_mean' expects shape \(4,\)"):
        other.load_state_dict(bad)
    with pytest.raises(KeyError, match=r"missing keys \['6.running_var'\]"):
        other.load_state_dict({k: v for k, v in state.items() if k != "6.running_var"})


@pytest.mark.parametrize("optimizer", ["sgd", "momentum", "adam"])
def test_optimizers_never_touch_buffers(backend, rng, optimizer):
    """The running statistics change only through forward passes in training mode."""
    make = {
        "sgd": lambda: nnx.optimizers.SGD(0.1),
        "momentum": lambda: nnx.optimizers.Momentum(0.1),
        "adam": lambda: nnx.optimizers.Adam(0.01),
    }[optimizer]
    net = nnx.Sequential(nnx.Linear(4, 5), nnx.BatchNorm(5), nnx.ReLU(), nnx.Linear(5, 3))
    opt = nnx.Optim(net, nnx.CrossEntropyLoss(), optimizer=make())
    X, y = rng.standard_normal((8, 4)), rng.integers(0, 3, 8)
    opt.step(X, y)  # optimiser state exists from here on
    expected = copy.deepcopy(net)
    expected.forward(nnx.asarray(X))  # the next step's forward, before its update
    params_before = {k: host(p) for k, p in net.named_parameters()}
    opt.step(X, y)
    state, reference = net.state_dict(), expected.state_dict()
    for k in ("1.running_mean", "1.running_var"):
        np.testing.assert_array_equal(state[k], reference[k], err_msg=k)
    assert any(not np.array_equal(state[k], v) for k, v in params_before.items())
    # the update rule alone, gradients in place: buffers stay as they are
    opt.optimizer.step(net)
    for k in ("1.running_mean", "1.running_var"):
        np.testing.assert_array_equal(net.state_dict()[k], reference[k], err_msg=k)


def test_buffers_saved_loaded_and_moved(backend, rng, tmp_path):
    net = _bn_net()
    _run_some_steps(net, rng)
    net.eval()
    X = nnx.asarray(rng.standard_normal((4, 5, 5, 1)))
    expected = host(net(X))
    nnx.save(net, tmp_path / "bn.npz")
    loaded = nnx.load(tmp_path / "bn.npz").eval()
    assert_close(loaded(X), expected, 1e-6, 1e-7)
    header = nnx.serialization.read_header(tmp_path / "bn.npz")
    assert header["parameters"]["1.running_var"]["shape"] == [4]
    for name, value in loaded.state_dict().items():
        np.testing.assert_array_equal(value, net.state_dict()[name], err_msg=name)
    # to(): buffers follow the parameters' backend and dtype
    moved = copy.deepcopy(net).to(backend="numpy", dtype="float64")
    for _, b in moved.named_buffers():
        assert isinstance(b, np.ndarray) and b.dtype == np.float64
    assert_close(moved(np.asarray(host(X), dtype=np.float64)), expected, 1e-5, 1e-6)
    # pickling keeps them too
    again = pickle.loads(pickle.dumps(net))
    assert_close(again(X), expected, 1e-12, 1e-12)


def test_reset_restores_running_statistics(backend, rng):
    net = _bn_net()
    initial = net.state_dict()
    _run_some_steps(net, rng)
    net.reset()
    for name, value in net.state_dict().items():
        np.testing.assert_array_equal(value, initial[name], err_msg=name)


# -- Dropout -------------------------------------------------------------------------------
@pytest.mark.parametrize("p", [0.1, 0.5, 0.8])
def test_dropout_mask_statistics(backend, p):
    nnx.manual_seed(11)
    drop = nnx.Dropout(p)
    x = nnx.asarray(np.ones((200, 50, 2)))
    out = host(drop(x))
    assert type(drop(x)) is type(x)
    values = np.unique(out)
    np.testing.assert_allclose(values, [0.0, 1.0 / (1.0 - p)], rtol=1e-6)
    kept = float(np.mean(out != 0))
    assert abs(kept - (1.0 - p)) < 0.02  # 20,000 draws: 5 standard deviations
    assert abs(float(out.mean()) - 1.0) < 0.06  # inverted dropout keeps the mean
    # independent masks: per-column keep rates scatter as binomials do
    cols = (out != 0).reshape(200, -1).mean(axis=0)
    assert 0.5 * np.sqrt(p * (1 - p) / 200) < cols.std() < 2.0 * np.sqrt(p * (1 - p) / 200)


def test_dropout_reproducible_from_the_seed(backend):
    x = nnx.asarray(np.ones((8, 30)))
    nnx.manual_seed(5)
    a, b = host(nnx.Dropout(0.5)(x)), host(nnx.Dropout(0.5)(x))
    nnx.manual_seed(5)
    a2 = host(nnx.Dropout(0.5)(x))
    np.testing.assert_array_equal(a, a2)
    assert not np.array_equal(a, b)  # each call draws a new mask


def test_dropout_reproducible_from_numpy_global_seed(backend):
    """Before nnx.manual_seed, masks follow np.random.seed (as the weights do)."""
    x = nnx.asarray(np.ones((4, 25)))
    nnx.manual_seed(None)
    try:
        np.random.seed(42)  # noqa: NPY002 - the legacy global state is the point
        a = host(nnx.Dropout(0.5)(x))
        np.random.seed(42)  # noqa: NPY002 - the legacy global state is the point
        b = host(nnx.Dropout(0.5)(x))
        np.random.seed(43)  # noqa: NPY002 - the legacy global state is the point
        c = host(nnx.Dropout(0.5)(x))
    finally:
        nnx.manual_seed(0)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_dropout_exact_backward_for_its_mask(backend, float64, rng):
    drop = nnx.Dropout(0.3)
    x = rng.uniform(0.5, 2.0, (6, 4, 3))  # no zeros: the mask is out / x
    xb = nnx.asarray(x)
    out = host(drop(xb))
    ratio = out / x
    np.testing.assert_allclose(ratio[ratio != 0], 1 / 0.7, rtol=1e-12)
    mask = (out != 0) * (1.0 / 0.7)  # M, as the forward builds it
    delta = rng.standard_normal(x.shape)
    dx = drop.backward_delta(xb, nnx.asarray(delta))
    np.testing.assert_array_equal(host(dx), delta * mask)
    drop.backward_update_gradient(xb, nnx.asarray(delta))  # no parameters: a no-op
    # in a Sequential, the backward uses the mask of the forward it follows
    net = nnx.Sequential(nnx.Linear(3, 3, init_type="normal"), nnx.Dropout(0.5))
    X = nnx.asarray(rng.standard_normal((5, 3)))
    out = host(net(X))
    hidden = host(net[0](X))
    net_mask = np.where(hidden != 0, out / np.where(hidden == 0, 1, hidden), 0)
    D = rng.standard_normal((5, 3))
    dX = host(net.backward(X, nnx.asarray(D)))
    W = host(net[0]._parameters["weight"])
    np.testing.assert_allclose(dX, (D * net_mask) @ W.T, rtol=1e-12, atol=1e-12)


def test_dropout_identity_in_eval_mode_and_for_p_zero(backend, rng):
    x = nnx.asarray(rng.standard_normal((4, 7)))
    delta = nnx.asarray(rng.standard_normal((4, 7)))
    for drop in (nnx.Dropout(0.6).eval(), nnx.Dropout(0.0)):
        np.testing.assert_array_equal(host(drop(x)), host(x))
        np.testing.assert_array_equal(host(drop.backward_delta(x, delta)), host(delta))


def test_dropout_of_everything(backend, rng):
    """p = 1 drops every element (PyTorch's answer), forward and backward."""
    x = nnx.asarray(rng.standard_normal((4, 7)))
    drop = nnx.Dropout(1.0)
    np.testing.assert_array_equal(host(drop(x)), np.zeros((4, 7)))
    np.testing.assert_array_equal(host(drop.backward_delta(x, x)), np.zeros((4, 7)))
    np.testing.assert_array_equal(host(drop.eval()(x)), host(x))


def test_dropout_errors(backend):
    for p in (1.0001, -0.1, 1.5):
        with pytest.raises(ValueError, match=r"Dropout: p must lie in \[0, 1\]"):
            nnx.Dropout(p)
    for p in ("0.5", True, None):
        with pytest.raises(TypeError, match=r"Dropout: p must be a float"):
            nnx.Dropout(p)
    drop = nnx.Dropout(0.5)
    x = nnx.asarray(np.ones((3, 4)))
    with pytest.raises(ValueError, match=r"no dropout mask for an input of shape \(3, 4\)"):
        drop.backward_delta(x, x)
    drop(nnx.asarray(np.ones((2, 4))))
    with pytest.raises(ValueError, match=r"no dropout mask .*\(3, 4\).*saw \(2, 4\)"):
        drop.backward_delta(x, x)
    with pytest.raises(ValueError, match=r"Dropout\(p=0.5\).*delta of shape \(3, 4\)"):
        drop(x)
        drop.backward_delta(x, nnx.asarray(np.ones((3, 5))))
    with pytest.raises(TypeError, match=r"Dropout\(p=0.5\).*floating-point input"):
        drop(nnx.asarray(np.ones((3, 4), dtype=np.int64)))


# -- modes ---------------------------------------------------------------------------------
class Probe(nnx.Module):
    """Records the mode of every forward call."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[bool] = []

    def forward(self, X):
        self.seen.append(self.training)
        return X

    def backward_delta(self, input, delta):
        return delta


def test_train_eval_propagate_through_containers(backend):
    inner = nnx.Sequential(nnx.Dropout(0.5), nnx.BatchNorm(3))
    net = nnx.Sequential(nnx.Linear(3, 3), inner, nnx.ReLU())
    assert all(m.training for m in net.all_modules())
    assert net.eval() is net
    assert not any(m.training for m in net.all_modules())
    assert inner.train() is inner
    assert [m.training for m in net.all_modules()] == [False, False, True, True, True, False]
    net.train()
    assert all(m.training for m in net.all_modules())
    with pytest.raises(TypeError, match=r"mode must be a bool"):
        net.train("eval")
    # the mode survives save / load of the architecture? No: a loaded network trains.
    assert nnx.Dropout().training is True


def test_mode_context_restores_mixed_modes(backend):
    net = nnx.Sequential(nnx.Dropout(0.5), nnx.Sequential(nnx.BatchNorm(2)), nnx.ReLU())
    net[1].eval()
    before = [m.training for m in net.all_modules()]
    with mode(net, True):
        assert all(m.training for m in net.all_modules())
    assert [m.training for m in net.all_modules()] == before
    with pytest.raises(RuntimeError), mode(net, False):
        assert not any(m.training for m in net.all_modules())
        raise RuntimeError("restored on errors too")
    assert [m.training for m in net.all_modules()] == before


@pytest.mark.parametrize("start", ["train", "eval"])
def test_optim_trains_in_train_mode_and_evaluates_in_eval_mode(backend, rng, start):
    probe = Probe()
    net = nnx.Sequential(nnx.Linear(4, 3), probe)
    getattr(net, start)()
    opt = nnx.Optim(net, nnx.CrossEntropyLoss(), eps=0.01)
    X, y = rng.standard_normal((40, 4)), rng.integers(0, 3, 40)
    opt.step(X[:8], y[:8])  # a single step uses the mode it finds, as in PyTorch
    assert probe.seen == [start == "train"]
    opt.SGD(X, y, batch_size=10, epochs=2, progress=False)
    assert probe.seen[1:] == [True] * 8
    probe.seen.clear()
    opt.SGD_eval(X, y, batch_size=10, epochs=2, test_size=0.25, patience=None, progress=False)
    # per epoch: 3 training batches, then one evaluation pass over the 10 test samples
    assert probe.seen == [True, True, True, False, True, True, True, False]
    probe.seen.clear()
    opt.score(X, y)
    opt.evaluate(X, y)
    opt.predict(X)
    assert probe.seen == [False, False, False]
    assert all(m.training is (start == "train") for m in net.all_modules())


def test_optim_restores_mode_after_an_error(backend, rng):
    class Fails(Probe):
        def forward(self, X):
            if len(self.seen) == 3:
                raise RuntimeError("boom")
            return super().forward(X)

    net = nnx.Sequential(nnx.Linear(4, 3), nnx.Dropout(0.1), Fails()).eval()
    opt = nnx.Optim(net, nnx.CrossEntropyLoss(), eps=0.01)
    X, y = rng.standard_normal((16, 4)), rng.integers(0, 3, 16)
    with pytest.raises(RuntimeError, match="boom"):
        opt.SGD(X, y, batch_size=4, epochs=3, progress=False)
    assert net[2].seen == [True, True, True]
    assert not any(m.training for m in net.all_modules())


def test_dropout_and_batchnorm_change_outputs_only_in_train_mode(backend, rng):
    net = nnx.Sequential(nnx.Linear(5, 6), nnx.BatchNorm(6), nnx.Dropout(0.5), nnx.Linear(6, 2))
    X = rng.standard_normal((16, 5))
    opt = nnx.Optim(net, nnx.CrossEntropyLoss(), eps=0.01)
    opt.SGD(X, rng.integers(0, 2, 16), batch_size=8, epochs=2, progress=False)
    a, b = host(opt.predict(X)), host(opt.predict(X))
    np.testing.assert_array_equal(a, b)  # deterministic in eval mode
    with mode(net, True):
        c = host(net(nnx.asarray(X)))
    assert not np.allclose(a, c)


def test_batchnorm_updates_running_statistics_in_place(backend, rng):
    """Same arrays before and after a training forward (what a recorded CUDA graph reads
    and writes), new values in them; immutable arrays (JAX) are replaced instead."""
    if backend == "jax":
        pytest.skip("JAX arrays are immutable: the running statistics are new arrays")
    bn = nnx.BatchNorm(3)
    mean, var = bn._buffers["running_mean"], bn._buffers["running_var"]
    bn(nnx.asarray(rng.standard_normal((5, 3)) + 2.0))
    assert bn._buffers["running_mean"] is mean and bn._buffers["running_var"] is var
    assert np.all(host(mean) > 0.1)
