"""nnx.distributed: communicators, packing, failure behaviour.

Three kinds of tests:

- plain tests (every session): the single-process communicator, the packing of arrays
  into one buffer per dtype on every backend (through a two-rank stand-in), the NCCL
  engine with stand-in NCCL calls, the errors;
- ``@pytest.mark.mpi`` tests: run by every rank of ``mpiexec -n 2 python -m pytest -m mpi``
  (``nox -s distributed``), skipped otherwise;
- job tests: launch ``mpiexec -n 2`` on a small script and check how the job ends (a rank
  that raises, hangs or is killed); skipped without ``mpiexec`` and ``mpi4py``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

import nnx
from nnx import backends
from nnx.distributed import Communicator, DistributedError, SingleProcess
from nnx.testing import host

ROOT = Path(__file__).resolve().parents[1]
LAUNCHER_VARIABLES = ("PMI_", "OMPI_", "PMIX_", "MV2_", "SLURM_", "MPI_LOCALRANKID", "HYDRA_")


# -- helpers ------------------------------------------------------------------------------
class TwoRanks(Communicator):
    """Rank 0 of two ranks whose other rank holds the same values: a sum doubles the
    buffer, a broadcast keeps it. Counts the collectives."""

    engine = "stand-in"

    def __init__(self) -> None:
        super().__init__(0, 2)
        self.calls: list[tuple[str, str]] = []

    def allreduce_buffer(self, buf):
        self.calls.append(("allreduce", backends.dtype_name(buf)))
        buf *= 2
        return buf

    def broadcast_buffer(self, buf, root):
        self.calls.append(("broadcast", backends.dtype_name(buf)))
        return buf

    def allgather_bytes(self, data):
        return [bytes(data), bytes(data)]

    def barrier(self):
        pass


def mpiexec() -> str | None:
    """The ``mpiexec`` next to this Python (a venv with mpich) or on the PATH."""
    local = Path(sys.executable).parent / "mpiexec"
    return str(local) if local.exists() else shutil.which("mpiexec")


needs_mpi_job = pytest.mark.skipif(
    mpiexec() is None or importlib.util.find_spec("mpi4py") is None,
    reason="needs mpiexec and mpi4py (pip install mpi4py mpich)",
)


def job_command(script: str, tmp_path: Path, n: int = 2, rank_dirs: bool = False):
    """The ``mpiexec`` command line and environment running ``script`` on ``n`` ranks
    (with ``rank_dirs``, rank r works in ``tmp_path/rank<r>``)."""
    path = tmp_path / "job.py"
    path.write_text(textwrap.dedent(script))
    env = {k: v for k, v in os.environ.items() if not k.startswith(LAUNCHER_VARIABLES)}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    if not rank_dirs:
        return [mpiexec(), "-n", str(n), sys.executable, str(path)], env
    cmd = [mpiexec()]
    for r in range(n):
        (tmp_path / f"rank{r}").mkdir()
        cmd += [*([":"] if r else []), "-n", "1", "-wdir", str(tmp_path / f"rank{r}")]
        cmd += [sys.executable, str(path)]
    return cmd, env


def run_job(script: str, tmp_path: Path, n: int = 2, limit: float = 120.0, rank_dirs=False):
    """Run ``script`` on ``n`` ranks; returns (CompletedProcess, seconds)."""
    cmd, env = job_command(script, tmp_path, n, rank_dirs)
    t0 = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=limit, env=env, cwd=tmp_path)
    return proc, time.monotonic() - t0


def world():
    return nnx.distributed.init("mpi")


# -- plain tests --------------------------------------------------------------------------
def test_init_outside_a_launcher_is_single_process(monkeypatch):
    for name in nnx.distributed.LAUNCHER_SIZE_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    comm = nnx.distributed.init()
    assert isinstance(comm, SingleProcess)
    assert (comm.rank, comm.size, comm.engine) == (0, 1, "single")
    assert nnx.distributed.init() is comm
    assert nnx.distributed.init(timeout=5).timeout == 5.0


def test_in_launcher_reads_the_launchers_variables(monkeypatch):
    for name in nnx.distributed.LAUNCHER_SIZE_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    assert not nnx.distributed.in_launcher()
    monkeypatch.setenv("SLURM_STEP_NUM_TASKS", "1")
    assert not nnx.distributed.in_launcher()
    monkeypatch.setenv("SLURM_NTASKS", "4")  # a batch script's shell, not an srun step
    assert not nnx.distributed.in_launcher()
    monkeypatch.setenv("PMI_SIZE", "4")
    assert nnx.distributed.in_launcher()


def test_a_launcher_of_another_mpi_is_refused(monkeypatch):
    """Open MPI's mpiexec starting processes of an MPICH mpi4py: each sees a job of 1."""
    monkeypatch.setenv("OMPI_COMM_WORLD_SIZE", "2")
    with pytest.raises(RuntimeError, match="the launcher started 2 processes, but MPI sees"):
        nnx.distributed._check_launcher_agrees(1)
    nnx.distributed._check_launcher_agrees(2)


