"""Checkpoints and exact resume, SIGTERM, non-finite updates (nnx.training.checkpoint).

- A run with ``checkpoint=PATH`` interrupted (Ctrl-C in process; ``kill -9`` of a
  subprocess at a random moment) and started again with the same call ends with the
  very parameters and history of an uninterrupted run, for every optimiser, bit for
  bit on NumPy (to rounding elsewhere); the checkpoint is removed at the end.
- SIGTERM stops a loop like Ctrl-C (finished epochs kept, ``terminated`` set), and
  ``nnx train`` then writes its outputs and exits with 143.
- A non-finite update (``eps=1e39``) stops with FloatingPointError naming the epoch and
  the batch, leaving the parameters of before that step.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import host

import nnx
from nnx import optimizers

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "NNX_BACKEND": "numpy"}
RUN = str(Path(__file__).with_name("checkpoint_run.py"))
posix = pytest.mark.skipif(os.name == "nt", reason="POSIX signals")

OPTIMIZERS = {
    "eps": lambda: None,
    "momentum": lambda: optimizers.Momentum(0.02),
    "nesterov": lambda: optimizers.Momentum(0.02, nesterov=True),
    "adam": lambda: optimizers.Adam(0.01),
}


def data(n: int = 120) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(5)
    X = rng.normal(size=(n, 6))
    return X, (X[:, 0] + X[:, 1] > 0).astype(np.int64) + (X[:, 2] > 1)


def make(name: str) -> nnx.Optim:
    nnx.manual_seed(1)
    net = nnx.Sequential(nnx.Linear(6, 12), nnx.ReLU(), nnx.Linear(12, 3))
    return nnx.Optim(net, nnx.CELogSoftmax(), eps=0.01, optimizer=OPTIMIZERS[name]())


def same(a: dict, b: dict, exact: bool) -> None:
    assert a.keys() == b.keys()
    for k in a:
        if exact:
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)
        else:
            np.testing.assert_allclose(a[k], b[k], rtol=1e-5, atol=1e-6, err_msg=k)


class StopAt:
    """A callback that presses Ctrl-C at the end of one epoch."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def __call__(self, record: dict) -> None:
        if record["epoch"] == self.epoch:
            raise KeyboardInterrupt


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_sgd_eval_resume_equals_uninterrupted(backend, tmp_path, name):
    X, y = data()
    args = (X, y, 16, 7, 0.25)
    kw = {"patience": 3, "progress": False, "monitor": "loss"}
    straight = make(name)
    straight.SGD_eval(*args, **kw, checkpoint=tmp_path / "a.npz")
    assert not (tmp_path / "a.npz").exists()  # removed at a normal end

    path = tmp_path / "b.npz"
    first = make(name)
    first.SGD_eval(*args, **kw, checkpoint=path, callback=StopAt(3))
    assert first.interrupted and path.exists()
    again = make(name)  # a fresh process would build the same network
    again.SGD_eval(*args, **kw, checkpoint=path)
    assert not path.exists()
    exact = backend == "numpy"
    same(again.network.state_dict(), straight.network.state_dict(), exact)
    for k, v in straight.history.items():
        (np.testing.assert_array_equal if exact else np.testing.assert_allclose)(
            again.history[k], v
        )
    assert again.best_epoch == straight.best_epoch


