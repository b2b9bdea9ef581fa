"""Optim(..., comm=...): N ranks train the one-process parameters.

The ``mpi`` tests run on every rank of ``mpiexec -n 2 python -m pytest -m mpi``
(``nox -s distributed``): each rank first trains the one-process reference itself
(``comm=None``, the global batches), then the data-parallel run from a different
initialisation (rank 0's parameters must reach every rank), and compares, in float64.
The job tests launch ``mpiexec -n 2`` on a script and check how it ends.
"""

from __future__ import annotations

import hashlib
import json
import queue
import re
import signal
import subprocess
import threading
import time

import numpy as np
import pytest
from test_distributed import job_command, needs_mpi_job, run_job  # noqa: I001

import nnx
from nnx.cli import main
from nnx.distributed import SingleProcess

TOL = 1e-10


def optimizers():
    return [
        pytest.param(lambda: None, id="eps"),
        pytest.param(lambda: nnx.optimizers.SGD(0.05), id="sgd"),
        pytest.param(lambda: nnx.optimizers.Momentum(0.05), id="momentum"),
        pytest.param(lambda: nnx.optimizers.Momentum(0.05, nesterov=True), id="nesterov"),
        pytest.param(lambda: nnx.optimizers.Adam(0.01), id="adam"),
    ]


def data(n=50, d=6, k=3, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d))
    y = (X[:, 0] > 0).astype(np.int64) + (X[:, 1] > 0.5)
    return X, y % k


def mlp(seed):
    nnx.manual_seed(seed)
    return nnx.Sequential(nnx.Linear(6, 8), nnx.TanH(), nnx.Linear(8, 3))


def cnn(seed):
    nnx.manual_seed(seed)
    return nnx.Sequential(
        nnx.Conv1D(3, 1, 4),
        nnx.ReLU(),
        nnx.MaxPool1D(2, 2),
        nnx.Flatten(),
        nnx.Linear(8, 3),
    )


def world():
    return nnx.distributed.init("mpi")


def assert_same_parameters(net, ref):
    a, b = net.state_dict(), ref.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_allclose(a[k], b[k], rtol=TOL, atol=TOL, err_msg=k)


def assert_ranks_agree(comm, net):
    digest = hashlib.sha256()
    for k, v in net.state_dict().items():
        digest.update(k.encode() + v.tobytes())
    digests = comm.allgather_bytes(digest.digest())
    assert all(d == digests[0] for d in digests), "the ranks hold different parameters"


# -- every session: a single-process communicator changes nothing -------------------------
@pytest.mark.parametrize("make_opt", optimizers())
def test_single_process_communicator_is_the_plain_run(backend, float64, make_opt):
    X, y = data()
    ref = mlp(0)
    nnx.Optim(ref, nnx.CELogSoftmax(), eps=0.01, optimizer=make_opt()).SGD(X, y, 16, 2, seed=3)
    net = mlp(0)
    optim = nnx.Optim(net, nnx.CELogSoftmax(), 0.01, make_opt(), comm=SingleProcess())
    optim.SGD(X, y, 16, 2, seed=3)
    for k, v in ref.state_dict().items():
        np.testing.assert_array_equal(net.state_dict()[k], v)


def test_comm_must_be_a_communicator():
    with pytest.raises(TypeError, match="comm must be a communicator"):
        nnx.Optim(mlp(0), nnx.CELogSoftmax(), comm="mpi")
    with pytest.raises(ValueError, match="cuda_graph=True with comm= is not supported"):
        nnx.Optim(mlp(0), nnx.CELogSoftmax(), comm=SingleProcess(), cuda_graph=True)


# -- on the ranks of mpiexec -n 2 ---------------------------------------------------------
@pytest.mark.mpi
@pytest.mark.parametrize("make_opt", optimizers())
def test_step_gives_the_one_process_parameters(backend, float64, make_opt):
    comm = world()
    X, y = data()
    ref, net = mlp(0), mlp(0 if comm.rank == 0 else 10)
    one = nnx.Optim(ref, nnx.CELogSoftmax(), eps=0.01, optimizer=make_opt())
    many = nnx.Optim(net, nnx.CELogSoftmax(), eps=0.01, optimizer=make_opt(), comm=comm)
    for start in (0, 16, 32, 48, 7):  # the last two: a batch of 2 and one of 16 again
        stop = min(start + 16, 50)
        one.step(X[start:stop], y[start:stop])
        losses = many.step(X[start:stop], y[start:stop])
        assert losses.shape[0] == len(range(*comm.shard(stop - start)))
    assert_same_parameters(net, ref)
    assert_ranks_agree(comm, net)