def test_launcher_rank_reads_the_launchers_variables(monkeypatch):
    for name in (
        *nnx.distributed.LAUNCHER_SIZE_VARIABLES,
        *nnx.distributed.LAUNCHER_RANK_VARIABLES,
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PMI_RANK", "3")
    assert nnx.distributed.launcher_rank() == 0  # no job of several processes
    monkeypatch.setenv("PMI_SIZE", "4")
    assert nnx.distributed.launcher_rank() == 3
    monkeypatch.delenv("PMI_RANK")
    monkeypatch.setenv("SLURM_PROCID", "2")
    assert nnx.distributed.launcher_rank() == 2
    monkeypatch.delenv("SLURM_PROCID")
    assert nnx.distributed.launcher_rank() == 0  # a launcher that names no rank


def test_init_rejects_bad_arguments(monkeypatch):
    with pytest.raises(ValueError, match="engine must be"):
        nnx.distributed.init("gloo")
    with pytest.raises(ValueError, match="timeout must be a positive"):
        nnx.distributed.init("single", timeout=0)
    monkeypatch.setenv("NNX_DISTRIBUTED_TIMEOUT", "soon")
    with pytest.raises(ValueError, match="NNX_DISTRIBUTED_TIMEOUT"):
        nnx.distributed.init("single")
    monkeypatch.setenv("NNX_DISTRIBUTED_TIMEOUT", "2.5")
    assert nnx.distributed.default_timeout() == 2.5


def test_missing_mpi4py_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "mpi4py", None)
    monkeypatch.setattr(nnx.distributed, "_COMMUNICATORS", {})
    monkeypatch.setenv("PMI_SIZE", "2")
    with pytest.raises(ImportError, match="pip install mpi4py mpich"):
        nnx.distributed.init()
    with pytest.raises(ImportError, match="mpi4py"):
        nnx.distributed.init("mpi")


def test_nccl_without_gpu_is_a_clear_error(monkeypatch):
    reason = nnx.distributed.nccl_unavailable()
    if reason is None:
        pytest.skip("NCCL is usable here")
    monkeypatch.setattr(nnx.distributed, "_COMMUNICATORS", {})
    with pytest.raises(RuntimeError, match="engine 'nccl' unavailable"):
        nnx.distributed.init("nccl")


def test_single_process_collectives_return_at_once():
    comm = SingleProcess()
    a, b = np.arange(3.0), np.ones((2, 2), dtype=np.float32)
    out = comm.allreduce_sum([a, b])
    assert out[0] is a and out[1] is b
    assert comm.allreduce_sum([a], inplace=False)[0] is a
    np.testing.assert_array_equal(a, [0.0, 1.0, 2.0])
    assert comm.broadcast([a])[0] is a
    assert comm.sum_floats([1.5, 2.0]) == [1.5, 2.0]
    assert comm.allgather_bytes(b"x") == [b"x"]
    comm.check_same("test", "anything", "text")
    comm.barrier()
    comm.fail(ValueError("nobody to tell"))
    assert comm.shard(7) == (0, 7)


@pytest.mark.parametrize("size", [1, 2, 3, 4, 7])
def test_shards_are_contiguous_and_cover_the_batch(size):
    for n in range(0, 20):
        bounds = [Communicator(r, size).shard(n) for r in range(size)]
        assert bounds[0][0] == 0 and bounds[-1][1] == n
        for (_, stop), (start, _) in zip(bounds, bounds[1:]):  # noqa: B905
            assert stop == start
        sizes = [stop - start for start, stop in bounds]
        assert max(sizes) - min(sizes) <= 1


