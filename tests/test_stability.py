"""Numerical stability at float32 logits of magnitude 1e4 (both signs), on every backend.

Softmax, LogSoftmax, StableSigmoid, Softplus and every loss must give finite outputs and
finite gradients, and agree with PyTorch computing the same thing in float64 (on the same
float32 input values). NumPy warnings raised inside nnx are errors in this suite
(``filterwarnings`` in pyproject.toml), so an overflow that happens to end finite still
fails.
"""

from __future__ import annotations

import numpy as np
import pytest
from helpers import host, torch_loss_forward, torch_module_reference, torch_reference

import nnx
from nnx import backends

pytest.importorskip("torch")

BIG = 1e4
LOGITS = np.array(
    [
        [BIG, -BIG, 0.0, BIG / 2, -BIG / 2],
        [-BIG, -BIG, -BIG, -BIG, -BIG + 1.0],  # every class very unlikely
        [BIG, BIG, BIG - 1.0, 0.0, -BIG],  # ties at the top
        [-BIG, BIG, -BIG, BIG, 3.0],
    ],
    dtype=np.float32,
)
LABELS = np.array([0, 4, 2, 1])  # likely, unlikely, nearly tied, certain-but-wrong mixes


def close_to(actual: np.ndarray, expected: np.ndarray, what: str) -> None:
    """float32 result against a float64 reference: relative 1e-5 of the result's scale."""
    assert np.all(np.isfinite(actual)), f"{what}: non-finite values {actual}"
    scale = max(1.0, float(np.abs(expected).max()))
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-5 * scale, err_msg=what)


@pytest.mark.parametrize(
    "make", [nnx.Softmax, nnx.LogSoftmax, nnx.StableSigmoid, nnx.Softplus], ids=lambda m: m.__name__
)
def test_activations_finite_at_1e4(backend, rng, make):
    module = make()
    x = nnx.asarray(LOGITS)
    assert backends.dtype_name(x) == "float32"
    out = module(x)
    R = rng.standard_normal(LOGITS.shape)
    dx = module.backward_delta(x, nnx.asarray(R))
    assert backends.dtype_name(out) == "float32" and backends.dtype_name(dx) == "float32"
    t_out, t_dx, _ = torch_module_reference(module, LOGITS.astype(np.float64), R)
    close_to(host(out), t_out, f"{make.__name__} forward")
    close_to(host(dx), t_dx, f"{make.__name__} backward_delta")


def test_logsoftmax_values_at_1e4(backend):
    """The exact values: no log(0) = -inf where a probability underflows."""
    out = host(nnx.LogSoftmax()(nnx.asarray(LOGITS)))
    assert out[0, 0] == pytest.approx(0.0, abs=1e-6)
    assert out[0, 1] == pytest.approx(-2 * BIG, rel=1e-6)
    assert out[1, 4] == pytest.approx(-np.log1p(4 * np.exp(-1.0)), rel=1e-5)


def _loss_cases(rng: np.random.Generator) -> dict[str, tuple[nnx.Loss, np.ndarray, np.ndarray]]:
    """``name: (loss, y, yhat)`` with float32 yhat built from the 1e4 logits."""
    one_hot = np.eye(LOGITS.shape[1], dtype=np.float32)[LABELS]
    with nnx.use_backend("numpy"):
        probs = nnx.to_numpy(nnx.StableSigmoid()(nnx.asarray(LOGITS)))  # exact 0s and 1s
        logp = nnx.to_numpy(nnx.LogSoftmax()(nnx.asarray(LOGITS)))
    bits = rng.integers(0, 2, LOGITS.shape).astype(np.float32)
    return {
        "mse": (nnx.MSELoss(), -LOGITS[::-1].copy(), LOGITS),
        "bce": (nnx.BCELoss(), bits, probs),
        "ce_labels": (nnx.CrossEntropyLoss(), LABELS, logp),
        "ce_onehot": (nnx.CrossEntropyLoss(), one_hot, logp),
        "celsm_labels": (nnx.CELogSoftmax(), LABELS, LOGITS),
        "celsm_onehot": (nnx.CELogSoftmax(), one_hot, LOGITS),
    }


LOSS_CASES = ["mse", "bce", "ce_labels", "ce_onehot", "celsm_labels", "celsm_onehot"]


@pytest.mark.parametrize("case", LOSS_CASES)
def test_losses_finite_at_1e4(backend, rng, case):
    loss, y, yhat = _loss_cases(rng)[case]
    yb = nnx.asarray(y)
    yhatb = nnx.asarray(yhat)
    assert backends.dtype_name(yhatb) == "float32"
    out = host(loss.forward(yb, yhatb))
    grad = host(loss.backward(yb, yhatb))
    inputs = {"y": y if y.dtype.kind != "f" else y.astype(np.float64), "yhat": yhat}
    t_out, t_grads = torch_reference(
        lambda y, yhat: torch_loss_forward(loss, y, yhat), inputs, no_grad=("y",)
    )
    close_to(out, t_out, f"{case} forward")
    close_to(grad, t_grads["yhat"], f"{case} backward")


def test_celogsoftmax_network_gradient_finite_at_1e4(backend):
    """Logits of 1e4 coming out of a Linear layer: the whole backward pass stays finite."""
    net = nnx.Sequential(nnx.Linear(2, 5, bias=False, init_type="normal"))
    x = nnx.asarray(np.array([[BIG, 0.0], [-BIG, 0.0]], dtype=np.float32))
    loss = nnx.CELogSoftmax()
    labels = nnx.asarray(np.array([1, 0]))
    yhat = net(x)
    losses = host(loss(labels, yhat))
    dx = host(net.backward(x, loss.backward(labels, yhat)))
    assert np.all(np.isfinite(losses)) and np.all(np.isfinite(dx))
    grads = [host(g) for g in net[0]._gradient.values()]
    assert all(np.all(np.isfinite(g)) for g in grads)
