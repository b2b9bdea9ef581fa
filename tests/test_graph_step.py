"""``Optim(cuda_graph=True)``: the step logic around CUDA graphs, on every backend.

A real capture needs a GPU (``benchmarks/gpu_parity.py`` checks it there). Here the
backend's ``capture`` is replaced by a stand-in with a graph's contract: capturing runs
nothing the caller can see (the update is not applied), ``outputs`` are buffers that
each replay overwrites in place. What is tested is everything nnx does around it: the
first batch of each shape as an ordinary step, the copy into static buffers, the one
read, the checks, the update replayed only after a finite loss, and the results equal
to the eager step's.
"""

from __future__ import annotations

import copy
import pickle

import numpy as np
import pytest
from helpers import host

import nnx
from nnx import backends
from nnx.backends import CapturedGraph


class _Replayed:
    """Stand-in for a recorded function: replay runs it and writes into the buffers."""

    def __init__(self, fn, outputs_at_capture: bool) -> None:
        self.fn = fn
        self.outputs = fn() if outputs_at_capture else None
        self.replays = 0

    def replay(self) -> None:
        self.replays += 1
        new = self.fn()
        if self.outputs is None:
            return
        for buf, value in zip(self.outputs[:3], new[:3], strict=True):
            buf[...] = value


@pytest.fixture
def fake_graphs(backend, monkeypatch):
    if backend == "jax":
        pytest.skip("a recorded step writes its buffers in place: not for immutable arrays")
    backend_obj = backends.BACKENDS[backend]
    captured: list[_Replayed] = []

    def capture(fn, device, pool=None):
        # forward/backward returns its buffers; the update returns None and must not run
        probe = _Replayed(fn, outputs_at_capture=getattr(fn, "__name__", "") == "forward_backward")
        captured.append(probe)
        return CapturedGraph(probe.replay, probe.outputs, keep=probe)

    monkeypatch.setattr(type(backend_obj), "graphs_supported", lambda self, device: True)
    monkeypatch.setattr(type(backend_obj), "new_graph_pool", lambda self: None)
    monkeypatch.setattr(
        type(backend_obj), "capture", lambda self, fn, device, pool=None: capture(fn, device, pool)
    )
    return captured


def _mlp():
    return nnx.Sequential(nnx.Linear(6, 8), nnx.TanH(), nnx.Linear(8, 3))


def _cnn():
    return nnx.Sequential(
        nnx.Conv1D(3, 2, 4, bias=True), nnx.MaxPool1D(2, 2), nnx.Flatten(), nnx.Linear(16, 3)
    )


CASES = {"mlp": (_mlp, (6,)), "cnn": (_cnn, (10, 2))}
UPDATES = {
    "eps": lambda: None,
    "SGD": lambda: nnx.optimizers.SGD(0.05),
    "Momentum": lambda: nnx.optimizers.Momentum(0.05, nesterov=True),
}


@pytest.mark.parametrize("update", list(UPDATES))
@pytest.mark.parametrize("case", list(CASES))
def test_graphed_steps_equal_eager_steps(backend, fake_graphs, case, update, rng):
    make, shape = CASES[case]
    nnx.manual_seed(0)
    eager = make()
    graphed = copy.deepcopy(eager)
    a = nnx.Optim(eager, nnx.CELogSoftmax(), eps=0.05, optimizer=UPDATES[update]())
    b = nnx.Optim(
        graphed, nnx.CELogSoftmax(), eps=0.05, optimizer=UPDATES[update](), cuda_graph=True
    )
    sizes = [8, 8, 8, 5, 8, 5, 8]  # two shapes: two recordings
    for n in sizes:
        X = nnx.asarray(rng.standard_normal((n, *shape)))
        y = nnx.asarray(rng.integers(0, 3, n))
        np.testing.assert_allclose(host(b.step(X, y)), host(a.step(X, y)), rtol=1e-5, atol=1e-6)
    for (name, p), (_, q) in zip(eager.named_parameters(), graphed.named_parameters(), strict=True):
        np.testing.assert_allclose(host(q), host(p), rtol=1e-5, atol=1e-6, err_msg=name)
    # two shapes -> two (forward/backward, update) pairs; every later step is 2 replays
    assert len(fake_graphs) == 4
    assert sum(g.replays for g in fake_graphs) == 2 * (len(sizes) - 2)


def test_graphed_step_returns_a_copy_and_loops_train(backend, fake_graphs, rng):
    nnx.manual_seed(1)
    net = _mlp()
    opt = nnx.Optim(net, nnx.CELogSoftmax(), eps=0.05, cuda_graph=True)
    X, y = rng.standard_normal((64, 6)), rng.integers(0, 3, 64)
    first = opt.step(nnx.asarray(X[:8]), nnx.asarray(y[:8]))
    second = opt.step(nnx.asarray(X[:8]), nnx.asarray(y[:8]))
    kept = host(second).copy()
    opt.step(nnx.asarray(X[8:16]), nnx.asarray(y[8:16]))
    np.testing.assert_array_equal(host(second), kept)  # not the graph's buffer
    assert host(first).shape == (8,)
    losses = opt.SGD(X, y, batch_size=16, epochs=3)
    assert losses.shape == (3,) and losses[-1] < losses[0]