def test_packing_one_collective_per_dtype_in_place(backend, xp):
    comm = TwoRanks()
    w32 = nnx.asarray(np.arange(6.0).reshape(2, 3), dtype="float32")
    b32 = nnx.asarray(np.ones((1, 3)), dtype="float32")
    w64 = nnx.asarray(np.arange(4.0), dtype="float64")
    out = comm.allreduce_sum([w32, w64, b32])
    assert sorted(comm.calls) == [("allreduce", "float32"), ("allreduce", "float64")]
    if backends.is_mutable(w32):  # written in place; immutable arrays (JAX) come back new
        assert out[0] is w32 and out[1] is w64 and out[2] is b32
    w32, w64, b32 = out
    np.testing.assert_array_equal(nnx.to_numpy(w32), 2 * np.arange(6.0).reshape(2, 3))
    np.testing.assert_array_equal(nnx.to_numpy(b32), 2 * np.ones((1, 3)))
    np.testing.assert_array_equal(nnx.to_numpy(w64), 2 * np.arange(4.0))
    assert backends.dtype_name(w32) == "float32" and tuple(w32.shape) == (2, 3)
    comm.calls.clear()
    w32, b32 = comm.broadcast([w32, b32])
    assert comm.calls == [("broadcast", "float32")]
    np.testing.assert_array_equal(nnx.to_numpy(b32), 2 * np.ones((1, 3)))


def test_not_in_place_returns_views_of_the_packed_sums(backend, xp):
    comm = TwoRanks()
    w32 = nnx.asarray(np.arange(6.0).reshape(2, 3), dtype="float32")
    b32 = nnx.asarray(np.ones((1, 3)), dtype="float32")
    out = comm.allreduce_sum([w32, b32], inplace=False)
    assert comm.calls == [("allreduce", "float32")]
    np.testing.assert_array_equal(nnx.to_numpy(w32), np.arange(6.0).reshape(2, 3))
    np.testing.assert_array_equal(nnx.to_numpy(out[0]), 2 * np.arange(6.0).reshape(2, 3))
    np.testing.assert_array_equal(nnx.to_numpy(out[1]), 2 * np.ones((1, 3)))
    assert out[0] is not w32 and tuple(out[1].shape) == (1, 3)
    with pytest.raises(TypeError, match="inplace must be a bool"):
        comm.allreduce_sum([w32], inplace="no")


def test_reuse_packs_into_one_kept_buffer_and_returns_the_same_views(backend, xp):
    comm = TwoRanks()
    w = nnx.asarray(np.arange(6.0).reshape(2, 3), dtype="float32")
    b = nnx.asarray(np.ones((3,)), dtype="float32")
    first = comm.allreduce_sum([w, b], inplace=False, reuse=True)
    assert comm.calls == [("allreduce", "float32")]
    np.testing.assert_array_equal(nnx.to_numpy(w), np.arange(6.0).reshape(2, 3))  # untouched
    np.testing.assert_array_equal(nnx.to_numpy(first[0]), 2 * np.arange(6.0).reshape(2, 3))
    second = comm.allreduce_sum([w, b * 3], inplace=False, reuse=True)
    np.testing.assert_array_equal(nnx.to_numpy(second[1]), 6 * np.ones((3,)))
    if backends.is_mutable(w):  # the same views of the same kept buffer, every time
        assert second[0] is first[0] and second[1] is first[1]
        np.testing.assert_array_equal(nnx.to_numpy(first[1]), 6 * np.ones((3,)))
        # an input that is its own view is summed where it lies
        third = comm.allreduce_sum(second, inplace=False, reuse=True)
        np.testing.assert_array_equal(nnx.to_numpy(third[0]), 4 * np.arange(6.0).reshape(2, 3))
        # views passed at each other's place (same size) are read before being overwritten
        u = nnx.asarray(np.full((3,), 5.0), dtype="float32")
        v = nnx.asarray(np.full((3,), 7.0), dtype="float32")
        x, z = comm.allreduce_sum([u, v], inplace=False, reuse=True)
        np.testing.assert_array_equal(nnx.to_numpy(x), np.full((3,), 10.0))
        swapped = comm.allreduce_sum([z, x], inplace=False, reuse=True)
        np.testing.assert_array_equal(nnx.to_numpy(swapped[0]), np.full((3,), 28.0))
        np.testing.assert_array_equal(nnx.to_numpy(swapped[1]), np.full((3,), 20.0))
    # another layout gets its own buffer; in place writes back as without reuse
    c = nnx.asarray(np.ones((4,)), dtype="float32")
    out = comm.allreduce_sum([c], reuse=True)
    np.testing.assert_array_equal(nnx.to_numpy(out[0]), 2 * np.ones((4,)))
    if backends.is_mutable(c):
        assert out[0] is c
        # two layouts in turn (two networks) keep their own buffers and views
        again = comm.allreduce_sum([w, b], inplace=False, reuse=True)
        assert again[0] is first[0]
        other = comm.allreduce_sum([c], inplace=False, reuse=True)
        assert comm.allreduce_sum([c], inplace=False, reuse=True)[0] is other[0]
        assert comm.allreduce_sum([w, b], inplace=False, reuse=True)[0] is first[0]
    with pytest.raises(TypeError, match="reuse must be a bool"):
        comm.allreduce_sum([c], reuse=1)


