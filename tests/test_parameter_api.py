"""The public parameter API of Module (the one walk, accumulate, set, update) and the
deferred-check contract of Loss."""

import numpy as np
import pytest
from helpers import host

import nnx


def _net():
    return nnx.Sequential(nnx.Linear(3, 4), nnx.TanH(), nnx.Sequential(nnx.Linear(4, 2)))


def test_walk_names_parameters_and_gradients_in_order(backend):
    net = _net()
    walk = list(net.parameters_and_gradients())
    assert [n for n, _, _ in walk] == ["0.weight", "0.bias", "2.0.weight", "2.0.bias"]
    params, grads = dict(net.named_parameters()), dict(net.named_gradients())
    for name, p, g in walk:
        assert p is params[name] and g is grads[name]
        assert net.get_parameter(name) is p
    with pytest.raises(KeyError, match="no parameter named '2.1.weight'"):
        net.get_parameter("2.1.weight")


def test_accumulate_adds_and_fresh_gradients_replace(backend, rng):
    layer = nnx.Linear(2, 2)
    one = nnx.asarray(np.ones((2, 2)))
    layer.accumulate_gradient("weight", one * 1.0)
    layer.accumulate_gradient("weight", one * 2.0)
    np.testing.assert_array_equal(host(layer._gradient["weight"]), np.full((2, 2), 3.0))
    with layer.fresh_gradients():
        layer.accumulate_gradient("weight", one * 5.0)  # replaces the stale 3
    np.testing.assert_array_equal(host(layer._gradient["weight"]), np.full((2, 2), 5.0))
    np.testing.assert_array_equal(host(layer._gradient["bias"]), np.zeros((1, 2)))  # unwritten


def test_accumulate_product_writes_into_a_reusable_gradient_buffer(backend, rng):
    layer = nnx.Linear(3, 2, bias=False)
    a = nnx.asarray(rng.normal(size=(3, 4)))
    b = nnx.asarray(rng.normal(size=(4, 2)))
    want = host(a) @ host(b)
    # not bound for reuse: a new array, as accumulate_gradient(a @ b)
    with layer.fresh_gradients():
        layer.accumulate_product("weight", a, b)
    first = layer._gradient["weight"]
    np.testing.assert_allclose(host(first), want, rtol=1e-5)
    buf = nnx.asarray(np.zeros((3, 2)))
    layer.set_gradient("weight", buf, reuse=True)
    with layer.fresh_gradients():
        layer.accumulate_product("weight", a, b)
        layer.accumulate_product("weight", a, b)  # the second contribution adds
    g = layer._gradient["weight"]
    np.testing.assert_allclose(host(g), 2 * want, rtol=1e-5)
    if nnx.get_backend() in ("numpy", "torch"):  # libraries that write into out
        assert g is buf
        np.testing.assert_allclose(host(buf), 2 * want, rtol=1e-5)
    else:  # the buffer is left alone, the gradient is a new array
        np.testing.assert_array_equal(host(buf), np.zeros((3, 2)))
    # outside fresh_gradients it accumulates as ever (no overwrite of the buffer)
    layer.accumulate_product("weight", a, b)
    np.testing.assert_allclose(host(layer._gradient["weight"]), 3 * want, rtol=1e-5)
    # bound without reuse: the buffer is the gradient, but never written by a product
    other = nnx.asarray(np.zeros((3, 2)))
    layer.set_gradient("weight", other)
    with layer.fresh_gradients():
        layer.accumulate_product("weight", a, b)
    assert layer._gradient["weight"] is not other
    np.testing.assert_array_equal(host(other), np.zeros((3, 2)))


def test_matmul_into_writes_only_where_it_can(backend, rng):
    a = nnx.asarray(rng.normal(size=(3, 4)))
    b = nnx.asarray(rng.normal(size=(4, 2)))
    out = nnx.asarray(np.zeros((3, 2)))
    wrote = nnx.backends.matmul_into(a, b, out)
    assert wrote == (nnx.get_backend() in ("numpy", "torch"))
    if wrote:
        np.testing.assert_allclose(host(out), host(a) @ host(b), rtol=1e-5)
    wide = nnx.asarray(np.zeros((2, 3)))
    assert not nnx.backends.matmul_into(a, b, wide.T if hasattr(wide, "T") else wide)
    if nnx.get_backend() == "numpy":
        assert not nnx.backends.matmul_into(a, b, np.zeros((3, 2), dtype=np.float16))
        square = np.ones((3, 3), dtype=a.dtype)
        assert not nnx.backends.matmul_into(square, square, square)  # out overlaps an input
        np.testing.assert_array_equal(square, np.ones((3, 3)))


