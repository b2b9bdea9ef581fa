"""What the original library's notebooks rely on, on every backend.

- floating input of the network's backend in another float dtype is cast to the
  parameters' dtype at the module boundary (forward and backward); integer, boolean and
  foreign-backend input still raise;
- the seed's names: ``update_parameters(learning_rate=...)``, ``Sequential``'s
  ``update_parameters(eps=...)``, ``Sequential.modules`` (a list), ``net.reset()``
  returning the network; PyTorch-style traversal as ``all_modules()``;
- randomness from NumPy's global state until ``nnx.manual_seed`` is called;
- modules, networks and ``Optim`` survive ``pickle`` and ``copy.deepcopy``.
"""

from __future__ import annotations

import copy
import pickle

import numpy as np
import pytest
from helpers import assert_close, host

import nnx
from nnx import backends


def cnn() -> nnx.Sequential:
    return nnx.Sequential(
        nnx.Conv1D(3, 2, 4),
        nnx.ReLU(),
        nnx.MaxPool1D(2, 2),
        nnx.Flatten(),
        nnx.Linear(4 * 4, 3),
    )


def _other_float(backend_dtype: str) -> str:
    return "float32" if backend_dtype == "float64" else "float64"


# -- the module boundary casts floating input -------------------------------------------
@pytest.mark.parametrize("net_dtype", ["float32", "float64"])
def test_float_input_of_another_dtype_is_cast(backend, net_dtype, rng):
    """float64 data into a float32 network (and float32 into float64) works forward and
    backward, gives the network's dtype, and the values of the pre-cast input."""
    nnx.set_default_dtype(net_dtype)
    net = cnn()
    other = _other_float(net_dtype)
    Xh = rng.standard_normal((5, 11, 2))
    X_other = nnx.asarray(Xh, dtype=other)
    X_same = nnx.asarray(host(X_other), dtype=net_dtype)  # the same values, cast first
    before = host(X_other).copy()

    out = net.forward(X_other)
    assert backends.dtype_name(out) == net_dtype
    ref = net.forward(X_same)
    assert_close(out, ref, 0.0)

    delta = nnx.asarray(rng.standard_normal(tuple(out.shape)), dtype=net_dtype)
    net.zero_grad()
    dX = net.backward(X_other, delta)
    grads = {n: host(g).copy() for n, g in net.named_gradients()}
    net.zero_grad()
    dX_ref = net.backward(X_same, delta)
    assert tuple(dX.shape) == tuple(X_other.shape)
    assert_close(dX, dX_ref, 0.0)
    for n, g in net.named_gradients():
        np.testing.assert_array_equal(grads[n], host(g), err_msg=n)
    np.testing.assert_array_equal(host(X_other), before)  # the caller's array untouched


@pytest.mark.parametrize(
    "make, shape, tol",
    [
        (lambda: nnx.Linear(4, 3), (2, 4), 0.0),
        (lambda: nnx.Conv1D(2, 1, 3), (2, 5, 1), 0.0),
        (lambda: nnx.Conv2D(2, 1, 3), (2, 4, 4, 1), 0.0),
        (
            lambda: nnx.Sequential(nnx.MaxPool2D(2), nnx.Flatten(), nnx.Linear(4, 3)),
            (2, 4, 4, 1),
            0.0,
        ),
        # a module without parameters works in its input's dtype: TanH in float64 here
        (lambda: nnx.Sequential(nnx.TanH(), nnx.Linear(4, 3), nnx.Sigmoid()), (2, 4), 1e-5),
        (lambda: nnx.BatchNorm(4), (3, 4), 0.0),
        (lambda: nnx.BatchNorm(2), (3, 5, 2), 0.0),
    ],
    ids=[
        "Linear",
        "Conv1D",
        "Conv2D",
        "MaxPool2D-Flatten-Linear",
        "TanH-Linear-Sigmoid",
        "BatchNorm",
        "BatchNorm-3d",
    ],
)
def test_single_modules_cast_forward_and_backward(backend, rng, make, shape, tol):
    module = make()
    X64 = nnx.asarray(rng.standard_normal(shape), dtype="float64")
    X32 = nnx.asarray(host(X64), dtype="float32")
    out = module.forward(X64)
    assert backends.dtype_name(out) == "float32"
    assert_close(out, module.forward(X32), tol, tol)
    delta64 = nnx.asarray(rng.standard_normal(tuple(out.shape)), dtype="float64")
    delta32 = nnx.asarray(host(delta64), dtype="float32")
    # a delta of another float dtype is cast too (an activation's delta to its input's)
    d64, d32 = module.backward_delta(X64, delta64), module.backward_delta(X32, delta32)
    assert_close(d64, d32, tol, tol)
    module.zero_grad()
    module.backward_update_gradient(X64, delta64)
    g64 = {n: host(g).copy() for n, g in module.named_gradients()}
    module.zero_grad()
    module.backward_update_gradient(X32, delta32)
    for n, g in module.named_gradients():
        assert backends.dtype_name(g) == "float32"
        np.testing.assert_allclose(g64[n], host(g), rtol=tol, atol=tol, err_msg=n)