def test_graphed_step_keeps_parameters_on_a_non_finite_loss(backend, fake_graphs, rng):
    net = _mlp()
    opt = nnx.Optim(net, nnx.CELogSoftmax(), eps=0.05, cuda_graph=True)
    for _ in range(2):
        opt.step(nnx.asarray(rng.standard_normal((8, 6))), nnx.asarray(rng.integers(0, 3, 8)))
    before = {k: host(v).copy() for k, v in net.named_parameters()}
    bad = rng.standard_normal((8, 6))
    bad[3, 2] = np.nan
    with pytest.raises(FloatingPointError, match="non-finite loss.*not updated"):
        opt.step(nnx.asarray(bad), nnx.asarray(rng.integers(0, 3, 8)))
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\)"):
        opt.step(nnx.asarray(rng.standard_normal((8, 6))), nnx.asarray(np.full(8, 5)))
    for k, v in net.named_parameters():
        np.testing.assert_array_equal(host(v), before[k], err_msg=k)


def test_graphed_optim_copies_and_pickles(backend, fake_graphs, rng):
    net = _mlp()
    opt = nnx.Optim(net, nnx.MSELoss(), eps=0.01, cuda_graph=True)
    X, y = nnx.asarray(rng.standard_normal((4, 6))), nnx.asarray(rng.standard_normal((4, 3)))
    for _ in range(3):
        opt.step(X, y)
    for other in (copy.deepcopy(opt), pickle.loads(pickle.dumps(opt))):
        assert other.cuda_graph
        other.step(X, y)  # records its own graphs


def test_cuda_graph_refusals(backend, rng):
    with pytest.raises(ValueError, match="Adam's step changes its scalars"):
        nnx.Optim(_mlp(), nnx.CELogSoftmax(), optimizer=nnx.optimizers.Adam(), cuda_graph=True)
    opt = nnx.Optim(_mlp(), nnx.CELogSoftmax(), cuda_graph=True)
    with pytest.raises(
        ValueError, match="CUDA graphs need the 'cupy' backend or 'torch' on a CUDA"
    ):
        opt.step(nnx.asarray(rng.standard_normal((4, 6))), nnx.asarray(rng.integers(0, 3, 4)))


def test_a_failed_recording_warns_and_runs_eagerly(backend, monkeypatch, rng):
    backend_obj = backends.BACKENDS[backend]
    if backend == "jax":
        pytest.skip("a recorded step writes its buffers in place: not for immutable arrays")

    def refuse(self, fn, device, pool=None):
        raise NotImplementedError("calling cuBLAS API during stream capture is unsupported")

    monkeypatch.setattr(type(backend_obj), "graphs_supported", lambda self, device: True)
    monkeypatch.setattr(type(backend_obj), "new_graph_pool", lambda self: None)
    monkeypatch.setattr(type(backend_obj), "capture", refuse)
    nnx.manual_seed(3)
    net = _mlp()
    eager = copy.deepcopy(net)
    a = nnx.Optim(eager, nnx.CELogSoftmax(), eps=0.05)
    b = nnx.Optim(net, nnx.CELogSoftmax(), eps=0.05, cuda_graph=True)
    X, y = nnx.asarray(rng.standard_normal((8, 6))), nnx.asarray(rng.integers(0, 3, 8))
    with pytest.warns(RuntimeWarning, match=r"recording the step for batch shape \(8, 6\).*cuBLAS"):
        b.step(X, y)
    a.step(X, y)
    for _ in range(2):  # no second warning, the same steps as the eager Optim
        np.testing.assert_allclose(host(b.step(X, y)), host(a.step(X, y)), rtol=1e-6)
    for (_, p), (_, q) in zip(eager.named_parameters(), net.named_parameters(), strict=True):
        np.testing.assert_allclose(host(q), host(p), rtol=1e-6)


def test_replaced_parameters_are_recorded_again(backend, fake_graphs, rng):
    """A rollback (Ctrl-C, restore_best, a checkpoint) binds new parameter arrays, which
    the recorded graphs do not see: the next step records again, and training goes on
    exactly as the eager Optim's."""
    nnx.manual_seed(4)
    eager = _mlp()
    graphed = copy.deepcopy(eager)
    a = nnx.Optim(eager, nnx.CELogSoftmax(), optimizer=nnx.optimizers.Momentum(0.05))
    b = nnx.Optim(
        graphed, nnx.CELogSoftmax(), optimizer=nnx.optimizers.Momentum(0.05), cuda_graph=True
    )
    X, y = nnx.asarray(rng.standard_normal((8, 6))), nnx.asarray(rng.integers(0, 3, 8))
    for _ in range(3):
        a.step(X, y), b.step(X, y)
    saved = eager.state_dict()
    for _ in range(2):
        a.step(X, y), b.step(X, y)
    before = [id(q) for q in graphed.parameters()]
    eager.load_state_dict(saved)
    graphed.load_state_dict(saved)
    replaced = before != [id(q) for q in graphed.parameters()]
    recorded = len(fake_graphs)
    for _ in range(3):
        np.testing.assert_allclose(host(b.step(X, y)), host(a.step(X, y)), rtol=1e-5, atol=1e-6)
    for (name, p), (_, q) in zip(eager.named_parameters(), graphed.named_parameters(), strict=True):
        np.testing.assert_allclose(host(q), host(p), rtol=1e-5, atol=1e-6, err_msg=name)
    # new arrays: one new recording (2 graphs); the same arrays: the old graphs stay valid
    assert len(fake_graphs) == recorded + (2 if replaced else 0)
    graphed.load_state_dict(saved)
    b.optimizer.reset()  # the velocities are new arrays too
    b.step(X, y)
    assert len(fake_graphs) == recorded + (2 if replaced else 0) + 2