class SharedTwoRanks(TwoRanks):
    """Rank 0 of two ranks with an engine that sums one kept buffer into another (the
    MPI engine's shared memory): the other rank holds the same values."""

    engine = "stand-in (shared)"

    def shared_buffers(self, n, dtype):
        self.calls.append(("shared_buffers", dtype))
        return [np.zeros(n, dtype=dtype), np.zeros(n, dtype=dtype)]

    def sum_into(self, src, dst):
        self.calls.append(("sum_into", str(src.dtype)))
        np.multiply(src, 2, out=dst)


def test_an_engine_with_shared_buffers_sums_one_kept_buffer_into_the_other(backend, xp):
    comm = SharedTwoRanks()
    w = nnx.asarray(np.arange(6.0).reshape(2, 3), dtype="float32")
    b = nnx.asarray(np.ones((3,)), dtype="float32")
    first = comm.allreduce_sum([w, b], inplace=False, reuse=True)
    np.testing.assert_array_equal(nnx.to_numpy(w), np.arange(6.0).reshape(2, 3))  # untouched
    np.testing.assert_array_equal(nnx.to_numpy(first[0]), 2 * np.arange(6.0).reshape(2, 3))
    np.testing.assert_array_equal(nnx.to_numpy(first[1]), 2 * np.ones(3))
    if backend not in ("numpy", "torch"):  # no host memory to share: one buffer, in place
        assert comm.calls == [("allreduce", "float32")]
        return
    assert comm.calls == [("shared_buffers", "float32"), ("sum_into", "float32")]
    # the results live in the engine's buffers: this library's arrays over that memory
    assert backends.backend_of(first[0]) is backends.backend_of(w)
    # the sums of one call are packed (where they lie) into the next call's sums, which
    # land in the other buffer: two sets of views in turn, none of them copied
    comm.calls.clear()
    second = comm.allreduce_sum(first, inplace=False, reuse=True)
    third = comm.allreduce_sum(second, inplace=False, reuse=True)
    assert comm.calls == [("sum_into", "float32")] * 2
    assert all(s is not f for s, f in zip(second, first, strict=True))
    assert third[0] is first[0] and third[1] is first[1]
    np.testing.assert_array_equal(nnx.to_numpy(third[0]), 8 * np.arange(6.0).reshape(2, 3))
    np.testing.assert_array_equal(nnx.to_numpy(second[1]), 4 * np.ones(3))  # until the next
    # a second layout gets its own pair; in place writes back as without reuse
    c = nnx.asarray(np.ones((4,)), dtype="float32")
    assert comm.allreduce_sum([c], reuse=True)[0] is c
    np.testing.assert_array_equal(nnx.to_numpy(c), 2 * np.ones(4))
    assert comm.calls[-2:] == [("shared_buffers", "float32"), ("sum_into", "float32")]
    # other operations never use them
    comm.calls.clear()
    comm.broadcast([c])
    comm.allreduce_sum([c])
    assert comm.calls == [("broadcast", "float32"), ("allreduce", "float32")]


def data_parallel_and_reference(comm):
    """A data-parallel step on ``comm`` (whose other rank has the same shard: every sum
    doubles) and a one-process step on a copy of the network at twice the learning rate:
    the two keep the same parameters, the first with twice the gradients."""
    from nnx.distributed import DataParallel
    from nnx.training.step import DataParallelStep

    nnx.manual_seed(0)
    net = nnx.Sequential(nnx.Linear(5, 4), nnx.ReLU(), nnx.Linear(4, 3))
    ref = nnx.Sequential(nnx.Linear(5, 4), nnx.ReLU(), nnx.Linear(4, 3))
    ref.load_state_dict(net.state_dict())
    step = DataParallelStep(net, nnx.CrossEntropyLoss(), 0.1, None, DataParallel(comm))
    plain = nnx.training.step.Step(ref, nnx.CrossEntropyLoss(), 0.2)  # twice the sum
    return net, ref, step, plain