def _subclass_instance(backend: str, a: np.ndarray, tmp_path) -> object:
    """``a`` as an instance of a subclass of the backend's array type."""
    if backend == "numpy":
        mm = np.memmap(tmp_path / f"a{a.size}.dat", a.dtype, "w+", shape=a.shape)
        mm[...] = a
        return mm
    if backend == "torch":
        import torch

        return torch.nn.Parameter(torch.from_numpy(a.copy()))
    pytest.skip(f"no common array subclass on {backend}")


def test_array_subclasses_are_their_plain_arrays(backend, rng, tmp_path):
    """np.memmap data (or a torch.nn.Parameter) goes through layers and losses as the
    plain array it holds, as NumPy and PyTorch code take it."""
    net = nnx.Sequential(nnx.Linear(4, 3), nnx.BatchNorm(3), nnx.Sigmoid())
    Xh = rng.standard_normal((6, 4)).astype(np.float32)
    yh = rng.random((6, 3)).astype(np.float32)
    X, y = _subclass_instance(backend, Xh, tmp_path), _subclass_instance(backend, yh, tmp_path)
    out = net(X)
    assert type(out) is type(nnx.asarray(Xh))
    assert_close(out, net(nnx.asarray(Xh)), 0.0)
    loss = nnx.MSELoss()
    assert_close(loss(y, out), loss(nnx.asarray(yh), out), 0.0)
    dx = net.backward(X, loss.backward(y, out))
    assert tuple(dx.shape) == (6, 4)


def test_dropout_delta_takes_its_input_dtype(backend, rng):
    drop = nnx.Dropout(0.5)
    X = nnx.asarray(rng.standard_normal((6, 4)), dtype="float32")
    out = drop(X)
    delta64 = nnx.asarray(rng.standard_normal((6, 4)), dtype="float64")
    dx = drop.backward_delta(X, delta64)
    assert backends.dtype_name(dx) == "float32"
    mask = host(out) / host(X)  # 0 or 2 where kept
    np.testing.assert_allclose(host(dx), host(delta64).astype(np.float32) * mask, rtol=1e-6)


def test_linear_casts_its_input_once_per_forward(backend, rng, monkeypatch):
    """The original's notebook loop (forward, backward_delta, backward_update_gradient
    on the same float64 ``X``) casts ``X`` once; ``to()`` in between drops that cast."""
    layer = nnx.Linear(3, 2)
    X64 = nnx.asarray(rng.standard_normal((4, 3)), dtype="float64")
    delta = nnx.asarray(rng.standard_normal((4, 2)), dtype="float32")
    xp = backends.namespace_of(layer.get_parameter("weight"))
    casts = []
    real = xp.astype

    def counting(x, dtype, *args, **kwargs):
        casts.append(tuple(x.shape))
        return real(x, dtype, *args, **kwargs)

    monkeypatch.setattr(xp, "astype", counting)
    layer.forward(X64)
    layer.backward_delta(X64, delta)
    layer.backward_update_gradient(X64, delta)
    monkeypatch.setattr(xp, "astype", real)
    assert casts.count((4, 3)) == 1
    expected = host(X64).astype(np.float32).T @ host(delta)
    np.testing.assert_allclose(host(dict(layer.named_gradients())["weight"]), expected, rtol=1e-6)
    layer.to(dtype="float64")  # the float32 cast of X must not be reused
    layer.zero_grad()
    layer.backward_update_gradient(X64, nnx.asarray(host(delta), dtype="float64"))
    g = dict(layer.named_gradients())["weight"]
    assert backends.dtype_name(g) == "float64"
    np.testing.assert_allclose(host(g), host(X64).T @ host(delta), rtol=1e-12)


