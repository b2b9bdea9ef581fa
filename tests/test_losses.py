"""Every loss against PyTorch's own loss functions and against finite differences.

``forward(y, yhat)`` returns per-sample losses ``(batch,)``; ``backward(y, yhat)`` is
dL/dyhat for L = sum of them. Both are checked with random per-sample weights ``w``
(:math:`L = \\sum_i w_i \\ell_i`), so row ``i`` of ``backward`` must be the derivative of
sample ``i``'s loss alone. Class losses take one-hot, soft (CrossEntropyLoss) or integer
targets; every test runs on each backend.
"""

from __future__ import annotations

import numpy as np
import pytest
from helpers import (
    assert_close,
    finite_difference_check_loss,
    host,
    torch_loss_forward,
    torch_reference,
)

import nnx
from nnx import backends

pytest.importorskip("torch")

BATCH, K = 5, 4


def _log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def make_case(name: str, rng: np.random.Generator) -> tuple[nnx.Loss, np.ndarray, np.ndarray]:
    """``(loss, y, yhat)`` host arrays for the case ``name``."""
    labels = rng.integers(0, K, BATCH)
    one_hot = np.eye(K)[labels]
    logits = rng.standard_normal((BATCH, K)) * 2.0
    if name == "mse":
        return nnx.MSELoss(), rng.standard_normal((BATCH, K)), rng.standard_normal((BATCH, K))
    if name == "mse_3d":
        shape = (BATCH, 3, 2)
        return nnx.MSELoss(), rng.standard_normal(shape), rng.standard_normal(shape)
    if name == "bce":
        y = rng.integers(0, 2, (BATCH, K)).astype(np.float64)
        return nnx.BCELoss(), y, rng.uniform(0.05, 0.95, (BATCH, K))
    if name == "bce_soft":
        return nnx.BCELoss(), rng.uniform(0, 1, (BATCH, K)), rng.uniform(0.05, 0.95, (BATCH, K))
    if name == "nll_onehot":
        return nnx.NLLLoss(), one_hot, _log_softmax(logits)
    if name == "nll_labels":
        return nnx.NLLLoss(), labels, _log_softmax(logits)
    if name == "ce_onehot":
        return nnx.CrossEntropyLoss(), one_hot, logits
    if name == "ce_labels":
        return nnx.CrossEntropyLoss(), labels, logits
    if name == "ce_soft":
        soft = rng.uniform(0.1, 1.0, (BATCH, K))
        return nnx.CrossEntropyLoss(), soft / soft.sum(axis=1, keepdims=True), logits
    if name == "ce_after_logsoftmax":  # log-softmax is idempotent: the NLL of logp
        return nnx.CrossEntropyLoss(), labels, _log_softmax(logits)
    if name == "ce_after_softmax":  # probabilities as scores: bounded, trains
        p = np.exp(_log_softmax(logits))
        return nnx.CrossEntropyLoss(), one_hot, p
    if name == "celsm_onehot":
        return nnx.CELogSoftmax(), one_hot, logits
    if name == "celsm_labels":
        return nnx.CELogSoftmax(), labels, logits
    if name == "celsm_soft":
        soft = rng.uniform(0.1, 1.0, (BATCH, K))
        return nnx.CELogSoftmax(), soft / soft.sum(axis=1, keepdims=True), logits
    if name == "celsm_unnormalized":  # rows not summing to 1: dL/dyhat = softmax * sum(y) - y
        return nnx.CELogSoftmax(), rng.uniform(0.0, 2.0, (BATCH, K)), logits
    raise ValueError(name)


CASES = [
    "mse",
    "mse_3d",
    "bce",
    "bce_soft",
    "nll_onehot",
    "nll_labels",
    "ce_onehot",
    "ce_labels",
    "ce_soft",
    "ce_after_logsoftmax",
    "ce_after_softmax",
    "celsm_onehot",
    "celsm_labels",
    "celsm_soft",
    "celsm_unnormalized",
]


def to_backend(a: np.ndarray, dtype: str) -> object:
    """Targets: integer labels keep their dtype, floating data takes ``dtype``."""
    return nnx.asarray(a, dtype=dtype if a.dtype.kind == "f" else None)


