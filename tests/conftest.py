"""One fixture runs every test on each installed backend.

``backend`` is parametrised over numpy, array_api_strict, torch, jax and cupy. A backend
whose library is missing is skipped with the reason; CuPy without a GPU is skipped,
unless ``NNX_REQUIRE_GPU=1`` (GPU machines), which turns that skip into a failure.
``NNX_TEST_BACKENDS=numpy,torch`` restricts the run (each nox session sets it to its
own backend); ``NNX_TORCH_DEVICE=cuda`` runs the torch backend's tests on that device. The fixture selects the backend for the test and restores the previous
backend, default dtype and seed afterwards.
"""

from __future__ import annotations

import importlib.util
import os
import tempfile

import numpy as np
import pytest

import nnx
from nnx import backends

# helpers.py's asserts keep checking under python -O (the numpy nox session), as the
# tests' own do: pytest rewrites them into explicit checks.
pytest.register_assert_rewrite("helpers")

ALL_BACKENDS = ("numpy", "array_api_strict", "torch", "jax", "cupy")


def pytest_configure(config: pytest.Config) -> None:
    # Under mpiexec every rank is a pytest process: separate temporary folders, so that
    # the ranks do not race for pytest's numbered ones.
    if nnx.distributed.in_launcher() and not config.option.basetemp:
        config.option.basetemp = tempfile.mkdtemp(prefix="nnx-pytest-rank-")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # A test that does not take the ``backend`` fixture runs the same code whichever
    # backend the session tests: it is ``once``, run by the numpy nox session only.
    for item in items:
        if "backend" not in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.once)
    # Tests marked ``mpi`` need the ranks of an MPI job (mpiexec -n 2): in a plain run
    # they are skipped with the command that runs them.
    if nnx.distributed.in_launcher():
        return
    skip = pytest.mark.skip(
        reason="needs 2 MPI ranks: mpiexec -n 2 python -m pytest -m mpi (nox -s distributed)"
    )
    for item in items:
        if item.get_closest_marker("mpi") is not None:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _shared_memory_for_every_layout(request: pytest.FixtureRequest, monkeypatch) -> None:
    # The ranks of the ``mpi`` tests build many networks, and a communicator gives
    # shared memory to its first few layouts of gradients only: to all of them here, so
    # that every data-parallel test runs on that path (unless NNX_MPI_SHARED_MEMORY=0).
    if request.node.get_closest_marker("mpi") is not None:
        from nnx.distributed import _mpi

        monkeypatch.setattr(_mpi, "SHARED_LAYOUTS", 1000)


def _selected() -> tuple[str, ...]:
    raw = os.environ.get("NNX_TEST_BACKENDS", "").strip()
    if not raw:
        return ALL_BACKENDS
    names = tuple(n.strip() for n in raw.split(",") if n.strip())
    unknown = set(names) - set(ALL_BACKENDS)
    if unknown:
        raise pytest.UsageError(f"NNX_TEST_BACKENDS: unknown backend(s) {sorted(unknown)}")
    return names


def _unavailable_reason(name: str) -> str | None:
    module = backends.BACKENDS[name].module_name
    if importlib.util.find_spec(module) is None:
        return f"backend {name!r}: {module} is not installed"
    try:
        backends.BACKENDS[name].load()
    except (ImportError, RuntimeError) as exc:
        return f"backend {name!r} unavailable: {exc}"
    return None


def _params() -> list:
    params = []
    for name in _selected():
        marks = [pytest.mark.gpu] if name == "cupy" else []
        params.append(pytest.param(name, id=name, marks=marks))
    return params


@pytest.fixture(params=_params())
def backend(request: pytest.FixtureRequest) -> str:
    """Name of the backend under test; it is selected for the duration of the test."""
    name = request.param
    reason = _unavailable_reason(name)
    if reason is not None:
        if name == "cupy" and os.environ.get("NNX_REQUIRE_GPU") == "1":
            pytest.fail(f"NNX_REQUIRE_GPU=1 but {reason}")
        pytest.skip(reason)
    saved_dtype = nnx.get_default_dtype()
    device = os.environ.get("NNX_TORCH_DEVICE") or None if name == "torch" else None
    with nnx.use_backend(name, device):
        nnx.manual_seed(0)
        try:
            yield name
        finally:
            nnx.set_default_dtype(saved_dtype)


@pytest.fixture
def xp(backend: str):
    """Array API namespace of the backend under test."""
    return backends.BACKENDS[backend].xp


@pytest.fixture
def float64(backend: str):
    """Switch the default dtype to float64 for the test (gradient checks)."""
    nnx.set_default_dtype("float64")
    yield "float64"


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)