def assert_twice_the_one_process_step(net, ref, rtol=1e-5, atol=1e-6, label=""):
    for (name, p, g), (_, q, h) in zip(
        net.parameters_and_gradients(), ref.parameters_and_gradients(), strict=True
    ):
        np.testing.assert_allclose(host(g), 2 * host(h), rtol, atol, err_msg=f"{label}{name}")
        np.testing.assert_allclose(host(p), host(q), rtol, atol, err_msg=f"{label}{name}")


def test_data_parallel_step_on_shared_buffers_is_the_one_process_step(backend):
    comm = SharedTwoRanks()
    net, ref, step, plain = data_parallel_and_reference(comm)
    rng = np.random.default_rng(1)
    for k in range(4):
        X = nnx.asarray(rng.normal(size=(6, 5)))
        y = nnx.asarray(rng.integers(0, 3, 6))
        comm.calls.clear()
        step(X, y)
        plain(X, y)
        one = ("allreduce" if backend not in ("numpy", "torch") else "sum_into", "float32")
        assert comm.calls[-1] == one and comm.calls.count(one) == 1
        assert_twice_the_one_process_step(net, ref, label=f"step {k}: ")
    assert step.dp.reduce_step(net, 1.5, None) == 3.0
    with pytest.raises(ValueError, match="bad shard"):
        step.dp.reduce_step(net, 1.0, ValueError("bad shard"))
    assert step.dp.reduce_step(net, 2.5, None) == 5.0


def test_data_parallel_step_writes_the_big_gradient_into_the_allreduce_buffer(backend):
    comm = TwoRanks()  # the other rank has the same shard: every sum doubles
    net, ref, step, plain = data_parallel_and_reference(comm)
    rng = np.random.default_rng(1)
    grads = []
    for _ in range(3):
        X = nnx.asarray(rng.normal(size=(6, 5)))
        y = nnx.asarray(rng.integers(0, 3, 6))
        comm.calls.clear()
        step(X, y)
        plain(X, y)
        assert comm.calls == [("allreduce", nnx.get_default_dtype())]
        assert_twice_the_one_process_step(net, ref)
        grads.append(dict(net.named_gradients()))
    if nnx.get_backend() in ("numpy", "torch"):  # written in place from the second step on
        assert grads[1]["0.weight"] is grads[2]["0.weight"]
        assert grads[1]["2.weight"] is grads[2]["2.weight"]
        assert grads[1]["2.bias"] is grads[2]["2.bias"]
    # the loss sum and the error flag travel in the same buffer, step after step
    dp = step.dp
    for total in (1.5, 2.5, 4.0):
        comm.calls.clear()
        assert dp.reduce_step(net, total, None) == 2 * total
        assert len(comm.calls) == 1
    with pytest.raises(ValueError, match="bad shard"):
        dp.reduce_step(net, 1.0, ValueError("bad shard"))
    assert dp.reduce_step(net, 3.0, None) == 6.0  # the flag does not stick
    # moved to another dtype: new gradients, a new packed layout, the same sums
    net.to(dtype="float64")
    ref.to(dtype="float64")
    X = nnx.asarray(rng.normal(size=(6, 5)), dtype="float64")
    y = nnx.asarray(rng.integers(0, 3, 6))
    comm.calls.clear()
    step(X, y)
    plain(X, y)
    assert comm.calls == [("allreduce", "float64")]
    for (name, _, g), (_, _, h) in zip(
        net.parameters_and_gradients(), ref.parameters_and_gradients(), strict=True
    ):
        np.testing.assert_allclose(host(g), 2 * host(h), rtol=1e-10, err_msg=name)


def test_torch_cpu_tensors_are_summed_where_they_lie(monkeypatch):
    torch = pytest.importorskip("torch")

    def no_staging(*args, **kwargs):
        raise AssertionError("a CPU tensor was staged through a NumPy copy")

    monkeypatch.setattr(backends, "to_numpy", no_staging)
    comm = TwoRanks()
    w, b = torch.arange(6.0).reshape(2, 3), torch.ones(3)
    out = comm.allreduce_sum([w, b])
    assert out[0] is w and out[1] is b
    np.testing.assert_array_equal(w.numpy(), 2 * np.arange(6.0).reshape(2, 3))
    views = comm.allreduce_sum([w, b], inplace=False, reuse=True)
    np.testing.assert_array_equal(views[1].numpy(), 4 * np.ones(3))
    np.testing.assert_array_equal(b.numpy(), 2 * np.ones(3))
    assert comm.calls == [("allreduce", "float32")] * 2