def check_loss_against_torch(
    loss: nnx.Loss, y: np.ndarray, yhat: np.ndarray, dtype: str, rng: np.random.Generator
) -> None:
    tol = {"rtol": 1e-10, "atol": 1e-12} if dtype == "float64" else {"rtol": 2e-5, "atol": 2e-6}
    yb, yhatb = to_backend(y, dtype), to_backend(yhat, dtype)
    y_before, yhat_before = host(yb), host(yhatb)
    out = loss.forward(yb, yhatb)
    grad = loss.backward(yb, yhatb)
    for what, arr, shape in (("forward", out, (y.shape[0],)), ("backward", grad, yhat.shape)):
        assert type(arr) is type(yhatb), what
        assert backends.dtype_name(arr) == dtype, what
        assert tuple(arr.shape) == tuple(shape), what
    np.testing.assert_array_equal(host(yb), y_before)
    np.testing.assert_array_equal(host(yhatb), yhat_before)

    w = rng.uniform(0.5, 2.0, y.shape[0])
    seen = {  # the values nnx saw, rounded to its dtype
        "y": host(yb) if y.dtype.kind != "f" else host(yb).astype(np.float64),
        "yhat": host(yhatb).astype(np.float64),
    }
    t_out, t_grads = torch_reference(
        lambda y, yhat: torch_loss_forward(loss, y, yhat), seen, w, no_grad=("y",)
    )
    scale = max(1.0, float(np.abs(t_out).max()))
    np.testing.assert_allclose(host(out), t_out, rtol=tol["rtol"], atol=tol["atol"] * scale)
    weighted = host(grad) * w.reshape((-1,) + (1,) * (yhat.ndim - 1))
    g_scale = max(1.0, float(np.abs(t_grads["yhat"]).max()))
    np.testing.assert_allclose(
        weighted, t_grads["yhat"], rtol=tol["rtol"], atol=tol["atol"] * g_scale
    )


@pytest.mark.parametrize("case", CASES)
def test_loss_vs_torch(backend, float64, rng, case):
    loss, y, yhat = make_case(case, rng)
    check_loss_against_torch(loss, y, yhat, "float64", rng)


@pytest.mark.parametrize("case", CASES)
def test_loss_vs_torch_float32(backend, rng, case):
    loss, y, yhat = make_case(case, rng)
    check_loss_against_torch(loss, y, yhat, "float32", rng)


@pytest.mark.parametrize("case", CASES)
def test_loss_finite_differences(backend, float64, rng, case):
    loss, y, yhat = make_case(case, rng)
    finite_difference_check_loss(loss, y, yhat)


@pytest.mark.parametrize("label_dtype", ["int64", "int32", "uint8"])
@pytest.mark.parametrize("loss_type", [nnx.NLLLoss, nnx.CrossEntropyLoss, nnx.CELogSoftmax])
def test_integer_labels_equal_one_hot(backend, float64, rng, loss_type, label_dtype):
    labels = rng.integers(0, K, BATCH).astype(label_dtype)
    yhat = nnx.asarray(_log_softmax(rng.standard_normal((BATCH, K))))
    loss = loss_type()
    by_label = nnx.asarray(labels)
    assert backends.dtype_name(by_label) == label_dtype
    by_one_hot = nnx.asarray(np.eye(K)[labels])
    assert_close(loss.forward(by_label, yhat), loss.forward(by_one_hot, yhat), 1e-14)
    assert_close(loss.backward(by_label, yhat), loss.backward(by_one_hot, yhat), 1e-14)
    np.testing.assert_array_equal(host(by_label), labels)


