"""nnx.optimizers against torch.optim, step by step in float64, on every backend."""

from __future__ import annotations

import numpy as np
import pytest

import nnx
from nnx import optimizers as O

torch = pytest.importorskip("torch")

CASES = [
    ("sgd", lambda: O.SGD(0.1), lambda p: torch.optim.SGD(p, lr=0.1)),
    (
        "momentum",
        lambda: O.Momentum(0.05, momentum=0.9),
        lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, dampening=0),
    ),
    (
        "nesterov",
        lambda: O.Momentum(0.05, momentum=0.8, nesterov=True),
        lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.8, dampening=0, nesterov=True),
    ),
    ("adam", lambda: O.Adam(), lambda p: torch.optim.Adam(p)),
    (
        "adam-custom",
        lambda: O.Adam(lr=0.02, beta1=0.5, beta2=0.9, eps=1e-6),
        lambda p: torch.optim.Adam(p, lr=0.02, betas=(0.5, 0.9), eps=1e-6),
    ),
]


def _net() -> nnx.Sequential:
    return nnx.Sequential(nnx.Linear(4, 5), nnx.TanH(), nnx.Linear(5, 3))


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_update_rule_matches_torch(backend, float64, rng, case):
    """Same gradients fed to both: parameters agree after each of 6 steps."""
    _, make_nnx, make_torch = case
    net = _net()
    opt = make_nnx()
    ref = {k: torch.tensor(v, requires_grad=True) for k, v in net.state_dict().items()}
    topt = make_torch(list(ref.values()))
    for _ in range(6):
        for module, prefix in ((net[0], "0."), (net[2], "2.")):
            for name in module._gradient:
                g = rng.standard_normal(module._gradient[name].shape)
                module._gradient[name] = nnx.asarray(g)
                ref[prefix + name].grad = torch.tensor(g)
        opt.step(net)
        topt.step()
        for k, v in net.state_dict().items():
            np.testing.assert_allclose(v, ref[k].detach().numpy(), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_training_with_optim_matches_torch(backend, float64, rng, case):
    """Optim.step (forward, CE loss summed over the batch, backward, optimiser)."""
    _, make_nnx, make_torch = case
    net = _net()
    optim = nnx.Optim(net, nnx.CELogSoftmax(), optimizer=make_nnx())
    sd = net.state_dict()
    W1 = torch.tensor(sd["0.weight"], requires_grad=True)
    b1 = torch.tensor(sd["0.bias"], requires_grad=True)
    W2 = torch.tensor(sd["2.weight"], requires_grad=True)
    b2 = torch.tensor(sd["2.bias"], requires_grad=True)
    topt = make_torch([W1, b1, W2, b2])
    for _ in range(5):
        X, y = rng.standard_normal((8, 4)), rng.integers(0, 3, 8)
        optim.step(X, y)
        topt.zero_grad()
        out = torch.tanh(torch.tensor(X) @ W1 + b1) @ W2 + b2
        torch.nn.functional.cross_entropy(out, torch.tensor(y), reduction="sum").backward()
        topt.step()
    got = net.state_dict()
    for k, t in (("0.weight", W1), ("0.bias", b1), ("2.weight", W2), ("2.bias", b2)):
        np.testing.assert_allclose(got[k], t.detach().numpy(), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(
    "make", [lambda: O.Momentum(0.1), lambda: O.Adam()], ids=["momentum", "adam"]
)
def test_state_lives_on_parameter_backend(backend, make):
    net = _net()
    opt = make()
    nnx.Optim(net, nnx.MSELoss(), optimizer=opt).step(np.ones((2, 4)), np.zeros((2, 3)))
    p = net[0]._parameters["weight"]
    for state in opt.state.values():
        for s in state.values():
            assert type(s) is type(p) and s.dtype == p.dtype
    assert opt.state["0.weight"][next(iter(opt.state["0.weight"]))].shape == p.shape


def test_state_follows_a_moved_network(backend):
    net = _net()
    opt = O.Adam(lr=0.01)
    optim = nnx.Optim(net, nnx.MSELoss(), optimizer=opt)
    optim.step(np.ones((2, 4)), np.zeros((2, 3)))
    target = "array_api_strict" if backend != "array_api_strict" else "numpy"
    net.to(target, dtype="float64")
    with nnx.use_backend(target):
        optim.step(np.ones((2, 4)), np.zeros((2, 3)))
    p = net[0]._parameters["weight"]
    assert nnx.backends.backend_of(p).name == target
    assert all(
        type(s) is type(p) and s.dtype == p.dtype for st in opt.state.values() for s in st.values()
    )


def test_assigned_parameter_is_not_modified_in_place(backend):
    layer = nnx.Linear(3, 2)
    mine = nnx.asarray(np.ones((3, 2)))
    layer._parameters["weight"] = mine
    layer._gradient["weight"] = nnx.asarray(np.full((3, 2), 2.0))
    O.Momentum(0.5).step(layer)
    np.testing.assert_array_equal(nnx.to_numpy(mine), np.ones((3, 2)))
    np.testing.assert_allclose(nnx.to_numpy(layer._parameters["weight"]), np.zeros((3, 2)))


def test_reset_forgets_state(backend):
    net = _net()
    opt = O.Adam()
    nnx.Optim(net, nnx.MSELoss(), optimizer=opt).step(np.ones((2, 4)), np.zeros((2, 3)))
    assert opt.state and opt.steps == 1
    opt.reset()
    assert not opt.state and opt.steps == 0


@pytest.mark.parametrize(
    ("make", "exc", "text"),
    [
        (lambda: O.SGD(-1.0), ValueError, "lr"),
        (lambda: O.SGD("0.1"), TypeError, "lr"),
        (lambda: O.Momentum(0.1, momentum=1.0), ValueError, "momentum"),
        (lambda: O.Momentum(0.1, nesterov=1), TypeError, "nesterov"),
        (lambda: O.Adam(beta2=1.5), ValueError, "beta2"),
        (lambda: O.Adam(eps=float("nan")), ValueError, "eps"),
        (lambda: O.get("rmsprop", 0.1), ValueError, "unknown optimizer"),
        (lambda: O.get("sgd"), ValueError, "learning rate"),
        (lambda: O.SGD(0.1).step(object()), TypeError, "Module"),
    ],
)
def test_errors(make, exc, text):
    with pytest.raises(exc, match=text):
        make()


def test_get_and_repr():
    assert repr(O.get("nesterov", 0.05)) == "Momentum(lr=0.05, momentum=0.9, nesterov=True)"
    assert isinstance(O.get("adam"), O.Adam) and O.get("ADAM", 0.01).lr == 0.01
    with pytest.raises(TypeError, match="step"):
        nnx.Optim(_net(), nnx.MSELoss(), optimizer="adam")