def test_read_only_arrays_are_replaced_not_written():
    comm = TwoRanks()
    a = np.arange(3.0)
    a.flags.writeable = False
    out = comm.allreduce_sum([a])
    np.testing.assert_array_equal(a, [0.0, 1.0, 2.0])
    np.testing.assert_array_equal(out[0], [0.0, 2.0, 4.0])


def test_packing_refuses_non_arrays():
    with pytest.raises(TypeError, match="expected arrays"):
        TwoRanks().allreduce_sum([np.ones(2), [1.0, 2.0]])
    with pytest.raises(ValueError, match="root must be"):
        TwoRanks().broadcast([np.ones(2)], root=2)


def test_check_same_names_the_first_difference():
    class Disagree(TwoRanks):
        def allgather_bytes(self, data):
            return [
                b"Linear(4, 3)\n0.weight (4, 3) float32",
                b"Linear(4, 3)\n0.weight (4, 3) float64",
            ]

    with pytest.raises(ValueError, match=r"rank 1 has '0.weight \(4, 3\) float64' where rank 0"):
        Disagree().check_same("Optim.SGD", "the network", "ignored")
    TwoRanks().check_same("Optim.SGD", "the network", "same everywhere")


def test_signature_covers_architecture_and_dtype(backend):
    net = nnx.Sequential(nnx.Linear(4, 3), nnx.ReLU())
    text = nnx.distributed.signature(net)
    assert "0.weight (4, 3) float32" in text and "Linear(4, 3" in text
    assert text != nnx.distributed.signature(nnx.Sequential(nnx.Linear(4, 3), nnx.TanH()))
    assert text != nnx.distributed.signature(net.to(dtype="float64"))


class FakeMPI:
    """What NCCLCommunicator needs of its MPI communicator."""

    def __init__(self, timeout=60.0):
        self.rank, self.size, self.timeout, self.local_rank = 0, 2, timeout, 0
        self.broken = None
        self.timed_out = False
        self.host_calls = 0

    def check_usable(self):
        if self.broken:
            raise DistributedError(self.broken)

    def mark_timed_out(self, reason):
        self.timed_out, self.broken = True, reason

    def allreduce_buffer(self, buf):
        self.host_calls += 1
        buf *= 2
        return buf


class FakeStream:
    def __init__(self, done):
        self.done = done


class FakeNccl:
    """Stands in for CupyNccl: torch tensors play the device arrays."""

    def __init__(self, done=True):
        self.done, self.calls, self.aborted = done, [], False

    def is_device_array(self, x):
        return type(x).__module__.startswith("torch")

    def allreduce(self, buf):
        self.calls.append(("allreduce", backends.dtype_name(buf), tuple(buf.shape)))
        buf *= 2
        return FakeStream(self.done)

    def broadcast(self, buf, root):
        self.calls.append(("broadcast", backends.dtype_name(buf), tuple(buf.shape)))
        return FakeStream(self.done)

    def abort(self):
        self.aborted = True


def test_nccl_engine_packs_device_arrays_and_sends_host_arrays_to_mpi():
    torch = pytest.importorskip("torch")
    from nnx.distributed._nccl import NCCLCommunicator

    mpi, ops = FakeMPI(), FakeNccl()
    comm = NCCLCommunicator(mpi, ops=ops)
    g = [torch.ones(2, 3, dtype=torch.float32), torch.arange(4, dtype=torch.float32)]
    out = comm.allreduce_sum([*g, np.ones(2)])
    assert ops.calls == [("allreduce", "float32", (10,))]
    assert mpi.host_calls == 1
    assert out[0] is g[0]
    np.testing.assert_array_equal(g[1].numpy(), 2 * np.arange(4.0))
    np.testing.assert_array_equal(out[2], [2.0, 2.0])
    # the data-parallel step's call: the sums in a kept device buffer, the same views
    ops.calls.clear()
    first = comm.allreduce_sum(g, inplace=False, reuse=True)
    second = comm.allreduce_sum([first[0], g[1]], inplace=False, reuse=True)
    assert ops.calls == [("allreduce", "float32", (10,))] * 2
    assert second[0] is first[0] and second[1] is first[1]
    np.testing.assert_array_equal(second[0].numpy(), 8 * np.ones((2, 3)))
    np.testing.assert_array_equal(second[1].numpy(), 4 * np.arange(4.0))
    comm.timeout = 3.0
    assert mpi.timeout == 3.0