def test_formulas_by_hand(backend, float64):
    """Small cases whose values are known in closed form."""
    y = nnx.asarray([[1.0, 0.0], [0.0, 0.0]])
    yhat = nnx.asarray([[0.5, 0.5], [1.0, -1.0]])
    assert_close(nnx.MSELoss()(y, yhat), [0.5, 2.0], 1e-14)
    assert_close(nnx.MSELoss().backward(y, yhat), [[-1.0, 1.0], [2.0, -2.0]], 1e-14)

    p = nnx.asarray([[0.25, 0.5]])
    t = nnx.asarray([[1.0, 0.0]])
    assert_close(nnx.BCELoss()(t, p), [-np.log(0.25) - np.log(0.5)], 1e-14)

    logp = nnx.asarray(np.log([[0.2, 0.3, 0.5]]))
    labels = nnx.asarray(np.array([2]))
    assert_close(nnx.NLLLoss()(labels, logp), [-np.log(0.5)], 1e-14)
    assert_close(nnx.NLLLoss().backward(labels, logp), [[0.0, 0.0, -1.0]])
    # the same log-probabilities as scores: CrossEntropyLoss gives the same loss, and
    # the gradient softmax(logp) - y = p - y
    assert_close(nnx.CrossEntropyLoss()(labels, logp), [-np.log(0.5)], 1e-14)
    assert_close(nnx.CrossEntropyLoss().backward(labels, logp), [[0.2, 0.3, -0.5]], 1e-14)

    logits = nnx.asarray([[0.0, 0.0, np.log(2.0)]])  # softmax = (1/4, 1/4, 1/2)
    for loss in (nnx.CrossEntropyLoss(), nnx.CELogSoftmax()):
        assert_close(loss(labels, logits), [np.log(2.0)], 1e-14)
        assert_close(loss.backward(labels, logits), [[0.25, 0.25, -0.5]], 1e-14)


@pytest.mark.parametrize("fused_type", [nnx.CrossEntropyLoss, nnx.CELogSoftmax])
def test_fused_equals_logsoftmax_then_nll(backend, float64, rng, fused_type):
    logits = nnx.asarray(rng.standard_normal((6, 5)) * 3)
    labels = nnx.asarray(rng.integers(0, 5, 6))
    lsm, nll, fused = nnx.LogSoftmax(), nnx.NLLLoss(), fused_type()
    logp = lsm(logits)
    assert_close(fused(labels, logits), nll(labels, logp), 1e-12, 1e-12)
    chained = lsm.backward_delta(logits, nll.backward(labels, logp))
    assert_close(fused.backward(labels, logits), chained, 1e-12, 1e-12)


def test_crossentropy_after_logsoftmax_is_unchanged(backend, float64, rng):
    """The seed's head LogSoftmax + CrossEntropyLoss: the loss and the gradient reaching
    the logits are those of NLLLoss after LogSoftmax (log-softmax is idempotent)."""
    logits = nnx.asarray(rng.standard_normal((6, 5)) * 3)
    labels = nnx.asarray(rng.integers(0, 5, 6))
    lsm = nnx.LogSoftmax()
    logp = lsm(logits)
    ce, nll = nnx.CrossEntropyLoss(), nnx.NLLLoss()
    assert_close(ce(labels, logp), nll(labels, logp), 1e-12, 1e-12)
    via_ce = lsm.backward_delta(logits, ce.backward(labels, logp))
    via_nll = lsm.backward_delta(logits, nll.backward(labels, logp))
    assert_close(via_ce, via_nll, 1e-12, 1e-12)


@pytest.mark.parametrize("head", ["linear", "sigmoid", "softmax"])
def test_crossentropy_trains_after_any_head(backend, head):
    """The seed's recipes put CrossEntropyLoss after a Linear, a Sigmoid or a Softmax:
    the loss is bounded below (>= 0), finite, and training lowers it and classifies.
    (After a Sigmoid the scores lie in (0, 1): the loss cannot go below
    -log(e / (e + K - 1)), so it is compared with its first epoch only.)"""
    rng = np.random.default_rng(0)
    centers = rng.standard_normal((3, 8)) * 3
    y = rng.integers(0, 3, 300)
    X = centers[y] + rng.standard_normal((300, 8))
    nnx.manual_seed(0)
    layers = [nnx.Linear(8, 16), nnx.TanH(), nnx.Linear(16, 3)]
    layers += {"linear": [], "sigmoid": [nnx.Sigmoid()], "softmax": [nnx.Softmax()]}[head]
    opt = nnx.Optim(nnx.Sequential(*layers), nnx.CrossEntropyLoss(), eps=0.01)
    losses = opt.SGD(X, y, 16, 15, progress=False)
    assert np.all(np.isfinite(losses)) and np.all(losses >= 0)
    assert losses[-1] < losses[0] - 0.2
    assert opt.score(X, y) > 0.9