@pytest.mark.mpi
@pytest.mark.parametrize("make_opt", optimizers())
@pytest.mark.parametrize("batch_size", [16, 3])
def test_SGD_gives_the_one_process_parameters(backend, float64, make_opt, batch_size):
    comm = world()
    X, y = data(n=47 if batch_size == 3 else 50)  # 47 = 15 * 3 + 2: a batch of 2
    ref, net = mlp(0), mlp(0 if comm.rank == 0 else 10)
    h1 = nnx.Optim(ref, nnx.CELogSoftmax(), eps=0.01, optimizer=make_opt()).SGD(
        X, y, batch_size, 3, seed=5, progress=False
    )
    optim = nnx.Optim(net, nnx.CELogSoftmax(), eps=0.01, optimizer=make_opt(), comm=comm)
    h2 = optim.SGD(X, y, batch_size, 3, seed=5, progress=False)
    assert_same_parameters(net, ref)
    np.testing.assert_allclose(h2, h1, rtol=TOL)
    assert_ranks_agree(comm, net)
    assert optim.score(X, y) == nnx.Optim(ref, nnx.CELogSoftmax()).score(X, y)


@pytest.mark.mpi
@pytest.mark.parametrize("make_opt", optimizers())
def test_SGD_eval_gives_the_one_process_parameters_and_history(
    backend, float64, make_opt, tmp_path
):
    comm = world()
    X, y = data(n=60)
    ref, net = mlp(0), mlp(0 if comm.rank == 0 else 10)
    kwargs = dict(test_size=0.25, patience=2, shuffle_test=True, seed=1, progress=False)
    one = nnx.Optim(ref, nnx.CELogSoftmax(), eps=0.01, optimizer=make_opt())
    h1 = one.SGD_eval(X, y, 8, 4, return_dataframe=True, **kwargs)
    many = nnx.Optim(net, nnx.CELogSoftmax(), eps=0.01, optimizer=make_opt(), comm=comm)
    plot = tmp_path / f"curve-rank{comm.rank}.png"
    h2 = many.SGD_eval(X, y, 8, 4, return_dataframe=True, online_plot=plot, **kwargs)
    assert_same_parameters(net, ref)
    assert many.best_epoch == one.best_epoch
    for column in h1.columns:
        np.testing.assert_allclose(h2[column], h1[column], rtol=TOL, err_msg=column)
    assert plot.exists() == (comm.rank == 0)  # only rank 0 writes files
    loss1, acc1 = one.evaluate(X, y)
    loss2, acc2 = many.evaluate(X, y)
    assert acc2 == acc1 and loss2 == pytest.approx(loss1, rel=TOL)


@pytest.mark.mpi
def test_a_convolutional_network(backend, float64):
    comm = world()
    rng = np.random.default_rng(2)
    X, y = rng.normal(size=(40, 6, 1)), rng.integers(0, 3, 40)
    ref, net = cnn(0), cnn(0 if comm.rank == 0 else 10)
    nnx.Optim(ref, nnx.CELogSoftmax(), optimizer=nnx.optimizers.Adam(0.01)).SGD(X, y, 16, 2)
    nnx.Optim(net, nnx.CELogSoftmax(), optimizer=nnx.optimizers.Adam(0.01), comm=comm).SGD(
        X, y, 16, 2
    )
    assert_same_parameters(net, ref)


@pytest.mark.mpi
def test_non_finite_loss_stops_every_rank_at_the_same_batch(backend, float64):
    comm = world()
    X, y = data()
    Y = nnx.datasets.one_hot(y, 3).astype(np.float64)
    Y[37, 0] = 1e200  # (y - yhat)^2 overflows: third batch of 16, rank 0's share (32..40)
    net = mlp(0)
    optim = nnx.Optim(net, nnx.MSELoss(), eps=0.01, comm=comm)
    with pytest.raises(FloatingPointError, match="epoch 1, batch 3 of 4") as info:
        optim.SGD(X, Y, 16, 1, shuffle=False)
    messages = comm.allgather_bytes(str(info.value).encode())
    assert messages[0] == messages[1]
    assert_ranks_agree(comm, net)  # both kept the parameters of before that step