def test_nccl_engine_gives_up_after_the_timeout():
    torch = pytest.importorskip("torch")
    from nnx.distributed._nccl import NCCLCommunicator

    mpi, ops = FakeMPI(timeout=0.2), FakeNccl(done=False)
    comm = NCCLCommunicator(mpi, ops=ops)
    t0 = time.monotonic()
    with pytest.raises(DistributedError, match="waited 0.2 s in NCCL allreduce"):
        comm.allreduce_sum([torch.ones(3)])
    assert time.monotonic() - t0 < 5
    assert ops.aborted and mpi.timed_out
    with pytest.raises(DistributedError):
        comm.allreduce_sum([torch.ones(3)])


def test_synchronize_is_a_no_op_on_the_host(backend, xp):
    backends.synchronize(nnx.asarray(np.ones(2)))


# -- on the ranks of mpiexec -n 2 ---------------------------------------------------------
@pytest.mark.mpi
def test_mpi_allreduce_and_broadcast(backend):
    comm = world()
    assert comm.size == 2
    a = nnx.asarray(np.full((2, 3), comm.rank + 1.0), dtype="float64")
    b = nnx.asarray(np.full(4, 10.0 * (comm.rank + 1)), dtype="float32")
    out = comm.allreduce_sum([a, b])
    assert out[0] is a and out[1] is b
    np.testing.assert_array_equal(nnx.to_numpy(a), np.full((2, 3), 3.0))
    np.testing.assert_array_equal(nnx.to_numpy(b), np.full(4, 30.0))
    for root in (0, 1):
        c = nnx.asarray(np.full(3, float(comm.rank)))
        comm.broadcast([c], root=root)
        np.testing.assert_array_equal(nnx.to_numpy(c), np.full(3, float(root)))
    assert comm.sum_floats([1.0, comm.rank]) == [2.0, 1.0]
    comm.barrier()


@pytest.mark.mpi
def test_mpi_kept_buffers_are_summed_in_shared_memory_unless_turned_off(backend):
    comm = world()
    r = comm.rank
    w = nnx.asarray(np.arange(7.0).reshape(7, 1) * (r + 1), dtype="float64")
    b = nnx.asarray(np.full(5, 0.1 * (r + 1)), dtype="float64")
    shared = os.environ.get("NNX_MPI_SHARED_MEMORY", "").strip() != "0"
    assert (comm.shared_buffers(3, "float64") is not None) == shared  # ranks of one machine
    out = comm.allreduce_sum([w, b], inplace=False, reuse=True)
    for _ in range(3):  # two buffers in turn, the sums written where they lie
        out = comm.allreduce_sum(out, inplace=False, reuse=True)
    np.testing.assert_array_equal(nnx.to_numpy(w), np.arange(7.0).reshape(7, 1) * (r + 1))
    np.testing.assert_allclose(nnx.to_numpy(out[0]), 3 * 2**3 * np.arange(7.0).reshape(7, 1))
    np.testing.assert_allclose(nnx.to_numpy(out[1]), np.full(5, 0.3 * 2**3))
    # every rank holds the very same bits
    mine = b"".join(nnx.to_numpy(a).tobytes() for a in out)
    theirs = comm.allgather_bytes(mine)
    assert theirs[0] == theirs[1]
    # the same sums as MPI's own allreduce (without reuse)
    again = comm.allreduce_sum([w, b], inplace=False)
    once = comm.allreduce_sum([w, b], inplace=False, reuse=True)
    for a, c in zip(again, once, strict=True):
        np.testing.assert_array_equal(nnx.to_numpy(a), nnx.to_numpy(c))


@pytest.mark.mpi
def test_mpi_allgather_and_disagreement():
    comm = world()
    assert comm.allgather_bytes(b"r%d" % comm.rank * (comm.rank + 1)) == [b"r0", b"r1r1"]
    comm.check_same("test", "the network", "same")
    with pytest.raises(ValueError, match="rank 1 has 'float64' where rank 0 has 'float32'"):
        comm.check_same("test", "the network", "Linear\n" + ("float32", "float64")[comm.rank])


@pytest.mark.mpi
def test_mpi_shards():
    comm = world()
    assert comm.shard(5) == ((0, 2), (2, 5))[comm.rank]


