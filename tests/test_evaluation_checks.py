"""Evaluation paths check labels as ``evaluate`` does; BCELoss checks its ranges;
optimisers keep their state in ``state_dict`` and belong to one network; non-finite
step sizes are refused where they are given."""

from __future__ import annotations

import copy
import math
import pickle

import numpy as np
import pytest
from helpers import host

import nnx
from nnx import optimizers


def classifier() -> nnx.Optim:
    nnx.manual_seed(0)
    return nnx.Optim(nnx.Sequential(nnx.Linear(4, 3)), nnx.CELogSoftmax())


X = np.random.default_rng(0).normal(size=(6, 4))
Y = np.array([0, 1, 2, 0, 1, 2])

BAD_LABELS = {
    "column": (Y[:, None], ValueError, r"integer labels of shape \(6,\)"),
    "out_of_range": (Y + 5, ValueError, r"labels must lie in \[0, 3\)"),
    "strings": (np.array(list("abcabc")), TypeError, r"y must hold numbers"),
    "nan_row": (np.array([0, 1, np.nan, 0, 1, 2]), ValueError, r"non-finite values"),
}


@pytest.mark.parametrize("case", list(BAD_LABELS))
@pytest.mark.parametrize("method", ["score", "evaluate"])
def test_score_checks_labels_like_evaluate(backend, case, method):
    y, exc, pattern = BAD_LABELS[case]
    with pytest.raises(exc, match=pattern):
        getattr(classifier(), method)(X, y)


def test_score_is_right_for_a_perfect_classifier(backend):
    opt = classifier()
    pred = host(opt.predict(X)).argmax(axis=1)
    assert opt.score(X, pred) == 1.0
    assert opt.score(X, np.eye(3)[pred]) == 1.0  # one-hot
    assert opt.score(X, (pred + 1) % 3) == 0.0


def test_no_samples_is_a_value_error(backend):
    for method in ("score", "evaluate"):
        with pytest.raises(ValueError, match="no samples"):
            getattr(classifier(), method)(X[:0], Y[:0])


def test_score_needs_class_scores(backend):
    opt = nnx.Optim(nnx.Sequential(nnx.Linear(4, 1)), nnx.MSELoss())
    with pytest.raises(ValueError, match=r"accuracy needs \(n, K\)"):
        opt.score(X, np.zeros((6, 1)))


def test_big_endian_input_is_accepted(backend):
    opt = classifier()
    a = opt.SGD(X.astype(">f8"), Y, batch_size=3, epochs=1, progress=False, seed=0)
    b = classifier().SGD(X, Y, batch_size=3, epochs=1, progress=False, seed=0)
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize(
    "y, yhat, pattern",
    [
        ([[2.0]], [[0.5]], r"targets y must lie in \[0, 1\].*2\.0"),
        ([[1.0]], [[1.5]], r"predictions yhat must lie in \[0, 1\].*1\.5"),
        ([[0.0]], [[-0.25]], r"predictions yhat must lie in \[0, 1\].*-0\.25"),
    ],
)
def test_bce_refuses_values_outside_0_1(backend, y, yhat, pattern):
    loss = nnx.BCELoss()
    with pytest.raises(ValueError, match=pattern):
        loss.forward(nnx.asarray(np.array(y)), nnx.asarray(np.array(yhat)))
    # inside a training step too: the counts ride on the step's loss read
    net = nnx.Sequential(nnx.Linear(1, 1))
    opt = nnx.Optim(net, loss)
    before = net.state_dict()
    with pytest.raises(ValueError, match="BCELoss: "):
        opt.step(np.array([[0.0]]), np.array(y) if y[0][0] > 1 else np.array([[2.0]]))
    for k, v in net.state_dict().items():
        np.testing.assert_array_equal(v, before[k])


def test_bce_accepts_the_bounds(backend):
    loss = nnx.BCELoss()
    out = host(
        loss.forward(nnx.asarray(np.array([[0.0, 1.0]])), nnx.asarray(np.array([[0.0, 1.0]])))
    )
    np.testing.assert_array_equal(out, [0.0])


@pytest.mark.parametrize("bad", [math.inf, -math.inf, math.nan])
def test_non_finite_step_sizes_refused(bad):
    with pytest.raises(ValueError, match="eps must be"):
        nnx.Optim(nnx.Sequential(nnx.Linear(2, 2)), nnx.MSELoss(), eps=bad)
    with pytest.raises(ValueError, match="lr must be"):
        optimizers.SGD(bad)
    with pytest.raises(ValueError, match="eps must be"):
        optimizers.Adam(eps=bad)
    with pytest.raises(ValueError, match="lr must be"):
        optimizers.Momentum(bad)


def test_one_optimizer_one_network(backend):
    adam = optimizers.Adam()
    a = nnx.Sequential(nnx.Linear(2, 2))
    nnx.Optim(a, nnx.MSELoss(), optimizer=adam)
    with pytest.raises(ValueError, match=r"already bound to another network.*one optimiser per"):
        nnx.Optim(nnx.Sequential(nnx.Linear(2, 2)), nnx.MSELoss(), optimizer=adam)
    nnx.Optim(a, nnx.MSELoss(), optimizer=adam)  # the same network again is fine
    adam.reset()
    nnx.Optim(nnx.Sequential(nnx.Linear(2, 2)), nnx.MSELoss(), optimizer=adam)


def test_optim_can_be_copied_with_its_bound_optimizer(backend):
    opt = nnx.Optim(nnx.Sequential(nnx.Linear(2, 2)), nnx.MSELoss(), optimizer=optimizers.Adam())
    for clone in (copy.deepcopy(opt), pickle.loads(pickle.dumps(opt))):
        clone.step(np.ones((3, 2)), np.zeros((3, 2)))  # bound to the clone's network


OPTIMIZERS = {
    "sgd": lambda: optimizers.SGD(0.05),
    "momentum": lambda: optimizers.Momentum(0.05),
    "nesterov": lambda: optimizers.Momentum(0.05, nesterov=True),
    "adam": lambda: optimizers.Adam(0.01),
}


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_state_dict_continues_exactly(backend, name):
    rng = np.random.default_rng(1)
    batches = [(rng.normal(size=(8, 4)), rng.integers(0, 3, 8)) for _ in range(6)]

    def fresh():
        nnx.manual_seed(3)
        net = nnx.Sequential(nnx.Linear(4, 5), nnx.TanH(), nnx.Linear(5, 3))
        return nnx.Optim(net, nnx.CELogSoftmax(), optimizer=OPTIMIZERS[name]())

    straight = fresh()
    for bx, by in batches:
        straight.step(bx, by)

    first = fresh()
    for bx, by in batches[:3]:
        first.step(bx, by)
    saved_net, saved_opt = first.network.state_dict(), first.optimizer.state_dict()
    saved_opt = pickle.loads(pickle.dumps(saved_opt))  # plain data: NumPy arrays
    second = fresh()
    second.network.load_state_dict(saved_net)
    second.optimizer.load_state_dict(saved_opt)
    for bx, by in batches[3:]:
        second.step(bx, by)
    for k, v in straight.network.state_dict().items():
        np.testing.assert_array_equal(second.network.state_dict()[k], v)


def test_load_state_dict_refuses_another_optimizer():
    state = optimizers.Adam(0.01).state_dict()
    with pytest.raises(ValueError, match=r"Adam\(.*this optimiser is Momentum"):
        optimizers.Momentum(0.01).load_state_dict(state)
    with pytest.raises(ValueError, match=r"lr.*0\.02"):
        optimizers.Adam(0.02).load_state_dict(state)