@pytest.mark.parametrize("dtype", ["int64", "int32", "bool"])
@pytest.mark.parametrize(
    "make", [lambda: nnx.Linear(4, 3), lambda: nnx.ReLU()], ids=["Linear", "ReLU"]
)
def test_integer_and_bool_input_still_raise(backend, make, dtype):
    X = nnx.asarray(np.ones((2, 4), dtype=dtype))
    with pytest.raises(TypeError, match=rf"(Linear|ReLU)\(.*got (dtype )?{dtype}"):
        make()(X)


def test_foreign_backend_input_still_raises(backend):
    other = "torch" if backend == "numpy" else "numpy"
    try:
        with nnx.use_backend(other):
            X = nnx.asarray(np.ones((2, 4)))
    except ImportError:
        pytest.skip(f"{other} not installed")
    with pytest.raises(TypeError, match=rf"is a {other} array"):
        nnx.Linear(4, 3)(X)


def test_loss_casts_floating_targets(backend, rng):
    y64 = nnx.asarray(rng.standard_normal((3, 4)), dtype="float64")
    yhat = nnx.asarray(rng.standard_normal((3, 4)))
    y32 = nnx.asarray(host(y64), dtype="float32")
    for loss in (nnx.MSELoss(), nnx.CrossEntropyLoss()):
        assert_close(loss(y64, yhat), loss(y32, yhat), 0.0)
        grad = loss.backward(y64, yhat)
        assert backends.dtype_name(grad) == "float32"
        assert_close(grad, loss.backward(y32, yhat), 0.0)


def test_notebook_evaluation_on_float64_numpy_data():
    """conv.ipynb's confusion matrix: ``optimizer.network.forward(optimizer.X_test)`` on
    the float64 NumPy data Optim kept as given (numpy backend, float32 network)."""
    rng = np.random.default_rng(0)
    X = rng.standard_normal((40, 11, 2))
    y = np.eye(3)[rng.integers(0, 3, 40)]
    net = cnn()
    opt = nnx.Optim(net, nnx.CrossEntropyLoss(), eps=1e-3)
    opt.SGD_eval(X, y, 8, 2, test_size=0.25, progress=False)
    assert opt.X_test.dtype == np.float64 and opt.y_test.dtype == np.float64
    out = opt.network.forward(opt.X_test)
    assert out.dtype == np.float32 and out.shape == (10, 3)
    assert set(np.unique(opt.X_test)) <= set(np.unique(X))


# -- the seed's names ---------------------------------------------------------------------
def test_update_parameters_keywords(backend):
    layer = nnx.Linear(3, 2)
    w0 = host(layer._parameters["weight"]).copy()
    layer.backward_update_gradient(nnx.asarray(np.ones((1, 3))), nnx.asarray(np.ones((1, 2))))
    layer.update_parameters(learning_rate=0.5)
    assert_close(layer._parameters["weight"], w0 - 0.5, 1e-6)
    net = nnx.Sequential(layer)
    net.update_parameters(eps=0.5)
    assert_close(layer._parameters["weight"], w0 - 1.0, 1e-6)
    net.update_parameters(learning_rate=0.5)  # a Sequential stands wherever a module does
    assert_close(layer._parameters["weight"], w0 - 1.5, 1e-6)


def test_sequential_modules_is_the_seed_list(backend):
    inner = nnx.Sequential(nnx.Linear(2, 2), nnx.ReLU())
    net = nnx.Sequential(nnx.Linear(3, 2), inner, nnx.Sigmoid())
    assert isinstance(net.modules, list) and len(net.modules) == 3
    assert net.modules[0] is net[0] and net.modules[1] is inner
    assert [type(m).__name__ for m in net.modules] == ["Linear", "Sequential", "Sigmoid"]
    # the seed's notebooks assign parameters through it
    w = net.modules[0]._parameters["weight"] - 0.9
    net.modules[0]._parameters["weight"] = w
    assert net[0]._parameters["weight"] is w
    # PyTorch-style traversal: this module and every descendant, depth first
    names = [type(m).__name__ for m in net.all_modules()]
    assert names == ["Sequential", "Linear", "Sequential", "Linear", "ReLU", "Sigmoid"]
    net.modules = [nnx.Linear(3, 1)]
    assert len(net) == 1 and net(nnx.asarray(np.ones((2, 3)))).shape == (2, 1)
    with pytest.raises(TypeError, match="Sequential"):
        net.modules = ["not a module"]


def _weights(net: nnx.Sequential) -> list[np.ndarray]:
    return [host(p).copy() for _, p in net.named_parameters()]