def test_resume_of_an_early_stopped_run_trains_no_further(backend, tmp_path, monkeypatch):
    """Killed after the checkpoint of the stopping epoch was written, before it was
    removed: the resumed call ends where the uninterrupted one ended."""
    X, y = data()
    args = (X, y, 16, 40, 0.25)
    kw = {"patience": 1, "progress": False, "monitor": "loss"}
    nnx.manual_seed(1)
    straight = nnx.Optim(make("adam").network, nnx.CELogSoftmax(), optimizer=optimizers.Adam(0.3))
    straight.SGD_eval(*args, **kw)
    stopped_at = len(straight.history["epoch"])
    assert stopped_at < 40  # it did stop early

    def killed(self):
        raise KeyboardInterrupt

    path = tmp_path / "c.npz"
    monkeypatch.setattr(nnx.training.checkpoint.Checkpoint, "remove", killed)
    nnx.manual_seed(1)
    first = nnx.Optim(make("adam").network, nnx.CELogSoftmax(), optimizer=optimizers.Adam(0.3))
    with pytest.raises(KeyboardInterrupt):
        first.SGD_eval(*args, **kw, checkpoint=path)
    monkeypatch.undo()
    assert path.exists()
    nnx.manual_seed(1)
    again = nnx.Optim(make("adam").network, nnx.CELogSoftmax(), optimizer=optimizers.Adam(0.3))
    again.SGD_eval(*args, **kw, checkpoint=path)
    assert len(again.history["epoch"]) == stopped_at and not path.exists()
    same(again.network.state_dict(), straight.network.state_dict(), backend == "numpy")


@pytest.mark.parametrize("name", ["eps", "adam"])
def test_sgd_resume_equals_uninterrupted(backend, tmp_path, name, monkeypatch):
    X, y = data()
    straight = make(name)
    ref = straight.SGD(X, y, 16, 5, progress=False, checkpoint=tmp_path / "a.npz")
    path = tmp_path / "b.npz"
    real_step, calls = nnx.training.step.Step.__call__, []

    def interrupted_step(self, bx, by):  # Ctrl-C in the middle of epoch 3 (8 batches)
        calls.append(1)
        if len(calls) == 2 * 8 + 5:
            raise KeyboardInterrupt
        return real_step(self, bx, by)

    monkeypatch.setattr(nnx.training.step.Step, "__call__", interrupted_step)
    first = make(name)
    first.SGD(X, y, 16, 5, progress=False, checkpoint=path)
    assert first.interrupted and len(first.history["epoch"]) == 2 and path.exists()
    monkeypatch.undo()
    again = make(name)
    losses = again.SGD(X, y, 16, 5, progress=False, checkpoint=path)
    assert not path.exists()
    exact = backend == "numpy"
    (np.testing.assert_array_equal if exact else np.testing.assert_allclose)(losses, ref)
    same(again.network.state_dict(), straight.network.state_dict(), exact)


def test_checkpoint_of_another_call_is_refused(tmp_path):
    X, y = data()
    path = tmp_path / "c.npz"
    opt = make("adam")
    opt.SGD_eval(X, y, 16, 4, 0.25, progress=False, checkpoint=path, callback=StopAt(2))
    with pytest.raises(ValueError, match=r"another call \(batch_size: checkpoint 16, now 8"):
        make("adam").SGD_eval(X, y, 8, 4, 0.25, progress=False, checkpoint=path)
    with pytest.raises(ValueError, match=r"optimizer: checkpoint 'Adam"):
        make("momentum").SGD_eval(X, y, 16, 4, 0.25, progress=False, checkpoint=path)
    other = nnx.Optim(
        nnx.Sequential(nnx.Linear(6, 3)), nnx.CELogSoftmax(), optimizer=optimizers.Adam(0.01)
    )
    with pytest.raises(ValueError, match="another architecture"):
        other.SGD_eval(X, y, 16, 4, 0.25, progress=False, checkpoint=path)
    net = nnx.load(path)  # a checkpoint is a model file too
    assert repr(net) == repr(opt.network)


def test_non_finite_update_stops_before_that_step(backend):
    """eps=1e39 overflows float32 at some update: the error names that step, and the
    network holds the parameters of just before it (a step-by-step shadow run says
    which step and which parameters)."""
    X, y = data(64)
    opt = make("eps")
    opt.eps = 1e39
    shadow = make("eps")
    shadow.eps = 1e39
    expected_batch, before = None, None
    for b in range(4):
        state = shadow.network.state_dict()
        with np.errstate(all="ignore"):
            shadow.step(X[16 * b : 16 * (b + 1)], y[16 * b : 16 * (b + 1)])
        if not all(np.isfinite(v).all() for v in shadow.network.state_dict().values()):
            expected_batch, before = b + 1, state
            break
    assert expected_batch is not None
    with np.errstate(all="ignore"), pytest.raises(FloatingPointError) as info:
        opt.SGD(X, y, 16, 3, shuffle=False, progress=False)
    assert f"epoch 1, batch {expected_batch} of 4" in str(info.value), info.value
    assert "non-finite parameter" in str(info.value)
    same(opt.network.state_dict(), before, exact=True)