def test_set_parameter_binds_and_updates_never_modify_the_callers_array(backend):
    net = _net()
    mine = nnx.asarray(np.ones((4, 2)))
    net.set_parameter("2.0.weight", mine)
    assert net[2][0]._parameters["weight"] is mine
    net.set_gradient("2.0.weight", nnx.asarray(np.full((4, 2), 2.0)))
    net.update_parameters(0.25)
    np.testing.assert_array_equal(host(mine), np.ones((4, 2)))
    np.testing.assert_array_equal(host(net.get_parameter("2.0.weight")), np.full((4, 2), 0.5))
    with pytest.raises(ValueError, match=r"shape \(4, 2\), got \(2, 4\)"):
        net.set_parameter("2.0.weight", nnx.asarray(np.ones((2, 4))))
    with pytest.raises(ValueError, match="set_gradient"):
        net.set_gradient("0.bias", nnx.asarray(np.ones((4,))))


def test_apply_update_in_place_on_own_arrays(backend):
    net = _net()
    before = {n: p for n, p, _ in net.parameters_and_gradients()}
    seen = []

    def rule(name, p, g):
        seen.append(name)
        return p * 0.5

    net.apply_update(rule)
    assert seen == list(before)
    for name, p, _ in net.parameters_and_gradients():
        if nnx.backends.is_mutable(p):
            assert p is before[name]  # written in place: the optimiser's buffers stay


def test_loss_defers_checks_inside_the_block_and_checks_at_once_outside(backend):
    loss = nnx.CELogSoftmax()
    y, yhat = nnx.asarray(np.array([0, 4])), nnx.asarray(np.zeros((2, 3)))
    with loss.deferred_checks() as pending:
        loss.forward(y, yhat)  # no read, no error yet
    assert [(int(c.count), c.expected) for c in pending] == [(1, 2)]
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\)"):
        pending[0].fail()
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\)"):
        loss.forward(y, yhat)


def test_load_state_dict_checks_everything_before_writing(backend, rng):
    net = nnx.Sequential(nnx.Linear(3, 4), nnx.BatchNorm(4), nnx.Linear(4, 2))
    state = net.state_dict()
    with pytest.raises(TypeError, match=r"load_state_dict: expected a mapping .* got list"):
        net.load_state_dict(list(state.values()))
    with pytest.raises(ValueError, match=r"missing keys \['2.bias'\], unexpected keys \['x'\]"):
        net.load_state_dict({**{k: v for k, v in state.items() if k != "2.bias"}, "x": 0})
    with pytest.raises(KeyError):  # the names are keys: a KeyError too, as before
        net.load_state_dict({})
    bad = {k: v + 1.0 for k, v in state.items()}
    bad["1.running_var"] = np.ones(5)  # the last array checked: nothing written before it
    with pytest.raises(
        ValueError, match=r"buffer '1.running_var' expects shape \(4,\), got \(5,\)"
    ):
        net.load_state_dict(bad)
    for k, v in net.state_dict().items():
        np.testing.assert_array_equal(v, state[k], err_msg=k)


def test_backward_after_load_state_dict_uses_the_loaded_parameters(backend, rng):
    """A Sequential's saved chain outputs belong to the old parameters: loading drops
    them, so a backward on the same input gives the new parameters' gradients."""
    net, other = _net(), _net()
    X = nnx.asarray(rng.standard_normal((5, 3)))
    delta = nnx.asarray(rng.standard_normal((5, 2)))
    net.forward(X)
    net.load_state_dict(other.state_dict())
    other.forward(X)
    np.testing.assert_allclose(host(net.backward(X, delta)), host(other.backward(X, delta)))