def _shift_all(net: nnx.Sequential) -> None:
    """Stand-in for training: every parameter moves."""
    for name, p in net.named_parameters():
        net.set_parameter(name, p + 1.0)


def _assert_trains_edits_and_resets(net: nnx.Sequential, initial: list[np.ndarray]) -> None:
    """``net`` (a copy of a ``Linear(3, 2), ...`` network whose first parameters were
    ``initial``) trains, takes a new last module and resets its first ones."""
    _shift_all(net)
    net.modules.append(nnx.Linear(2, 1))
    assert net(nnx.asarray(np.ones((4, 3)))).shape == (4, 1)
    net.reset()
    for a, b in zip(_weights(net)[: len(initial)], initial, strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize(
    "edit",
    [
        lambda ms: ms.append(nnx.Linear(3, 3)),
        lambda ms: ms.insert(0, nnx.Linear(4, 4)),
        lambda ms: ms.extend([nnx.TanH(), nnx.Linear(3, 3)]),
        lambda ms: ms.__setitem__(2, nnx.Linear(8, 3)),
        lambda ms: ms.__delitem__(slice(1, 2)),
        lambda ms: ms.pop(),
        lambda ms: ms.__iadd__([nnx.Sigmoid()]),
    ],
    ids=["append", "insert", "extend", "setitem", "delitem", "pop", "iadd"],
)
def test_editing_the_modules_list_keeps_reset_and_backward_right(backend, rng, edit):
    net = nnx.Sequential(nnx.Linear(4, 8), nnx.ReLU(), nnx.Linear(8, 3))
    X = nnx.asarray(rng.standard_normal((5, 4)))
    net(X)  # saved inputs of the old chain, which the edit must drop
    edit(net.modules)
    initial = _weights(net)
    out = net(X)
    delta = nnx.asarray(rng.standard_normal(tuple(out.shape)))
    net.forward(X)
    dx = net.backward(X, delta)
    # the chain as it is now, one module at a time
    inputs = [X]
    for m in net.modules:
        inputs.append(m.forward(inputs[-1]))
    ref = delta
    for m, z in zip(reversed(net.modules), reversed(inputs[:-1]), strict=True):
        ref = m.backward_delta(z, ref)
    assert_close(dx, ref, 1e-5)
    _shift_all(net)
    assert net.reset() is net
    for a, b in zip(_weights(net), initial, strict=True):
        np.testing.assert_array_equal(a, b)


def test_modules_list_refuses_non_modules_and_survives_copies(backend):
    net = nnx.Sequential(nnx.Linear(3, 2), nnx.ReLU())
    with pytest.raises(TypeError, match="Sequential: expected a nnx Module, got int 5"):
        net.modules.append(5)
    with pytest.raises(TypeError, match="got str 'x'"):
        net.modules[0] = "x"
    assert [type(m).__name__ for m in net.modules] == ["Linear", "ReLU"]  # undone
    initial = _weights(net)
    for twin in (pickle.loads(pickle.dumps(net)), copy.deepcopy(net)):
        _assert_trains_edits_and_resets(twin, initial)
        assert len(net) == 2  # the original is untouched


def test_every_name_the_original_repository_imports_exists():
    """Every name the original repository's notebooks and scripts import from ``src``
    (its scripts/usps.py still uses the earlier ``Sigmoide``) imports from nnx."""
    names = [
        "BCELoss",
        "CrossEntropyLoss",
        "LeakyReLU",
        "Linear",
        "LogSoftmax",
        "MSELoss",
        "Optim",
        "ReLU",
        "Sequential",
        "Sigmoid",
        "Sigmoide",
        "Softmax",
        "Softplus",
        "StableSigmoid",
        "TanH",
    ]
    namespace: dict[str, object] = {}
    exec(f"from nnx import {', '.join(names)}", namespace)
    assert namespace["Sigmoide"] is nnx.Sigmoid
    assert "Sigmoide" not in nnx.__all__  # the old spelling is not advertised


def test_reset_returns_the_network(backend):
    net = nnx.Sequential(nnx.Linear(3, 2))
    w0 = host(net[0]._parameters["weight"]).copy()
    net[0].backward_update_gradient(nnx.asarray(np.ones((1, 3))), nnx.asarray(np.ones((1, 2))))
    net.update_parameters(eps=1.0)
    assert net.reset() is net
    np.testing.assert_array_equal(host(net[0]._parameters["weight"]), w0)


# -- randomness the NumPy way ------------------------------------------------------------------
@pytest.fixture
def numpy_global_rng(backend):
    """nnx back on NumPy's global state for the test (the fixture ``backend`` seeds it)."""
    nnx.manual_seed(None)
    yield
    nnx.manual_seed(0)


@pytest.mark.usefixtures("numpy_global_rng")
def test_numpy_seed_reproduces_the_weights(backend):
    np.random.seed(42)
    a = cnn().state_dict()
    np.random.seed(42)
    b = cnn().state_dict()
    np.random.seed(43)
    c = cnn().state_dict()
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    assert any(not np.array_equal(a[n], c[n]) for n in a)
    # the draws are NumPy's own: the same numbers as np.random after the same seed
    np.random.seed(7)
    w = nnx.Linear(5, 4, init_type="normal").state_dict()["weight"]
    np.random.seed(7)
    expected = np.random.standard_normal((5, 4)).astype(np.float32)
    np.testing.assert_array_equal(w, expected)


@pytest.mark.usefixtures("numpy_global_rng")
def test_manual_seed_takes_over_from_numpy(backend):
    nnx.manual_seed(5)
    np.random.seed(1)
    a = cnn().state_dict()
    nnx.manual_seed(5)
    np.random.seed(2)  # NumPy's state no longer matters
    b = cnn().state_dict()
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    state = np.random.get_state()[1].copy()
    cnn()
    np.testing.assert_array_equal(np.random.get_state()[1], state)  # not consumed
    nnx.manual_seed(None)  # back to NumPy's global state
    np.random.seed(3)
    c = cnn().state_dict()
    np.random.seed(3)
    d = cnn().state_dict()
    for name in c:
        np.testing.assert_array_equal(c[name], d[name], err_msg=name)


def test_same_numpy_seed_same_weights_on_every_backend(backend, numpy_global_rng):
    np.random.seed(11)
    here = cnn().state_dict()
    with nnx.use_backend("numpy"):
        np.random.seed(11)
        ref = cnn().state_dict()
    for name in ref:
        np.testing.assert_array_equal(here[name], ref[name], err_msg=name)


# -- pickle and deepcopy ---------------------------------------------------------------------
def _train(opt: nnx.Optim, X: np.ndarray, y: np.ndarray) -> np.ndarray:
    return opt.SGD(X, y, 8, 2, seed=3, progress=False)


@pytest.mark.parametrize("how", ["pickle", "deepcopy"])
@pytest.mark.parametrize("rule", [None, "adam"])
def test_optim_and_network_survive_a_copy(backend, rng, how, rule):
    X = rng.standard_normal((32, 11, 2))
    y = rng.integers(0, 3, 32)
    opt = nnx.Optim(
        cnn(),
        nnx.CrossEntropyLoss(),
        eps=0.01,
        optimizer=nnx.optimizers.Adam(1e-2) if rule else None,
    )
    _train(opt, X, y)  # caches, gradients and optimiser state are full
    clone = pickle.loads(pickle.dumps(opt)) if how == "pickle" else copy.deepcopy(opt)
    assert clone.network is not opt.network
    for (n, a), (_, b) in zip(
        opt.network.named_parameters(), clone.network.named_parameters(), strict=True
    ):
        assert type(a) is type(b) and backends.dtype_name(a) == backends.dtype_name(b)
        np.testing.assert_array_equal(host(a), host(b), err_msg=n)
    # both continue identically, and independently
    before = {n: host(p).copy() for n, p in opt.network.named_parameters()}
    np.testing.assert_array_equal(_train(clone, X, y), _train(opt, X, y))
    for (n, a), (_, b) in zip(
        opt.network.named_parameters(), clone.network.named_parameters(), strict=True
    ):
        np.testing.assert_array_equal(host(a), host(b), err_msg=n)
        assert not np.array_equal(host(a), before[n]), n


def test_pickled_network_predicts_the_same(backend, rng):
    net = cnn()
    X = nnx.asarray(rng.standard_normal((4, 11, 2)))
    out = host(net(X))
    clone = pickle.loads(pickle.dumps(net))
    np.testing.assert_array_equal(host(clone(X)), out)
    np.testing.assert_array_equal(host(clone.reset()(X)), out)  # reset survives too
    layer = pickle.loads(pickle.dumps(nnx.Linear(3, 2)))
    assert layer(nnx.asarray(np.ones((1, 3)))).shape == (1, 2)


def test_copies_leave_the_last_batch_behind(backend, rng):
    """What a forward kept for its backward (inputs, outputs, the loss's targets) is not
    pickled or deep-copied: a network is as small after a large batch as before, and
    a copy's backward recomputes what it needs."""
    net, loss = cnn(), nnx.CrossEntropyLoss()
    size = len(pickle.dumps((net, loss)))
    X = nnx.asarray(rng.standard_normal((500, 11, 2)))
    y = nnx.asarray(rng.integers(0, 3, 500))
    out = net(X)
    loss(y, out)
    assert len(pickle.dumps((net, loss))) < size + 1000  # the batch alone is 44 kB
    delta = loss.backward(y, out)
    for clone, closs in (pickle.loads(pickle.dumps((net, loss))), copy.deepcopy((net, loss))):
        assert_close(closs.backward(y, out), delta, 0.0)
        assert_close(clone.backward(X, delta), net.backward(X, delta), 1e-6)


# -- SGD_eval: what is monitored, and the split without a seed ---------------------------------
def _monitored_run(X, y, net, loss, **kw):
    nnx.manual_seed(7)
    opt = nnx.Optim(net(), loss, eps=0.3)
    out = opt.SGD_eval(X, y, 4, 10, 0.25, patience=2, restore_best=True, progress=False, **kw)
    return len(out[0]), opt.best_epoch


def test_default_monitor_follows_the_targets(backend, rng):
    """Class targets: the validation accuracy drives early stopping; an autoencoder's
    real-valued targets (even with (n, K) outputs, where an argmax "accuracy" can be
    computed): the validation loss."""
    X = rng.uniform(0.0, 1.0, (48, 6))

    def auto():
        return nnx.Sequential(nnx.Linear(6, 6), nnx.Sigmoid())

    runs = {m: _monitored_run(X, X, auto, nnx.MSELoss(), monitor=m) for m in ("loss", "score")}
    assert runs["loss"] != runs["score"]  # the two choices differ here...
    assert _monitored_run(X, X, auto, nnx.MSELoss()) == runs["loss"]  # ...the loss is used

    y = np.eye(3)[rng.integers(0, 3, 48)]

    def clf():
        return nnx.Sequential(nnx.Linear(6, 3))

    runs = {
        m: _monitored_run(X, y, clf, nnx.CrossEntropyLoss(), monitor=m) for m in ("loss", "score")
    }
    assert _monitored_run(X, y, clf, nnx.CrossEntropyLoss()) == runs["score"]
    labels = y.argmax(axis=1)
    assert _monitored_run(X, labels, clf, nnx.CrossEntropyLoss()) == runs["score"]


def test_class_targets_are_recognised():
    from nnx.training.data import is_class_target

    assert is_class_target(np.array([0, 2, 1]))
    assert is_class_target(np.eye(3)[[0, 2, 1]])
    assert is_class_target(np.eye(3, dtype=np.float32))
    assert not is_class_target(np.array([0.0, 1.0]))  # 1-D floats: regression targets
    assert not is_class_target(np.array([[0.2, 0.8], [1.0, 0.0]]))  # soft / real targets
    assert not is_class_target(np.array([[1.0, 1.0], [0.0, 1.0]]))  # two ones in a row
    assert not is_class_target(np.zeros((2, 3, 1)))


def test_split_without_seed_comes_from_numpy_global_state(backend, numpy_global_rng, rng):
    X, y = rng.standard_normal((30, 4)), rng.integers(0, 2, 30)
    splits = []
    for s in (5, 5, 6):
        np.random.seed(s)
        opt = nnx.Optim(nnx.Sequential(nnx.Linear(4, 2)), nnx.CrossEntropyLoss(), eps=0.01)
        opt.SGD_eval(X, y, 8, 1, 0.3, seed=None, progress=False)
        splits.append(host(opt.X_test).copy())
    np.testing.assert_array_equal(splits[0], splits[1])
    assert not np.array_equal(splits[0], splits[2])


def test_a_network_pickled_by_an_earlier_nnx_still_loads_and_resets(backend):
    """Before stop 24, a Sequential pickled its modules as a plain list and its initial
    states as a list of dicts: such a pickle loads, edits and resets as a new one."""
    net = nnx.Sequential(nnx.Linear(3, 2), nnx.ReLU())
    initial = _weights(net)
    old = dict(net.__getstate__())
    old["_modules"] = list(net.modules)
    old["_initial"] = [state for _, state in net._initial]
    clone = nnx.Sequential.__new__(nnx.Sequential)
    clone.__setstate__(pickle.loads(pickle.dumps(old)))
    _assert_trains_edits_and_resets(clone, initial)
