"""Backend, device, default dtype and RNG are context-local (threads, asyncio tasks).

``set_backend``/``set_default_dtype`` set the process default; ``use_backend`` and
``nnx.load(..., dtype=...)`` change only the calling thread or task and restore exactly
what they saw; ``manual_seed`` gives the calling context its own generator. Threads are
forced to overlap with barriers, so that each interleaving that once leaked is run.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

import nnx
from nnx import backends

pytest.importorskip("torch")


def run_threads(*targets: Callable[[], Any]) -> list[Any]:
    results: list[Any] = [None] * len(targets)
    errors: list[BaseException] = []

    def wrap(i: int, f: Callable[[], Any]) -> None:
        try:
            results[i] = f()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the main thread
            errors.append(exc)

    threads = [threading.Thread(target=wrap, args=(i, f)) for i, f in enumerate(targets)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    if errors:
        raise errors[0]
    return results


def test_use_backend_in_one_thread_does_not_reach_another():
    inside, built = threading.Barrier(2), threading.Barrier(2)

    def torch_thread() -> str:
        with nnx.use_backend("torch"):
            inside.wait()
            built.wait()
            return nnx.get_backend()

    def numpy_thread() -> str:
        inside.wait()  # the other thread is inside its block now
        layer = nnx.Linear(2, 3)
        built.wait()
        return backends.backend_name(layer._parameters["weight"])

    assert run_threads(torch_thread, numpy_thread) == ["torch", "numpy"]
    assert nnx.get_backend() == "numpy"


def test_interleaved_blocks_restore_what_each_saw():
    a_in, b_in, a_out = threading.Barrier(2), threading.Barrier(2), threading.Barrier(2)

    def a() -> tuple[str, str]:
        with nnx.use_backend("torch"):
            a_in.wait()
            b_in.wait()
        a_out.wait()
        return nnx.get_backend(), "done"

    def b() -> tuple[str, str]:
        a_in.wait()
        with nnx.use_backend("array_api_strict"):
            b_in.wait()
            a_out.wait()  # a has left its block while b is still inside its own
            inner = nnx.get_backend()
        return inner, nnx.get_backend()

    assert run_threads(a, b) == [("numpy", "done"), ("array_api_strict", "numpy")]
    assert nnx.get_backend() == "numpy"


def test_set_backend_inside_a_block_lasts_until_the_block_ends():
    with nnx.use_backend("torch"):
        nnx.set_backend("array_api_strict")
        nnx.set_default_dtype("float64")
        assert nnx.get_backend() == "array_api_strict"
        assert run_threads(nnx.get_backend, nnx.get_default_dtype) == ["numpy", "float32"]
    assert (nnx.get_backend(), nnx.get_default_dtype()) == ("numpy", "float32")


def seeded_weights(seed: int, n: int, pause: Callable[[], None] = lambda: None) -> list:
    nnx.manual_seed(seed)
    out = []
    for _ in range(n):
        out.append(nnx.Linear(8, 8)._parameters["weight"].copy())
        pause()
    return out


def test_load_in_another_thread_changes_neither_rng_nor_dtype(tmp_path):
    path = tmp_path / "m.npz"
    nnx.save(nnx.Sequential(*[nnx.Linear(4, 4) for _ in range(20)]), path)
    reference = seeded_weights(7, 40)
    stop = threading.Event()

    def loader() -> int:
        count = 0
        while not stop.is_set():
            nnx.load(path, dtype="float64")
            count += 1
        return count

    def builder() -> list:
        try:
            return seeded_weights(7, 40, pause=lambda: None)
        finally:
            stop.set()

    loads, weights = run_threads(loader, builder)
    assert loads > 0
    assert all(w.dtype == np.float32 for w in weights)
    for a, b in zip(reference, weights, strict=True):
        np.testing.assert_array_equal(a, b)


def test_two_threads_seeding_build_what_serial_runs_build():
    ref = [seeded_weights(1, 30), seeded_weights(2, 30)]
    step = threading.Barrier(2)
    got = run_threads(
        lambda: seeded_weights(1, 30, step.wait), lambda: seeded_weights(2, 30, step.wait)
    )
    for r, g in zip(ref, got, strict=True):
        for a, b in zip(r, g, strict=True):
            np.testing.assert_array_equal(a, b)


def train(backend: str, seed: int, barrier: threading.Barrier | None = None) -> np.ndarray:
    X = np.random.default_rng(seed).normal(size=(96, 5))
    y = (X[:, 0] > 0).astype(np.int64)
    with nnx.use_backend(backend):
        nnx.set_default_dtype("float32")
        nnx.manual_seed(seed)
        net = nnx.Sequential(nnx.Linear(5, 8), nnx.TanH(), nnx.Linear(8, 2))
        if barrier is not None:
            barrier.wait()
        opt = nnx.Optim(net, nnx.CELogSoftmax(), optimizer=nnx.optimizers.Adam(0.01))
        losses = opt.SGD(X, y, batch_size=16, epochs=4, seed=seed, progress=False)
        return np.concatenate([losses, *(v.ravel() for v in net.state_dict().values())])


def test_two_threads_training_on_two_backends_match_serial_runs():
    serial = [train("numpy", 3), train("torch", 4)]
    barrier = threading.Barrier(2)
    threaded = run_threads(lambda: train("numpy", 3, barrier), lambda: train("torch", 4, barrier))
    for s, t in zip(serial, threaded, strict=True):
        np.testing.assert_array_equal(s, t)
    assert nnx.get_backend() == "numpy"


def test_asyncio_tasks_have_their_own_selection():
    async def task(name: str, entered: asyncio.Event, other: asyncio.Event) -> str:
        with nnx.use_backend(name):
            entered.set()
            await other.wait()
            await asyncio.sleep(0)
            return nnx.get_backend()

    async def main() -> list[str]:
        e1, e2 = asyncio.Event(), asyncio.Event()
        return list(await asyncio.gather(task("torch", e1, e2), task("array_api_strict", e2, e1)))

    assert asyncio.run(main()) == ["torch", "array_api_strict"]
    assert nnx.get_backend() == "numpy"


def test_generator_leaves_the_selection_when_it_finishes():
    """A generator shares its caller's context (documented): the block's selection is
    visible to the caller while the generator is paused inside, and gone once closed."""

    def gen():
        with nnx.use_backend("torch"):
            yield nnx.get_backend()

    g = gen()
    assert next(g) == "torch"
    g.close()
    assert nnx.get_backend() == "numpy"