# -- whole jobs ---------------------------------------------------------------------------
@needs_mpi_job
def test_job_a_rank_that_raises_stops_the_others_at_once(tmp_path):
    proc, seconds = run_job(
        """
        import numpy as np, nnx
        comm = nnx.distributed.init(timeout=60)
        comm.allreduce_sum([np.ones(3)])
        if comm.rank == 1:
            raise ValueError("bad data on rank 1")
        comm.allreduce_sum([np.ones(3)])
        """,
        tmp_path,
    )
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    assert "ValueError: bad data on rank 1" in out
    assert "rank 1 of 2 failed with ValueError: bad data on rank 1; rank 0 stops too" in out
    assert seconds < 30  # the notice, not the 60 s timeout


@needs_mpi_job
def test_job_a_rank_that_hangs_ends_the_job_after_the_timeout(tmp_path):
    proc, seconds = run_job(
        """
        import time, numpy as np, nnx
        comm = nnx.distributed.init(timeout=2)
        comm.allreduce_sum([np.ones(3)])
        if comm.rank == 1:
            time.sleep(600)
        comm.allreduce_sum([np.ones(3)])
        """,
        tmp_path,
    )
    assert proc.returncode != 0
    assert "rank 0 of 2 waited 2 s in allreduce_sum" in proc.stdout + proc.stderr
    assert seconds < 60


@needs_mpi_job
@pytest.mark.parametrize("setting", ["", "0"])
def test_job_shared_memory_sums_and_the_switch_that_turns_them_off(tmp_path, monkeypatch, setting):
    monkeypatch.setenv("NNX_MPI_SHARED_MEMORY", setting)
    proc, _ = run_job(
        """
        import numpy as np, nnx
        comm = nnx.distributed.init()
        shared = comm.shared_buffers(4, "float32") is not None
        out = comm.allreduce_sum([np.full(3, comm.rank + 1.0)], inplace=False, reuse=True)
        print(f"rank {comm.rank}: shared {shared}, {out[0].tolist()}")
        # a few layouts get windows, later ones MPI_Allreduce (the windows live on)
        more = [comm.shared_buffers(k + 5, "float64") is not None for k in range(4)]
        out = comm.allreduce_sum([np.full(2, comm.rank + 1.0)], inplace=False, reuse=True)
        print(f"rank {comm.rank}: more {more}, {out[0].tolist()}")
        """,
        tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    on = setting != "0"
    for r in range(2):
        assert f"rank {r}: shared {on}, [3.0, 3.0, 3.0]" in proc.stdout
        assert f"rank {r}: more {[on, on, False, False]}, [3.0, 3.0]" in proc.stdout


@needs_mpi_job
def test_job_a_rank_that_hangs_during_a_shared_memory_sum_ends_the_job(tmp_path):
    proc, seconds = run_job(
        """
        import time, numpy as np, nnx
        comm = nnx.distributed.init(timeout=2)
        assert comm.shared_buffers(4, "float64") is not None
        out = comm.allreduce_sum([np.ones(3)], inplace=False, reuse=True)
        assert out[0].tolist() == [2.0, 2.0, 2.0]
        if comm.rank == 1:
            time.sleep(600)
        comm.allreduce_sum(out, inplace=False, reuse=True)
        """,
        tmp_path,
    )
    assert proc.returncode != 0
    assert "rank 0 of 2 waited 2 s in allreduce_sum" in proc.stdout + proc.stderr
    assert seconds < 60


@needs_mpi_job
def test_scaling_benchmark_reports_both_configurations(tmp_path):
    """``benchmarks/scaling.py`` runs end to end (a tiny configuration): 1 and 2 ranks
    and 2 processes without MPI, launched in turn, each row with its launches' figures
    and the allreduce share."""
    out = tmp_path / "scaling.json"
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "scaling.py"
    args = ["--length", "32", "--batch", "16", "--steps", "2", "--rounds", "1"]
    proc = subprocess.run(
        [sys.executable, str(script), *args, "--repeats", "2", "--save", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = json.loads(out.read_text())["rows"]
    assert [(r["ranks"], r["communication"]) for r in rows] == [(1, True), (2, True), (2, False)]
    for r in rows:
        assert len(r["launch_samples_per_s"]) == 2 and len(r["epoch_s"]) == 2
        assert r["samples_per_s"] > 0
    assert 0 < rows[1]["allreduce_fraction"] < 1 and rows[1]["allreduce_alone_ms"] > 0
    assert rows[2]["allreduce_fraction"] == 0  # the bound: two processes, no MPI
    assert "| 2 |" in proc.stdout and "| 2 processes, no MPI |" in proc.stdout