@pytest.mark.mpi
def test_a_bad_label_on_one_rank_stops_every_rank_with_its_message(backend):
    comm = world()
    X, y = data()
    y[45] = 7  # third batch of 16 (32..48): rank 1's share is 40..48
    optim = nnx.Optim(mlp(0), nnx.CELogSoftmax(), comm=comm)
    with pytest.raises(ValueError, match=r"on rank 1 of 2") as info:
        optim.SGD(X, y, 16, 1, shuffle=False)
    messages = comm.allgather_bytes(str(info.value).encode())
    assert messages[0] == messages[1]
    assert "7" in str(info.value)


def _same_error_on_every_rank(comm, call, pattern):
    with pytest.raises(ValueError, match=pattern) as info:
        call()
    messages = comm.allgather_bytes(str(info.value).encode())
    assert messages[0] == messages[1]


@pytest.mark.mpi
def test_evaluation_errors_are_raised_on_every_rank(backend):
    """A check of the loss that fails on one rank's share of an evaluation (score,
    evaluate, SGD_eval's validation pass) stops every rank with the same error, not
    one rank while the others wait; score checks what the one-process score checks."""
    comm = world()
    X, y = data()
    bad = y.copy()
    bad[5] = 7  # in rank 0's share of a 50-sample pass
    optim = nnx.Optim(mlp(0), nnx.CELogSoftmax(), comm=comm)
    labels = r"labels must lie in \[0, 3\).* \(on rank 0 of 2\)"
    _same_error_on_every_rank(comm, lambda: optim.evaluate(X, bad), labels)
    _same_error_on_every_rank(comm, lambda: optim.score(X, bad), labels)
    nan = X.copy()
    nan[30, 2] = np.nan
    _same_error_on_every_rank(comm, lambda: optim.score(nan, y), "non-finite")
    one_output = nnx.Optim(nnx.Sequential(nnx.Linear(6, 1)), nnx.MSELoss(), comm=comm)
    _same_error_on_every_rank(
        comm, lambda: one_output.score(X, y.reshape(-1, 1) * 1.0), "accuracy needs"
    )
    # a bad label in SGD_eval's validation split only: its pass, not a step, fails
    _, test_rows = nnx.training.data.split_indices("x", 50, 10, False, 3)
    held_out = y.copy()
    held_out[test_rows[0]] = 9
    split = dict(test_size=10, seed=3, patience=None, progress=False)
    _same_error_on_every_rank(
        comm,
        lambda: nnx.Optim(mlp(0), nnx.CELogSoftmax(), comm=comm).SGD_eval(
            X, held_out, 8, 1, **split
        ),
        r"labels must lie in \[0, 3\)",
    )


@pytest.mark.mpi
def test_evaluation_uses_rank_0s_network(backend, float64):
    """Before any training, score and evaluate take rank 0's parameters, as the loops
    do: the number is the one-process number of rank 0's network."""
    comm = world()
    X, y = data()
    net = mlp(0 if comm.rank == 0 else 10)
    expected = nnx.Optim(mlp(0), nnx.CELogSoftmax()).evaluate(X, y)
    got = nnx.Optim(net, nnx.CELogSoftmax(), comm=comm).evaluate(X, y)
    np.testing.assert_allclose(got, expected, rtol=1e-12)
    assert_ranks_agree(comm, net)


@pytest.mark.mpi
def test_step_on_a_batch_shorter_than_the_ranks_gives_an_empty_share(backend):
    comm = world()
    X, y = data()
    losses = nnx.Optim(mlp(0), nnx.CELogSoftmax(), comm=comm).step(X[:1], y[:1])
    assert tuple(losses.shape) == ((0,) if comm.rank == 0 else (1,))
    assert float(nnx.to_numpy(losses).sum()) >= 0.0


@pytest.mark.mpi
def test_a_checkpoint_only_some_ranks_see_is_a_clear_error(backend, tmp_path_factory):
    """Rank 0 writes checkpoints and every rank resumes from them (a shared folder):
    a checkpoint that another rank cannot see stops every rank before training."""
    comm = world()
    X, y = data()
    folder = tmp_path_factory.mktemp(f"rank{comm.rank}")
    path = folder / "ck.npz"
    if comm.rank == 0:
        path.write_bytes(b"rank 0's checkpoint")
    optim = nnx.Optim(mlp(0), nnx.CELogSoftmax(), comm=comm)
    with pytest.raises(ValueError, match="the ranks disagree .* resume=False"):
        optim.SGD(X, y, 16, 1, progress=False, checkpoint=path)


