"""Sequential: back-propagation through the chain, nesting, the container API, repr."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import (
    assert_close,
    finite_difference_check,
    host,
    module_vjp,
    torch_module_reference,
)

import nnx


def cnn() -> nnx.Sequential:
    """The seed's kind of network: conv, pool, flatten, dense, log-softmax (input L=12, C=2)."""
    return nnx.Sequential(
        nnx.Conv1D(3, 2, 4, stride=1, bias=True, init_type="normal"),
        nnx.ReLU(),
        nnx.MaxPool1D(2, 2),
        nnx.Flatten(),
        nnx.Linear(5 * 4, 6),
        nnx.TanH(),
        nnx.Linear(6, 3),
        nnx.LogSoftmax(),
    )


def nested() -> nnx.Sequential:
    return nnx.Sequential(
        nnx.Sequential(nnx.Conv1D(3, 2, 4, bias=True, init_type="normal"), nnx.ReLU()),
        nnx.MaxPool1D(2, 2),
        nnx.Sequential(nnx.Flatten(), nnx.Sequential(nnx.Linear(20, 6), nnx.TanH())),
        nnx.Linear(6, 3),
    )


def test_backward_equals_chained_module_calls(backend, float64, rng):
    nnx.manual_seed(3)
    net = cnn()
    nnx.manual_seed(3)
    modules = list(cnn())
    x = nnx.asarray(rng.standard_normal((4, 12, 2)))
    out = net(x)
    delta = nnx.asarray(rng.standard_normal(tuple(out.shape)))
    dx = net.backward(x, delta)

    inputs = [x]
    for m in modules:
        inputs.append(m.forward(inputs[-1]))
    assert_close(out, inputs[-1], 0.0)
    d = delta
    for m, z in zip(reversed(modules), reversed(inputs[:-1]), strict=True):
        m.backward_update_gradient(z, d)
        d = m.backward_delta(z, d)
    assert_close(dx, d, 1e-13, 1e-15)
    for i, m in enumerate(modules):
        for name, g in m._gradient.items():
            assert_close(net[i]._gradient[name], g, 1e-13, 1e-15)


def test_backward_methods_separately(backend, float64, rng):
    """backward_update_gradient / backward_delta of the container equal backward's parts."""
    nnx.manual_seed(3)
    a, b = cnn(), cnn()
    b.load_state_dict(a.state_dict())
    x = nnx.asarray(rng.standard_normal((3, 12, 2)))
    delta = nnx.asarray(rng.standard_normal((3, 3)))
    dx = a.backward(x, delta)
    b.backward_update_gradient(x, delta)
    assert_close(b.backward_delta(x, delta), dx, 1e-13, 1e-15)
    for (name, ga), (_, gb) in zip(a.named_gradients(), b.named_gradients(), strict=True):
        assert_close(gb, ga, 1e-13, 1e-15, err_msg=name)
    assert a.backward(x, delta, input_grad=False) is None


class _HalfDeltaLinear(nnx.Linear):
    """A user subclass: Sequential.backward must run its override, not Linear's fusion."""

    def backward_delta(self, input, delta):  # type: ignore[override]
        return 0.5 * super().backward_delta(input, delta)


class _DoubleGradTanH(nnx.TanH):
    def backward_update_gradient(self, input, delta) -> None:  # type: ignore[override]
        self.calls = getattr(self, "calls", 0) + 1


def test_backward_runs_overridden_backward_methods(backend, float64, rng):
    nnx.manual_seed(0)
    plain = nnx.Sequential(nnx.Linear(4, 3), nnx.TanH(), nnx.Linear(3, 2))
    nnx.manual_seed(0)
    user = nnx.Sequential(nnx.Linear(4, 3), _DoubleGradTanH(), _HalfDeltaLinear(3, 2))
    x = nnx.asarray(rng.standard_normal((5, 4)))
    plain(x), user(x)
    delta = nnx.asarray(rng.standard_normal((5, 2)))
    dx_plain, dx_user = plain.backward(x, delta), user.backward(x, delta)
    assert_close(dx_user, 0.5 * host(dx_plain), 1e-13, 1e-15)
    assert_close(user[0]._gradient["weight"], 0.5 * host(plain[0]._gradient["weight"]), 1e-13)
    assert_close(user[2]._gradient["weight"], plain[2]._gradient["weight"], 1e-13)
    assert user[1].calls == 1


