"""Optim steps overwrite stale gradients instead of zeroing them: same results as zero_grad."""

import numpy as np
import pytest

import nnx
from nnx.module import Module


def _grads(net):
    return {k: nnx.to_numpy(g).copy() for k, g in net.named_gradients()}


def _reference_grads(net, loss, X, y):
    """Gradients of one batch the long way: zero_grad, forward, backward."""
    net.zero_grad()
    yhat = net.forward(X)
    net.backward(X, loss.backward(y, yhat))
    return _grads(net)


class DoubleScale(Module):
    """A user layer that accumulates with += (no _accumulate): gets zero_grad semantics."""

    def __init__(self):
        super().__init__()
        self._register("scale", nnx.asarray(np.ones((1, 3))))

    def forward(self, X):
        return X * self._parameters["scale"]

    def backward_update_gradient(self, input, delta):
        xp = nnx.backends.namespace_of(input)
        self._gradient["scale"] += xp.sum(input * delta, axis=0, keepdims=True)

    def backward_delta(self, input, delta):
        return delta * self._parameters["scale"]


def test_step_gradients_equal_zero_grad_then_backward(backend, float64, rng):
    shared = nnx.Linear(3, 3)  # used twice: its two contributions must add up
    net = nnx.Sequential(
        nnx.Linear(4, 3), nnx.TanH(), shared, DoubleScale(), nnx.ReLU(), shared, nnx.Linear(3, 2)
    )
    assert DoubleScale._fresh_gradients is False and nnx.Linear._fresh_gradients is True
    loss = nnx.CELogSoftmax()
    opt = nnx.Optim(net, loss, eps=0.0)  # eps 0: parameters stay, gradients comparable
    for _ in range(3):  # stale gradients from the previous steps must not leak in
        X = nnx.asarray(rng.standard_normal((5, 4)))
        y = nnx.asarray(rng.integers(0, 2, 5))
        opt.step(X, y)
        after_step = _grads(net)
        expected = _reference_grads(net, loss, X, y)
        assert after_step.keys() == expected.keys()
        for name in expected:
            np.testing.assert_allclose(after_step[name], expected[name], rtol=1e-12, atol=1e-12)


def test_failed_step_leaves_zero_gradients(backend, rng):
    net = nnx.Sequential(nnx.Linear(4, 3), nnx.Linear(3, 2))
    opt = nnx.Optim(net, nnx.CELogSoftmax(), eps=0.1)
    opt.step(rng.standard_normal((5, 4)), rng.integers(0, 2, 5))
    before = {k: v.copy() for k, v in net.state_dict().items()}
    with pytest.raises(FloatingPointError):
        opt.step(np.full((5, 4), 1e38), rng.integers(0, 2, 5))
    for name, g in _grads(net).items():
        assert not np.any(g), name
    for name, p in net.state_dict().items():
        np.testing.assert_array_equal(p, before[name])
    assert all(m._fresh is None for m in net.all_modules())


def test_manual_backward_still_accumulates(backend, rng):
    """Outside an Optim step, backward_update_gradient adds, as the protocol says."""
    layer = nnx.Linear(4, 3)
    X = nnx.asarray(rng.standard_normal((5, 4)))
    delta = nnx.asarray(rng.standard_normal((5, 3)))
    layer.backward_update_gradient(X, delta)
    once = nnx.to_numpy(layer._gradient["weight"]).copy()
    layer.backward_update_gradient(X, delta)
    np.testing.assert_allclose(nnx.to_numpy(layer._gradient["weight"]), 2 * once, rtol=1e-6)