@pytest.mark.mpi
def test_ranks_that_disagree_on_the_network_get_a_clear_error(backend):
    comm = world()
    X, y = data()
    net = mlp(0) if comm.rank == 0 else mlp(0).to(dtype="float64")
    with pytest.raises(ValueError, match="the ranks disagree on the network, its dtype"):
        nnx.Optim(net, nnx.CELogSoftmax(), comm=comm).SGD(X, y, 16, 1)
    with pytest.raises(ValueError, match="the ranks disagree"):
        nnx.Optim(mlp(0), nnx.CELogSoftmax(), comm=comm).SGD(X, y, 16 + comm.rank, 1)


# -- whole jobs ---------------------------------------------------------------------------
TRAIN_SCRIPT = """
import os, signal, sys, time, numpy as np, nnx

class Fragile(nnx.CELogSoftmax):
    calls = 0
    def forward(self, y, yhat):
        Fragile.calls += 1
        if comm.rank == 1 and Fragile.calls == 6:
            if sys.argv[1] == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            raise RuntimeError("disk on fire")
        return super().forward(y, yhat)

comm = nnx.distributed.init(timeout=float(sys.argv[2]))
rng = np.random.default_rng(0)
X, y = rng.normal(size=(400, 6)), rng.integers(0, 3, 400)
net = nnx.Sequential(nnx.Linear(6, 8), nnx.TanH(), nnx.Linear(8, 3))
t0 = time.monotonic()
try:
    nnx.Optim(net, Fragile(), eps=0.01, comm=comm).SGD(X, y, 32, 5, progress=False)
finally:
    print(f"rank {comm.rank} stopped after {time.monotonic() - t0:.1f} s", flush=True)
"""


@needs_mpi_job
@pytest.mark.parametrize("how", ["kill", "raise"])
def test_job_a_rank_killed_or_failing_mid_epoch_ends_the_job(tmp_path, how):
    script = TRAIN_SCRIPT.replace("sys.argv[1]", repr(how)).replace("sys.argv[2]", "20")
    proc, seconds = run_job(script, tmp_path, limit=120)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out
    assert seconds < 60, out  # bounded: far below the test's own limit
    if how == "raise":
        assert "RuntimeError: disk on fire" in out
        assert "rank 1 of 2 failed with RuntimeError: disk on fire; rank 0 stops too" in out
    else:
        assert re.search(r"KILLED|Killed|signal 9|BAD TERMINATION", out), out


@needs_mpi_job
def test_job_cli_help_and_usage_errors_are_printed_once(tmp_path):
    for args, code, stream in ((["--help"], 0, "stdout"), (["--epochs", "x"], 2, "stderr")):
        proc, _ = run_job(
            f"""
            import sys
            from nnx import cli
            try:
                cli.main(["train", *{args!r}])
            except SystemExit as exc:
                sys.exit(exc.code)
            """,
            tmp_path,
        )
        assert proc.returncode == code, proc.stdout + proc.stderr
        assert getattr(proc, stream).count("usage: nnx train") == 1, proc.stdout + proc.stderr