@pytest.mark.parametrize("make", [cnn, nested], ids=["flat", "nested"])
def test_sequential_vs_torch(backend, float64, rng, make):
    net = make()
    x = rng.standard_normal((4, 12, 2))
    R = rng.standard_normal((4, 3))
    out, dx, grads = module_vjp(net, x, R)
    t_out, t_dx, t_grads = torch_module_reference(net, x, R)
    np.testing.assert_allclose(out, t_out, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(dx, t_dx, rtol=1e-10, atol=1e-12)
    assert list(grads) == [name for name, _ in net.named_parameters()]
    for name, g in grads.items():
        np.testing.assert_allclose(g, t_grads[name], rtol=1e-10, atol=1e-12, err_msg=name)


@pytest.mark.parametrize("make", [cnn, nested], ids=["flat", "nested"])
def test_sequential_finite_differences(backend, float64, rng, make):
    x = rng.standard_normal((3, 12, 2))
    x[...] = np.where(np.abs(x) < 0.05, 0.05, x)
    finite_difference_check(make(), x, max_param_elements=12)


def test_backward_on_a_new_input_recomputes(backend, float64, rng):
    """backward(x2) after forward(x1) uses x2's intermediate values, not stale ones."""
    nnx.manual_seed(0)
    a = cnn()
    nnx.manual_seed(0)
    b = cnn()
    x1 = nnx.asarray(rng.standard_normal((2, 12, 2)))
    x2 = nnx.asarray(rng.standard_normal((2, 12, 2)))
    delta = nnx.asarray(rng.standard_normal((2, 3)))
    a.forward(x1)
    dx_a = a.backward(x2, delta)
    dx_b = b.backward(x2, delta)  # b never saw x1
    assert_close(dx_a, dx_b, 1e-14)
    for (_, ga), (_, gb) in zip(a.named_gradients(), b.named_gradients(), strict=True):
        assert_close(ga, gb, 1e-14)


def test_nested_equals_flat(backend, float64, rng):
    flat = nnx.Sequential(nnx.Linear(4, 5), nnx.ReLU(), nnx.Linear(5, 3), nnx.Sigmoid())
    net = nnx.Sequential(
        nnx.Sequential(nnx.Linear(4, 5), nnx.ReLU()), nnx.Sequential(nnx.Linear(5, 3))
    ).add(nnx.Sigmoid())
    assert [n for n, _ in net.named_parameters()] == [
        "0.0.weight",
        "0.0.bias",
        "1.0.weight",
        "1.0.bias",
    ]
    assert [n for n, _ in flat.named_parameters()] == ["0.weight", "0.bias", "2.weight", "2.bias"]
    mapping = dict(zip(flat.state_dict(), net.state_dict(), strict=True))
    net.load_state_dict({mapping[k]: v for k, v in flat.state_dict().items()})
    x = nnx.asarray(rng.standard_normal((5, 4)))
    delta = nnx.asarray(rng.standard_normal((5, 3)))
    assert_close(net(x), flat(x), 1e-14)
    assert_close(net.backward(x, delta), flat.backward(x, delta), 1e-14)
    flat_grads = dict(flat.named_gradients())
    for name, g in net.named_gradients():
        inverse = {v: k for k, v in mapping.items()}
        assert_close(g, flat_grads[inverse[name]], 1e-14)
    assert net.num_parameters() == flat.num_parameters() == 4 * 5 + 5 + 5 * 3 + 3


def test_zero_grad_and_update_reach_every_child(backend, float64, rng):
    net = nested()
    x = nnx.asarray(rng.standard_normal((2, 12, 2)))
    net.backward(x, nnx.asarray(rng.standard_normal((2, 3))))
    params = {k: host(p) for k, p in net.named_parameters()}
    grads = {k: host(g) for k, g in net.named_gradients()}
    assert all(np.any(g != 0) for g in grads.values())
    net.update_parameters(0.5)
    for name, p in net.named_parameters():
        np.testing.assert_allclose(host(p), params[name] - 0.5 * grads[name], rtol=1e-12)
    net.zero_grad()
    assert all(np.all(host(g) == 0) for _, g in net.named_gradients())


def test_container_api(backend):
    lin, relu, lin2 = nnx.Linear(4, 8), nnx.ReLU(), nnx.Linear(8, 2)
    net = nnx.Sequential(lin, relu)
    assert len(net) == 2
    assert net.add(lin2) is net
    assert len(net) == 3
    assert net[0] is lin and net[1] is relu and net[2] is lin2 and net[-1] is lin2
    assert list(net) == [lin, relu, lin2]
    part = net[1:]
    assert isinstance(part, nnx.Sequential) and list(part) == [relu, lin2]
    tanh = nnx.TanH()
    assert net.insert(1, tanh) is net
    assert list(net) == [lin, tanh, relu, lin2]
    assert [n for n, _ in net.named_parameters()] == ["0.weight", "0.bias", "3.weight", "3.bias"]
    assert list(nnx.Sequential([lin, relu])) == [lin, relu]  # a list is accepted too
    with pytest.raises(IndexError):
        net[4]
    with pytest.raises(TypeError):
        net.add("not a module")
    empty = nnx.Sequential()
    assert len(empty) == 0 and list(empty) == [] and repr(empty) == "Sequential()"
    x = nnx.asarray(np.ones((2, 4)))
    assert tuple(net(x).shape) == (2, 2)


def test_reset_restores_initial_parameters(backend, rng):
    net = nnx.Sequential(nnx.Linear(3, 4), nnx.ReLU())
    net.add(nnx.Linear(4, 2))
    initial = net.state_dict()
    x = nnx.asarray(rng.standard_normal((5, 3)))
    for _ in range(3):
        net.backward(x, nnx.asarray(rng.standard_normal((5, 2))))
        net.update_parameters(0.1)
    assert not np.array_equal(net.state_dict()["0.weight"], initial["0.weight"])
    assert net.reset() is net
    for name, value in net.state_dict().items():
        np.testing.assert_array_equal(value, initial[name], err_msg=name)
    assert all(np.all(host(g) == 0) for _, g in net.named_gradients())
    # the restored parameters keep working (and keep their backend)
    net.backward(x, nnx.asarray(rng.standard_normal((5, 2))))
    net.update_parameters(0.1)
    assert nnx.backends.backend_of(net[0]._parameters["weight"]).name == backend


def test_repr(backend):
    net = nnx.Sequential(
        nnx.Conv1D(3, 1, 32, stride=2),
        nnx.Sequential(nnx.MaxPool1D(2, 2), nnx.LeakyReLU(0.1)),
        nnx.Flatten(),
        nnx.Linear(4, 8, bias=False),
    )
    text = repr(net)
    lines = text.splitlines()
    assert lines[0] == "Sequential("
    assert lines[1] == "  (0): Conv1D(3, 1, 32, stride=2, bias=False)"
    assert lines[2] == "  (1): Sequential("
    assert lines[3].startswith("    (0): MaxPool1D(") and "k_size=2" in lines[3]
    assert lines[4].startswith("    (1): LeakyReLU(") and "0.1" in lines[4]
    assert lines[5] == "  )"
    assert lines[6] == "  (2): Flatten()"
    assert lines[7] == "  (3): Linear(4, 8, bias=False)"
    assert lines[8] == ")"


def test_shared_module_instances(backend, float64, rng):
    """A module used twice in a chain: its cache never goes stale, its gradient sums both uses."""
    lin, sig = nnx.Linear(4, 4, init_type="normal"), nnx.Sigmoid()
    net = nnx.Sequential(lin, sig, lin, sig)
    x = rng.standard_normal((3, 4))
    R = rng.standard_normal((3, 4))
    out, dx, grads = module_vjp(net, x, R)
    t_out, t_dx, t_grads = torch_module_reference(net, x, R)  # two copies of lin in torch
    np.testing.assert_allclose(out, t_out, rtol=1e-12)
    np.testing.assert_allclose(dx, t_dx, rtol=1e-10, atol=1e-14)
    for name in ("weight", "bias"):
        np.testing.assert_allclose(grads[f"0.{name}"], grads[f"2.{name}"])  # one buffer
        both = t_grads[f"0.{name}"] + t_grads[f"2.{name}"]
        np.testing.assert_allclose(grads[f"0.{name}"], both, rtol=1e-10, atol=1e-14)


def test_reset_after_to(backend, rng):
    """reset() brings back the initial values on the backend and dtype the net now has."""
    with nnx.use_backend("numpy"):
        net = nnx.Sequential(nnx.Linear(3, 2), nnx.TanH())
    initial = net.state_dict()
    net.to(backend, "float64")
    x = nnx.asarray(rng.standard_normal((4, 3)), dtype="float64")
    net.backward(x, nnx.asarray(rng.standard_normal((4, 2)), dtype="float64"))
    net.update_parameters(0.5)
    net.reset()
    for name, p in net.named_parameters():
        assert nnx.backends.backend_of(p).name == backend
        assert nnx.backends.dtype_name(p) == "float64"
        np.testing.assert_array_equal(host(p), initial[name].astype(np.float64))


def test_load_state_dict_does_not_alias_the_callers_arrays(backend, rng):
    net = nnx.Sequential(nnx.Linear(3, 2))
    state = {
        k: rng.standard_normal(v.shape).astype(np.float32) for k, v in net.state_dict().items()
    }
    saved = {k: v.copy() for k, v in state.items()}
    net.load_state_dict(state)
    x = nnx.asarray(rng.standard_normal((4, 3)))
    net.backward(x, nnx.asarray(rng.standard_normal((4, 2))))
    net.update_parameters(0.5)
    for k, v in state.items():
        np.testing.assert_array_equal(v, saved[k])