def test_step_says_when_parameters_were_already_non_finite():
    opt = make("eps")
    opt.eps = 1e39
    X, y = data(16)
    with np.errstate(all="ignore"):
        opt.step(X, y)
        with pytest.raises(FloatingPointError, match="already non-finite before this step"):
            opt.step(X, y)


@posix
@pytest.mark.parametrize("name", ["eps", "sgd", "momentum", "nesterov", "adam"])
def test_kill_9_at_a_random_batch_then_resume_is_bit_identical(tmp_path, name):
    ref = tmp_path / "ref.npz"
    subprocess.run(
        [sys.executable, RUN, name, str(tmp_path / "ref-ckpt.npz"), str(ref)],
        env=ENV, check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    ckpt, out = tmp_path / "ckpt.npz", tmp_path / "out.npz"
    rng = np.random.default_rng(abs(hash(name)) % 2**32)
    kills = 0
    for _ in range(3):  # up to three kills, each at a random moment of a random epoch
        p = subprocess.Popen(
            [sys.executable, RUN, name, str(ckpt), str(out)], env=ENV, stdout=subprocess.PIPE
        )
        assert p.stdout is not None
        line = p.stdout.readline()  # the first epoch of this run has finished
        t0 = time.perf_counter()
        p.stdout.readline()
        epoch_s = time.perf_counter() - t0
        time.sleep(float(rng.uniform(0, 2 * epoch_s)))
        if p.poll() is None:
            p.send_signal(signal.SIGKILL)
            kills += 1
        p.wait()
        p.stdout.close()
        assert line.startswith(b"epoch"), line
        if out.exists():
            break
    assert kills >= 1
    if not out.exists():
        subprocess.run(
            [sys.executable, RUN, name, str(ckpt), str(out)],
            env=ENV, check=True, capture_output=True, timeout=300,
        )  # fmt: skip
    with np.load(ref) as a, np.load(out) as b:
        assert sorted(a.files) == sorted(b.files)
        for k in a.files:
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    assert not ckpt.exists()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


@posix
def test_sigterm_stops_the_loop_like_ctrl_c(tmp_path):
    code = (
        "import numpy as np, nnx, sys\n"
        "from tests.checkpoint_run import main\n"
        "main('adam', sys.argv[1], sys.argv[2])\n"
    )
    ckpt, out = tmp_path / "ckpt.npz", tmp_path / "out.npz"
    p = subprocess.Popen(
        [sys.executable, "-c", code, str(ckpt), str(out)],
        env=ENV, cwd=ROOT, stdout=subprocess.PIPE,
    )  # fmt: skip
    assert p.stdout is not None
    p.stdout.readline()
    p.stdout.readline()
    p.send_signal(signal.SIGTERM)
    rest = p.stdout.read()
    assert p.wait(60) == 0, rest
    with np.load(out) as r:
        assert bool(r["interrupted"])
        epochs = r["history/epoch"]
    assert 2 <= len(epochs) < 12 and ckpt.exists()  # kept for a resume


def test_sigterm_handler_of_the_program_is_kept():
    def mine(signum, frame):
        pass

    previous = signal.signal(signal.SIGTERM, mine)
    try:
        with nnx.training.signals.sigterm_as_interrupt():
            assert signal.getsignal(signal.SIGTERM) is mine
    finally:
        signal.signal(signal.SIGTERM, previous)


# -- the command line ------------------------------------------------------------------
def cli(*args: str, **kw) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "nnx", "train", "--dataset", "digits", "--model", "mlp",
         "--no-progress", "--patience", "0", *args],
        env=ENV, cwd=kw.get("cwd", ROOT), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip


def signal_after_epoch_2(p: subprocess.Popen, signum: int) -> bytes:
    """Send ``signum`` once the run printed its second epoch; its stderr once it ended."""
    assert p.stdout is not None
    while not p.stdout.readline().startswith(b"epoch   2"):
        pass
    p.send_signal(signum)
    return p.communicate(timeout=120)[1]


@posix
def test_cli_sigterm_writes_outputs_and_exits_143_then_resume_matches(tmp_path):
    ref, out = tmp_path / "ref", tmp_path / "out"
    args = ("--epochs", "8", "--seed", "2")
    p = cli(*args, "--out", str(ref))
    assert p.wait(300) == 0, p.stderr.read()
    p = cli(*args, "--out", str(out))
    err = signal_after_epoch_2(p, signal.SIGTERM)
    assert p.returncode == 143, err
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["terminated"] and 2 <= metrics["epochs_run"] < 8
    assert (out / "model.npz").exists() and (out / "history.csv").exists()
    assert (out / "checkpoint.npz").exists()
    p = cli("--out", str(out), "--resume")  # the arguments come from args.json
    assert p.wait(300) == 0, p.stderr.read()
    assert not (out / "checkpoint.npz").exists()
    a, b = nnx.load(ref / "model.npz"), nnx.load(out / "model.npz")
    same(a.state_dict(), b.state_dict(), exact=True)
    assert (ref / "history.csv").read_text() == (out / "history.csv").read_text()


@posix
def test_cli_ctrl_c_writes_outputs_and_exits_130(tmp_path):
    out = tmp_path / "out"
    p = cli("--epochs", "400", "--batch-size", "8", "--out", str(out))
    err = signal_after_epoch_2(p, signal.SIGINT)
    assert p.returncode == 130, err
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["interrupted"] and not metrics["terminated"]
    assert (out / "model.npz").exists() and (out / "checkpoint.npz").exists()


def test_cli_refuses_a_leftover_checkpoint_without_resume(tmp_path, capsys):
    from nnx import cli as nnx_cli

    (tmp_path / "checkpoint.npz").write_bytes(b"x")
    argv = ["train", "--dataset", "digits", "--model", "mlp", "--out", str(tmp_path)]
    assert nnx_cli.main(argv) == 2
    assert "pass --resume" in capsys.readouterr().err
    assert nnx_cli.main([*argv[:5], "--out", str(tmp_path / "new"), "--resume"]) == 2
    assert "no checkpoint" in capsys.readouterr().err


def test_cli_resume_refuses_arguments_that_differ_from_the_run(tmp_path, capsys):
    """--resume takes the run's arguments from args.json: one given on the command line
    that differs from them is an error, not silently dropped."""
    from nnx import cli as nnx_cli

    saved = {"dataset": "digits", "model": "mlp", "backend": "numpy", "epochs": 30, "seed": 0}
    (tmp_path / "args.json").write_text(json.dumps(saved))
    (tmp_path / "checkpoint.npz").write_bytes(b"x")
    argv = ["train", "--out", str(tmp_path), "--resume", "--epochs", "5", "--model", "cnn2d"]
    assert nnx_cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "--resume continues the run with its own arguments" in err
    assert "--model cnn2d (the run's: mlp), --epochs 5 (the run's: 30)" in err
    assert (tmp_path / "checkpoint.npz").read_bytes() == b"x"  # nothing touched


@pytest.mark.skipif(os.name == "nt" or os.geteuid() == 0, reason="root writes anywhere")
def test_cli_read_only_output_fails_before_training(tmp_path, capsys):
    from nnx import cli as nnx_cli

    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    t = time.perf_counter()
    rc = nnx_cli.main(["train", "--dataset", "digits", "--model", "mlp", "--out", str(ro)])
    assert rc == 2 and "not writable" in capsys.readouterr().err
    assert time.perf_counter() - t < 30


def test_cli_output_checked_before_training(tmp_path, capsys, monkeypatch):
    """A folder that cannot be written (here: a file in the way) fails at once."""
    from nnx import cli as nnx_cli

    blocker = tmp_path / "file"
    blocker.write_text("x")
    called = []
    monkeypatch.setattr(nnx.Optim, "SGD_eval", lambda *a, **k: called.append(1))
    rc = nnx_cli.main(
        ["train", "--dataset", "digits", "--model", "mlp", "--out", str(blocker / "sub")]
    )
    assert rc == 2 and "not writable" in capsys.readouterr().err
    assert not called