@needs_mpi_job
def test_job_cli_prints_one_result_and_writes_files_once(tmp_path):
    # each rank runs in its own folder (mpiexec -wdir) with the same relative --out:
    # rank 0's folder gets the run, rank 1's stays empty
    script = """
import sys
from nnx.cli import main
sys.exit(main(["train", "--dataset", "digits", "--model", "mlp", "--epochs", "2",
               "--dtype", "float64", "--no-progress", "--data-cache", "off", "--out", "run"]))
"""
    proc, _ = run_job(script, tmp_path, limit=300, rank_dirs=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    results = [line for line in proc.stdout.splitlines() if line.startswith("test accuracy")]
    assert len(results) == 1, proc.stdout
    assert "2 ranks" in proc.stdout
    assert sorted(p.name for p in (tmp_path / "rank0" / "run").iterdir()) == [
        "args.json",
        "history.csv",
        "learning_curve.png",
        "metrics.json",
        "model.npz",
    ]
    assert list((tmp_path / "rank1").iterdir()) == []
    one = tmp_path / "one"
    args = ["train", "--dataset", "digits", "--model", "mlp", "--epochs", "2"]
    args += ["--dtype", "float64", "--no-progress", "--quiet", "--data-cache", "off"]
    assert main([*args, "--out", str(one)]) == 0
    m1 = json.loads((one / "metrics.json").read_text())
    m2 = json.loads((tmp_path / "rank0" / "run" / "metrics.json").read_text())
    assert m2["test_accuracy"] == m1["test_accuracy"]
    assert m2["ranks"] == 2 and m1["ranks"] == 1


@needs_mpi_job
def test_job_cli_ctrl_c_then_resume_ends_as_the_uninterrupted_run(tmp_path):
    """Under mpiexec too, nnx train keeps a checkpoint of every finished epoch (rank 0
    writes it, every rank resumes from it): after Ctrl-C on the launcher, ``--resume``
    with the same launcher ends with the uninterrupted job's parameters."""
    args = ["train", "--dataset", "digits", "--model", "mlp", "--epochs", "40", "--patience", "0"]
    args += ["--batch-size", "8", "--no-progress", "--data-cache", "off"]
    script = "import sys; from nnx.cli import main; sys.exit(main({!r}))"
    ref, _ = run_job(script.format([*args, "--out", "ref"]), tmp_path, limit=300)
    assert ref.returncode == 0, ref.stdout + ref.stderr
    cmd, env = job_command(script.format([*args, "--out", "run"]), tmp_path)
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=tmp_path
    )
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=_read_lines, args=(proc.stdout, lines), daemon=True).start()
    try:
        seen, deadline = "", time.monotonic() + 120
        while "epoch   3" not in seen:
            line = lines.get(timeout=max(deadline - time.monotonic(), 0.1))
            assert line, f"the job ended before epoch 3: {seen!r}"
            seen += line
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode != 0 and (tmp_path / "run" / "checkpoint.npz").exists()
    again, _ = run_job(script.format(["train", "--resume", "--out", "run"]), tmp_path, limit=300)
    assert again.returncode == 0, again.stdout + again.stderr
    assert not (tmp_path / "run" / "checkpoint.npz").exists()
    a = nnx.load(tmp_path / "ref" / "model.npz").state_dict()
    b = nnx.load(tmp_path / "run" / "model.npz").state_dict()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def _read_lines(stream, lines: queue.Queue[str]) -> None:
    for line in stream:
        lines.put(line)
    lines.put("")  # end of output


@needs_mpi_job
def test_job_ctrl_c_on_the_launcher_stops_every_rank(tmp_path):
    script = """
import numpy as np, nnx
comm = nnx.distributed.init()
rng = np.random.default_rng(0)
X, y = rng.normal(size=(4000, 6)), rng.integers(0, 3, 4000)
net = nnx.Sequential(nnx.Linear(6, 8), nnx.TanH(), nnx.Linear(8, 3))
print(f"rank {comm.rank} training", flush=True)
nnx.Optim(net, nnx.CELogSoftmax(), eps=1e-4, comm=comm).SGD(X, y, 4, 10_000, progress=False)
"""
    cmd, env = job_command(script, tmp_path)
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=tmp_path
    )
    # a reader thread and a deadline: a job that never reports both ranks fails the test
    # instead of hanging it (two ranks' lines may also arrive as one)
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=_read_lines, args=(proc.stdout, lines), daemon=True).start()
    try:
        seen = ""
        deadline = time.monotonic() + 120
        while seen.count("training") < 2:
            try:
                line = lines.get(timeout=max(deadline - time.monotonic(), 0.0))
            except queue.Empty:
                pytest.fail(f"both ranks did not report training within 120 s: {seen!r}")
            assert line, f"the job ended before training: {seen!r}"
            seen += line
        time.sleep(1.0)
        t0 = time.monotonic()
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
        assert proc.returncode != 0
        assert time.monotonic() - t0 < 60
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.mpi
def test_seed_none_gives_every_rank_the_same_shuffles_and_split(backend):
    comm = world()
    X, y = data(n=60)
    nnx.manual_seed(100 + comm.rank)  # different generator states on the ranks
    net = mlp(0)
    nnx.manual_seed(100 + comm.rank)
    optim = nnx.Optim(net, nnx.CELogSoftmax(), eps=0.01, comm=comm)
    optim.SGD(X, y, 8, 2, seed=None, progress=False)
    optim.SGD_eval(X, y, 8, 2, test_size=0.25, shuffle_test=True, seed=None, progress=False)
    assert_ranks_agree(comm, net)
    split = comm.allgather_bytes(nnx.to_numpy(optim.y_test).tobytes())
    assert split[0] == split[1]