@pytest.mark.parametrize("loss_type", [nnx.CrossEntropyLoss, nnx.CELogSoftmax])
@pytest.mark.parametrize("targets", ["labels", "one-hot"])
def test_one_class_gives_pytorchs_zero_loss_with_a_warning(backend, float64, loss_type, targets):
    """yhat of shape (batch, 1), as in the original scripts/random_data.py (Linear(2, 1),
    Sigmoid, CrossEntropyLoss): PyTorch's loss and gradient are 0 (a softmax over one
    class is 1); nnx computes the same and warns that nothing can be learned that way."""
    import torch

    yhat_host = np.array([[0.3], [2.0], [-1.5], [0.7]])
    y_host = np.zeros(4, dtype=np.int64) if targets == "labels" else np.ones((4, 1))
    y, yhat = nnx.asarray(y_host), nnx.asarray(yhat_host)
    loss = loss_type()
    with pytest.warns(UserWarning, match=r"1 class.*loss and its gradient are 0.*BCELoss"):
        value = loss(y, yhat)
    grad = loss.backward(y, yhat)  # the same batch: checked, and warned about, once
    t_yhat = torch.tensor(yhat_host, requires_grad=True)
    t_y = torch.tensor(y_host)
    t_loss = torch.nn.functional.cross_entropy(t_yhat, t_y, reduction="none")
    t_loss.sum().backward()
    assert_close(value, t_loss.detach().numpy(), 1e-12, 1e-12)
    assert_close(grad, t_yhat.grad.numpy(), 1e-12, 1e-12)
    assert np.all(host(value) == 0) and np.all(host(grad) == 0)


def test_one_class_script_runs_to_the_end(backend):
    """The original scripts/random_data.py, unchanged but for its imports, trains to the
    end (with the warning), as it did on the original library."""
    np.random.seed(42)  # noqa: NPY002 (the script's own lines)
    X = np.random.random(size=(256, 2))  # noqa: NPY002
    y = np.random.choice([1], size=(256, 1))  # noqa: NPY002
    net = nnx.Sequential(nnx.Linear(2, 2), nnx.TanH(), nnx.Linear(2, 1), nnx.Sigmoid())
    optimizer = nnx.Optim(net, nnx.CrossEntropyLoss(), eps=1e-1)
    with pytest.warns(UserWarning, match="1 class"):
        losses = optimizer.SGD(X, y, 32, 10, progress=False)
    assert len(losses) == 10 and np.all(np.asarray(losses) == 0)


def test_bce_saturated_predictions_are_finite(backend, float64):
    """yhat exactly 0 or 1: finite loss (logs clamped at -100, as in PyTorch)."""
    y = np.array([[1.0, 0.0, 1.0, 0.0]])
    yhat = np.array([[0.0, 1.0, 1.0, 0.0]])
    out = host(nnx.BCELoss()(nnx.asarray(y), nnx.asarray(yhat)))
    grad = host(nnx.BCELoss().backward(nnx.asarray(y), nnx.asarray(yhat)))
    assert np.all(np.isfinite(out)) and np.all(np.isfinite(grad))
    t_out, _ = torch_reference(
        lambda y, yhat: torch_loss_forward(nnx.BCELoss(), y, yhat), {"y": y, "yhat": yhat}
    )
    np.testing.assert_allclose(out, t_out)  # 200: two clamped logs
    assert out[0] == pytest.approx(200.0)
    assert grad[0, 2] == 0.0 and grad[0, 3] == 0.0  # correct predictions: no gradient
    assert grad[0, 0] < 0 < grad[0, 1]  # wrong ones are pushed the right way


def test_label_count_without_count_nonzero():
    """Namespaces older than the 2024.12 standard have no count_nonzero: a sum instead."""
    import types

    import array_api_compat.numpy as compat

    from nnx.module import count_true

    bare = types.SimpleNamespace(sum=compat.sum, astype=compat.astype, int64=compat.int64)
    mask = np.array([[True, False, False], [False, True, False], [False, False, False]])
    assert count_true(bare, mask) == 2
    if hasattr(compat, "count_nonzero"):
        assert count_true(compat, mask) == 2