def test_cli_blow_up_writes_history_and_last_good_model(tmp_path, capsys):
    from nnx import cli as nnx_cli

    out = tmp_path / "out"
    argv = ["train", "--dataset", "digits", "--model", "mlp", "--optimizer", "sgd",
            "--lr", "1e30", "--epochs", "3", "--out", str(out), "--quiet"]  # fmt: skip
    with np.errstate(all="ignore"):
        rc = nnx_cli.main(argv)
    err = capsys.readouterr().err
    assert rc == 1 and "epoch 1" in err and "batch" in err, err
    assert (out / "history.csv").exists() and (out / "model.npz").exists()
    state = nnx.load(out / "model.npz").state_dict()
    assert all(np.isfinite(v).all() for v in state.values())
    metrics = json.loads((out / "metrics.json").read_text())
    assert "non-finite" in metrics["error"]
    assert host is not None


def test_resume_with_numpy_global_state(tmp_path, monkeypatch):
    """seed=None with NumPy's global state (before manual_seed): the checkpoint keeps
    that state too, and the resumed run is the uninterrupted one."""
    X, y = data()

    def fresh() -> nnx.Optim:
        opt = make("adam")  # seeded weights, then back to NumPy's global state
        nnx.manual_seed(None)
        assert nnx.backends.get_rng() is np.random
        return opt

    try:
        straight = fresh()
        np.random.seed(3)  # noqa: NPY002 - the legacy global state is the subject
        ref = straight.SGD(X, y, 16, 4, seed=None, progress=False)
        path = tmp_path / "g.npz"
        real_step, calls = nnx.training.step.Step.__call__, []

        def interrupted_step(self, bx, by):
            calls.append(1)
            if len(calls) == 8 + 3:
                raise KeyboardInterrupt
            return real_step(self, bx, by)

        first = fresh()
        np.random.seed(3)  # noqa: NPY002 - the legacy global state is the subject
        monkeypatch.setattr(nnx.training.step.Step, "__call__", interrupted_step)
        first.SGD(X, y, 16, 4, seed=None, progress=False, checkpoint=path)
        monkeypatch.undo()
        assert first.interrupted and path.exists()
        again = fresh()
        np.random.seed(99)  # noqa: NPY002 - the legacy global state is the subject  # whatever the global state is now, the checkpoint has its own
        np.testing.assert_array_equal(
            again.SGD(X, y, 16, 4, seed=None, progress=False, checkpoint=path), ref
        )
        same(again.network.state_dict(), straight.network.state_dict(), exact=True)
    finally:
        nnx.manual_seed(0)


class _Unregistered(nnx.ReLU):
    """A user's module class that nnx.load could not rebuild (not registered)."""


def test_unsavable_network_fails_before_the_first_epoch(tmp_path):
    nnx.manual_seed(1)
    net = nnx.Sequential(nnx.Linear(6, 8), _Unregistered(), nnx.Linear(8, 3))
    before = net.state_dict()
    X, y = data(40)
    opt = nnx.Optim(net, nnx.CELogSoftmax(), eps=0.01)
    for loop in (
        lambda **kw: opt.SGD(X, y, 8, 3, **kw),
        lambda **kw: opt.SGD_eval(X, y, 8, 3, 0.25, **kw),
    ):
        with pytest.raises(
            TypeError, match=r"Optim\.SGD(_eval)?: module class .*_Unregistered is unknown"
        ):
            loop(progress=False, checkpoint=tmp_path / "ck.npz")
        assert not (tmp_path / "ck.npz").exists() and not opt.history.get("epoch")
        same(net.state_dict(), before, exact=True)  # not one step was taken
    nnx.serialization.register(_Unregistered)  # registered: checkpoints work
    opt.SGD(X, y, 8, 2, progress=False, checkpoint=tmp_path / "ck.npz")
    assert len(opt.history["epoch"]) == 2
